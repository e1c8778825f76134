"""The rewrite behind ``streaming_transform(..., frame=S)``: a captured graph runs whole frames.

A model that changes the sampling rate (strided convolutions, pools, transposed convolutions,
upsampling) cannot take one sample per call with static shapes: a layer at half the rate has an
output every other call. Taking ``S`` input samples per call instead, where ``S`` makes every
layer's rate times ``S`` whole, gives every node a fixed number of new values per call
(``S * rate``). The time axis stays, and every op keeps its offline meaning:

- per-step ops run as they are, on the frame;
- a window op (convolution, pool) keeps the inputs of its next window that came before the frame
  in a state tensor, reads ``[state, frame]`` and writes back its tail; strided and dilated
  convolutions become one matrix product over an unfolded view, which costs less than
  ``F.conv1d`` on a few samples;
- a transposed convolution keeps the inputs whose outputs overlap the frame's;
- ``cumsum`` keeps its running sum; recurrent layers run on the frame from the hidden state
  the last frame left; nearest upsampling repeats samples; linear upsampling keeps the last two
  inputs and its place in the signal (PyTorch rounds its weights there).

Every node's value ``i`` sits at frame position ``i - offset`` (left padding gives values before
the signal starts, as for one-sample steps). The generated code does not depend on the frame
count, so a call may also take several frames at once.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from torchstreamer.graph.analysis import refuse, time_axis, time_length
from torchstreamer.graph.handlers import (
    Aligned,
    Concatenation,
    Interleave,
    LinearUpsample,
    ListHandler,
    ModuleStreamHandler,
    NearestUpsample,
    RecurrentHandler,
    Reshape,
    RunningSum,
    TimeSlice,
    linear_sources,
)
from torchstreamer.graph.stream import GraphStream
from torchstreamer.step.rewrite import (
    _FAST,
    _STREAM_REMEDY,
    StepGraph,
    _Builder,
    _lookahead,
)
from torchstreamer.streams.pool import pool_geometry

__all__ = ["build_frame_graph", "minimal_frame"]

_LAST = (Ellipsis,)  # index prefix that reaches the last (time) axis of a window op
_ALL = slice(None)
# from this many outputs on, a convolution runs one product per tap over shifted views of the
# time-major window (no copy of the taps); below, one product over the unfolded taps
_SHIFTED_FROM = 64
_SHIFTED_TAPS = 8  # (a product per tap: a long filter's taps are fewer copies than products)


def overlap_product(
    rows: Tensor, matrix: Tensor, bias: Optional[Tensor], out_channels: int
) -> Tensor:
    """A transposed convolution whose kernel is ``blocks`` times its stride, over time-major
    rows: ``rows`` ``[..., keep + n, C]`` (the ``keep = blocks - 1`` inputs before the frame
    first), ``matrix`` ``[C, blocks, stride * O]``. Output block ``b`` (``stride`` samples) is
    ``sum_k rows[b - k] @ matrix[:, k]``; returns the ``n`` blocks the frame completes as
    ``[..., n * stride, O]``."""
    if rows.dim() == 3 and rows.shape[0] == 1:  # one row: plain matrix products
        return overlap_product(rows[0], matrix, bias, out_channels).unsqueeze(0)
    channels, blocks, width = matrix.shape
    keep = blocks - 1
    count = rows.shape[-2] - keep
    products = torch.matmul(rows, matrix.reshape(channels, blocks * width))
    products = products.unflatten(-1, (blocks, width))  # [..., keep + n, blocks, width]
    y = products[..., keep : keep + count, 0, :]
    for k in range(1, blocks):
        y = y + products[..., keep - k : keep - k + count, k, :]
    if keep == 0:
        y = y.contiguous()
    y = y.reshape(*rows.shape[:-2], count * (width // out_channels), out_channels)
    return y.add_(bias) if bias is not None else y


def held_tail(held: Tensor, rows: Tensor) -> Tensor:
    """The last ``len(held)`` rows of ``[held, rows]`` (time-major): the next frame's state."""
    keep = held.shape[-2]
    if rows.shape[-2] >= keep:
        return rows[..., rows.shape[-2] - keep :, :]
    return torch.cat([held, rows], -2)[..., rows.shape[-2] :, :]


def held_delay(held: Tensor, rows: Tensor) -> Tensor:
    """The first ``len(rows)`` rows of ``[held, rows]`` (time-major): ``rows`` delayed by the
    length of ``held`` (the held rows come first)."""
    keep, count = held.shape[-2], rows.shape[-2]
    if count < keep:  # (a copy: the state is written before the values are read)
        return held[..., :count, :].clone()
    head = rows[..., : count - keep, :]
    if rows.stride(-2) == 1 and rows.shape[-1] > 1:  # channel-major values: joined as they lie
        return torch.cat([held.transpose(-1, -2), head.transpose(-1, -2)], -1).transpose(-1, -2)
    return torch.cat([held, head], -2)


class FrameRecurrent(nn.Module):
    """A recurrent layer in frame code that streams blocks (lookahead): it skips the first
    ``skip`` values (those from before the signal when its input lags, which nothing reads, and
    those the frames get wrong at first, whose outputs the stream computes offline: it gives
    zeros for them), counts the values it has run over and keeps its last ``keep`` outputs, so
    that the stream can seed its state and its end entry carry it on (see
    :class:`~torchstreamer.step.engine.FrameEngine`).

    ``forward(x, hidden, skip, consumed, last)`` returns ``(y, hidden, skip, consumed, last)``.
    """

    def __init__(self, rnn: nn.RNNBase, keep: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.axis = 1 if rnn.batch_first else 0
        self.keep = keep
        directions = 2 if rnn.bidirectional else 1
        self.width = directions * (getattr(rnn, "proj_size", 0) or rnn.hidden_size)

    def forward(
        self, x: Tensor, hidden: Any, skip: Tensor, consumed: Tensor, last: Tensor
    ) -> tuple[Tensor, Any, Tensor, Tensor, Tensor]:
        axis = self.axis if x.dim() == 3 else 0
        count = x.shape[axis]
        drop = min(int(skip), count) if count else 0
        if drop < count:
            y, hidden = self.rnn(x.narrow(axis, drop, count - drop) if drop else x, hidden)
        else:
            shape = list(x.shape)
            shape[axis], shape[-1] = 0, self.width
            y = x.new_zeros(shape)
        if self.keep:
            joined = torch.cat([last, y], axis)
            last = joined.narrow(axis, joined.shape[axis] - self.keep, self.keep)
        if drop:
            shape = list(y.shape)
            shape[axis] = drop
            y = torch.cat([y.new_zeros(shape), y], axis)
        return y, hidden, skip - drop, consumed + (count - drop), last


def _length(x: Tensor, axis: int) -> int:
    """``x``'s length along ``axis`` (a call in the generated code: frames of any count)."""
    return x.shape[axis]


def lagging_values(x: Tensor, skip: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """``x`` with its first ``skip`` values along ``axis`` (from before the signal, where a
    running op must not count them) set to zero, and the new ``skip``."""
    drop = min(int(skip), x.shape[axis])
    if not drop:
        return x, skip
    x = x.clone()
    x.narrow(axis, 0, drop).zero_()
    return x, skip - drop


def interpolated(
    held: Tensor, x: Tensor, first: Tensor, factor: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Linear upsampling by ``factor`` of a frame ``x`` (time last) whose first value is input
    ``first`` (an int64 tensor), with the two inputs before it ``held``: the outputs that
    ``x``'s values complete (input ``i`` completes those between inputs ``i - 1`` and ``i``),
    the new ``held`` and the new ``first``. Source indices and weights are PyTorch's, at the
    outputs' place in the signal (:func:`~torchstreamer.graph.handlers.linear_sources`)."""
    count = x.shape[-1]
    window = torch.cat([held, x], -1)  # inputs first - 2 .. first + count - 1
    outputs = torch.arange(factor * count, device=x.device) + (factor * (first - 1) + factor // 2)
    low, weight = linear_sources(outputs, factor, x.dtype)
    index = (low - (first - 2)).clamp(0, count + 1)
    # (an output before the signal's second sample has weight 0 on its clamped next input)
    after = (index + 1).clamp(max=count + 1)
    weight = weight.to(x.dtype)
    y = (1 - weight) * window.index_select(-1, index) + weight * window.index_select(-1, after)
    return y, window[..., count:], first + count


def held_product(
    held: Tensor, rows: Tensor, taps: Tensor, bias: Optional[Tensor], stride: int, dilation: int
) -> Tensor:
    """:func:`window_product` over ``[held, rows]`` without joining them for long frames: the
    first outputs, whose taps reach into ``held``, from a short joined head; the others from
    shifted views of ``rows``, written in place."""
    keep = held.shape[-2]
    kernel = taps.shape[0]
    span = dilation * (kernel - 1) + 1
    count = (keep + rows.shape[-2] - span) // stride + 1
    if count < _SHIFTED_FROM or kernel > _SHIFTED_TAPS:  # few outputs: the window joined
        return window_product(torch.cat([held, rows], -2), taps, bias, stride, dilation)
    if rows.dim() == 3 and rows.shape[0] == 1:  # one row: plain matrix products
        return held_product(held[0], rows[0], taps, bias, stride, dilation).unsqueeze(0)
    if rows.dim() == 3:  # many rows of many outputs: one product
        return _unfolded_product(held, rows, taps, bias, stride, dilation, count)
    first = min(count, -(-keep // stride))  # outputs from `first` on read only `rows`
    y = rows.new_empty(count, taps.shape[2])
    if first:
        head = torch.cat([held, rows[: (first - 1) * stride + span - keep]], -2)
        y[:first] = window_product(head, taps, bias, stride, dilation)
    rest, base = count - first, first * stride - keep
    tail = y[first:]
    torch.mm(rows[base : base + (rest - 1) * stride + 1 : stride], taps[0], out=tail)
    for m in range(1, kernel):
        start = base + m * dilation
        tail.addmm_(rows[start : start + (rest - 1) * stride + 1 : stride], taps[m])
    if bias is not None:
        tail.add_(bias)
    return y


def _unfolded_product(
    held: Tensor,
    rows: Tensor,
    taps: Tensor,
    bias: Optional[Tensor],
    stride: int,
    dilation: int,
    count: int,
) -> Tensor:
    """:func:`window_product` over ``[held, rows]`` for a batch of rows ``[B, L, C]``, in one
    matrix product (a product per tap would be a batched product with a broadcast matrix,
    several times slower for many rows). With at least as many outputs ``O`` as inputs ``C``,
    the windows are unfolded straight from ``held`` and ``rows`` (no joined copy) into one
    ``[B * count, K * C]`` matrix, times the taps. With fewer, every sample is multiplied by all
    taps first, ``[B * L, C] @ [C, K * O]``, and the taps' shifted results are summed: this
    moves ``K * O`` values per sample where unfolding moves ``K * C``."""
    batch, keep, channels = held.shape
    kernel, _, out_channels = taps.shape
    if out_channels < channels:
        side = taps.permute(1, 0, 2).reshape(channels, kernel * out_channels)
        length = rows.shape[1]
        products = (rows.reshape(batch * length, channels) @ side).view(batch, length, kernel, -1)
        if keep:
            before = (held.reshape(batch * keep, channels) @ side).view(batch, keep, kernel, -1)
            products = torch.cat([before, products], 1)
        last = (count - 1) * stride + 1
        y = products[:, 0:last:stride, 0].clone()
        for m in range(1, kernel):
            y.add_(products[:, m * dilation : m * dilation + last : stride, m])
        return y.add_(bias) if bias is not None else y
    flat = rows.new_empty(batch, count, kernel, channels)
    for m in range(kernel):
        offset = m * dilation  # output j's tap m reads joined sample j * stride + offset
        from_held = min(count, max(0, -(-(keep - offset) // stride)))
        if from_held:
            flat[:, :from_held, m] = held[
                :, offset : offset + (from_held - 1) * stride + 1 : stride
            ]
        if count > from_held:
            start = from_held * stride + offset - keep
            flat[:, from_held:, m] = rows[
                :, start : start + (count - from_held - 1) * stride + 1 : stride
            ]
    matrix = taps.reshape(kernel * channels, out_channels)
    flat2 = flat.view(batch * count, kernel * channels)
    y = torch.addmm(bias, flat2, matrix) if bias is not None else torch.mm(flat2, matrix)
    return y.view(batch, count, out_channels)


def window_product(
    rows: Tensor, taps: Tensor, bias: Optional[Tensor], stride: int, dilation: int
) -> Tensor:
    """A convolution without padding over time-major rows: output ``j`` is
    ``sum_m rows[j * stride + m * dilation] @ taps[m] + bias``.

    ``rows`` is ``[..., L, C]``, ``taps`` ``[K, C, O]``; returns ``[..., n, O]``. Few outputs
    (small blocks): one matrix product ``[n, K * C] @ [K * C, O]`` over the unfolded taps, which
    costs less than ``F.conv1d``'s set-up. Many: one product per tap over a strided view of the
    rows, which copies nothing.
    """
    if rows.dim() == 3 and rows.shape[0] == 1:  # one row: plain matrix products
        return window_product(rows[0], taps, bias, stride, dilation).unsqueeze(0)
    kernel, channels, out_channels = taps.shape
    span = dilation * (kernel - 1) + 1
    count = (rows.shape[-2] - span) // stride + 1
    if rows.dim() == 3 and count >= _SHIFTED_FROM:  # many rows of many outputs: one product
        return _unfolded_product(rows[:, :0], rows, taps, bias, stride, dilation, count)
    if count >= _SHIFTED_FROM and kernel <= _SHIFTED_TAPS:
        y = torch.matmul(rows[..., 0 : (count - 1) * stride + 1 : stride, :], taps[0])
        for m in range(1, kernel):
            start = m * dilation
            shifted = rows[..., start : start + (count - 1) * stride + 1 : stride, :]
            y = y.addmm_(shifted, taps[m]) if y.dim() == 2 else y.add_(shifted @ taps[m])
        return y.add_(bias) if bias is not None else y
    matrix = taps.reshape(kernel * channels, out_channels)
    if count == 1 and dilation == 1:  # one output (a sample per call): the first taps
        flat = rows[..., :kernel, :].reshape(*rows.shape[:-2], 1, kernel * channels)
    elif dilation == 1 and kernel == stride:  # the taps side by side: a view
        flat = rows[..., : count * kernel, :].reshape(*rows.shape[:-2], count, kernel * channels)
    else:
        unfolded = rows.unfold(-2, span, stride)  # [..., n, C, span]
        if dilation > 1:
            unfolded = unfolded[..., ::dilation]
        flat = unfolded.transpose(-1, -2).flatten(-2)  # [..., n, K * C]
    if flat.dim() == 2 and bias is not None:
        return torch.addmm(bias, flat, matrix)
    y = torch.matmul(flat, matrix)
    return y.add_(bias) if bias is not None else y


def _first_reading(reads: Any, position: int, count: int) -> int:
    """The first of a node's ``count`` values whose window reads its input at ``position`` or
    later (``count`` if none; ``reads`` of ``None``: output ``j`` reads up to input ``j``)."""
    low, high = 0, count
    while low < high:  # (the last sample a value reads grows with the value)
        middle = (low + high) // 2
        last = middle if reads is None else int(reads(middle)[1])
        if last >= position:
            high = middle
        else:
            low = middle + 1
    return low


def minimal_frame(source: GraphStream) -> int:
    """The smallest number of input samples that gives every node of ``source`` a whole number
    of values: the least common multiple of the denominators of the nodes' rates."""
    frame = 1
    for node in source._graph.nodes:
        if node.name in source.handlers and time_axis(node) is not None:
            frame = math.lcm(frame, source._rate_of(node).denominator)
    return frame


def _tail(start: int, stop_from_end: int) -> tuple[Any, ...]:
    """The index ``[..., start:-stop_from_end]`` (``stop_from_end`` 0: to the end)."""
    return (*_LAST, slice(start or None, -stop_from_end if stop_from_end else None))


class _FrameBuilder(_Builder):
    def __init__(
        self,
        source: GraphStream,
        example: Tensor,
        frame: int,
        lookahead: bool = False,
        phase: int = 0,
    ) -> None:
        super().__init__(source, example)
        self.frame = frame
        # the first frame starts `phase` samples before the signal, so that frames end where
        # windows end (a stride-2 window of 1 tap is complete after samples 1, 3, 5...)
        self.phase = phase
        self.input_offset = -phase
        # lookahead: a node may lag its input (negative offset): its first frame positions then
        # hold values from before the signal, which nothing may read (see lagging())
        self.lookahead = lookahead
        self.restore: dict[str, Any] = {}  # env entries that a join replaced by delayed values
        # with lookahead, per node: how many of its first values the frames may get wrong (they
        # read values from before the signal where padding should be); the stream computes
        # those outputs offline from the first samples instead (GraphStream's start entry)
        self.dirty: dict[str, int] = {}
        self.crops_end = False  # the model returns fewer values than the frames compute
        # per recurrent node: the names of its states that the end entry carries on
        self.carried: dict[str, dict[str, str]] = {}

    # -- analysis -------------------------------------------------------------------------

    def per_frame(self, node: fx.Node) -> int:
        """New values of ``node`` per frame (refuses a frame that does not fit its rate)."""
        rate = self.source._rate_of(node)
        count = rate * self.frame
        if count.denominator != 1:
            need = minimal_frame(self.source)
            raise refuse(
                node,
                f"it runs at {rate} of the input rate, so a frame of {self.frame} samples gives "
                f"it {count} values",
                f"use a frame that is a multiple of {need} (frame={need} or frame='auto')",
            )
        return int(count)

    def lateness(self, output: fx.Node) -> Tensor:
        """For each of ``output``'s values in the plan's horizon, the input samples by which
        the frame that computes it ends after the block-by-block stream returns it."""
        arrivals = self.source.timing.arrivals(output.name)
        positions = torch.arange(arrivals.numel()) - self.offset[output.name]
        ends = self.frame * (positions // self.per_frame(output) + 1) - self.phase
        return ends - arrivals

    def held_back(self) -> int:
        """The most input samples by which a frame holds an output back: an output sample that
        the block-by-block stream returns before the frame that completes it ends."""
        held = 0
        for output in self.source._outputs:
            if not self.per_frame(output):
                continue
            late = self.lateness(output)[self.dirty.get(output.name, 0) :]  # the rest: offline
            held = max(held, int(late.max()) if late.numel() else 0)
        return held

    def cover_late_start(self) -> None:
        """With lookahead, the values that the frames would return late only at the start of
        the signal (a frame phase that suits the steady state, where the first outputs come
        sooner) count as ``dirty``: the stream's start entry returns them, in time."""
        timing = self.source.timing
        for output in self.source._outputs:
            count = self.per_frame(output)
            if not count:
                continue
            late = (self.lateness(output) > 0).nonzero()
            if late.numel() == 0:
                continue
            last = int(late[-1]) + 1
            steady = 2 * max(count, int(timing.rates[output.name] * timing.period))
            if last + steady <= self.lateness(output).numel():  # none late in steady state
                self.dirty[output.name] = max(self.dirty.get(output.name, 0), last)

    def speculates(self) -> bool:
        """Whether a frame returns an output that differs if the signal ends with that frame.

        For a signal that ends with a frame, the values of a node past its length there exist
        only if the signal goes on (the gaps of a transposed convolution whose kernel is
        shorter than its stride, what a crop at the end removes). An output the model has at
        that length but whose window reads such a value (through the plan's ``reads``) reads
        padding when the signal ends there: the stream then returns the outputs only as the
        plan completes them (``crops_end``)."""
        timing, outputs = self.source.timing, {o.name for o in self.source._outputs}
        nodes = {n.name: n for n in self.source._graph.nodes}
        for frames in (4, 5, 6):
            samples = frames * self.frame - self.phase
            # per node: its first value past its length, or that reads one that is
            wrong_from: dict[str, int] = {self.source._input.name: samples}
            for name in timing.nodes:
                node = nodes[name]
                reached = min((wrong_from[i] for i in timing.inputs[name]), default=samples)
                reads = timing.rules[name].reads
                if name not in self.offset or time_axis(node) is None:  # (a leaf's list)
                    bound = int(timing.rates[name] * (samples + self.frame)) + 1
                    wrong_from[name] = _first_reading(reads, reached, bound)
                    continue
                computed = frames * self.per_frame(node) + self.offset[name]
                length = int(time_length(node).subs(self.symbol, samples))
                wrong = _first_reading(reads, reached, computed)
                if name in outputs and wrong < min(computed, length):
                    return True
                wrong_from[name] = min(wrong, length)
        return False

    def drops_partial_frames(self) -> bool:
        """Whether the offline model returns nothing for the samples after the last whole frame
        (so that a stream may drop them when the signal ends)."""
        for output in self.source._outputs:
            count, offset = self.per_frame(output), self.offset[output.name]
            length = time_length(output)
            for samples in range(5 * self.frame, 6 * self.frame):
                frames = (samples + self.phase) // self.frame
                if int(length.subs(self.symbol, samples)) != frames * count + offset:
                    return False
        return True

    # -- the walk -------------------------------------------------------------------------

    def build(self) -> StepGraph:
        source = self.source
        self.walk(self.frame_node)
        outputs, axes = [], []
        for output in source._outputs:
            offset, count = self.offset[output.name], self.per_frame(output)
            if offset > 0 and self.lookahead:  # the frames start after those values
                self.dirty[output.name] = max(offset, self.dirty.get(output.name, 0))
            elif offset > 0:
                raise refuse(
                    output,
                    f"the model returns {offset} samples from before the signal starts (left "
                    "padding that reaches the output)",
                    "crop them in the model, or " + _STREAM_REMEDY,
                )
            if offset < 0 and not self.lookahead:
                raise refuse(
                    output,
                    f"the model's output at time t depends on inputs up to t + {-offset} "
                    f"({_lookahead(-offset)}: a crop at the start)",
                    _STREAM_REMEDY,
                )
            length = int(time_length(output).subs(self.symbol, 4 * self.frame - self.phase))
            if self.lookahead and length < 4 * count + offset:
                self.crops_end = True  # (the stream returns those values once more comes)
            if length != 4 * count + offset and not self.lookahead:
                raise refuse(
                    output,
                    f"for 4 frames of {self.frame} samples the model returns {length} samples, "
                    f"{length - 4 * count - offset} more than {count} per frame: samples that "
                    "the end of "
                    "the signal adds (right padding, a transposed convolution's overlap, a "
                    "window centred on its output), which a frame never computes",
                    _STREAM_REMEDY,
                )
            outputs.append(self.env[output.name])
            axis = time_axis(output)
            assert axis is not None
            axes.append(axis)
        self.graph.output((*outputs, *self.new_states()))
        for unused in reversed(list(self.graph.nodes)):  # transposes that swap() made redundant
            if unused.op == "call_method" and unused.target == "transpose" and not unused.users:
                self.graph.erase_node(unused)
        shape = list(self.values[source._input.name].shape)  # the example's, batch included
        shape[source._axis] = self.frame
        if self.lookahead:
            self.cover_late_start()
            if self.speculates():
                self.crops_end = True  # (the stream returns those values once more comes)
        return StepGraph(
            self.graph, self.root, self.states, len(outputs), axes, shape,
            frame=self.frame, held_back=self.held_back(),
            drops_partial_frames=self.drops_partial_frames(),
            skips=[max(0, -self.offset[o.name]) for o in source._outputs],
            leads=[max(0, self.offset[o.name]) for o in source._outputs], phase=self.phase,
            dirty=[self.dirty.get(o.name, 0) for o in source._outputs], carried=self.carried,
            crops_end=self.crops_end,
        )  # fmt: skip

    def frame_node(self, node: fx.Node) -> None:
        try:
            self.frame_op(node)
            if node.name not in self.dirty:  # an op on aligned values: as dirty as its inputs
                inputs = [n for n in node.all_input_nodes if n.name in self.offset]
                self.dirty[node.name] = max((self.dirty.get(n.name, 0) for n in inputs), default=0)
        finally:  # the delayed values of a join were for this node only
            self.env.update(self.restore)
            self.restore.clear()

    def joined_offset(self, node: fx.Node) -> tuple[int, list[fx.Node]]:
        """With lookahead, inputs that are ahead of the others are delayed to line up (a join
        of a lagging branch with its skip connection); otherwise as for one-sample steps."""
        timed = [n for n in node.all_input_nodes if n.name in self.offset]
        offsets = {self.offset[n.name] for n in timed}
        if not self.lookahead or len(offsets) < 2:
            return super().joined_offset(node)
        target = min(offsets)
        for source in timed:
            shift = self.offset[source.name] - target
            if shift and source.name not in self.restore:
                self.restore[source.name] = self.env[source.name]
                self.env[source.name] = self.delayed(node, source, shift)
        self.offset[node.name] = target
        return target, timed

    def delayed(self, node: fx.Node, source: fx.Node, shift: int) -> fx.Node:
        """The values of ``source`` ``shift`` positions later: a state holds the last ``shift``
        (at first: values from before the signal, zeros where nothing reads them)."""
        axis = time_axis(source)
        assert axis is not None
        full, own = self.values[source.name], self.offset[source.name]
        shape = list(full.shape)
        shape[axis] = max(0, shift - max(own, 0))
        initial = full.new_zeros(shape)
        if own > 0:
            initial = torch.cat([initial, self.prehistory(source, own)], axis)
        initial = initial.narrow(axis, initial.shape[axis] - shift, shift)
        x = self.env[source.name]
        if axis == full.dim() - 1:  # delayed in the layout the values have (see held_delay)
            rows = self.swap(x)
            held = self.state(node, "delay", initial.transpose(-1, -2).contiguous())
            delayed = self.call(held_delay, held, rows)
            self.update(held, self.call(held_tail, held, rows))  # (after `held` is read)
            return self.swap(delayed)
        held = self.state(node, "delay", initial)
        window = self.call(torch.cat, [held, self.env[source.name]], axis)
        before = (slice(None),) * axis
        self.update(held, self.call(operator.getitem, window, (*before, slice(-shift, None))))
        return self.call(operator.getitem, window, (*before, slice(None, -shift)))

    def clean(self, node: fx.Node, source: fx.Node, offset: int, why: str) -> None:
        """Refuse ``node`` if it carries a state from the start of the signal (``why`` says
        how) and its input lags or may be wrong at first (see ``dirty``): the frames would
        carry values from before the signal for ever."""
        if (offset < 0 and not self.lookahead) or self.dirty.get(source.name, 0):
            raise refuse(
                node,
                f"it {why}, but its input lags the signal (a window without left padding before "
                "it) or copies samples into its padding, so its first values are not there "
                "when the frames start",
                _STREAM_REMEDY,
            )

    def pad_dirty(self, node: fx.Node, source: fx.Node, offset: int, left: int) -> None:
        """``left`` values of padding before ``source``: wrong at first where the frames hold
        values from before the signal in their place (a lagging input), shifted otherwise."""
        dirty = self.dirty.get(source.name, 0)
        own = dirty + left if dirty or offset < 0 else 0
        self.dirty[node.name] = max(own, self.dirty.get(node.name, 0))

    def prehistory(self, node: fx.Node, count: int) -> Tensor:
        """With lookahead, values before the signal that depend on the signal (padding that
        copies samples) make the node's first ``count`` values wrong in the frames: the stream
        computes the outputs they reach offline (see ``dirty``)."""
        if not self.lookahead:
            return super().prehistory(node, count)
        axis = time_axis(node)
        assert axis is not None
        count = max(count, 0)  # (a lagging node has no values before the signal)
        first = self.values[node.name].narrow(axis, 0, count)
        second = self.other[node.name].narrow(axis, 0, count)
        if not torch.allclose(first, second, rtol=1e-6, atol=1e-7):
            self.dirty[node.name] = max(count, self.dirty.get(node.name, 0))
        return first

    def frame_op(self, node: fx.Node) -> None:
        handler = self.source.handlers[node.name]
        offset, timed = self.joined_offset(node)
        if time_axis(node) is not None:
            self.per_frame(node)
        source = timed[0]
        if isinstance(handler, ListHandler):
            inner = handler.inner
            module = inner.holder if isinstance(inner, ModuleStreamHandler) else None
            if not isinstance(module, (nn.MaxPool1d, nn.AvgPool1d)):
                raise refuse(
                    node, "step models do not run layers with a registered streamer", _STREAM_REMEDY
                )
            self.module_window(node, module, offset)
            self.env[node.name] = [self.env[node.name]]
        elif isinstance(handler, RecurrentHandler):
            if not (self.lookahead and offset <= 0):  # (else it starts later: FrameRecurrent)
                self.clean(node, source, offset, "carries a state from the start of the signal")
            self.recurrent(node, handler.rnn, offset)
        elif isinstance(handler, ModuleStreamHandler):
            self.module_window(node, handler.holder, offset)
        elif isinstance(handler, Concatenation):  # values before the signal, as padding
            self.prehistory(node, offset + handler.before)
            self.env[node.name] = self.env[source.name]
            self.offset[node.name] = offset + handler.before
            self.pad_dirty(node, source, offset, handler.before)
        elif isinstance(handler, TimeSlice):
            self.env[node.name] = self.env[source.name]
            self.offset[node.name] = offset - handler.start
            self.dirty[node.name] = max(0, self.dirty.get(source.name, 0) - handler.start)
        elif isinstance(handler, RunningSum):
            self.clean(node, source, offset, "sums from the start of the signal")
            self.running_sum(node, source, offset)
        elif isinstance(handler, Reshape):
            sizes = self.values[node.name].shape  # (the builder's example: its batch size)
            shape = [-1 if i == handler.axis else int(size) for i, size in enumerate(sizes)]
            self.env[node.name] = self.method("reshape", self.env[source.name], shape)
        elif isinstance(handler, Interleave):  # each value gives `factor` whole values
            self.env[node.name] = self.call(handler.step, [self.env[source.name]], False)
            self.offset[node.name] = offset * handler.factor
            self.dirty[node.name] = self.dirty.get(source.name, 0) * handler.factor
        elif isinstance(handler, NearestUpsample):
            self.env[node.name] = self.call(
                torch.repeat_interleave, self.env[source.name], handler.factor, dim=handler.axis
            )
            self.offset[node.name] = offset * handler.factor
            self.dirty[node.name] = self.dirty.get(source.name, 0) * handler.factor
        elif isinstance(handler, LinearUpsample):
            self.linear_upsample(node, source, handler.factor, offset)
        elif isinstance(handler, Aligned):
            self.per_step(node)
        else:
            raise refuse(node, "frame step models do not run this op", _STREAM_REMEDY)

    def swap(self, value: fx.Node) -> fx.Node:
        """``value.transpose(-1, -2)``, or the value that ``value`` is that transpose of."""
        if value.op == "call_method" and value.target == "transpose" and value.args[1:] == (-1, -2):
            source = value.args[0]
            assert isinstance(source, fx.Node)
            return source
        return self.method("transpose", value, -1, -2)

    def per_step(self, node: fx.Node) -> None:
        """The op as it is: on a frame, it means what it means offline."""
        if node.target is operator.getitem:
            held: Any = node.args[0]
            container = self.env[held.name]
            if isinstance(container, list):  # a leaf's outputs
                self.env[node.name] = container[node.args[1]]  # type: ignore[index]
                return
        if any(n.name in self.source._symbolic for n in node.all_input_nodes):
            raise refuse(
                node,
                "its arguments depend on the length of the signal",
                _STREAM_REMEDY,
            )
        target: Any = node.target
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        self.env[node.name] = self.call(_FAST.get(target, target), *args, **kwargs)

    # -- stateful ops ---------------------------------------------------------------------

    def running_sum(self, node: fx.Node, source: fx.Node, offset: int) -> None:
        axis = time_axis(node)
        assert axis is not None
        value = self.values[node.name]
        if offset > 0:
            self.prehistory(source, offset)
            initial = value.narrow(axis, offset - 1, 1)
        else:
            initial = torch.zeros_like(value.narrow(axis, 0, 1))
        carry = self.state(node, "sum", initial)
        carry_name = self.states[-1].name
        x = self.env[source.name]
        if offset < 0:  # a lagging input: its first values are from before the signal
            skip = self.state(node, "skip", torch.tensor(-offset))
            counted = self.call(lagging_values, x, skip, axis)
            x = self.call(operator.getitem, counted, 0)
            self.update(skip, self.call(operator.getitem, counted, 1))
        total = self.call(torch.add, self.call(torch.cumsum, x, axis), carry)
        last = self.method("select", total, axis, -1)
        self.update(carry, self.method("unsqueeze", last, axis))
        self.env[node.name] = total
        if self.lookahead:  # the end entry sums on from `carry` (FrameEngine._carrying)
            consumed = self.state(node, "consumed", torch.tensor(offset))  # the next value's
            self.update(consumed, self.call(torch.add, consumed, self.call(_length, x, axis)))
            self.carried[node.name] = {"sum": carry_name, "consumed": self.states[-1].name}

    def recurrent(self, node: fx.Node, rnn: nn.RNNBase, offset: int) -> None:
        """The layer itself on the frame, from the hidden state that the last frame left."""
        source = node.args[0]
        assert isinstance(source, fx.Node)
        h_state, c_state = self.recurrent_state(node, rnn, offset)
        lstm = c_state is not None
        name = f"recurrent_{len(self.states):02d}"
        layer = copy.deepcopy(rnn)  # weights copied, as for constants
        hidden_in = (h_state, c_state) if lstm else h_state
        if self.lookahead and offset <= 0:  # see FrameRecurrent
            names = {"hidden": self.states[-2 if lstm else -1].name}
            names["cell"] = self.states[-1].name if lstm else ""
            keep = self.carried_values(node)
            x = self.values[source.name]
            axis = (1 if rnn.batch_first else 0) if x.dim() == 3 else 0
            output = self.values[node.name][0]
            shape = list(output.shape)
            shape[axis] = keep
            # it also skips the values that the frames get wrong at first (`dirty`): the
            # stream seeds its state from the model run offline on the first samples
            dirty = self.dirty.get(source.name, 0)
            names["dirty"] = str(dirty)
            states = [
                self.state(node, "skip", torch.tensor(-offset + dirty)),
                self.state(node, "consumed", torch.tensor(0)),
                self.state(node, "last", output.new_zeros(shape)),
            ]
            names.update(zip(("skip", "consumed", "last"), (s.name for s in self.states[-3:])))
            self.carried[node.name] = names
            self.root.add_module(name, FrameRecurrent(layer, keep))
            result = self.graph.call_module(name, (self.env[source.name], hidden_in, *states))
            for index, state in enumerate(states):
                self.update(state, self.call(operator.getitem, result, 2 + index))
        else:
            self.root.add_module(name, layer)
            result = self.graph.call_module(name, (self.env[source.name], hidden_in))
        hidden_out = self.call(operator.getitem, result, 1)
        if c_state is not None:
            self.update(h_state, self.call(operator.getitem, hidden_out, 0))
            self.update(c_state, self.call(operator.getitem, hidden_out, 1))
        else:
            self.update(h_state, hidden_out)
        self.env[node.name] = [self.call(operator.getitem, result, 0), None, None]

    def carried_values(self, node: fx.Node) -> int:
        """How many of a recurrent layer's last outputs the stream's end entry may need (0
        where no end entry can carry the layer's state: see ``carried_history``)."""
        history = carried_history(self.source, self.frame)
        if history is None:
            return 0
        return math.ceil(history * self.source._rate_of(node)) + 2

    def module_window(self, node: fx.Node, module: nn.Module, offset: int) -> None:
        source = node.args[0]
        assert isinstance(source, fx.Node)
        if self.padded(node, module, source, offset):
            self.pad_dirty(node, source, offset, int(module.padding[0]))  # type: ignore[index]
            return
        if isinstance(module, (nn.AvgPool1d, nn.MaxPool1d)):
            self.pool(node, source, module, offset)
            return
        weight: Any = node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        w = self.values[weight.name]
        b = self.values[bias.name] if isinstance(bias, fx.Node) else None
        if isinstance(module, nn.ConvTranspose1d):
            self.transposed(node, source, module, offset, w, b)
            return
        assert isinstance(module, nn.Conv1d)
        kernel, dilation = int(module.kernel_size[0]), int(module.dilation[0])
        stride = int(module.stride[0])
        if isinstance(module.padding, str):
            span = dilation * (kernel - 1) + 1
            pad = 0 if module.padding == "valid" else (span - 1) // 2
        else:
            pad = int(module.padding[0])
        groups = module.groups
        self.frame_window(node, source, kernel, stride, dilation, pad, offset, "conv", w, b, groups)

    def pool(
        self, node: fx.Node, source: fx.Node, module: Union[nn.AvgPool1d, nn.MaxPool1d], offset: int
    ) -> None:
        """A pool. With lookahead, also one with padding inside or ``ceil_mode``: the frames
        compute its whole windows. The windows that read its left padding are wrong in the
        frames (zeros stand in, where a max pads with -inf and an average that does not count
        padding divides by fewer), so those outputs are ``dirty`` (the start entry returns
        them); the partial windows that the end of the signal closes (right padding,
        ``ceil_mode``) come from the end entry, as a convolution's right padding does."""
        kind = "avg" if isinstance(module, nn.AvgPool1d) else "max"
        if not self.lookahead:  # (refuses padding and ceil_mode)
            kernel, stride, dilation = self.pool_geometry(node, module)
            self.frame_window(node, source, kernel, stride, dilation, 0, offset, kind)
            return
        kernel, stride, pad, dilation = pool_geometry(module)
        self.frame_window(node, source, kernel, stride, dilation, pad, offset, kind)
        zeros_pad = kind == "avg" and bool(getattr(module, "count_include_pad", True))
        if pad and not zeros_pad:
            dirty = self.dirty.get(source.name, 0)
            self.dirty[node.name] = max(self.dirty.get(node.name, 0), -(-(dirty + pad) // stride))

    def linear_upsample(self, node: fx.Node, source: fx.Node, factor: int, offset: int) -> None:
        """Linear upsampling over time (``align_corners=False``): input ``i`` completes the
        ``factor`` outputs between inputs ``i - 1`` and ``i``, so the values lag by
        ``factor - factor // 2``; the last outputs, which the end of the signal clamps to its
        last input, come from the end entry."""
        held = self.state(node, "window", self.held_initial(source, offset, 2))
        first = self.state(node, "first", torch.tensor(offset))  # the input value at position 0
        result = self.call(interpolated, held, self.env[source.name], first, factor)
        self.env[node.name] = self.call(operator.getitem, result, 0)
        self.update(held, self.call(operator.getitem, result, 1))
        self.update(first, self.call(operator.getitem, result, 2))
        self.offset[node.name] = offset * factor - (factor - factor // 2)
        dirty = self.dirty.get(source.name, 0)  # outputs that read a wrong input
        self.dirty[node.name] = factor * dirty + factor // 2 if dirty else 0

    def zero_lagging(self, node: fx.Node, x: fx.Node, offset: int) -> fx.Node:
        """``x`` (the input of ``node``, ``-offset`` of whose first values come from before the
        signal) with those values set to zero as the frames reach them."""
        skip = self.state(node, "lag", torch.tensor(-offset))
        zeroed = self.call(lagging_values, x, skip, -1)
        self.update(skip, self.call(operator.getitem, zeroed, 1))
        return self.call(operator.getitem, zeroed, 0)

    def held_window(
        self, node: fx.Node, source: fx.Node, offset: int, keep: int, x: Optional[fx.Node] = None
    ) -> fx.Node:
        """``[state, frame]`` along the last axis, where the state holds the ``keep`` inputs
        before the frame (at first: zeros for padding, then the input's values before the
        signal) and is written back from the window's tail."""
        held = self.state(node, "window", self.held_initial(source, offset, keep))
        x = self.env[source.name] if x is None else x
        window = self.call(torch.cat, [held, x], -1)
        self.update(held, self.call(operator.getitem, window, _tail(-keep, 0)))
        return window

    def held_initial(self, source: fx.Node, offset: int, keep: int) -> Tensor:
        """The ``keep`` inputs before the signal's first frame (last axis): the input's values
        before the signal (``offset`` of them), zeros before those."""
        full = self.values[source.name]
        before = self.prehistory(source, offset) if offset > 0 else None
        zeros = full.new_zeros([*full.shape[:-1], max(0, keep - max(offset, 0))])
        initial = zeros if before is None else torch.cat([zeros, before], -1)
        return initial[..., initial.shape[-1] - keep :]

    def held_rows(
        self, node: fx.Node, source: fx.Node, offset: int, keep: int, rows: fx.Node
    ) -> fx.Node:
        """``[state, frame]`` along time, time-major (``[..., keep + n, C]``): the state holds
        the ``keep`` inputs before the frame, as in :meth:`held_window`."""
        initial = self.held_initial(source, offset, keep).transpose(-1, -2).contiguous()
        held = self.state(node, "window", initial)
        window = self.call(torch.cat, [held, rows], -2)
        self.update(held, self.call(operator.getitem, window, (Ellipsis, slice(-keep, None), _ALL)))
        return window

    def frame_window(
        self,
        node: fx.Node,
        source: fx.Node,
        kernel: int,
        stride: int,
        dilation: int,
        pad: int,
        offset: int,
        kind: str,
        weight: Optional[Tensor] = None,
        bias: Optional[Tensor] = None,
        groups: int = 1,
    ) -> None:
        """A window op over the last axis: conv (``weight [O, C/groups, K]``), ``avg``, ``max``.

        Output ``j`` reads input ``j * stride - pad + m * dilation``. With ``offset`` input
        values before the signal, the first output of a frame is the earliest whose window ends
        by the frame's end; the window's start then lies ``keep`` samples before the frame.
        """
        span = dilation * (kernel - 1) + 1
        dirty = self.dirty.get(source.name, 0)
        x = self.env[source.name]
        zeros_before = source.name == self.source._input.name  # (a phase's zeros: padding)
        if offset < 0 and pad and not zeros_before and not dirty and kind == "conv":
            # a lagging input's values from before the signal, zeroed, are the zero padding
            x = self.zero_lagging(node, x, offset)
            zeros_before = True
        if dirty or (offset < 0 and pad and not zeros_before):  # reads wrong values
            self.dirty[node.name] = max(0, -(-(dirty + pad) // stride))
        available = offset + pad
        out_offset = (available + stride - span) // stride
        if out_offset < 0 and not self.lookahead:
            ahead = span - stride - available
            raise refuse(
                node,
                f"its output at time t depends on inputs up to t + {ahead} ({_lookahead(ahead)}"
                ": a window without left padding, a centred window or a crop)",
                "pad causally on the left, e.g. with torchstreamer.PaddedConv1d, or "
                + _STREAM_REMEDY,
            )
        self.offset[node.name] = out_offset
        keep = available - out_offset * stride  # inputs before the frame that the frame reads
        extra = (keep - span) // stride + 1  # outputs past the frame's last one
        if kind == "conv" and groups == 1:
            assert weight is not None
            rows = self.swap(x)  # time-major: [..., n, C]
            taps = self.constant(weight.permute(2, 1, 0).contiguous())  # [K, C, O]
            offsets = self.constant(bias) if bias is not None else None
            if keep > 0:  # the window is [state, frame]: not joined for long frames
                initial = self.held_initial(source, offset, keep).transpose(-1, -2).contiguous()
                held = self.state(node, "window", initial)
                y = self.call(held_product, held, rows, taps, offsets, stride, dilation)
                self.update(held, self.call(held_tail, held, rows))  # (after `held` is read)
            elif keep == 0 and dilation == 1 and kernel == stride:  # taps side by side
                y = self.side_by_side(source, rows, weight, bias)
            else:
                if keep < 0:
                    rows = self.call(operator.getitem, rows, (Ellipsis, slice(-keep, None), _ALL))
                y = self.call(window_product, rows, taps, offsets, stride, dilation)
            if extra > 0:
                y = self.call(operator.getitem, y, (Ellipsis, slice(None, -extra), _ALL))
            self.env[node.name] = self.swap(y)
            return
        if keep > 0:
            window = self.held_window(node, source, offset, keep, x)
        elif keep < 0:
            window = self.call(operator.getitem, x, _tail(-keep, 0))
        else:
            window = x
        if kind == "conv":
            assert weight is not None
            b = self.constant(bias) if bias is not None else None
            w = self.constant(weight)
            y = self.call(F.conv1d, window, w, b, stride, 0, dilation, groups)
        elif kind == "avg":  # the offline kernel on whole windows (padding: held values)
            y = self.call(F.avg_pool1d, window, kernel, stride)
        else:
            y = self.call(F.max_pool1d, window, kernel, stride, 0, dilation)
        if extra > 0:
            y = self.call(operator.getitem, y, _tail(0, extra))
        self.env[node.name] = y

    def side_by_side(
        self, source: fx.Node, rows: fx.Node, weight: Tensor, bias: Optional[Tensor]
    ) -> fx.Node:
        """A convolution whose stride is its kernel (no dilation, nothing held) on time-major
        ``rows``: each output reads the next ``K`` rows, which side by side are one row of
        ``K * C`` values, so it is one matrix product inline (what :func:`window_product` does,
        without its per-call Python)."""
        out_channels, channels, kernel = weight.shape
        matrix = self.constant(weight.permute(2, 1, 0).reshape(kernel * channels, out_channels))
        lead = [int(size) for size in self.values[source.name].shape[:-2]]
        if math.prod(lead) == 1:  # one row of the batch: a plain matrix product (addmm)
            flat = self.method("reshape", rows, [-1, kernel * channels])
            y = self.product(flat, matrix, bias, [])
        else:
            flat = self.method("reshape", rows, [*lead, -1, kernel * channels])
            y = self.product(flat, matrix, bias, lead)
        return self.method("reshape", y, [*lead, -1, out_channels])

    def product(
        self, rows: fx.Node, matrix: fx.Node, bias: Optional[Tensor], lead: list[int]
    ) -> fx.Node:
        """``rows @ matrix + bias`` (``addmm`` when there is no batch dim)."""
        offsets = self.constant(bias[None, :]) if bias is not None else None
        if not lead:
            if offsets is not None:
                return self.call(torch.addmm, offsets, rows, matrix)
            return self.call(torch.mm, rows, matrix)
        y = self.call(torch.matmul, rows, matrix)
        return self.call(torch.add, y, offsets) if offsets is not None else y

    def transposed(
        self,
        node: fx.Node,
        source: fx.Node,
        module: nn.ConvTranspose1d,
        offset: int,
        weight: Tensor,
        bias: Optional[Tensor],
    ) -> None:
        """A transposed convolution: input ``i`` adds ``weight[..., m]`` to output
        ``i * stride + m * dilation - padding``. A frame's first output is the one at its first
        input, and the ``keep`` inputs before the frame still reach the frame's outputs."""
        stride, kernel = int(module.stride[0]), int(module.kernel_size[0])
        dilation, pad = int(module.dilation[0]), int(module.padding[0])
        span = dilation * (kernel - 1) + 1
        dirty = self.dirty.get(source.name, 0)
        x = self.env[source.name]
        if offset < 0 and span > stride and not dirty:
            # a lagging input's values from before the signal reach outputs of the signal:
            # zeroed, they add nothing, as inputs that do not exist add nothing offline
            x = self.zero_lagging(node, x, offset)
        elif dirty or (offset < 0 and span > stride):  # wrong inputs reach outputs
            self.dirty[node.name] = max(0, (dirty - 1) * stride + span - pad)
        out_offset = stride * offset - pad
        if out_offset < 0 and not self.lookahead:
            raise refuse(
                node,
                f"its padding ({pad}) crops outputs of the signal's first input samples, so "
                "frames do not line up with its output",
                _STREAM_REMEDY,
            )
        self.offset[node.name] = out_offset
        keep = (span - 1) // stride
        groups = module.groups
        if dilation == 1 and kernel == stride and groups == 1:  # no overlap, no state
            # time-major: input i gives rows i * K + m, column o; columns ordered (m, o)
            channels, out_channels = weight.shape[0], weight.shape[1]
            matrix = weight.permute(0, 2, 1).reshape(channels, kernel * out_channels)
            full_bias = bias.repeat(kernel) if bias is not None else None
            lead = [int(size) for size in self.values[source.name].shape[:-2]]
            rows = self.swap(x)  # [..., n, C]
            product_lead = lead
            if math.prod(lead) == 1:  # one row of the batch: a plain matrix product (addmm)
                rows, product_lead = self.method("reshape", rows, [-1, channels]), []
            y = self.product(rows, self.constant(matrix), full_bias, product_lead)  # [.., K * O]
            y = self.method("reshape", y, [*lead, -1, out_channels])  # [..., n * K, O]
            self.env[node.name] = self.swap(y)
            return
        if dilation == 1 and groups == 1 and kernel % stride == 0:  # whole blocks overlap
            channels, out_channels = weight.shape[0], weight.shape[1]
            blocks = kernel // stride  # input i reaches output blocks i .. i + blocks - 1
            # columns ordered (block, tap within the block, output channel)
            matrix = weight.permute(0, 2, 1).reshape(channels, blocks, stride * out_channels)
            rows = self.swap(x)  # [..., n, C]
            if keep > 0:
                rows = self.held_rows(node, source, offset, keep, rows)
            offsets = self.constant(bias) if bias is not None else None
            y = self.call(overlap_product, rows, self.constant(matrix), offsets, out_channels)
            self.env[node.name] = self.swap(y)
            return
        window = self.held_window(node, source, offset, keep, x) if keep > 0 else x
        padding_out = max(0, stride - span)
        b = self.constant(bias) if bias is not None else None
        y = self.call(
            F.conv_transpose1d, window, self.constant(weight), b, stride, 0, padding_out, groups,
            dilation,
        )  # fmt: skip
        extra = span + padding_out - stride  # outputs past the frame's last one
        if keep or extra:
            y = self.call(operator.getitem, y, _tail(keep * stride, extra))
        self.env[node.name] = y


def carried_history(source: GraphStream, frame: int) -> Optional[int]:
    """The input samples an end entry that carries recurrent layers' states keeps: the widest
    receptive field with those layers read step by step, three frames, and a period of the
    model's length arithmetic; ``None`` where that field is unbounded."""
    from torchstreamer.graph.analysis import length_period
    from torchstreamer.plan.timing import carried_timing

    timing = carried_timing(source)
    fields = [timing.receptive_field(output.name) for output in source._outputs]
    if any(field is None for field in fields):
        return None
    period = math.lcm(frame, length_period(source._graph) or 1)
    return max(int(field) for field in fields if field is not None) + 3 * frame + period


def build_frame_graph(
    source: GraphStream, example: Tensor, frame: int, lookahead: bool = False, phase: int = 0
) -> StepGraph:
    """Rewrite the graph of ``source`` to run frames of ``frame`` input samples (module doc).

    With ``lookahead``, outputs may lag the input (windows without left padding): the graph
    then returns values from before the signal first, ``StepGraph.skips`` of each output, which
    the caller drops. With ``phase``, the first frame also takes ``phase`` samples from before
    the signal (the caller feeds them; they only reach values that are dropped)."""
    if phase and not lookahead:
        raise ValueError("a phase lags the input: it needs lookahead=True")
    return _FrameBuilder(source, example, frame, lookahead, phase).build()
