"""Streams of ``Conv1d`` and ``ConvTranspose1d``."""

from typing import Optional, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchstreamer.base import state_int
from torchstreamer.errors import NotStreamableError, StreamError
from torchstreamer.streams.leaf import (
    LeafStream,
    fit_buffer,
    layer_label,
    materialize,
    refresh_weights,
)
from torchstreamer.streams.window import WindowStream
from torchstreamer.time import (
    conv_span,
    transposed_carry,
    transposed_output_length,
    valid_output_length,
)

__all__ = ["Conv1dStream", "ConvTranspose1dStream", "check_padding_choice"]

_PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}


S = TypeVar("S", bound=nn.Module)


def scriptable(stream: S) -> S:
    """``stream``, or a shallow copy whose ``module`` has its normalised weights computed
    (:func:`~torchstreamer.streams.leaf.materialize`), for ``torch.jit.script``."""
    module = stream.module
    assert isinstance(module, nn.Module)
    plain = materialize(module)
    if plain is module:
        return stream
    clone = type(stream).__new__(type(stream))
    clone.__dict__ = stream.__dict__.copy()
    clone._modules = dict(stream._modules, module=plain)
    return clone


def check_padding_choice(padding: str) -> None:
    """Raise ``ValueError`` unless ``padding`` is ``"valid"`` or ``"model"``."""
    if padding not in ("valid", "model"):
        raise ValueError(
            f"padding must be 'valid' (ignore the layer's padding, as the seed API does) or "
            f"'model' (honour it, so the stream equals module(x)), not {padding!r}."
        )


def _check_module(module: nn.Module, kind: type, path: str) -> None:
    if not isinstance(module, kind):
        raise TypeError(
            f"{kind.__name__}Stream streams a {kind.__name__}, not {type(module).__name__}."
        )
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise NotStreamableError(
            f"{layer_label(module, path)} has uninitialised lazy parameters; run the model once "
            "on an example input before building the stream."
        )


class Conv1dStream(WindowStream):
    """Streams a ``Conv1d``: the concatenated outputs equal the convolution of the whole signal.

    Args:
        conv: the convolution; the stream reads its current parameters on every call.
        padding: ``"valid"`` (default, as in the seed API) ignores the layer's padding;
            ``"model"`` honours it (zeros, ``reflect``, ``replicate``, ``"same"``), so the
            output equals ``conv(x)`` exactly, edges included. ``circular`` is refused.
        path: the layer's path in a model, used in error messages.

    Shape:
        Blocks ``[C_in, T]`` or ``[B, C_in, T]``. A signal of ``n`` samples gives
        ``(n + left + right - span) // stride + 1`` outputs with ``span = dilation*(kernel-1)+1``.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> conv = torch.nn.Conv1d(2, 4, 3, stride=2)
        >>> stream = pts.Conv1dStream(conv)
        >>> x = torch.randn(2, 20)
        >>> y = torch.cat([stream(x[:, :7]), stream(x[:, 7:], final=True)], -1)
        >>> torch.allclose(y, conv(x), atol=1e-6)
        True
    """

    def __init__(self, conv: nn.Conv1d, padding: str = "valid", *, path: str = "") -> None:
        _check_module(conv, nn.Conv1d, path)
        check_padding_choice(padding)
        label = layer_label(conv, path)
        left = right = 0
        mode = "constant"
        if padding == "model":
            left, right = (
                int(conv._reversed_padding_repeated_twice[0]),
                int(conv._reversed_padding_repeated_twice[1]),
            )
            if conv.padding_mode == "circular" and left + right > 0:
                raise NotStreamableError(
                    f"{label} uses circular padding, which wraps the end of the signal around to "
                    "its start, so no output can be computed before the signal ends. Use "
                    "padding_mode='zeros', 'reflect' or 'replicate', or stream it with "
                    "padding='valid'."
                )
            mode = _PADDING_MODES.get(conv.padding_mode, "constant")
            left += int(getattr(conv, "left_padding", 0))  # PaddedConv1d pads in its forward
        span = conv_span(conv.kernel_size[0], conv.dilation[0])
        super().__init__(label, conv.in_channels, span, conv.stride[0], left, right, mode, 0.0)
        self.module = conv
        self.padding = padding
        self._conv_stride = conv.stride[0]
        self._dilation = conv.dilation[0]
        self._groups = conv.groups

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}"

    def __prepare_scriptable__(self) -> "Conv1dStream":
        return scriptable(self)

    @torch.jit.export
    def _reference(self) -> Optional[Tensor]:
        return self.module.weight

    def _compute(self, x: Tensor, first: int, count: int, total: int) -> Tensor:
        if not torch.jit.is_scripting():
            refresh_weights(self.module)
        return F.conv1d(
            x,
            self.module.weight,
            self.module.bias,
            self._conv_stride,
            0,
            self._dilation,
            self._groups,
        )

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        return valid_output_length(n + self._left + self._right, self._span, self._stride)


class ConvTranspose1dStream(LeafStream):
    """Streams a ``ConvTranspose1d``: the concatenated outputs equal the layer on the whole signal.

    Each input sample adds its window to ``dilation*(kernel-1) + 1`` outputs starting ``stride``
    apart, so the outputs up to ``n*stride`` are complete once ``n`` inputs have arrived. Each
    block runs the layer on its own samples only, and the partial sums of the outputs that later
    inputs still reach are carried to the next block and added there (overlap-add;
    :func:`torchstreamer.time.transposed_carry`): no input is computed twice.

    Args:
        conv: the transposed convolution; its current parameters are read on every call.
        padding: ``"valid"`` (default) ignores ``padding`` and ``output_padding``; ``"model"``
            crops ``padding`` outputs at each end and adds ``output_padding``, as the layer does.
        path: the layer's path in a model, used in error messages.

    Shape:
        Blocks ``[C_in, T]`` or ``[B, C_in, T]``; a signal of ``n`` samples gives
        ``(n-1)*stride - 2*padding + dilation*(kernel-1) + output_padding + 1`` outputs.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> conv = torch.nn.ConvTranspose1d(2, 3, 4, stride=2, padding=1)
        >>> stream = pts.ConvTranspose1dStream(conv, padding="model")
        >>> x = torch.randn(2, 9)
        >>> y = torch.cat([stream(x[:, :4]), stream(x[:, 4:], final=True)], -1)
        >>> torch.allclose(y, conv(x), atol=1e-6)
        True
    """

    _state_tensors = ("_carry",)
    _carry: Tensor
    _state_ints = ("_rank", "_batch", "_channels", "_fill", "_seen", "_emitted", "_promised")

    def __init__(self, conv: nn.ConvTranspose1d, padding: str = "valid", *, path: str = "") -> None:
        _check_module(conv, nn.ConvTranspose1d, path)
        check_padding_choice(padding)
        super().__init__(layer_label(conv, path), conv.in_channels)
        if conv.padding_mode != "zeros":
            raise NotStreamableError(
                f"{self._label} uses padding_mode={conv.padding_mode!r}, which PyTorch itself "
                "does not support for transposed convolutions."
            )
        self.module = conv
        self.padding = padding
        self._kernel = conv.kernel_size[0]
        self._stride = conv.stride[0]
        self._dilation = conv.dilation[0]
        self._groups = conv.groups
        self._out_channels = conv.out_channels
        self._span = conv_span(self._kernel, self._dilation)
        self._crop = int(conv.padding[0]) if padding == "model" else 0
        self._extra = int(conv.output_padding[0]) if padding == "model" else 0
        self._carry_cap = transposed_carry(
            self._kernel, self._stride, self._dilation, self._crop, self._extra
        )
        # partial sums (without the bias) of the outputs from _emitted on: _fill of them
        self.register_buffer("_carry", torch.zeros(0), persistent=False)
        self._fill = 0
        self._seen = 0
        self._emitted = 0
        self._promised = 0  # input samples that the signal is guaranteed to reach (promise)

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}"

    def __prepare_scriptable__(self) -> "ConvTranspose1dStream":
        return scriptable(self)

    @torch.jit.export
    def _reference(self) -> Optional[Tensor]:
        return self.module.weight

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        return transposed_output_length(
            n, self._kernel, self._stride, self._crop, self._extra, self._dilation
        )

    @torch.jit.export
    def promise(self, n: int) -> int:
        """Note that the input reaches ``n`` samples: the outputs that exist for such a signal
        come as soon as they are complete (gaps, outputs the padding crops at the end)."""
        self._promised = n
        return transposed_output_length(
            n, self._kernel, self._stride, self._crop, self._extra, self._dilation
        )

    def _allocate(self, x: Tensor) -> None:
        self._carry = fit_buffer(self._carry, x, self._out_channels, self._carry_cap)

    @torch.jit.unused
    def _buffer_lengths(self) -> dict[str, int]:
        return {"_carry": self._carry_cap}

    @torch.jit.unused
    def _buffer_widths(self) -> dict[str, int]:
        return {"_carry": self._out_channels}  # partial sums of outputs

    @torch.jit.unused
    def _expected_counters(self, state: dict[str, Tensor]) -> dict[str, int]:
        """Every counter follows from the number of samples seen: the stream keeps the last
        inputs and returns each output as soon as no later input can reach it."""
        seen, promised = state_int(state, "_seen"), state_int(state, "_promised")
        if state_int(state, "_rank") == 0:
            return {"_fill": 0, "_seen": 0, "_emitted": 0, "_promised": promised}
        if seen < 0 or promised < 0:
            raise StreamError(
                f"The state does not fit {self._label}: '_seen' is {seen} and '_promised' is "
                f"{promised} but numbers of samples are at least 0; restore a state that "
                "get_state() returned for a stream of the same model."
            )
        end = self._ready_end(seen, promised)
        emitted = end if end > self._crop else 0
        fill = max((seen - 1) * self._stride + self._span - emitted, 0) if seen > 0 else 0
        return {"_fill": fill, "_seen": seen, "_emitted": emitted, "_promised": promised}

    def _reset_state(self) -> None:
        self._fill = 0
        self._seen = 0
        self._emitted = 0
        self._promised = 0

    def _ready_end(self, n: int, promised: int) -> int:
        """End (exclusive, in unpadded output positions) of the outputs that ``n`` inputs
        complete while the signal goes on and is guaranteed to reach ``promised`` inputs.
        :func:`torchstreamer.time.transposed_ready` is the definition; this is its scriptable
        form for one count (the plan tests hold them equal)."""
        if n <= 0:
            return self._crop
        return max(self._crop, min(n * self._stride, self._full_end(max(n, promised))))

    def _full_end(self, n: int) -> int:
        """End (exclusive, in unpadded output positions) of the outputs of an n-sample signal."""
        return (n - 1) * self._stride + self._span + self._extra - self._crop

    def _step(self, x: Tensor, final: bool) -> Optional[Tensor]:
        before = self._seen
        total = before + x.shape[-1]
        if total == 0:
            return None
        # full (uncropped) output positions: the carry starts at _emitted, x's window at base
        first, base = self._emitted, before * self._stride
        if x.shape[-1] > 0:
            if not torch.jit.is_scripting():
                refresh_weights(self.module)
            z = F.conv_transpose1d(
                x, self.module.weight, None, self._stride, 0, 0, self._groups, self._dilation
            )
            head = self._carry[:, :, : self._fill]
            if self._fill > 0:  # overlap-add: the carried partial sums go onto the new window
                size = max(self._fill, base - first + z.shape[-1])
                sums = x.new_zeros(x.shape[0], self._out_channels, size)
                sums[:, :, : self._fill] = head
                sums[:, :, base - first : base - first + z.shape[-1]] += z
            elif base > first:  # outputs no input reaches (gaps): zero partial sums
                gap = x.new_zeros(x.shape[0], self._out_channels, base - first)
                sums = torch.cat([gap, z], -1)
            else:
                sums = z
        else:
            sums = self._carry[:, :, : self._fill]
        end = self._full_end(total) if final else self._ready_end(total, self._promised)
        start = max(first, self._crop)
        y: Optional[Tensor] = None
        if end > start:
            y = sums[:, :, start - first : end - first]
            missing = (end - start) - y.shape[-1]
            if missing > 0:  # past every input's window (output_padding, gaps): bias only
                y = torch.cat([y, sums.new_zeros(y.shape[0], y.shape[1], missing)], -1)
            bias = self.module.bias
            if bias is not None:
                y = y + bias.view(1, -1, 1)
            self._emitted = end
            first_kept = end
        else:
            first_kept = first
        if not final:
            kept = sums[:, :, first_kept - first :]
            self._carry[:, :, : kept.shape[-1]].copy_(kept.detach())
            self._fill = kept.shape[-1]
        self._seen = total
        return y
