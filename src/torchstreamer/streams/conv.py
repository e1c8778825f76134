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
    transposed_context,
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

    Each input sample writes ``dilation*(kernel-1) + 1`` outputs starting ``stride`` apart, so the
    outputs up to ``n*stride`` are complete once ``n`` inputs have arrived; the stream keeps the
    few inputs that the next outputs still need (:func:`torchstreamer.time.transposed_context`).

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

    _state_tensors = ("_context",)
    _context: Tensor
    _state_ints = ("_rank", "_batch", "_channels", "_fill", "_seen", "_emitted")

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
        self._span = conv_span(self._kernel, self._dilation)
        self._crop = int(conv.padding[0]) if padding == "model" else 0
        self._extra = int(conv.output_padding[0]) if padding == "model" else 0
        self._context_cap = transposed_context(
            self._kernel, self._stride, self._dilation, self._crop, self._extra
        )
        self.register_buffer("_context", torch.zeros(0), persistent=False)
        self._fill = 0
        self._seen = 0
        self._emitted = 0

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

    def _allocate(self, x: Tensor) -> None:
        self._context = fit_buffer(self._context, x, x.shape[1], self._context_cap)

    @torch.jit.unused
    def _buffer_lengths(self) -> dict[str, int]:
        return {"_context": self._context_cap}

    @torch.jit.unused
    def _expected_counters(self, state: dict[str, Tensor]) -> dict[str, int]:
        """Every counter follows from the number of samples seen: the stream keeps the last
        inputs and returns each output as soon as no later input can reach it."""
        seen = state_int(state, "_seen")
        if state_int(state, "_rank") == 0:
            return {"_fill": 0, "_seen": 0, "_emitted": 0}
        if seen < 0:
            raise StreamError(
                f"The state does not fit {self._label}: '_seen' is {seen} but a number of "
                "samples is at least 0; restore a state that get_state() returned for a stream "
                "of the same model."
            )
        end = min(seen * self._stride, self._full_end(seen)) if seen > 0 else 0
        emitted = end if end > self._crop else 0
        return {"_fill": min(self._context_cap, seen), "_seen": seen, "_emitted": emitted}

    def _reset_state(self) -> None:
        self._fill = 0
        self._seen = 0
        self._emitted = 0

    def _full_end(self, n: int) -> int:
        """End (exclusive, in unpadded output positions) of the outputs of an n-sample signal."""
        return (n - 1) * self._stride + self._span + self._extra - self._crop

    def _step(self, x: Tensor, final: bool) -> Optional[Tensor]:
        before = self._seen
        total = before + x.shape[-1]
        if total == 0:
            return None
        data = x if self._fill == 0 else torch.cat([self._context[:, :, : self._fill], x], -1)
        base = (before - self._fill) * self._stride  # full output position of data's first output
        end = self._full_end(total) if final else min(total * self._stride, self._full_end(total))
        start = max(self._emitted, self._crop)
        y: Optional[Tensor] = None
        if end > start:
            if not torch.jit.is_scripting():
                refresh_weights(self.module)
            weight = self.module.weight
            if data.shape[-1] > 0:
                z = F.conv_transpose1d(
                    data, weight, self.module.bias, self._stride, 0, 0, self._groups,
                    self._dilation,
                )  # fmt: skip
            else:
                z = data.new_zeros(data.shape[0], weight.shape[1] * self._groups, 0)
            # outputs no input reaches (gaps when stride > span, output_padding) are bias only
            y = z[:, :, max(start - base, 0) : max(end - base, 0)]
            if start < base:
                y = torch.cat([self._bias_columns(z, min(base, end) - start), y], -1)
            missing = (end - start) - y.shape[-1]
            if missing > 0:
                y = torch.cat([y, self._bias_columns(z, missing)], -1)
            self._emitted = end
        keep = min(self._context_cap, data.shape[-1])
        if keep > 0:
            self._context[:, :, :keep].copy_(data[:, :, data.shape[-1] - keep :].detach())
        self._fill = keep
        self._seen = total
        return y

    def _bias_columns(self, z: Tensor, count: int) -> Tensor:
        columns = torch.zeros(z.shape[0], z.shape[1], count, dtype=z.dtype, device=z.device)
        bias = self.module.bias
        if bias is not None:
            columns = columns + bias.view(1, -1, 1)
        return columns
