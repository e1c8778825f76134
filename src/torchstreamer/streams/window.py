"""`WindowStream`: streams a padded window layer (convolution, pooling, padding) exactly.

A window layer reads, for output ``j``, the samples ``j*stride .. j*stride + span - 1`` of the
padded signal (see :mod:`torchstreamer.time`). The stream keeps three small buffers::

    head     first samples, until the left padding can be built (reflect needs left+1 of them)
    tail     last right+1 samples, to build the right padding when the signal ends
    pending  padded samples not yet consumed by a window (at most span-1 of them)

Each block is padded as far as the edges are known, joined to ``pending``, and every window
that fits is computed by the subclass's ``_compute`` in one call of the unpadded ("valid") op.
An output is therefore returned by the call that delivers the last sample its window reads,
and the windows that read the right padding come with ``final=True``.
"""

from typing import Optional

import torch
from torch import Tensor

from torchstreamer.base import state_int
from torchstreamer.errors import StreamError, StreamInputError
from torchstreamer.streams.leaf import LeafStream, fit_buffer
from torchstreamer.time import valid_output_length

__all__ = ["PAD_MODES", "WindowStream"]

PAD_MODES = ("constant", "reflect", "replicate")


class WindowStream(LeafStream):
    """Base of window layers: subclasses set the geometry and implement ``_compute``.

    Args:
        label: how errors name the layer.
        in_channels: channels of a block, or -1 when any number is accepted.
        span: padded samples one window reads, ``dilation*(kernel-1) + 1``.
        stride: padded samples between the starts of two windows.
        left, right: padding at the start and the end of the signal.
        mode: ``"constant"``, ``"reflect"`` or ``"replicate"``.
        value: the constant of constant padding.
    """

    _state_tensors = ("_pending", "_head", "_tail")
    _pending: Tensor
    _head: Tensor
    _tail: Tensor
    _state_ints = (
        "_rank", "_batch", "_channels", "_fill", "_skip", "_head_fill", "_tail_fill", "_started",
        "_seen", "_emitted",
    )  # fmt: skip

    def __init__(
        self,
        label: str,
        in_channels: int,
        span: int,
        stride: int,
        left: int = 0,
        right: int = 0,
        mode: str = "constant",
        value: float = 0.0,
    ) -> None:
        super().__init__(label, in_channels)
        if mode not in PAD_MODES:
            raise ValueError(f"padding mode must be one of {PAD_MODES}, not {mode!r}.")
        if left < 0 or right < 0:
            raise ValueError(f"{label}: negative padding ({left}, {right}) is not supported.")
        self._span = span
        self._stride = stride
        self._left = left
        self._right = right
        self._mode = mode
        self._value = value
        # samples needed to build the left padding, and kept to build the right padding
        self._head_cap = (
            0 if mode == "constant" or left == 0 else (left + 1 if mode == "reflect" else 1)
        )
        self._tail_cap = (
            0 if mode == "constant" or right == 0 else (right + 1 if mode == "reflect" else 1)
        )
        self.register_buffer("_pending", torch.zeros(0), persistent=False)
        self.register_buffer("_head", torch.zeros(0), persistent=False)
        self.register_buffer("_tail", torch.zeros(0), persistent=False)
        self._reset_state()  # the counters

    # -- hooks for subclasses ------------------------------------------------------------

    def _compute(self, x: Tensor, first: int, count: int, total: int) -> Tensor:
        """Compute outputs ``first .. first+count-1`` from the padded samples ``x`` (exactly the
        samples they read). ``total`` is the signal's length once it is known, else -1."""
        raise NotImplementedError

    def _final_extra(self, total: int) -> int:
        """Samples of value ``value`` to add after the right padding (``ceil_mode`` pools)."""
        return 0

    @torch.jit.export
    def _reference(self) -> Optional[Tensor]:
        """Mid-signal, blocks must match the state's dtype and device."""
        if self._rank != 0:
            return self._pending
        return None

    @torch.jit.export
    def promise(self, n: int) -> int:
        """The windows of a whole signal of ``n`` samples, padding included."""
        if n <= 0:
            return 0
        padded = n + self._left + self._right + self._final_extra(n)
        return valid_output_length(padded, self._span, self._stride)

    # -- state checks (set_state) ---------------------------------------------------------

    @torch.jit.unused
    def _buffer_lengths(self) -> dict[str, int]:
        return {"_pending": self._span - 1, "_head": self._head_cap, "_tail": self._tail_cap}

    @torch.jit.unused
    def _expected_counters(self, state: dict[str, Tensor]) -> dict[str, int]:
        """Every counter follows from the number of samples seen: the stream computes each
        window as soon as its samples are there."""
        seen = state_int(state, "_seen")
        counters = {
            "_fill": 0, "_skip": 0, "_head_fill": 0, "_tail_fill": 0, "_started": 0, "_seen": 0,
            "_emitted": 0,
        }  # fmt: skip
        if state_int(state, "_rank") == 0:
            return counters  # the values reset() sets
        if seen < 0:
            raise StreamError(
                f"The state does not fit {self._label}: '_seen' is {seen} but a number of "
                "samples is at least 0; restore a state that get_state() returned for a stream "
                "of the same model."
            )
        counters["_seen"] = seen
        counters["_tail_fill"] = min(self._tail_cap, seen)
        if self._head_cap > 0 and seen < self._head_cap:  # the left padding is not built yet
            counters["_head_fill"] = seen
            return counters
        padded = self._left + seen
        emitted = valid_output_length(padded, self._span, self._stride)
        consumed = emitted * self._stride
        counters.update(
            _started=1, _emitted=emitted, _fill=max(padded - consumed, 0),
            _skip=max(consumed - padded, 0),
        )  # fmt: skip
        return counters

    # -- the life cycle ------------------------------------------------------------------

    def _allocate(self, x: Tensor) -> None:
        channels = x.shape[1]
        self._pending = fit_buffer(self._pending, x, channels, self._span - 1)
        self._head = fit_buffer(self._head, x, channels, self._head_cap)
        self._tail = fit_buffer(self._tail, x, channels, self._tail_cap)

    def _reset_state(self) -> None:
        self._fill = 0
        self._skip = 0
        self._head_fill = 0
        self._tail_fill = 0
        self._started = 0
        self._seen = 0
        self._emitted = 0

    def _check_final(self, x: Tensor, final: bool) -> None:
        if final:
            self._check_end(self._seen + x.shape[-1])

    @torch.jit.export
    def _check_end(self, total: int) -> None:
        """Raise if a signal of ``total`` samples cannot end here (too short to reflect)."""
        if self._mode == "reflect":
            widest = max(self._left, self._right)
            if total > 0 and total <= widest:
                raise StreamInputError(
                    f"{self._label} reflects {widest} samples at the edges, so the signal needs "
                    f"more than {widest} samples but it has {total}; PyTorch refuses the same "
                    "signal offline."
                )

    def _step(self, x: Tensor, final: bool) -> Optional[Tensor]:
        total = self._seen + x.shape[-1]
        if self._tail_cap > 0:
            self._keep_tail(x)
        self._seen = total
        data = self._pad_start(x, final)
        if final and self._started == 1:  # (an empty signal with reflect padding never starts)
            data = torch.cat([data, self._pad_end(data, total)], -1)
        return self._windows(data, total if final else -1)

    # -- padding ---------------------------------------------------------------------------

    def _keep_tail(self, x: Tensor) -> None:
        joined = torch.cat([self._tail[:, :, : self._tail_fill], x], -1)
        keep = min(self._tail_cap, joined.shape[-1])
        self._tail[:, :, :keep].copy_(joined[:, :, joined.shape[-1] - keep :].detach())
        self._tail_fill = keep

    def _pad_start(self, x: Tensor, final: bool) -> Tensor:
        """The block with the left padding in front of it once that padding can be built."""
        if self._started == 1:
            return x
        if self._head_cap == 0:
            self._started = 1
            if self._left == 0:
                return x
            pad = torch.full(
                [x.shape[0], x.shape[1], self._left], self._value, dtype=x.dtype, device=x.device
            )
            return torch.cat([pad, x], -1)
        head = torch.cat([self._head[:, :, : self._head_fill], x], -1)
        if head.shape[-1] < self._head_cap and not (final and head.shape[-1] > 0):
            self._head[:, :, : head.shape[-1]].copy_(head.detach())
            self._head_fill = head.shape[-1]
            return head[:, :, :0]
        self._started = 1
        self._head_fill = 0
        if self._mode == "reflect":
            pad = head[:, :, 1 : self._left + 1].flip(-1)
        else:
            pad = head[:, :, :1].expand(head.shape[0], head.shape[1], self._left)
        return torch.cat([pad, head], -1)

    def _pad_end(self, data: Tensor, total: int) -> Tensor:
        batch, channels = data.shape[0], data.shape[1]
        extra = self._final_extra(total)
        if self._mode == "constant" or self._right == 0:
            return torch.full(
                [batch, channels, self._right + extra], self._value, dtype=data.dtype,
                device=data.device,
            )  # fmt: skip
        tail = self._tail[:, :, : self._tail_fill]
        if self._mode == "reflect":
            pad = tail[:, :, tail.shape[-1] - 1 - self._right : tail.shape[-1] - 1].flip(-1)
        else:
            pad = tail[:, :, tail.shape[-1] - 1 :].expand(batch, channels, self._right)
        if extra > 0:
            fill = torch.full(
                [batch, channels, extra], self._value, dtype=data.dtype, device=data.device
            )
            pad = torch.cat([pad, fill], -1)
        return pad

    # -- windows -------------------------------------------------------------------------

    def _windows(self, data: Tensor, total: int) -> Optional[Tensor]:
        if self._fill > 0:
            data = torch.cat([self._pending[:, :, : self._fill], data], -1)
        if self._skip > 0:
            drop = min(self._skip, data.shape[-1])
            data = data[:, :, drop:]
            self._skip -= drop
        count = valid_output_length(data.shape[-1], self._span, self._stride)
        y: Optional[Tensor] = None
        if count > 0:
            used = (count - 1) * self._stride + self._span
            y = self._compute(data[:, :, :used], self._emitted, count, total)
            self._emitted += count
        consumed = count * self._stride
        if consumed >= data.shape[-1]:
            self._skip += consumed - data.shape[-1]
            self._fill = 0
        else:
            rest = data[:, :, consumed:]
            self._pending[:, :, : rest.shape[-1]].copy_(rest.detach())
            self._fill = rest.shape[-1]
        return y
