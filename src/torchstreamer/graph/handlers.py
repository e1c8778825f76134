"""Streaming handlers of ATen ops: each takes the blocks of its time inputs and returns a block.

Every time-carrying value in a graph stream is a block: the next samples of that node's output,
in order, starting at index 0 of the offline output (possibly 0 samples long). Ops that act on
each time step alone apply to blocks directly; ops with several time inputs align them by index
(as the offline model does) and keep the samples of the input that runs ahead; window ops reuse
the module streams.
"""

from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import Any, Callable, Optional

import sympy
import torch
from torch import Tensor, fx, nn

from torchstreamer.base import BaseStream, Stateful
from torchstreamer.errors import StreamInputError
from torchstreamer.graph.analysis import (
    expression_period,
    refuse,
    same_lengths,
    time_axis,
    time_length,
)
from torchstreamer.graph.leaves import LEAF_OP
from torchstreamer.plan.rules import (
    PER_STEP,
    TimeRule,
    first_count,
    same_step,
    slowest,
    stream_rule,
    upsampling,
)
from torchstreamer.streams.conv import Conv1dStream, ConvTranspose1dStream
from torchstreamer.streams.padding import Pad1dStream
from torchstreamer.streams.pool import Pool1dStream

__all__ = ["Handler", "build_handler"]

aten = torch.ops.aten

# ops that act on each time step alone whatever their other arguments
_ELEMENTWISE = {
    aten.relu.default, aten.gelu.default, aten.silu.default, aten.tanh.default,
    aten.sigmoid.default, aten.elu.default, aten.leaky_relu.default, aten.hardtanh.default,
    aten.hardswish.default, aten.hardsigmoid.default, aten.mish.default, aten.softplus.default,
    aten.abs.default, aten.neg.default, aten.exp.default, aten.log.default, aten.sin.default,
    aten.cos.default, aten.sqrt.default, aten.rsqrt.default, aten.clamp.default,
    aten.clamp_min.default, aten.clamp_max.default, aten.pow.Tensor_Scalar, aten.prelu.default,
    aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.where.self,
    aten.maximum.default, aten.minimum.default, aten.dropout.default, aten.alias.default,
    aten.clone.default, aten.contiguous.default, aten.detach.default, aten.to.dtype,
    aten.leaky_relu_.default, aten.relu_.default, aten.add.Scalar, aten.mul.Scalar,
    aten.sub.Scalar, aten.div.Scalar, aten.rsub.Scalar, aten.reciprocal.default,
    aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default,
    aten.zeros_like.default, aten.ones_like.default, aten.full_like.default, operator.getitem,
    aten.square.default, aten.log10.default, aten.log2.default, aten.log1p.default,
    aten.expm1.default, aten.sign.default, aten.floor.default, aten.ceil.default,
    aten.round.default, aten.trunc.default, aten.erf.default, aten.tan.default, aten.atan.default,
    aten.sinh.default, aten.cosh.default, aten.asinh.default, aten.selu.default,
    aten.celu.default, aten.logit.default, aten.pow.Tensor_Tensor, aten.pow.Scalar,
    aten.remainder.Scalar, aten.remainder.Tensor, aten.fmod.Scalar, aten.fmod.Tensor,
    aten.atan2.default, aten.hypot.default, aten.hardshrink.default,
    aten.softshrink.default, aten.threshold.default, aten.relu6.default,
    aten.log_sigmoid.default, aten.silu_.default, aten.gelu_.default, aten.tanh_.default,
    aten.sigmoid_.default, aten.hardtanh_.default, aten.elu_.default, aten.type_as.default,
}  # fmt: skip
# ops with a `dim` argument (position 1) that act per time step when it is not time
_OVER_DIM = {
    aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default,
    aten.glu.default, aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default,
    aten.cat.default, aten.stack.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default,
    aten.cumsum.default, aten.transpose.int, aten.permute.default, aten.slice.Tensor,
    aten.select.int,
}  # fmt: skip


_NORMALISE_PER_STEP = (
    "normalise over channels per time step instead (e.g. LayerNorm over channels after a "
    "transpose, or BatchNorm1d in eval mode), or register a streamer for the layer"
)
# ops known to mix every time step: refused with the true reason and what to do
_TIME_MIXING: dict[Any, tuple[str, str]] = {
    aten.group_norm.default: (
        "it normalises over time (a group norm's statistics cover the whole signal)",
        _NORMALISE_PER_STEP,
    ),
    aten.native_group_norm.default: (
        "it normalises over time (a group norm's statistics cover the whole signal)",
        _NORMALISE_PER_STEP,
    ),
    aten.instance_norm.default: (
        "it normalises over time (an instance norm's statistics cover the whole signal)",
        _NORMALISE_PER_STEP,
    ),
    aten.flip.default: ("it reverses time", "keep time in order"),
    aten.adaptive_avg_pool1d.default: (
        "it pools over a window that depends on the length of the whole signal",
        "use avg_pool1d or max_pool1d with a fixed kernel",
    ),
    aten.adaptive_max_pool1d.default: (
        "it pools over a window that depends on the length of the whole signal",
        "use avg_pool1d or max_pool1d with a fixed kernel",
    ),
}


class Handler(Stateful):
    """Streams one node: ``step(args, final)`` with blocks in place of its time inputs.

    State is registered buffers (empty while there is none) and integers, named in
    ``_state_tensors`` and ``_state_ints``, so that the graph stream's ``get_state()`` and
    ``set_state()`` cover it. :meth:`rule` says, for the plan, when ``step`` returns each output
    and what it reads: it is the one description of the op's time behaviour.
    """

    def step(self, args: list[Any], final: bool) -> Any:
        raise NotImplementedError

    def rule(self) -> TimeRule:
        """The node's time rule (by default, one output per input sample, reading that sample)."""
        return PER_STEP

    def reset(self) -> None:
        """Drop the signal in progress."""


def _time_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(
        (node.args, node.kwargs),
        lambda n: (
            found.append(n)
            if time_axis(n) is not None or isinstance(n.meta.get("val"), (list, tuple))
            else None
        ),
    )
    return found


class Aligned(Handler):
    """Applies an op to the time-aligned samples of its inputs (one or several time inputs).

    With one time input the op runs on each block as it comes. With several, each input's
    samples wait in a buffer until every input has them: output ``j`` combines sample ``j`` of
    every input, as the offline op does.
    """

    def __init__(
        self, op: Callable[..., Any], positions: list[tuple[int, ...]], axes: list[int]
    ) -> None:
        super().__init__()
        self.op = op
        self.positions = positions  # where each time input sits in the flattened arguments
        self.axes = axes
        if len(positions) > 1:  # samples of each input that wait for the others
            self._state_tensors = tuple(f"_pending{i}" for i in range(len(positions)))
            for name in self._state_tensors:
                self.register_buffer(name, torch.zeros(0), persistent=False)

    def reset(self) -> None:
        for name in self._state_tensors:
            setattr(self, name, torch.zeros(0))

    def rule(self) -> TimeRule:
        """Output ``j`` combines sample ``j`` of every input: it comes with the slowest one."""
        if len(self.positions) == 1:
            return PER_STEP
        return TimeRule(Fraction(1), slowest, same_step)

    def step(self, args: list[Any], final: bool) -> Any:
        if len(self.positions) == 1:
            return self.op(*args)
        joined = []
        for i, position in enumerate(self.positions):
            block, held = argument_at(args, position), getattr(self, f"_pending{i}")
            joined.append(block if held.dim() == 1 else torch.cat([held, block], self.axes[i]))
        ready = min(b.shape[a] for b, a in zip(joined, self.axes))
        for i, (block, axis) in enumerate(zip(joined, self.axes)):
            setattr(
                self, f"_pending{i}", block.narrow(axis, ready, block.shape[axis] - ready).detach()
            )
            args = _set(args, self.positions[i], block.narrow(axis, 0, ready))
        if final:
            self.reset()
        return self.op(*args)


def argument_at(args: Any, position: tuple[int, ...]) -> Any:
    """The argument at ``position`` (indices into nested lists) of an op's arguments."""
    for index in position:
        args = args[index]
    return args


def _set(args: Any, position: tuple[int, ...], value: Any) -> Any:
    if not position:
        return value
    head, rest = position[0], position[1:]
    items = list(args)
    items[head] = _set(items[head], rest, value)
    return type(args)(items) if isinstance(args, tuple) else items


class TimeSlice(Handler):
    """``x[..., start : length - right]`` on the time axis: skips ``start`` samples and holds the
    last ``right`` back until the signal ends (they exist only if more samples come)."""

    _state_tensors = ("_held",)
    _state_ints = ("_skip",)

    def __init__(
        self, axis: int, start: int, right: int, at_end: Optional[Callable[[int], int]] = None
    ) -> None:
        super().__init__()
        self.axis, self.start, self.right = axis, start, right
        # a crop at the end that depends on the signal's length (a U-Net's skip cropped to the
        # length of the upsampled path): at most `right`; the exact count once the signal ends
        self.at_end = at_end
        self.signal_length = 0  # the model input's length, set by the graph stream at the end
        self._skip = start
        self.register_buffer("_held", torch.zeros(0), persistent=False)

    def reset(self) -> None:
        self._skip, self._held = self.start, torch.zeros(0)

    def rule(self) -> TimeRule:
        start, right = self.start, self.right

        def ready(counts: list[Any]) -> Any:
            kept = counts[0] - start - right
            return kept.clamp(min=0) if isinstance(kept, Tensor) else max(kept, 0)

        return TimeRule(Fraction(1), ready, lambda j: (j + start, j + start))

    def step(self, args: list[Any], final: bool) -> Any:
        block = args[0]
        if self._skip > 0:
            drop = min(self._skip, block.shape[self.axis])
            block = block.narrow(self.axis, drop, block.shape[self.axis] - drop)
            self._skip -= drop
        if self._held.dim() > 1:
            block = torch.cat([self._held, block], self.axis)
        right = self.right
        if final and self.at_end is not None:
            right = self.at_end(self.signal_length)
        keep = min(right, block.shape[self.axis])
        out = block.narrow(self.axis, 0, block.shape[self.axis] - keep)
        self._held = block.narrow(self.axis, block.shape[self.axis] - keep, keep).detach()
        if final:
            self.reset()
        return out


class ModuleStreamHandler(Handler):
    """A window op (convolution, padding, pooling) streamed by its module stream.

    The module is rebuilt from the op's arguments; its weights are set from the graph's current
    parameters on every call, so the stream follows weight updates.
    """

    def __init__(
        self, stream: BaseStream, holder: nn.Module, weights: tuple[int, ...], channels: int
    ) -> None:
        super().__init__()
        self.stream = stream
        self.holder = holder
        self.weights = weights
        self.channels = channels

    def reset(self) -> None:
        self.stream.reset()

    def rule(self) -> TimeRule:
        rule = stream_rule(self.stream)  # without promises: this handler passes none on
        return TimeRule(rule.rate, rule.ready, rule.reads)

    def step(self, args: list[Any], final: bool) -> Any:
        holder = self.holder.__dict__  # plain attributes (see _plain): no nn.Module bookkeeping
        for name, index in zip(("weight", "bias"), self.weights):
            holder[name] = args[index] if index < len(args) else None
        y = self.stream(args[0], final)
        if y is None:
            shape = list(args[0].shape)
            shape[-2], shape[-1] = self.channels, 0
            return args[0].new_zeros(shape)
        return y


def _pad_amounts(node: fx.Node) -> Optional[list[int]]:
    """Every amount a pad computed from the signal's length takes (a periodic, bounded size such
    as EnCodec's extra padding: 0 to stride - 1), or ``None`` if it grows with the length."""
    expression = node.meta["val"].node.expr
    period = expression_period(expression)
    if period is None:
        return None
    amount = _length_function(node)
    far = 1000 * period + 7919
    if amount(far + period) != amount(far):
        return None
    return sorted(
        {max(0, amount(n)) for n in [*range(1, 2 * period + 64), *range(far, far + period)]}
    )


def _length_function(node: fx.Node) -> Callable[[int], int]:
    """The value of a size computed from the signal's length (a symbolic node), as a function
    of the length of the model's input."""
    expression = node.meta["val"].node.expr
    symbols = list(expression.free_symbols)

    def value(length: int) -> int:
        return int(expression.subs(symbols[0], length)) if symbols else int(expression)

    return value


class ResolvedPadding(ModuleStreamHandler):
    """Padding whose length the model computes from the signal's but which is the same for
    every length (EnCodec's extra padding of a stride-1 layer: always 0)."""


class LengthPadding(ModuleStreamHandler):
    """Right padding whose length depends on the whole signal's (``F.pad(x, (0, (-x.shape[-1])
    % 4))``, EnCodec's extra padding, constant or reflect): the samples go through as they come,
    and the padding follows when the signal ends, once its length is known (a reflect or
    replicate stream keeps the last samples for the largest amount)."""

    def __init__(
        self, stream: Pad1dStream, holder: nn.Module, channels: int, amount: Callable[[int], int]
    ) -> None:
        super().__init__(stream, holder, (), channels)
        self.amount = amount
        self.signal_length = 0  # the model input's length, set by the graph stream at the end

    @property
    def pad(self) -> Pad1dStream:
        assert isinstance(self.stream, Pad1dStream)
        return self.stream

    def step(self, args: list[Any], final: bool) -> Any:
        if final:
            amount = max(0, self.amount(self.signal_length))
            room = self.pad._tail_cap - 1  # (samples kept to reflect or replicate)
            if self.pad._mode != "constant" and amount > room:
                raise StreamInputError(
                    f"{self.pad._label} pads {amount} samples on the right for a signal of "
                    f"{self.signal_length} samples, more than the {room} it keeps for that; "
                    "stream a longer signal."
                )
            self.pad._right = amount
        return super().step(args, final)


def _plain(holder: nn.Module) -> nn.Module:
    for name in ("weight", "bias"):
        if name in holder._parameters:
            del holder._parameters[name]
            setattr(holder, name, None)
    return holder


def _ints(value: Any, default: int) -> int:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return default
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _window_handler(node: fx.Node, axis: int) -> Optional[Handler]:
    target = node.target
    args: list[Any] = [*node.args, *([None] * 10)]
    if not isinstance(node.args[0], fx.Node):
        return None
    rank = node.args[0].meta["val"].dim()
    if target in (
        aten.conv1d.default,
        aten.conv1d.padding,
        aten.convolution.default,
        aten.conv_transpose1d.default,
    ):
        if axis != rank - 1:
            raise refuse(node, "the convolution's time axis is not the last one")
        weight = args[1].meta["val"]
        transposed = target is aten.conv_transpose1d.default or (
            target is aten.convolution.default and bool(args[6])
        )
        if target is aten.convolution.default:
            stride, padding, dilation, output_padding, groups = (
                args[3],
                args[4],
                args[5],
                args[7],
                args[8],
            )
        elif transposed:
            stride, padding, output_padding, groups, dilation = (
                args[3],
                args[4],
                args[5],
                args[6],
                args[7],
            )
        else:
            stride, padding, dilation, groups, output_padding = (
                args[3],
                args[4],
                args[5],
                args[6],
                None,
            )
        groups = int(groups) if groups is not None else 1
        kernel = int(weight.shape[-1])
        bias = args[2] is not None
        if transposed:
            holder: nn.Module = nn.ConvTranspose1d(
                int(weight.shape[0]), int(weight.shape[1]) * groups, kernel, _ints(stride, 1),
                _ints(padding, 0), _ints(output_padding, 0), groups, bias, _ints(dilation, 1),
            )  # fmt: skip
            stream: BaseStream = ConvTranspose1dStream(_plain(holder), "model")  # type: ignore[arg-type]
            channels = int(weight.shape[1]) * groups
        else:
            pad = padding if isinstance(padding, str) else _ints(padding, 0)
            holder = nn.Conv1d(
                int(weight.shape[1]) * groups, int(weight.shape[0]), kernel, _ints(stride, 1), pad,
                _ints(dilation, 1), groups, bias,
            )  # fmt: skip
            stream = Conv1dStream(_plain(holder), "model")  # type: ignore[arg-type]
            channels = int(weight.shape[0])
        return ModuleStreamHandler(stream, holder, (1, 2), channels)
    if target in (aten.pad.default, aten.constant_pad_nd.default):
        raw = list(args[1])
        if any(isinstance(p, fx.Node) for p in raw[:1] + raw[2:]):
            raise refuse(
                node,
                "its left padding depends on the length of the whole signal, which is unknown "
                "until the signal ends",
                "compute the padding that depends on the length on the right",
            )
        tail = raw[1] if len(raw) > 1 and isinstance(raw[1], fx.Node) else None
        pads = [0 if isinstance(p, fx.Node) else int(p) for p in raw]
        mode = args[2] if target is aten.pad.default and args[2] is not None else "constant"
        amounts = _pad_amounts(tail) if tail is not None else None
        if amounts is not None and len(set(amounts)) == 1:  # (EnCodec's stride-1 layers: 0)
            tail, pads[1] = None, amounts[0]
        if tail is not None and mode != "constant":  # a bounded amount: kept room for it
            if amounts is None:
                raise refuse(
                    node,
                    f"its right {mode} padding has a length that depends on the whole signal "
                    "and is not bounded",
                    "pad with a constant, or by a fixed amount",
                )
            pads[1] = max(amounts)
        sides = (pads[0], pads[1])
        value = args[3] if target is aten.pad.default else args[2]
        if axis != rank - 1 or any(pads[2:]):
            raise refuse(node, "it pads axes other than time", "pad only the last (time) axis")
        if mode not in ("constant", "reflect", "replicate"):
            raise refuse(
                node,
                f"{mode} padding wraps the end of the signal to its start",
                "use reflect, replicate or constant padding",
            )
        pad_module: nn.Module
        if mode == "constant":
            pad_module = nn.ConstantPad1d(sides, float(value or 0.0))
        elif mode == "reflect":
            pad_module = nn.ReflectionPad1d(sides)
        else:
            pad_module = nn.ReplicationPad1d(sides)
        channels = int(node.meta["val"].shape[-2])
        if tail is not None:
            return LengthPadding(
                Pad1dStream(pad_module, "model"), pad_module, channels, _length_function(tail)
            )
        handler = ResolvedPadding if amounts is not None else ModuleStreamHandler
        return handler(Pad1dStream(pad_module, "model"), pad_module, (), channels)
    if target is aten.avg_pool1d.default:
        if axis != rank - 1:
            raise refuse(node, "the pool's time axis is not the last one")
        kernel = _ints(args[1], 1)
        pool = nn.AvgPool1d(
            kernel,
            _ints(args[2], kernel),
            _ints(args[3], 0),
            bool(args[4] or False),
            True if args[5] is None else bool(args[5]),
        )
        channels = int(node.meta["val"].shape[-2])
        return ModuleStreamHandler(Pool1dStream(pool, "model"), pool, (), channels)
    return None


def _flat_positions(node: fx.Node) -> tuple[list[tuple[int, ...]], list[int]]:
    positions: list[tuple[int, ...]] = []
    axes: list[int] = []
    for i, arg in enumerate(node.args):
        items = [(i,)] if not isinstance(arg, (list, tuple)) else [(i, j) for j in range(len(arg))]
        for position in items:
            value = arg if len(position) == 1 else arg[position[1]]  # type: ignore[index]
            if isinstance(value, fx.Node):
                axis = time_axis(value)
                if axis is not None:
                    positions.append(position)
                    axes.append(axis)
                elif isinstance(value.meta.get("val"), (list, tuple)):
                    positions.append(position)
                    axes.append(-1)
    return positions, axes


def _check_dim_argument(node: fx.Node, axis_in: int) -> None:
    """Ops over a ``dim``: refuse when that dim is time."""
    target = node.target
    a: list[Any] = list(node.args)
    first = a[0][0] if isinstance(a[0], (list, tuple)) else a[0]
    value = first.meta["val"]
    rank = value.dim() if isinstance(value, Tensor) else 0
    if target in (aten.cat.default, aten.stack.default):
        rank = a[0][0].meta["val"].dim()
        dims = [a[1] if len(a) > 1 else 0]
        if target is aten.stack.default:
            rank += 1
    elif target in (aten.permute.default, aten.transpose.int, aten.unsqueeze.default):
        return  # they move the time axis (time_axis follows it) but keep every step apart
    elif target is aten.slice.Tensor:
        dims = [a[1] if len(a) > 1 else 0]
    elif target in (aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default):
        dims = list(a[1]) if len(a) > 1 and a[1] is not None else list(range(rank))
    elif target in (aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default):
        dims = [a[2] if len(a) > 2 else 0]
    else:
        dims = [a[1] if len(a) > 1 else -1]
    for dim in dims:
        if int(dim) % rank == axis_in:
            raise refuse(
                node, "it acts along the time axis, so its outputs depend on the whole signal"
            )


class RecurrentHandler(Handler):
    """An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` leaf: runs each block from the hidden state that the
    previous block left, which is exactly how the layer runs over the whole signal."""

    _state_tensors = ("_h", "_c")

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn
        self.axis = 1 if rnn.batch_first else 0
        self.register_buffer("_h", torch.zeros(0), persistent=False)
        self.register_buffer("_c", torch.zeros(0), persistent=False)

    def reset(self) -> None:
        self._h, self._c = torch.zeros(0), torch.zeros(0)

    def rule(self) -> TimeRule:
        return TimeRule(Fraction(1), first_count, None)  # the hidden state remembers it all

    def step(self, args: list[Any], final: bool) -> Any:
        block = args[0]
        if block.shape[self.axis] == 0:
            proj = getattr(self.rnn, "proj_size", 0)
            width = proj if proj else self.rnn.hidden_size
            out = block.new_zeros([*block.shape[:-1], width])
        else:
            hidden: Any = None
            if self._h.dim() > 1:
                hidden = (self._h, self._c) if isinstance(self.rnn, nn.LSTM) else self._h
            out, hidden = self.rnn(block, hidden)
            if isinstance(hidden, tuple):
                self._h, self._c = hidden[0].detach(), hidden[1].detach()
            else:
                self._h = hidden.detach()
        if final:
            self.reset()
        return [out, None, None]  # the final hidden states are refused when used


class ListHandler(Handler):
    """Wraps a handler whose op returns one tensor into the list a leaf returns."""

    def __init__(self, inner: Handler) -> None:
        super().__init__()
        self.inner = inner

    def reset(self) -> None:
        self.inner.reset()

    def rule(self) -> TimeRule:
        return self.inner.rule()

    def step(self, args: list[Any], final: bool) -> Any:
        return [self.inner.step(args[:1], final)]


def _leaf_handler(node: fx.Node, leaves: dict[str, nn.Module]) -> Handler:
    module = leaves[str(node.args[1])]
    for user in node.users:
        used = user.target is operator.getitem and user.args[1] != 0 and len(user.users) > 0
        if used or user.target is not operator.getitem:
            raise refuse(
                node, "the model uses the final hidden state, which exists only once the signal "
                "ends", "use the per-step output (the layer's first result) only",
            )  # fmt: skip
    if isinstance(module, nn.RNNBase):
        return RecurrentHandler(module)
    channels = int(node.meta["val"][0].shape[-2])
    if isinstance(module, (nn.MaxPool1d, nn.AvgPool1d)):
        stream: BaseStream = Pool1dStream(module, "model")
    else:  # a module with a registered streamer
        from torchstreamer.streams.registry import create_stream

        stream = create_stream(module, path=str(node.args[1]))
    return ListHandler(ModuleStreamHandler(stream, module, (), channels))


class RunningSum(Handler):
    """``cumsum`` over time: each block's running sum starts from the last sum of the previous."""

    _state_tensors = ("_carry",)

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("_carry", torch.zeros(0), persistent=False)

    def reset(self) -> None:
        self._carry = torch.zeros(0)

    def rule(self) -> TimeRule:
        return TimeRule(Fraction(1), first_count, None)  # each sum covers every earlier sample

    def step(self, args: list[Any], final: bool) -> Any:
        out = torch.cumsum(args[0], self.axis)
        if self._carry.dim() > 1:
            out = out + self._carry
        if out.shape[self.axis] > 0:
            self._carry = out.narrow(self.axis, out.shape[self.axis] - 1, 1).detach()
        if final:
            self.reset()
        return out


class NearestUpsample(Handler):
    """Nearest-neighbour upsampling over time by an integer factor: each sample repeated."""

    def __init__(self, factor: int, axis: int) -> None:
        super().__init__()
        self.factor, self.axis = factor, axis

    def rule(self) -> TimeRule:
        return upsampling(self.factor)

    def step(self, args: list[Any], final: bool) -> Any:
        return torch.repeat_interleave(args[0], self.factor, dim=self.axis)


class Reshape(Handler):
    """``reshape``/``view`` that splits or merges dims other than time (the batch dim too, as
    asteroid's decoder turns ``[1, 2, 8, T]`` into ``[2, 8, T]``): applied to each block with the
    block's own time length, and with a first dim that takes what the block's batch size
    gives."""

    def __init__(self, shape: list[int], axis: int, axis_in: int) -> None:
        super().__init__()
        self.shape, self.axis, self.axis_in = shape, axis, axis_in
        self._rest = math.prod(size for i, size in enumerate(shape) if i not in (0, axis))

    def step(self, args: list[Any], final: bool) -> Any:
        block = args[0]
        shape = list(self.shape)
        shape[self.axis] = block.shape[self.axis_in]
        if self.axis != 0:  # any batch size, as for every other op
            others = math.prod(size for i, size in enumerate(block.shape) if i != self.axis_in)
            shape[0] = others // self._rest
        return block.reshape(shape)


def _reshape_handler(node: fx.Node, axis_in: int) -> Handler:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    before, after = list(source.meta["val"].shape), list(node.meta["val"].shape)
    axis_out = time_axis(node)

    def product(sizes: list[Any]) -> int:
        result = 1
        for size in sizes:
            result *= int(size)
        return result

    keeps_time = (
        axis_out is not None
        and time_length(node) == time_length(source)
        and product(before[:axis_in]) == product(after[:axis_out])
        and product(before[axis_in + 1 :]) == product(after[axis_out + 1 :])
        and (axis_in == 0) == (axis_out == 0)
    )
    if not keeps_time:
        interleaved = _interleaving(node, source, axis_in)
        if interleaved is not None:
            return interleaved
        raise refuse(
            node, "it mixes the time axis with other axes", "reshape only the dims other than time"
        )
    assert axis_out is not None
    shape = [int(s) if i != axis_out else -1 for i, s in enumerate(after)]
    return Reshape(shape, axis_out, axis_in)


class Interleave(Handler):
    """A reshape that merges the time axis with the ``factor`` values after it
    (``torch.stack([a, b], -1).view(B, C, 2 * T)``, a 2x upsampler): each input step gives
    ``factor`` consecutive output steps, so every block reshapes alone."""

    def __init__(self, shape: list[int], axis: int, factor: int) -> None:
        super().__init__()
        self.shape, self.axis, self.factor = shape, axis, factor

    def rule(self) -> TimeRule:
        return upsampling(self.factor)

    def step(self, args: list[Any], final: bool) -> Any:
        block = args[0]
        shape = list(self.shape)
        shape[self.axis] = block.shape[self.axis] * self.factor
        if self.axis != 0:
            shape[0] = block.shape[0]  # any batch size
        return block.reshape(shape)


def _interleaving(node: fx.Node, source: fx.Node, axis: int) -> Optional[Interleave]:
    """An :class:`Interleave` when ``node`` reshapes ``source`` by merging its time axis with
    the dims right after it (and nothing else changes); else ``None``."""
    before, after = list(source.meta["val"].shape), list(node.meta["val"].shape)
    if time_axis(node) != axis or [int(s) for s in before[:axis]] != [int(s) for s in after[:axis]]:
        return None
    for merged in range(1, len(before) - axis):
        rest = before[axis + 1 + merged :]
        if len(rest) != len(after) - axis - 1:
            continue
        if [int(s) for s in rest] != [int(s) for s in after[axis + 1 :]]:
            continue
        factor = math.prod(int(s) for s in before[axis + 1 : axis + 1 + merged])
        if sympy.simplify(time_length(node) - factor * time_length(source)) == 0:
            shape = [-1 if i == axis else int(s) for i, s in enumerate(after)]
            return Interleave(shape, axis, factor)
    return None


class LinearUpsample(Handler):
    """Linear interpolation over time by a whole factor ``s`` (``align_corners=False``).

    Output ``j`` reads input ``src = (j + 0.5) / s - 0.5`` (clamped at 0) between samples
    ``floor(src)`` and the next one; the last outputs clamp to the last sample, so they come when
    the signal ends.
    """

    _state_tensors = ("_last",)
    _state_ints = ("_seen", "_emitted")

    def __init__(self, factor: int, axis: int) -> None:
        super().__init__()
        self.factor, self.axis = factor, axis
        self.register_buffer("_last", torch.zeros(0), persistent=False)
        self._seen = 0
        self._emitted = 0

    def reset(self) -> None:
        self._last, self._seen, self._emitted = torch.zeros(0), 0, 0

    def rule(self) -> TimeRule:
        """Output ``j`` reads inputs ``low`` and ``low + 1`` with ``low = floor((2j + 1 - s) /
        2s)`` (at least 0), so it comes once input ``low + 1`` has: the first ``s*(n-1) +
        s//2`` outputs of ``n >= 2`` inputs."""
        factor = self.factor

        def ready(counts: list[Any]) -> Any:
            n = counts[0]
            return (factor * (n - 1) + factor // 2) * ((n >= 2) * 1)

        def reads(j: Any) -> tuple[Any, Any]:
            low = (2 * j + 1 - factor) // (2 * factor)
            low = low.clamp(min=0) if isinstance(low, Tensor) else max(low, 0)
            return low, low + 1

        return TimeRule(Fraction(factor), ready, reads)

    def _sources(self, start: int, end: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return linear_sources(torch.arange(start, end), self.factor, dtype)

    def step(self, args: list[Any], final: bool) -> Any:
        block = args[0]
        held = self._last.shape[self.axis] if self._last.dim() > 1 else 0
        first = self._seen - held  # input index of data's first sample
        data = block if held == 0 else torch.cat([self._last, block], self.axis)
        self._seen += block.shape[self.axis]
        end = self._seen * self.factor
        if not final:  # only outputs whose next sample has arrived
            low, _ = self._sources(self._emitted, end, data.dtype)
            end = self._emitted + int((low + 1 <= self._seen - 1).sum())
        low, weight = self._sources(self._emitted, end, data.dtype)
        high = torch.clamp(low + 1, max=self._seen - 1)
        shape = [1] * data.dim()
        shape[self.axis] = end - self._emitted
        weight = weight.to(data.dtype).view(shape)
        out = (1 - weight) * data.index_select(self.axis, low - first) + weight * data.index_select(
            self.axis, high - first
        )
        self._emitted = end
        keep = min(2, data.shape[self.axis])
        self._last = data.narrow(self.axis, data.shape[self.axis] - keep, keep).detach()
        if final:
            self.reset()
        return out


def linear_sources(outputs: Tensor, factor: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Source index and weight of the outputs numbered ``outputs`` (int64) of a linear
    upsampling by ``factor``, rounded as PyTorch rounds them (in float32 for float32, float16
    and bfloat16 signals), so that long signals match too: output ``j`` is
    ``(1 - weight) * x[low] + weight * x[low + 1]``.

    >>> linear_sources(torch.arange(4), 2, torch.float32)
    (tensor([0, 0, 0, 1]), tensor([0.0000, 0.2500, 0.7500, 0.2500]))
    """
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(1.0 / factor, dtype=math_dtype).double()
    # PyTorch computes scale * (j + 0.5) - 0.5 as one fused multiply-add in math_dtype:
    # exact in float64, then rounded once
    src = (scale * (outputs.to(torch.float64) + 0.5) - 0.5).to(math_dtype).clamp(min=0)
    low = src.to(torch.long)
    return low, src - low.to(math_dtype)


def _upsample_handler(node: fx.Node, axis: int) -> Handler:
    a: list[Any] = [*node.args, None, None, None]
    scales = a[3] if node.target is aten.upsample_linear1d.vec else a[2]
    rank = a[0].meta["val"].dim()
    if axis != rank - 1 or a[1] is not None or scales is None or len(scales) != 1:
        raise refuse(node, "it resizes to a fixed size", "upsample by an integer scale_factor")
    factor = float(scales[0])
    if factor != int(factor) or factor < 1:
        raise refuse(
            node, f"its scale factor {factor} is not a whole number, so output samples do not "
            "line up with input samples", "use an integer scale_factor or a ConvTranspose1d",
        )  # fmt: skip
    return NearestUpsample(int(factor), axis)


def build_handler(node: fx.Node, leaves: Optional[dict[str, nn.Module]] = None) -> Handler:
    """The handler of a node with at least one time input; refuses ops it cannot stream."""
    if node.target is LEAF_OP:
        return _leaf_handler(node, leaves or {})
    inputs = _time_inputs(node)
    axis_in = next((a for a in (time_axis(n) for n in inputs) if a is not None), -1)
    window = _window_handler(node, axis_in) if axis_in >= 0 else None
    if window is not None:
        return window
    target = node.target
    rank = (
        node.args[0].meta["val"].dim()
        if isinstance(node.args[0], fx.Node) and isinstance(node.args[0].meta.get("val"), Tensor)
        else 0
    )
    if target is aten.linear.default:
        if axis_in == rank - 1:
            raise refuse(
                node,
                "Linear acts on the last axis, which is time here",
                "transpose so that channels are last, as a per-step Linear needs",
            )
        return _aligned(node)
    if target is aten.layer_norm.default:
        normalized: Any = node.args[1]
        if axis_in >= rank - len(normalized):
            raise refuse(
                node,
                "it normalises over the time axis",
                "normalise over channels per time step (transpose so that channels are last)",
            )
        return _aligned(node)
    if (target is aten.batch_norm.default and node.args[5]) or (
        target is aten.dropout.default and node.args[2]
    ):
        raise refuse(node, "it runs in training mode", "call model.eval() before streaming")
    a: list[Any]
    if target is aten.upsample_nearest1d.vec and axis_in >= 0:
        return _upsample_handler(node, axis_in)
    if target is aten.upsample_linear1d.vec and axis_in >= 0:
        a = [*node.args, None, None, None]
        if a[2]:
            raise refuse(
                node,
                "align_corners=True scales by (T-1)/(sT-1), which depends on the whole length",
                "use align_corners=False",
            )
        factor = _upsample_handler(node, axis_in)
        assert isinstance(factor, NearestUpsample)
        return LinearUpsample(factor.factor, axis_in)
    if target in (aten.reshape.default, aten.view.default) and axis_in >= 0:
        return _reshape_handler(node, axis_in)
    if target is aten.matmul.default and axis_in >= 0:
        left, right = node.args[0], node.args[1]
        operand_axes = [time_axis(n) if isinstance(n, fx.Node) else None for n in (left, right)]
        if operand_axes[0] is not None and operand_axes[1] is not None:
            raise refuse(
                node,
                "it multiplies two tensors that both run along time (attention)",
                "use causal attention in a registered streamer",
            )
        ranks = [n.meta["val"].dim() for n in (left, right)]  # type: ignore[union-attr]
        if (operand_axes[0] is not None and operand_axes[0] == ranks[0] - 1) or (
            operand_axes[1] is not None and operand_axes[1] == ranks[1] - 2
        ):
            raise refuse(node, "it sums over the time axis", "multiply over channels per time step")
        return _aligned(node)
    if target is aten.repeat_interleave.self_int and axis_in >= 0:
        a = [*node.args, None, None]
        if a[2] is None:
            raise refuse(node, "it flattens the tensor", "repeat along a given dim")
        if int(a[2]) % a[0].meta["val"].dim() == axis_in:
            return NearestUpsample(int(a[1]), axis_in)
        return _aligned(node)
    if target is aten.cumsum.default and axis_in >= 0:
        a = list(node.args)
        if int(a[1]) % a[0].meta["val"].dim() == axis_in:
            return RunningSum(axis_in)
    if target is aten.cat.default and axis_in >= 0:
        joined = _time_concatenation(node, axis_in)
        if joined is not None:
            return joined
    if target is aten.slice.Tensor and axis_in >= 0:
        dim = int(node.args[1]) if len(node.args) > 1 else 0  # type: ignore[arg-type]
        if dim % node.args[0].meta["val"].dim() == axis_in:  # type: ignore[union-attr]
            return _time_slice(node, axis_in)
    if target in _OVER_DIM:
        _check_dim_argument(node, axis_in)
    elif target not in _ELEMENTWISE:
        reason, remedy = _TIME_MIXING.get(target, ("", ""))
        if reason:
            raise refuse(node, reason, remedy)
        if not _per_step_reduction(node, axis_in, rank):
            raise refuse(node, "the op is not one that graph streams support yet")
    timed = [n for n in inputs if time_axis(n) is not None]
    lengths = {str(time_length(n)) for n in timed}
    if not same_lengths(timed):
        raise refuse(
            node,
            f"its inputs have different lengths ({', '.join(sorted(lengths))}), so they "
            "cannot be aligned step by step",
        )
    return _aligned(node)


def _per_step_reduction(node: fx.Node, axis_in: int, rank: int) -> bool:
    """Whether ``node`` is a reduction (as PyTorch tags it: ``var``, ``std``, ``mean``...) over
    dims other than time, which acts on each time step alone; refuse one over time."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or torch.Tag.reduction not in target.tags:
        return False
    dims: Any = None
    for index, argument in enumerate(target._schema.arguments):
        if argument.name == "dim":
            dims = node.args[index] if index < len(node.args) else node.kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if not dims or any(int(d) % max(rank, 1) == axis_in for d in dims):
        raise refuse(
            node,
            "it reduces over the time axis (or over every axis), so its outputs depend on the "
            "whole signal",
            "reduce over the channel axes only (a dim that is not time)",
        )
    return True


def _aligned(node: fx.Node) -> Aligned:
    """The op of ``node`` applied to index-aligned blocks, with its keyword arguments."""
    kwargs = dict(node.kwargs)
    if any(isinstance(v, fx.Node) for v in kwargs.values()):
        raise refuse(node, "a keyword argument is computed in the graph")
    target = node.target

    def op(*args: Any) -> Any:
        return target(*args, **kwargs)  # type: ignore[operator]

    return Aligned(op, *_flat_positions(node))


class Concatenation(Handler):
    """``torch.cat([before, x, after], time)`` with one streamed input ``x`` and values that do
    not run along time around it: padding with given values (Mimi's causal convolutions keep a
    zeros prefix this way). ``before`` comes with the first block, ``after`` when the signal
    ends."""

    _state_ints = ("_started",)

    def __init__(self, axis: int, index: int, before: int) -> None:
        super().__init__()
        self.axis, self.index, self.before = axis, index, before
        self._started = 0

    def reset(self) -> None:
        self._started = 0

    def rule(self) -> TimeRule:
        before = self.before
        return TimeRule(
            Fraction(1), lambda counts: counts[0] + before, lambda j: (j - before, j - before)
        )

    def step(self, args: list[Any], final: bool) -> Any:
        parts, axis = list(args[0]), self.axis
        block = parts[self.index]
        head = parts[: self.index] if not self._started else []
        tail = parts[self.index + 1 :] if final else []
        self._started = 0 if final else 1
        if not head and not tail:
            return block
        return torch.cat([*head, block, *tail], axis)


def _time_concatenation(node: fx.Node, axis: int) -> Optional[Handler]:
    """A :class:`Concatenation` for a ``cat`` along time with one streamed input; ``None`` when
    the ``cat`` is over another dim; refused when it joins several streamed values in time."""
    parts: Any = node.args[0]
    dim = int(node.args[1]) if len(node.args) > 1 else 0  # type: ignore[arg-type]
    rank = parts[0].meta["val"].dim()
    if dim % rank != axis:
        return None
    streamed = [
        i for i, p in enumerate(parts) if isinstance(p, fx.Node) and time_axis(p) is not None
    ]
    if len(streamed) != 1:
        raise refuse(
            node,
            "it joins values one after the other along time, so the later one starts only "
            "when the earlier one ends",
            "join streams over channels (dim 1), or pad with values that do not depend on the "
            "signal",
        )
    index = streamed[0]
    before = sum(int(p.meta["val"].shape[dim]) for p in parts[:index])
    return Concatenation(axis, index, before)


def _bounded_crop(node: fx.Node, right: Any) -> Optional[tuple[int, Callable[[int], int]]]:
    """For a crop at the end whose size depends on the signal's length only through a bounded
    remainder (``T - 2*(T//2)``), the most it crops and its size for a given length."""
    symbols = list(right.free_symbols)
    if len(symbols) != 1:
        return None
    symbol = symbols[0]
    values = {int(right.subs(symbol, length)) for length in range(64, 64 + 720)}
    if min(values) < 0 or max(values) > 4096:
        return None

    def at_end(length: int) -> int:
        return int(right.subs(symbol, length))

    return max(values), at_end


def _time_slice(node: fx.Node, axis: int) -> Handler:
    a: list[Any] = list(node.args)
    source = a[0]
    assert isinstance(source, fx.Node)
    length = time_length(source)
    step = a[4] if len(a) > 4 else 1
    if step != 1:
        raise refuse(node, "it takes every n-th time step", "resample with a strided convolution")

    def offset(value: Any, default: Any) -> Any:
        if value is None:
            return default
        if isinstance(value, fx.Node):
            return value.meta["val"].node.expr
        value = int(value)
        if value >= 2**62:
            return length
        return length + value if value < 0 else sympy.Integer(value)

    start = sympy.simplify(offset(a[2] if len(a) > 2 else None, sympy.Integer(0)))
    right = sympy.simplify(length - offset(a[3] if len(a) > 3 else None, length))
    if start.is_Integer and start >= 0 and not right.is_Integer:
        bounded = _bounded_crop(node, right)
        if bounded is not None:
            return TimeSlice(axis, int(start), *bounded)
    if not (start.is_Integer and right.is_Integer and start >= 0 and right >= 0):
        raise refuse(
            node,
            f"it keeps time steps {start} to the length minus {right}, which are not fixed "
            "offsets from both ends",
        )
    return TimeSlice(axis, int(start), int(right))
