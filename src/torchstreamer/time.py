"""Pure time arithmetic of 1D layers: spans, output lengths, paddings and divisors.

Every stream takes its numbers from here; none re-derives them. Positions are integer sample
indices on the time axis. For a window layer (convolution, pooling) with kernel ``k``, dilation
``d`` and stride ``s`` applied to a signal padded by ``left`` samples, output ``j`` reads the
padded samples ``j*s .. j*s + span - 1`` where ``span = d*(k-1) + 1``::

    padded:  | left pad |  x[0] x[1] ... x[n-1]  | right pad |
    output j:           <-- span -->  starts at j*s (padded index), i.e. x[j*s - left]

Example:
    >>> conv_span(kernel=3, dilation=2)
    5
    >>> valid_output_length(10, span=5, stride=2)
    3
    >>> pool_output_length(10, kernel=3, stride=2, padding=1, dilation=1, ceil_mode=True)
    6
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "avg_pool_divisor",
    "ceil_extra_padding",
    "conv_span",
    "pool_output_length",
    "residual_crop",
    "same_padding",
    "transposed_carry",
    "transposed_length",
    "transposed_output_length",
    "transposed_reads",
    "transposed_ready",
    "valid_output_length",
    "window_length",
    "window_reads",
    "window_ready",
]


def conv_span(kernel: int, dilation: int = 1) -> int:
    """Number of consecutive input samples one window covers: ``dilation*(kernel-1) + 1``."""
    if kernel < 1 or dilation < 1:
        raise ValueError(f"kernel ({kernel}) and dilation ({dilation}) must be at least 1.")
    return dilation * (kernel - 1) + 1


def valid_output_length(n: int, span: int, stride: int) -> int:
    """Number of windows of ``span`` samples, ``stride`` apart, that fit in ``n`` samples.

    >>> [valid_output_length(n, span=3, stride=2) for n in range(8)]
    [0, 0, 0, 1, 1, 2, 2, 3]
    """
    if n < span:
        return 0
    return (n - span) // stride + 1


def same_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """Left and right padding of ``padding="same"``, split as PyTorch splits it.

    The total is ``dilation*(kernel-1)``; the left side gets the smaller half.

    >>> same_padding(4)
    (1, 2)
    """
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def pool_output_length(
    n: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool
) -> int:
    """Output length of ``AvgPool1d``/``MaxPool1d`` on ``n`` samples, PyTorch's formula.

    With ``ceil_mode`` a last, partial window is kept when it starts inside the input or the
    left padding.

    >>> pool_output_length(5, kernel=2, stride=2, padding=0, dilation=1, ceil_mode=True)
    3
    """
    span = conv_span(kernel, dilation)
    out = (n + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return max(out, 0)


def ceil_extra_padding(n_padded: int, outputs: int, span: int, stride: int) -> int:
    """Samples to add after a padded signal so that ``outputs`` full windows fit in it.

    ``ceil_mode`` pooling keeps a last window that runs past the padded signal; padding it
    with the pool's neutral value makes it an ordinary window.

    >>> ceil_extra_padding(n_padded=5, outputs=3, span=2, stride=2)
    1
    """
    if outputs <= 0:
        return 0
    return max(0, (outputs - 1) * stride + span - n_padded)


def avg_pool_divisor(
    j: int, n: int, kernel: int, stride: int, padding: int, count_include_pad: bool
) -> int:
    """Divisor PyTorch's ``avg_pool1d`` uses for output ``j`` of a signal of ``n`` samples.

    The window is cut at the end of the right padding; without ``count_include_pad`` it is cut
    to the real samples.

    >>> avg_pool_divisor(0, n=10, kernel=3, stride=1, padding=1, count_include_pad=False)
    2
    """
    start = j * stride - padding
    end = min(start + kernel, n + padding)
    if count_include_pad:
        return end - start
    return min(end, n) - max(start, 0)


def transposed_output_length(
    n: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int
) -> int:
    """Output length of ``ConvTranspose1d`` on ``n`` samples (0 for an empty input).

    >>> transposed_output_length(4, kernel=3, stride=2, padding=1, output_padding=1, dilation=1)
    8
    """
    if n <= 0:
        return 0
    return (n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def transposed_carry(
    kernel: int, stride: int, dilation: int, padding: int = 0, output_padding: int = 0
) -> int:
    """Partial sums a streamed transposed convolution carries from one block to the next.

    Input ``i`` adds its window to the (uncropped) outputs ``i*stride .. i*stride + span - 1``.
    After ``n`` inputs the stream has returned the outputs before ``end(n)`` (see
    :func:`transposed_ready`) and holds the partial sums of the rest up to
    ``(n-1)*stride + span``; this is the most it ever holds (the first outputs, cropped by
    ``padding``, wait in it too).

    >>> transposed_carry(kernel=4, stride=2, dilation=1)
    2
    >>> transposed_carry(kernel=16, stride=8, dilation=1, padding=4)
    8
    """
    span = conv_span(kernel, dilation)
    most = 0
    # (until the first output comes: the crop at both ends waits for 2 * padding + 1 samples)
    for n in range(1, (2 * padding + span) // stride + 4):
        end = padding + transposed_ready(n, span, stride, padding, output_padding)
        emitted = end if end > padding else 0
        most = max(most, (n - 1) * stride + span - emitted)
    return most


def residual_crop(trim: int) -> tuple[int, int]:
    """How ``Residual1d`` crops its input when the inner network shortens it by ``trim``.

    The residual is centred on the inner output: the left side loses the smaller half.

    >>> residual_crop(3)
    (1, 2)
    """
    if trim < 0:
        raise ValueError(f"the inner network lengthens the signal by {-trim} samples.")
    return trim // 2, trim - trim // 2


# -- when outputs are ready, and what they read ------------------------------------------------
# A stream returns an output as soon as it is complete. These functions say how many outputs the
# first ``n`` input samples of a layer complete while the signal goes on, and which input samples
# output ``j`` reads; the plan (:mod:`torchstreamer.plan`) composes them into a model's rate,
# latency and receptive field. They take Python ints or int64 tensors (one count per element).


def window_ready(n: Any, span: int, stride: int, left: int = 0, head: int = 0) -> Any:
    """Outputs of a window layer (convolution, pool, padding) that ``n`` input samples complete.

    The padded samples known are the ``left`` padding, once the first ``head`` samples that it
    copies have arrived (``reflect`` copies ``left + 1``, ``replicate`` one, zeros none), and the
    ``n`` samples; the right padding comes only when the signal ends.

    >>> [window_ready(n, span=3, stride=2) for n in range(7)]
    [0, 0, 0, 1, 1, 2, 2]
    >>> [window_ready(n, span=5, stride=1, left=2, head=3) for n in range(6)]
    [0, 0, 0, 1, 2, 3]
    """
    known = (n + left) * ((n >= head) * 1)
    return _clamp((known - span) // stride + 1)


def window_reads(j: Any, span: int, stride: int, left: int = 0) -> tuple[Any, Any]:
    """First and last input sample that output ``j`` of a window layer reads (negative: the
    left padding).

    >>> window_reads(4, span=3, stride=2, left=1)
    (7, 9)
    """
    start = j * stride - left
    return start, start + span - 1


def transposed_ready(
    n: Any, span: int, stride: int, crop: int = 0, extra: int = 0, promised: Any = None
) -> Any:
    """Outputs of a transposed convolution that ``n`` input samples complete.

    Input ``i`` writes the uncropped outputs ``i*stride .. i*stride + span - 1``, so those before
    ``n*stride`` are complete; of the outputs that the end of the signal would still add, only
    those that exist whatever comes next count (``crop`` is the padding cut at each end,
    ``extra`` the output padding): those of a signal of ``n`` samples, or of ``promised`` when
    an earlier layer guarantees that the input reaches that length.

    >>> [transposed_ready(n, span=4, stride=2, crop=1) for n in range(5)]
    [0, 1, 3, 5, 7]
    >>> [transposed_ready(n, span=1, stride=4) for n in range(4)]  # gaps wait for an input
    [0, 1, 5, 9]
    >>> [transposed_ready(n, span=1, stride=4, promised=3) for n in range(4)]
    [0, 4, 8, 9]
    """
    total = n if promised is None else _maximum(n, promised)
    end = _minimum(n * stride, (total - 1) * stride + span + extra - crop)
    return _clamp(end - crop) * ((n > 0) * 1)


def transposed_length(n: Any, span: int, stride: int, crop: int = 0, extra: int = 0) -> Any:
    """:func:`transposed_output_length` of ints or int64 tensors, from the span.

    >>> transposed_length(torch.tensor([0, 1, 4]), span=3, stride=2, crop=1, extra=1).tolist()
    [0, 2, 8]
    """
    return _clamp((n - 1) * stride + span + extra - 2 * crop) * ((n > 0) * 1)


def window_length(n: Any, span: int, stride: int, left: int = 0, right: int = 0) -> Any:
    """Outputs of a window layer on a whole signal of ``n`` samples padded by ``left`` and
    ``right`` (:func:`valid_output_length` of the padded signal; ints or int64 tensors).

    >>> window_length(torch.tensor([0, 1, 5]), span=3, stride=2, left=1, right=1).tolist()
    [0, 1, 3]
    """
    return _clamp((n + left + right - span) // stride + 1) * ((n > 0) * 1)


def transposed_reads(j: Any, span: int, stride: int, crop: int = 0) -> tuple[Any, Any]:
    """First and last input sample whose window reaches output ``j`` of a transposed convolution
    (the first is past the last for outputs that no input reaches).

    >>> transposed_reads(3, span=4, stride=2, crop=1)
    (1, 2)
    """
    full = j + crop
    return -((span - 1 - full) // stride), full // stride


def _clamp(value: Any) -> Any:
    return value.clamp(min=0) if isinstance(value, torch.Tensor) else max(value, 0)


def _maximum(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return max(a, b)


def _minimum(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)
