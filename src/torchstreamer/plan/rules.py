"""Time rules: what a streamed op does along time, stated once for every face that runs it.

A :class:`TimeRule` gives an op's rate, how many outputs it has returned once its inputs have
returned so many samples (while the signal goes on), and which input samples an output reads.
Module streams state theirs through :func:`stream_rule` (window layers and transposed
convolutions from their geometry, :mod:`torchstreamer.time`; containers by composing their
layers'), graph handlers through their ``rule()`` method. :mod:`torchstreamer.plan.timing`
composes them into exact rates, latencies and receptive fields, and into the schedule of calls
that return something.

Example:
    >>> import torch
    >>> rule = stream_rule(torch.nn.Identity())  # any other module: per step
    >>> rule.rate, rule.ready([5]), rule.reads(3)
    (Fraction(1, 1), 5, (3, 3))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from torchstreamer.time import (
    transposed_length,
    transposed_reads,
    transposed_ready,
    window_length,
    window_reads,
    window_ready,
)

__all__ = [
    "PER_STEP",
    "TimeRule",
    "chain",
    "first_count",
    "length_rule",
    "promised_ready",
    "same_step",
    "slowest",
    "stream_rule",
    "upsampling",
]


@dataclass(frozen=True)
class TimeRule:
    """What a streamed op does along time.

    ``rate``: output samples per sample of its time input. ``ready(counts)``: how many outputs it
    has returned once its time inputs have returned ``counts`` samples each, while the signal
    goes on. ``reads(j)``: the first and last sample of its time inputs that output ``j`` reads,
    or ``None`` when an output depends on every earlier sample (recurrent layers, running sums).
    ``ready`` and ``reads`` take Python ints or int64 tensors (one value per element).

    Promises: ``length(totals)`` is how many outputs the op gives for a whole signal whose time
    inputs have ``totals`` samples (``None``: unknown, or not passed on by the stream). A layer
    downstream of one that pads or strides is thus guaranteed more input than it has seen, and
    ``ready_promised(counts, promised)`` is ``ready`` once its inputs are guaranteed to reach
    ``promised`` samples (``None``: the same as ``ready``): a transposed convolution's gaps and
    the outputs its padding crops at the end exist, and come, as soon as that is guaranteed.
    """

    rate: Fraction
    ready: Callable[[list[Any]], Any]
    reads: Optional[Callable[[Any], tuple[Any, Any]]]
    length: Optional[Callable[[list[Any]], Any]] = None
    ready_promised: Optional[Callable[[list[Any], list[Any]], Any]] = None


def promised_ready(rule: TimeRule, counts: list[Any], promised: list[Any]) -> tuple[Any, Any]:
    """The outputs ``rule``'s op has returned once its inputs have returned ``counts`` samples
    and are guaranteed to reach ``promised``, and the number of outputs that guarantees in turn
    (at least those returned)."""
    ready = (
        rule.ready_promised(counts, promised)
        if rule.ready_promised is not None
        else rule.ready(counts)
    )
    if rule.length is None:
        return ready, ready
    return ready, _upper(rule.length(promised), ready)


def first_count(counts: list[Any]) -> Any:
    """``ready`` of an op that returns one output per input sample."""
    return counts[0]


def same_step(j: Any) -> tuple[Any, Any]:
    """``reads`` of an op whose output ``j`` reads input ``j`` alone."""
    return j, j


def slowest(counts: list[Any]) -> Any:
    """``ready`` of a join: output ``j`` comes with the slowest input's sample ``j``."""
    return functools.reduce(
        lambda a, b: torch.minimum(a, b) if isinstance(a, Tensor) else min(a, b), counts
    )


PER_STEP = TimeRule(Fraction(1), first_count, same_step, first_count)


def upsampling(factor: int) -> TimeRule:
    """The rule of an op that turns each input step into ``factor`` output steps (nearest
    upsampling, a view that interleaves time): output ``j`` reads input ``j // factor``."""
    return TimeRule(
        Fraction(factor), lambda counts: counts[0] * factor, lambda j: (j // factor, j // factor)
    )


def chain(rules: list[TimeRule]) -> TimeRule:
    """The rule of ops one after the other."""
    if not rules:
        return PER_STEP
    rate = functools.reduce(lambda a, b: a * b, (r.rate for r in rules), Fraction(1))

    def ready_promised(counts: list[Any], promised: list[Any]) -> Any:
        count, total = counts[0], promised[0]
        for rule in rules:
            count, total = promised_ready(rule, [count], [total])
        return count

    def ready(counts: list[Any]) -> Any:
        return ready_promised(counts, counts)

    length: Optional[Callable[[list[Any]], Any]] = None
    if all(r.length is not None for r in rules):

        def length(totals: list[Any]) -> Any:
            total = totals[0]
            for rule in rules:
                assert rule.length is not None
                total = rule.length([total])
            return total

    reads: Optional[Callable[[Any], tuple[Any, Any]]] = None
    if all(r.reads is not None for r in rules):

        def reads(j: Any) -> tuple[Any, Any]:
            low, high = j, j
            for rule in reversed(rules):
                assert rule.reads is not None
                low, high = rule.reads(low)[0], rule.reads(high)[1]
            return low, high

    return TimeRule(rate, ready, reads, length, ready_promised)


def length_rule(length: Callable[[int], int]) -> TimeRule:
    """The rule of an opaque stream from its ``output_length(n)``, assuming that it returns each
    output as soon as it exists (a registered streamer)."""
    low = 720720 * 64  # a multiple of every small stride product
    rate = Fraction(length(2 * low) - length(low), low).limit_denominator(10**6)

    def ready(counts: list[Any]) -> Any:
        n = counts[0]
        if isinstance(n, Tensor):
            return torch.tensor([length(int(v)) if v > 0 else 0 for v in n.tolist()])
        return length(n) if n > 0 else 0

    if rate == 1:
        trim = 4096 - length(4096)  # a window of trim + 1 samples, without padding
        return TimeRule(rate, ready, lambda j: (j, j + trim))
    up, down = rate.numerator, rate.denominator
    # output j sits at input j / rate: it reads the inputs up to the next output's position
    return TimeRule(rate, ready, lambda j: (j * down // up, -(-(j + 1) * down // up) - 1))


def stream_rule(stream: nn.Module) -> TimeRule:
    """The time rule of a module stream (or of a module, per step when it is no stream).

    Raises:
        NotImplementedError: a registered stream that does not define ``output_length``.
    """
    from torchstreamer.base import BaseStream
    from torchstreamer.streams.containers import Residual1dStream, Sequential1dStream
    from torchstreamer.streams.conv import ConvTranspose1dStream
    from torchstreamer.streams.elementwise import Elementwise1dStream
    from torchstreamer.streams.window import WindowStream

    if isinstance(stream, WindowStream):
        span, stride, left, head = stream._span, stream._stride, stream._left, stream._head_cap
        return TimeRule(
            Fraction(1, stride),
            lambda counts: window_ready(counts[0], span, stride, left, head),
            lambda j: window_reads(j, span, stride, left),
            _window_length(stream),
        )
    if isinstance(stream, ConvTranspose1dStream):
        span, stride, crop, extra = stream._span, stream._stride, stream._crop, stream._extra
        return TimeRule(
            Fraction(stride),
            lambda counts: transposed_ready(counts[0], span, stride, crop, extra),
            lambda j: transposed_reads(j, span, stride, crop),
            lambda totals: transposed_length(totals[0], span, stride, crop, extra),
            lambda counts, totals: transposed_ready(
                counts[0], span, stride, crop, extra, totals[0]
            ),
        )
    if isinstance(stream, Sequential1dStream):
        return chain([stream_rule(s) for s in stream.streams])
    if isinstance(stream, Residual1dStream):
        inner = stream_rule(stream.stream)  # output j adds input j + crop to inner output j
        crop, inner_reads = stream._crop_left, inner.reads
        trim = stream._trim  # its promise; the inner layers get none (Residual1dStream.promise)

        def length(totals: list[Any]) -> Any:
            n = totals[0]
            if isinstance(n, Tensor):
                return (n - trim).clamp(min=0) * (n > 0)
            return max(n - trim, 0) if n > 0 else 0

        if inner_reads is None:
            return TimeRule(inner.rate, inner.ready, None, length)

        def reads(j: Any) -> tuple[Any, Any]:
            low, high = inner_reads(j)
            return _lower(low, j + crop), _upper(high, j + crop)

        return TimeRule(inner.rate, inner.ready, reads, length)
    if isinstance(stream, BaseStream) and not isinstance(stream, Elementwise1dStream):
        return length_rule(stream.output_length)
    return PER_STEP


def _window_length(stream: Any) -> Callable[[list[Any]], Any]:
    """The ``length`` of a window stream's rule: what its ``promise`` passes on."""
    span, stride, left, right = stream._span, stream._stride, stream._left, stream._right
    if not getattr(stream, "_ceil", False):  # (only a ceil_mode pool adds past its padding)
        return lambda totals: window_length(totals[0], span, stride, left, right)

    def length(totals: list[Any]) -> Any:  # ceil_mode pools: PyTorch's formula, one by one
        n = totals[0]
        if isinstance(n, Tensor):
            values = [stream.promise(int(v)) for v in n.reshape(-1).tolist()]
            return torch.tensor(values, dtype=torch.int64).view(n.shape)
        return stream.promise(int(n))

    return length


def _lower(a: Any, b: Any) -> Any:
    return torch.minimum(a, b) if isinstance(a, Tensor) else min(a, b)


def _upper(a: Any, b: Any) -> Any:
    return torch.maximum(a, b) if isinstance(a, Tensor) else max(a, b)
