"""Adapters that run the benchmark workloads with peer streaming libraries.

Two peers are supported:

* ``cached_conv`` (acids-ircam, PyPI ``cached-conv``): convolutions whose padding is replaced by
  a cache of the previous block. Non-causal padding becomes a delay (``cumulative_delay``); the
  cache starts at zeros, so layers behind a delayed layer see start-up values where the offline
  model sees zero padding, and the end of the signal needs zero blocks to flush the delay.
* ``continual_inference`` (PyPI ``continual-inference``, module ``continual``): continual
  convolutions stepped one time step at a time through ``forward_steps``.

Each adapter rebuilds the workload from the peer's layers with the workload model's weights
copied in, streams a signal block by block through the peer, and aligns the concatenated output
with ``workload.model(x)``. The workload model itself is never modified or called.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from fractions import Fraction
from typing import Any, Callable, Optional

import torch
from benchmarks.workloads import Workload
from torch import nn

import torchstreamer as pts

__all__ = ["PEERS", "PeerRunner", "PeerUnsupported", "build_peer", "installed"]

PEERS: tuple[str, ...] = ("cached_conv", "continual_inference")

_MODULES = {"cached_conv": "cached_conv", "continual_inference": "continual"}

# Layers that act on each time step alone and need no state.
_POINTWISE = (nn.ReLU, nn.GELU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


class PeerUnsupported(Exception):  # noqa: N818 - the name the benchmark uses
    """The peer cannot express this workload (the message says why)."""


def installed(peer: str) -> bool:
    """Whether the peer's package can be imported."""
    if peer not in _MODULES:
        raise ValueError(f"unknown peer {peer!r}; choose from {PEERS}")
    return importlib.util.find_spec(_MODULES[peer]) is not None


class PeerRunner:
    """A workload expressed with a peer library, ready to stream.

    Attributes:
        name: ``"<peer>/<workload>"``.
        peer: the peer's name (one of :data:`PEERS`).
        workload: the workload's name.
        delay: latency the peer adds, in output samples; :meth:`run` trims it and flushes the
            end of the signal with zero blocks.
        exact: whether the streamed output is expected to equal the offline model everywhere
            (``False`` when the peer's start-up state or zero flush differs from the offline
            padding, so that only the middle of the signal matches).
        block_multiple: the block sizes the peer takes are multiples of this.
    """

    name: str
    peer: str
    workload: str
    delay: int = 0
    exact: bool = True
    block_multiple: int = 1

    def reset(self) -> None:
        """Forget the previous signal: the next block starts a new one."""
        raise NotImplementedError

    def run(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Stream the whole signal ``x`` in blocks of ``block`` samples along the last axis.

        The peer is called once per block (and for the zero blocks that flush its delay). The
        state is reset first. Returns the concatenated outputs aligned with
        ``workload.model(x)``: same shape when the peer is exact.

        Raises:
            PeerUnsupported: when the peer cannot take blocks of this size.
        """
        raise NotImplementedError

    def _check_block(self, x: torch.Tensor, block: int) -> None:
        if block < 1:
            raise ValueError(f"block must be positive, got {block}")
        m = self.block_multiple
        if block % m or x.shape[-1] % m:
            raise PeerUnsupported(
                f"{self.name} needs blocks and signal lengths that are multiples of {m} "
                f"(got block {block}, length {x.shape[-1]})"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, delay={self.delay}, exact={self.exact})"


def build_peer(peer: str, workload: Workload) -> PeerRunner:
    """Express ``workload`` with ``peer``, reusing the workload model's weights.

    Raises:
        PeerUnsupported: the peer cannot express the workload.
        ImportError: the peer's package is not installed.
        ValueError: unknown peer.
    """
    if peer not in _MODULES:
        raise ValueError(f"unknown peer {peer!r}; choose from {PEERS}")
    importlib.import_module(_MODULES[peer])  # ImportError when not installed
    layers = _layers(workload)
    if peer == "cached_conv":
        return _CachedConvRunner(workload, layers)
    return _ContinualRunner(workload, layers)


def _layers(workload: Workload) -> list[nn.Module]:
    """The workload model as a list of layers applied in sequence."""
    model = workload.model
    if isinstance(model, nn.Sequential):
        return list(model)
    if type(model).__name__ == "VolloCNN":
        # forward: relu(conv2(relu(conv1(x))))
        conv1, conv2 = model.get_submodule("conv1"), model.get_submodule("conv2")
        return [conv1, nn.ReLU(), conv2, nn.ReLU()]
    raise PeerUnsupported(f"{type(model).__name__} is not a sequence of layers")


def _conv_span(conv: nn.Conv1d) -> int:
    return (conv.kernel_size[0] - 1) * conv.dilation[0]


def _conv_padding(conv: nn.Conv1d) -> tuple[int, int]:
    """(left, right) zeros the offline layer pads its input with."""
    if isinstance(conv, pts.PaddedConv1d):
        return conv.left_padding, 0
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise PeerUnsupported(f"padding {conv.padding!r}/{conv.padding_mode} is not handled")
    return conv.padding[0], conv.padding[0]


def _copy_conv(source: Any, target: Any) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight)
        if source.bias is not None:
            target.bias.copy_(source.bias)


def _out_channels(layers: list[nn.Module], channels: Optional[int]) -> Optional[int]:
    for layer in layers:
        if isinstance(layer, (nn.Conv1d, nn.ConvTranspose1d)):
            channels = layer.out_channels
        elif isinstance(layer, pts.Residual1d):
            inner = list(layer.net) if isinstance(layer.net, nn.Sequential) else [layer.net]
            channels = _out_channels(inner, channels)
    return channels


# --------------------------------------------------------------------------------------------
# cached_conv
# --------------------------------------------------------------------------------------------


class _Sum(nn.Module):
    """Sums the list of branch outputs of a ``cached_conv.AlignBranches``."""

    def __init__(self, branches: nn.Module) -> None:
        super().__init__()
        self.branches = branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.branches(x)
        return torch.stack(outputs).sum(0)


class _CachedState:
    """Where the cached stream stands relative to the offline signal, at the current rate.

    ``offset``: stream sample ``t`` holds offline sample ``t - offset`` (start-up values for
    ``t < offset``). ``delay``: the part of ``offset`` that is latency (non-causal padding), as
    opposed to the leading outputs of unpadded ("valid") layers, which are dropped. ``rate``:
    samples here per input sample. ``stride``: blocks must be multiples of it.
    """

    def __init__(self) -> None:
        self.offset = 0
        self.delay = 0
        self.rate = Fraction(1)
        self.stride = 1
        self.garbage = False  # a padded layer reads start-up values as its padding
        self.channels: Optional[int] = None


def _cached_layers(layers: list[nn.Module], st: _CachedState) -> list[nn.Module]:
    import cached_conv as cc

    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, _POINTWISE):
            out.append(copy.deepcopy(layer))
        elif isinstance(layer, nn.Conv1d):
            out.append(_cached_conv1d(layer, st))
        elif isinstance(layer, nn.ConvTranspose1d):
            out.append(_cached_conv_transpose1d(layer, st))
        elif isinstance(layer, nn.AvgPool1d):
            out.append(_cached_avg_pool1d(layer, st))
        elif isinstance(layer, nn.Sequential):
            out.extend(_cached_layers(list(layer), st))
        elif isinstance(layer, pts.Residual1d):
            inner_layers = list(layer.net) if isinstance(layer.net, nn.Sequential) else [layer.net]
            before, rate, channels = st.offset, st.rate, st.channels
            inner = cc.CachedSequential(*_cached_layers(inner_layers, st))
            shrink = _valid_shrink(inner_layers)
            crop = shrink // 2  # Residual1d centres the skip on the inner output
            skip_delay = st.offset - before - crop
            if st.rate != rate or skip_delay < 0 or st.channels != channels:
                raise PeerUnsupported("residual around a resampling or channel change")
            # AlignBranches delays the skip branch (Identity) to line up with the inner one.
            # (cc.AlignBranches is a factory that gives the uncached Branches unless the
            # global cc.use_cached_conv(True) is on: use the cached class itself.)
            branches = cc.convs.AlignBranches(inner, nn.Identity(), delays=[skip_delay, 0])
            out.append(_Sum(branches))
        else:
            raise PeerUnsupported(f"cached_conv has no equivalent of {type(layer).__name__}")
        st.channels = _out_channels([layer], st.channels)
    return out


def _valid_shrink(layers: list[nn.Module]) -> int:
    """How many samples the layers shorten a signal by (rate-1 layers only)."""
    shrink = 0
    for layer in layers:
        if isinstance(layer, nn.Conv1d):
            left, right = _conv_padding(layer)
            shrink += _conv_span(layer) - left - right
        elif isinstance(layer, nn.Sequential):
            shrink += _valid_shrink(list(layer))
    return shrink


def _cached_conv1d(conv: nn.Conv1d, st: _CachedState) -> nn.Module:
    import cached_conv as cc

    left, right = _conv_padding(conv)
    span = _conv_span(conv)
    stride = conv.stride[0]
    if stride == 1:
        if left + right not in (0, span):
            raise PeerUnsupported(f"conv padding {left}+{right} neither valid nor same length")
        # The cache holds `span` past samples: valid convs become causal ones whose first
        # `span` outputs are dropped, 'same' convs gain `right` samples of delay.
        padding = (left, right) if left + right else (span, 0)
        if left and st.offset:
            st.garbage = True
        st.offset += span - left
        st.delay += right
        layer = cc.CachedConv1d(
            conv.in_channels, conv.out_channels, conv.kernel_size[0], dilation=conv.dilation[0],
            groups=conv.groups, bias=conv.bias is not None, padding=padding,
        )  # fmt: skip
    else:
        if left or right or conv.kernel_size[0] != stride or conv.dilation[0] != 1:
            raise PeerUnsupported("strided conv other than unpadded kernel == stride")
        # cumulative_delay lets the layer delay its input to the stride phase.
        layer = cc.CachedConv1d(
            conv.in_channels, conv.out_channels, stride, stride=stride, groups=conv.groups,
            bias=conv.bias is not None, cumulative_delay=st.offset,
        )  # fmt: skip
        phase = (-st.offset) % stride
        st.offset = (st.offset + phase) // stride
        st.delay = math.ceil(Fraction(st.delay + phase, stride))
        period = Fraction(stride) / st.rate  # input samples per output of this layer
        if period.denominator != 1:
            raise PeerUnsupported(f"stride {stride} at rate {st.rate} has a fractional period")
        st.stride = math.lcm(st.stride, period.numerator)
        st.rate /= stride
    _copy_conv(conv, layer)
    return layer


def _cached_avg_pool1d(pool: nn.AvgPool1d, st: _CachedState) -> nn.Module:
    kernel = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
    padding = pool.padding if isinstance(pool.padding, int) else pool.padding[0]
    if padding or pool.ceil_mode or st.channels is None:
        raise PeerUnsupported("padded/ceil-mode average pooling is not handled")
    # A depthwise conv with weights 1/k is the same average pool.
    conv = nn.Conv1d(
        st.channels, st.channels, kernel, stride=stride, groups=st.channels, bias=False
    )
    with torch.no_grad():
        conv.weight.fill_(1.0 / kernel)
    return _cached_conv1d(conv, st)


def _cached_conv_transpose1d(conv: nn.ConvTranspose1d, st: _CachedState) -> nn.Module:
    import cached_conv as cc

    kernel, stride, padding = conv.kernel_size[0], conv.stride[0], int(conv.padding[0])
    if conv.dilation[0] != 1 or conv.output_padding[0] or conv.groups != 1:
        raise PeerUnsupported("dilated/grouped/output-padded transposed conv")
    if padding == 0 and kernel == stride:
        # No overlap between frames: stateless. (CachedConvTranspose1d with padding 0
        # returns an empty tensor: it crops `2 * padding` samples with x[..., :-0].)
        layer: nn.Module = cc.convs.ConvTranspose1d(
            conv.in_channels, conv.out_channels, kernel, stride=stride
        )
    elif kernel - stride == 2 * padding:
        # The cache overlap-adds the 2 * padding samples that spill into the next block.
        layer = cc.CachedConvTranspose1d(
            conv.in_channels, conv.out_channels, kernel, stride=stride, padding=padding
        )
    else:
        raise PeerUnsupported("transposed conv whose overlap is not 2 * padding")
    if padding and st.offset:
        st.garbage = True
    st.offset = st.offset * stride + padding
    st.delay = st.delay * stride + padding
    st.rate *= stride
    _copy_conv(conv, layer)
    return layer


class _CachedConvRunner(PeerRunner):
    def __init__(self, workload: Workload, layers: list[nn.Module]) -> None:
        import cached_conv as cc

        self.peer = "cached_conv"
        self.workload = workload.name
        self.name = f"{self.peer}/{workload.name}"
        st = _CachedState()
        self.model = cc.CachedSequential(*_cached_layers(layers, st)).eval()
        self._batched = len(workload.input_shape) == 3
        self._offset = st.offset
        self._rate = st.rate
        self.delay = st.delay
        self.exact = not st.garbage and st.delay == 0
        self.block_multiple = st.stride
        if (1 / st.rate).denominator != 1 and st.rate.denominator != 1:
            raise PeerUnsupported(f"fractional rate {st.rate}")

    def reset(self) -> None:
        # cached_conv has no reset: its caches are the (lazily created) buffers; zero them.
        with torch.no_grad():
            for buffer in self.model.buffers():
                buffer.zero_()

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.model(x)

    def run(self, x: torch.Tensor, block: int) -> torch.Tensor:
        self._check_block(x, block)
        self.reset()
        xb = x if self._batched else x.unsqueeze(0)
        length = xb.shape[-1]
        expected = int(length * self._rate) - (self._offset - self.delay)
        needed = self._offset + expected
        outputs = []
        produced = 0
        with torch.no_grad():
            for start in range(0, length, block):
                y = self._call(xb[..., start : start + block])
                outputs.append(y)
                produced += y.shape[-1]
            zeros = xb.new_zeros((*xb.shape[:-1], block))
            while produced < needed:  # flush the delay with zero blocks
                y = self._call(zeros)
                outputs.append(y)
                produced += y.shape[-1]
        y = torch.cat(outputs, -1)[..., self._offset : needed]
        return y if self._batched else y.squeeze(0)


# --------------------------------------------------------------------------------------------
# continual-inference
# --------------------------------------------------------------------------------------------


def _continual_layers(
    layers: list[nn.Module], delays: list[Any], start: list[int]
) -> list[nn.Module]:
    """Continual layers for ``layers``. ``start[0]`` counts the steps before the first output
    (the stream emits exactly the offline samples, later); ``delays`` collects the ``co.Delay``
    modules that must start from a zero history."""
    import continual as co

    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, _POINTWISE):
            out.append(copy.deepcopy(layer))  # co wraps it in place: use a copy
        elif isinstance(layer, nn.Conv1d):
            out.append(_continual_conv1d(layer, delays, start))
        elif isinstance(layer, nn.Sequential):
            out.extend(_continual_layers(list(layer), delays, start))
        elif isinstance(layer, pts.Residual1d):
            inner_layers = list(layer.net) if isinstance(layer.net, nn.Sequential) else [layer.net]
            inner_start = [0]
            inner = co.Sequential(*_continual_layers(inner_layers, delays, inner_start))
            crop = _valid_shrink(inner_layers) // 2  # Residual1d centres the skip
            wait = inner_start[0]
            if wait < crop:
                raise PeerUnsupported("residual skip would need future samples")
            # The skip emits x[t - wait + crop] from step `wait` on, as the inner branch does.
            skip: nn.Module = co.Delay(wait - crop)
            if crop:
                skip = co.Sequential(skip, co.Skip(crop))
            out.append(co.BroadcastReduce(skip, inner, reduce="sum", auto_delay=False))
            start[0] += wait
        elif isinstance(layer, nn.ConvTranspose1d):
            raise PeerUnsupported("continual-inference has no transposed convolution")
        else:
            raise PeerUnsupported(f"continual-inference has no {type(layer).__name__}")
    return out


def _continual_conv1d(conv: nn.Conv1d, delays: list[Any], start: list[int]) -> nn.Module:
    import continual as co

    left, right = _conv_padding(conv)
    span = _conv_span(conv)
    if conv.stride[0] != 1:
        raise PeerUnsupported("strided conv (continual skips outputs, no upsampling to undo)")
    if right:
        raise PeerUnsupported("non-causal padding: needs pad_end, inexact inside residuals")
    if conv.dilation[0] == 1:
        # padding=left makes the zero-filled state stand for the left zero padding.
        layer = co.Conv1d.build_from(conv, temporal_fill="zeros", padding=left)
        start[0] += span - left
        return layer
    if left != span:
        raise PeerUnsupported("dilated conv that is not causal")
    # co.Conv1d asserts dilation == 1: express tap j as co.Delay((k-1-j)*d) and a 1x1 conv,
    # summed by co.BroadcastReduce. The delays start from a zero history (the left padding).
    kernel, dilation = conv.kernel_size[0], conv.dilation[0]
    branches: list[nn.Module] = []
    for j in range(kernel):
        tap = co.Conv1d(
            conv.in_channels, conv.out_channels, 1, groups=conv.groups,
            bias=conv.bias is not None and j == kernel - 1,
        )  # fmt: skip
        with torch.no_grad():
            tap.weight.copy_(conv.weight[:, :, j : j + 1])
            if tap.bias is not None:
                tap.bias.copy_(conv.bias)
        steps = (kernel - 1 - j) * dilation
        if steps:
            delay = co.Delay(steps, temporal_fill="zeros")
            delays.append((delay, conv.in_channels))
            branches.append(co.Sequential(delay, tap))
        else:
            branches.append(tap)
    return co.BroadcastReduce(*branches, reduce="sum", auto_delay=False)


class _ContinualRunner(PeerRunner):
    def __init__(self, workload: Workload, layers: list[nn.Module]) -> None:
        import continual as co

        self.peer = "continual_inference"
        self.workload = workload.name
        self.name = f"{self.peer}/{workload.name}"
        self._delays: list[Any] = []
        if any(isinstance(m, nn.ConvTranspose1d) for m in workload.model.modules()):
            raise PeerUnsupported("continual-inference has no transposed convolution")
        start = [0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = co.Sequential(*_continual_layers(layers, self._delays, start)).eval()
        self._batched = len(workload.input_shape) == 3
        self._batch = workload.input_shape[0] if self._batched else 1
        self.delay = 0  # outputs come late only where the offline output is shorter
        self.exact = True
        self.block_multiple = 1
        self._forward_steps: Callable[[torch.Tensor], Optional[torch.Tensor]] = (
            self.model.forward_steps
        )

    def reset(self) -> None:
        self.model.clean_state()
        for delay, channels in self._delays:
            # A zero history instead of the default "emit nothing for `delay` steps".
            buffer = torch.zeros(delay.delay, self._batch, channels)
            delay.set_state((buffer, torch.tensor(0)))

    def run(self, x: torch.Tensor, block: int) -> torch.Tensor:
        self._check_block(x, block)
        self.reset()
        xb = x if self._batched else x.unsqueeze(0)
        outputs = []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for start in range(0, xb.shape[-1], block):
                y = self._forward_steps(xb[..., start : start + block])
                if y is not None:
                    outputs.append(y)
        y = torch.cat(outputs, -1) if outputs else xb.new_zeros((*xb.shape[:-1], 0))
        return y if self._batched else y.squeeze(0)
