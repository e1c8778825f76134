"""Streams of ``AvgPool1d`` and ``MaxPool1d``."""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchstreamer.errors import NotStreamableError
from torchstreamer.streams.conv import check_padding_choice
from torchstreamer.streams.leaf import layer_label
from torchstreamer.streams.window import WindowStream
from torchstreamer.time import avg_pool_divisor, ceil_extra_padding, conv_span, pool_output_length

__all__ = ["Pool1dStream"]


def pool_geometry(pool: Union[nn.AvgPool1d, nn.MaxPool1d]) -> tuple[int, int, int, int]:
    """``(kernel, stride, padding, dilation)`` of a pool (an average pool's dilation is 1), the
    one reading of a pool's arguments that every face uses.

    >>> pool_geometry(nn.MaxPool1d(3, padding=1))
    (3, 3, 1, 1)
    """
    kernel = _first(pool.kernel_size)
    stride = _first(pool.stride) if pool.stride is not None else kernel
    return kernel, stride, _first(pool.padding), _first(getattr(pool, "dilation", 1))


def _first(value: object) -> int:
    return int(value[0]) if isinstance(value, (tuple, list)) else int(value)  # type: ignore[call-overload]


class Pool1dStream(WindowStream):
    """Streams an ``AvgPool1d`` or ``MaxPool1d``.

    Args:
        pool: the pooling layer.
        padding: ``"valid"`` (default) pools as if ``padding=0`` and ``ceil_mode=False``;
            ``"model"`` honours ``padding``, ``ceil_mode`` and ``count_include_pad``, so the
            output equals ``pool(x)`` exactly.
        path: the layer's path in a model, used in error messages.

    Shape:
        Blocks ``[C, T]`` or ``[B, C, T]`` with any ``C``; the output length is PyTorch's
        (:func:`torchstreamer.time.pool_output_length`).

    Its repr names the pool kind (``AvgPool1dStream(...)`` or ``MaxPool1dStream(...)``), as
    torch-streamer 0.0.2's did.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> pool = torch.nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True)
        >>> stream = pts.Pool1dStream(pool, padding="model")
        >>> x = torch.randn(2, 10)
        >>> y = torch.cat([stream(x[:, :5]), stream(x[:, 5:], final=True)], -1)
        >>> torch.equal(y, pool(x))
        True
    """

    def __init__(
        self, pool: Union[nn.AvgPool1d, nn.MaxPool1d], padding: str = "valid", *, path: str = ""
    ) -> None:
        if not isinstance(pool, (nn.AvgPool1d, nn.MaxPool1d)):
            raise TypeError(
                f"Pool1dStream streams AvgPool1d or MaxPool1d, not {type(pool).__name__}."
            )
        check_padding_choice(padding)
        label = layer_label(pool, path)
        is_max = isinstance(pool, nn.MaxPool1d)
        if is_max and pool.return_indices:
            raise NotStreamableError(
                f"{label} returns indices, which count from the start of the block and not of "
                "the signal; build it with return_indices=False."
            )
        kernel, stride, pad, dilation = pool_geometry(pool)
        pad = pad if padding == "model" else 0
        value = float("-inf") if is_max else 0.0
        super().__init__(
            label, -1, conv_span(kernel, dilation), stride, pad, pad, "constant", value
        )
        self.module = pool
        self.padding = padding
        self._is_max = is_max
        self._kernel = kernel
        self._dilation = dilation
        self._pad = pad
        self._ceil = bool(pool.ceil_mode) and padding == "model"
        self._include_pad = bool(getattr(pool, "count_include_pad", True))

    def _get_name(self) -> str:
        # the repr names the pool kind, as torch-streamer 0.0.2 did: AvgPool1dStream(...)
        return "MaxPool1dStream" if self._is_max else "AvgPool1dStream"

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}"

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        return pool_output_length(
            n, self._kernel, self._stride, self._pad, self._dilation, self._ceil
        )

    def _final_extra(self, total: int) -> int:
        if not self._ceil:
            return 0
        outputs = pool_output_length(
            total, self._kernel, self._stride, self._pad, self._dilation, True
        )
        return ceil_extra_padding(total + 2 * self._pad, outputs, self._span, self._stride)

    def _compute(self, x: Tensor, first: int, count: int, total: int) -> Tensor:
        if self._is_max:
            return F.max_pool1d(x, self._kernel, self._stride, 0, self._dilation)
        y = F.avg_pool1d(x, self._kernel, self._stride)
        if self._pad == 0 and not self._ceil:
            return y
        # windows at the edges divide by fewer than `kernel` samples (see time.avg_pool_divisor)
        scale = [1.0] * count
        edge = False
        for i in range(count):
            j = first + i
            start = j * self._stride - self._pad
            if start >= 0 and (total < 0 or start + self._kernel <= total):
                continue
            n = total if total >= 0 else start + self._kernel + self._pad  # end not yet known
            divisor = avg_pool_divisor(
                j, n, self._kernel, self._stride, self._pad, self._include_pad
            )
            if divisor != self._kernel:
                scale[i] = self._kernel / divisor
                edge = True
        if not edge:
            return y
        return y * torch.tensor(scale, dtype=y.dtype, device=y.device)
