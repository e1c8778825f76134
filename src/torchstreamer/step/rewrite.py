"""The rewrite behind `streaming_transform`: a captured graph becomes one time step.

The model is captured as for :func:`torchstreamer.stream`; every node whose value runs along time
is then rewritten to compute one time step, with the time axis removed:

- per-step ops (activations, adds, gates, concatenations over channels, ``linear``,
  ``layer_norm``...) apply as they are, with their dims renumbered and their constant operands
  squeezed where they broadcast over time;
- window ops (convolutions, stride-1 pools) keep the last ``span - 1`` inputs of their window in a
  state tensor (time-major, flattened) and compute one output with one matrix product;
- ``cumsum`` over time keeps its running sum; recurrent layers keep their hidden state;
- nodes that depend only on parameters are computed once, when the step model is built.

Every time node's value ``i`` sits at time ``i - offset``. Left padding gives a node values before
the signal starts (``offset > 0``): they do not depend on the signal, so they are computed once and
become the initial state of the window ops that read them. The result is one flat generated
function (:class:`torch.fx.GraphModule`) in pure form ``(x_t, *state) -> (y_t, *new_state)``.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import sympy
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from torchstreamer.errors import NotStreamableError, StreamError
from torchstreamer.graph.analysis import refuse, time_axis, time_length
from torchstreamer.graph.handlers import (
    _ELEMENTWISE,
    _OVER_DIM,
    Aligned,
    Concatenation,
    ListHandler,
    ModuleStreamHandler,
    RecurrentHandler,
    Reshape,
    RunningSum,
    TimeSlice,
)
from torchstreamer.graph.stream import GraphStream
from torchstreamer.streams.pool import pool_geometry

__all__ = ["StateSpec", "StepGraph", "build_step_graph"]

aten = torch.ops.aten

_STREAM_REMEDY = (
    "use torchstreamer.stream(model, example), which streams blocks of any size and waits for "
    "the samples an output needs"
)
# ops that broadcast their operands: a constant operand loses the dim that lines up with time
_BROADCASTING = {
    aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.where.self,
    aten.maximum.default, aten.minimum.default, aten.pow.Tensor_Tensor, aten.atan2.default,
    aten.fmod.Tensor, aten.remainder.Tensor, aten.hypot.default,
}  # fmt: skip
# ops whose dim 1 is the channel dim: they keep their meaning without time only if time is after
_CHANNEL_OPS = {
    aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default, aten.prelu.default,
}  # fmt: skip
# position and default of the `dim` argument of ops over one dim (relative to the input)
_DIM_ARGUMENT = {
    aten.softmax.int: (1, None), aten._softmax.default: (1, None),
    aten.log_softmax.int: (1, None), aten._log_softmax.default: (1, None),
    aten.glu.default: (1, -1), aten.cumsum.default: (1, None), aten.select.int: (1, None),
    aten.slice.Tensor: (1, 0), aten.squeeze.dim: (1, None), aten.chunk.default: (2, 0),
    aten.split.Tensor: (2, 0), aten.split_with_sizes.default: (2, 0),
}  # fmt: skip
_REDUCTIONS = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default}
# torch functions that run an aten overload with less Python overhead than the OpOverload
_FAST = {
    aten.relu.default: torch.relu, aten.tanh.default: torch.tanh,
    aten.sigmoid.default: torch.sigmoid, aten.add.Tensor: torch.add, aten.mul.Tensor: torch.mul,
    aten.sub.Tensor: torch.sub, aten.div.Tensor: torch.div, aten.cat.default: torch.cat,
    aten.gelu.default: F.gelu, aten.silu.default: F.silu, aten.linear.default: F.linear,
    aten.softmax.int: torch.softmax,
    aten.glu.default: F.glu, aten.abs.default: torch.abs, aten.exp.default: torch.exp,
    aten.neg.default: torch.neg, aten.clone.default: torch.clone,
}  # fmt: skip


@dataclass
class StateSpec:
    """One state tensor of a step model: its name, its value at the start of a signal, and the
    layer it belongs to."""

    name: str
    initial: Tensor
    layer: str


@dataclass
class StepGraph:
    """What :func:`build_step_graph` returns: the pure step graph and what it refers to."""

    graph: fx.Graph  # placeholders: x_t, then one per state; outputs: (*y_t, *new_state)
    root: nn.Module  # holds the constants (buffers) and recurrent layers the graph calls
    states: list[StateSpec]
    outputs: int  # how many model outputs come before the new states
    output_axes: list[int]
    input_shape: list[int]  # of x_t
    frame: Optional[int] = None  # input samples per call; None: one, without a time axis
    held_back: int = 0  # input samples by which a frame may hold an output back
    # the model returns fewer values than the frames, or other values where the signal ends
    crops_end: bool = False  # (lookahead only)
    drops_partial_frames: bool = True  # whether the model drops samples after the last frame
    # per output: values from before the signal that come first (a lagging frame graph)
    skips: list[int] = field(default_factory=list)
    # per output: values from before the signal that the frames never compute (left padding
    # that reaches the output), which the stream's start entry gives (lookahead only)
    leads: list[int] = field(default_factory=list)
    phase: int = 0  # input samples from before the signal that the first frame starts with
    # per output: how many first values a lagging frame graph may get wrong (computed offline)
    dirty: list[int] = field(default_factory=list)
    # per recurrent node of a lagging frame graph: the names of the states an end entry carries
    carried: dict[str, dict[str, str]] = field(default_factory=dict)


class _Value:
    """A value known when the step model is built (a constant)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _remap(dim: int, rank: int, axis: int) -> int:
    """The index of ``dim`` (of a tensor of ``rank`` dims with time at ``axis``) once time is
    removed."""
    d = int(dim) % rank
    assert d != axis
    return d if d < axis else d - 1


def _label(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else node.name
    return re.sub(r"[^A-Za-z0-9]+", "_", str(path)).strip("_") or node.name


class _Builder:
    def __init__(self, source: GraphStream, example: Tensor) -> None:
        self.source = source
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.states: list[StateSpec] = []
        self.state_nodes: list[tuple[fx.Node, fx.Node]] = []  # (placeholder, new value)
        self.env: dict[str, Any] = {}
        self.offset: dict[str, int] = {}
        self.fallback_lists: set[str] = set()
        self.constants = 0
        self.input_offset = 0  # where the input's first sample sits (frames: -phase)
        with torch.no_grad():
            self.values = source.offline_values(example)
            generator = torch.Generator().manual_seed(1)
            other = torch.randn(example.shape, generator=generator, dtype=example.dtype) * 2 + 1
            self.other = source.offline_values(other.to(example.device))
        self.symbol = next(iter(time_length(source._input).free_symbols))
        self.x = self.graph.placeholder("x_t")
        self.last_placeholder = self.x

    # -- graph helpers --------------------------------------------------------------------

    def call(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.Node:
        return self.graph.call_function(target, args, kwargs)

    def method(self, name: str, *args: Any) -> fx.Node:
        return self.graph.call_method(name, args)

    def constant(self, value: Tensor) -> fx.Node:
        name = f"const_{self.constants}"
        self.constants += 1
        self.root.register_buffer(name, value.detach().clone())
        return self.graph.get_attr(name)

    def state(self, node: fx.Node, kind: str, initial: Tensor) -> fx.Node:
        name = f"state_{len(self.states):02d}_{_label(node)}_{kind}"
        self.states.append(StateSpec(name, initial.detach().clone(), _label(node)))
        with self.graph.inserting_after(self.last_placeholder):
            placeholder = self.graph.placeholder(name)
        self.last_placeholder = placeholder
        return placeholder

    def update(self, placeholder: fx.Node, value: fx.Node) -> None:
        self.state_nodes.append((placeholder, value))

    def new_states(self) -> list[fx.Node]:
        """Each state's new value, in the order of the states (whatever the updates' order)."""
        order = {node: index for index, node in enumerate(self.graph.nodes)}
        updates = sorted(self.state_nodes, key=lambda pair: order[pair[0]])
        assert len(updates) == len(self.states), "every state has one new value"
        return [value for _, value in updates]

    def arg(self, value: Any, squeeze_at: Optional[int] = None) -> Any:
        """A node argument in the step graph; constants are squeezed at ``squeeze_at`` (a
        dim counted from the right, as broadcasting counts) when they broadcast over time."""
        if isinstance(value, (list, tuple)):
            return type(value)(self.arg(v, squeeze_at) for v in value)
        if isinstance(value, fx.Node):
            value = self.env[value.name]
        if not isinstance(value, _Value):
            return value
        constant = value.value
        if isinstance(constant, Tensor):
            if squeeze_at is not None and constant.dim() >= squeeze_at:
                constant = constant.squeeze(constant.dim() - squeeze_at)
            return self.constant(constant)
        return constant

    # -- analysis -------------------------------------------------------------------------

    def prehistory(self, node: fx.Node, count: int) -> Tensor:
        """The first ``count`` values of a time node: those before the signal starts. They must
        not depend on the signal."""
        axis = time_axis(node)
        assert axis is not None
        first = self.values[node.name].narrow(axis, 0, count)
        second = self.other[node.name].narrow(axis, 0, count)
        if not torch.allclose(first, second, rtol=1e-6, atol=1e-7):
            raise refuse(
                node,
                "its values before the signal starts depend on the signal (padding that copies "
                "samples, such as replicate or reflect)",
                f"pad with zeros (as PaddedConv1d does), or {_STREAM_REMEDY}",
            )
        return first

    def check_length(self, node: fx.Node, offset: int) -> None:
        extra = sympy.simplify(time_length(node) - self.symbol)
        if not extra.is_Integer:
            raise refuse(
                node,
                f"it changes the sampling rate (its output has {time_length(node)} samples for "
                f"{self.symbol} input samples), and a step model takes and returns one sample "
                "per call",
                f"pass frame='auto' to take {_minimal_frame(self.source)} input samples per call, "
                "or " + _STREAM_REMEDY,
            )
        if offset < 0:
            raise refuse(
                node,
                f"its output at time t depends on inputs up to t + {-offset} ({_lookahead(-offset)}"
                ": a window without left padding, a centred window or a crop)",
                "pad causally on the left, e.g. with torchstreamer.PaddedConv1d, or "
                + _STREAM_REMEDY,
            )

    # -- the walk -------------------------------------------------------------------------

    def walk(self, visit: Callable[[fx.Node], None]) -> None:
        """Give every node of the captured graph its value: the input, constants (computed
        once), and ``visit(node)`` for every streamed node."""
        source = self.source
        for node in source._graph.nodes:
            if node.op == "placeholder":
                if node is source._input:
                    self.env[node.name], self.offset[node.name] = self.x, self.input_offset
                else:
                    self.env[node.name] = _Value(self.values[node.name])
            elif node.op == "call_function":
                if node.name in source._symbolic:
                    self.env[node.name] = None
                elif node.name not in source.handlers:
                    self.env[node.name] = _Value(self.values[node.name])
                else:
                    visit(node)

    def joined_offset(self, node: fx.Node) -> tuple[int, list[fx.Node]]:
        """The offset that the time inputs of ``node`` share (refused when they differ), and
        those inputs."""
        timed = [n for n in node.all_input_nodes if n.name in self.offset]
        offsets = {self.offset[n.name] for n in timed}
        if len(offsets) > 1:
            raise refuse(
                node,
                f"it joins values that are shifted in time against each other (by "
                f"{max(offsets) - min(offsets)} samples)",
                "pad or crop the branches so that they line up, or " + _STREAM_REMEDY,
            )
        offset = offsets.pop()
        self.offset[node.name] = offset
        return offset, timed

    def build(self) -> StepGraph:
        source = self.source
        self.walk(self.visit)
        outputs, axes = [], []
        for output in source._outputs:
            extra = int(sympy.simplify(time_length(output) - self.symbol))
            offset = self.offset[output.name]
            if extra - offset > 0:
                raise refuse(
                    output,
                    f"the model's output at time t depends on inputs up to t + {extra - offset} "
                    f"({_lookahead(extra - offset)}: right padding or a centred window)",
                    _STREAM_REMEDY,
                )
            if offset > 0:
                raise refuse(
                    output,
                    f"the model returns {offset} samples from before the signal starts (left "
                    "padding that reaches the output)",
                    "crop them in the model, or " + _STREAM_REMEDY,
                )
            outputs.append(self.env[output.name])
            axis = time_axis(output)
            assert axis is not None
            axes.append(axis)
        self.graph.output((*outputs, *self.new_states()))
        shape = list(source._example_shape)
        del shape[source._axis]
        return StepGraph(self.graph, self.root, self.states, len(outputs), axes, shape)

    def visit(self, node: fx.Node) -> None:
        self.step_node(node)
        if time_axis(node) is not None:
            self.check_length(node, self.offset[node.name])

    def step_node(self, node: fx.Node) -> None:
        handler = self.source.handlers[node.name]
        offset, timed = self.joined_offset(node)
        if isinstance(handler, ListHandler):
            self.leaf(node, handler)
        elif isinstance(handler, RecurrentHandler):
            self.recurrent(node, handler.rnn, offset)
        elif isinstance(handler, ModuleStreamHandler):
            self.module_window(node, handler.holder, offset)
        elif isinstance(handler, Concatenation):  # values before the signal, as padding
            self.prehistory(node, offset + handler.before)
            self.env[node.name] = self.env[timed[0].name]
            self.offset[node.name] = offset + handler.before
        elif isinstance(handler, TimeSlice):
            self.env[node.name] = self.env[timed[0].name]
            self.offset[node.name] = offset - handler.start
        elif isinstance(handler, RunningSum):
            self.running_sum(node, timed[0], offset)
        elif isinstance(handler, Reshape):
            # (int() of the symbolic time length would fix it to the example's)
            sizes = node.meta["val"].shape
            shape = [int(size) for i, size in enumerate(sizes) if i != handler.axis]
            self.env[node.name] = self.method("reshape", self.env[timed[0].name], shape)
        elif isinstance(handler, Aligned):
            self.per_step(node)
        else:  # upsampling: caught by the rate check, but say so here too
            raise refuse(node, "it changes the sampling rate", _STREAM_REMEDY)

    # -- per-step ops ---------------------------------------------------------------------

    def per_step(self, node: fx.Node) -> None:
        target: Any = node.target
        out_axis = time_axis(node)
        first = next(n for n in node.all_input_nodes if n.name in self.offset)
        in_axis = time_axis(first)
        if target is operator.getitem:
            held: Any = node.args[0]
            container, index = self.env[held.name], node.args[1]
            if isinstance(container, list):  # a leaf's outputs
                self.env[node.name] = container[index]  # type: ignore[index]
            else:
                value = self.call(operator.getitem, container, index)
                if held.name in self.fallback_lists:
                    assert out_axis is not None
                    value = self.method("squeeze", value, out_axis)
                self.env[node.name] = value
            return
        if (target in _CHANNEL_OPS and (in_axis is None or in_axis < 2)) or target in (
            aten.matmul.default,
            aten.repeat_interleave.self_int,
        ):
            self.fallback(node)
            return
        args: list[Any] = list(node.args)
        kwargs = dict(node.kwargs)
        if target in _BROADCASTING:
            value = node.meta["val"]
            assert out_axis is not None
            squeeze_at = value.dim() - out_axis  # the time dim, counted from the right
            new_args = [self.arg(a, squeeze_at) for a in args]
        elif target in _DIM_ARGUMENT:
            position, default = _DIM_ARGUMENT[target]
            rank = first.meta["val"].dim()
            assert in_axis is not None
            while len(args) <= position:
                args.append(default)
            if args[position] is None:
                raise refuse(node, "it acts over every dim, time included", _STREAM_REMEDY)
            args[position] = _remap(args[position], rank, in_axis)
            new_args = [self.arg(a) for a in args]
        elif target in _REDUCTIONS:
            rank = first.meta["val"].dim()
            assert in_axis is not None
            args[1] = [_remap(d, rank, in_axis) for d in args[1]]
            new_args = [self.arg(a) for a in args]
        elif target in (aten.cat.default, aten.stack.default, aten.unsqueeze.default):
            value = node.meta["val"]
            assert out_axis is not None
            dim = args[1] if len(args) > 1 else 0
            args = [args[0], dim, *args[2:]]
            if target is aten.cat.default:
                args[1] = _remap(dim, value.dim(), out_axis)
            else:  # the new dim counts in the output
                args = [args[0], _remap(dim, value.dim(), out_axis)]
            new_args = [self.arg(a) for a in args]
        elif target in (aten.transpose.int, aten.permute.default):
            rank = first.meta["val"].dim()
            assert in_axis is not None
            order = list(range(rank))
            if target is aten.transpose.int:
                a, b = int(args[1]) % rank, int(args[2]) % rank
                order[a], order[b] = order[b], order[a]
            else:
                order = [int(d) % rank for d in args[1]]
            kept = [_remap(d, rank, in_axis) for d in order if d != in_axis]
            source = self.env[first.name]
            self.env[node.name] = (
                source if kept == sorted(kept) else self.method("permute", source, kept)
            )
            return
        elif (
            target in _ELEMENTWISE
            or target in _OVER_DIM
            or target
            in (
                aten.linear.default,
                aten.layer_norm.default,
            )
        ):
            new_args = [self.arg(a) for a in args]
        else:
            self.fallback(node)
            return
        function = _FAST.get(target, target)
        new_kwargs = {k: self.arg(v) for k, v in kwargs.items()}
        self.env[node.name] = self.call(function, *new_args, **new_kwargs)

    def fallback(self, node: fx.Node) -> None:
        """Run the op on length-1 tensors: time inputs get their time axis back, the output
        loses it again."""

        def expand(value: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return type(value)(expand(v) for v in value)
            if isinstance(value, fx.Node) and value.name in self.offset:
                axis = time_axis(value)
                return self.method("unsqueeze", self.env[value.name], axis)
            return self.arg(value)

        args = expand(list(node.args))
        kwargs = {k: expand(v) for k, v in node.kwargs.items()}
        result = self.call(node.target, *args, **kwargs)  # type: ignore[arg-type]
        axis = time_axis(node) if isinstance(node.meta.get("val"), Tensor) else None
        if axis is not None:
            result = self.method("squeeze", result, axis)
        else:
            self.fallback_lists.add(node.name)
        self.env[node.name] = result

    # -- stateful ops ---------------------------------------------------------------------

    def running_sum(self, node: fx.Node, source: fx.Node, offset: int) -> None:
        axis = time_axis(node)
        assert axis is not None
        value = self.values[node.name]
        if offset > 0:
            self.prehistory(source, offset)
            initial = value.narrow(axis, offset - 1, 1).squeeze(axis)
        else:
            initial = torch.zeros_like(value.narrow(axis, 0, 1).squeeze(axis))
        carry = self.state(node, "sum", initial)
        total = self.call(torch.add, carry, self.env[source.name])
        self.update(carry, total)
        self.env[node.name] = total

    def recurrent_state(
        self, node: fx.Node, rnn: nn.RNNBase, offset: int
    ) -> tuple[fx.Node, Optional[fx.Node]]:
        """The hidden (and, for an LSTM, cell) state of a recurrent layer: zeros, or where the
        layer stands after the values before the signal."""
        source = node.args[0]
        assert isinstance(source, fx.Node)
        x = self.values[source.name]
        batch = [x.shape[0 if rnn.batch_first else 1]] if x.dim() == 3 else []
        width = getattr(rnn, "proj_size", 0) or rnn.hidden_size
        h = x.new_zeros([rnn.num_layers, *batch, width])
        c = x.new_zeros([rnn.num_layers, *batch, rnn.hidden_size])
        if offset > 0:  # the layer has run over the samples before the signal
            with torch.no_grad():
                _, hidden = rnn(self.prehistory(source, offset))
            h, c = hidden if isinstance(hidden, tuple) else (hidden, c)
        h_state = self.state(node, "hidden", h)
        c_state = self.state(node, "cell", c) if isinstance(rnn, nn.LSTM) else None
        return h_state, c_state

    def recurrent(self, node: fx.Node, rnn: nn.RNNBase, offset: int) -> None:
        source = node.args[0]
        assert isinstance(source, fx.Node)
        batched = self.values[source.name].dim() == 3
        lstm = isinstance(rnn, nn.LSTM)
        h_state, c_state = self.recurrent_state(node, rnn, offset)
        step_in = self.env[source.name]
        if not batched:
            step_in = self.method("unsqueeze", step_in, 0)
        hs, cs = [], []
        for layer in range(rnn.num_layers):
            weights = [
                self.constant(getattr(rnn, f"{kind}_l{layer}"))
                if getattr(rnn, f"{kind}_l{layer}", None) is not None
                else None
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            h_in = self.method("select", h_state, 0, layer)
            if not batched:
                h_in = self.method("unsqueeze", h_in, 0)
            if lstm:
                assert c_state is not None
                c_in = self.method("select", c_state, 0, layer)
                if not batched:
                    c_in = self.method("unsqueeze", c_in, 0)
                projection = getattr(rnn, f"weight_hr_l{layer}", None)
                if projection is None:
                    cell = self.call(torch.lstm_cell, step_in, [h_in, c_in], *weights)
                else:
                    cell = self.call(
                        _projected_lstm_cell, step_in, h_in, c_in, *weights,
                        self.constant(projection),
                    )  # fmt: skip
                h_out = self.call(operator.getitem, cell, 0)
                cs.append(self.call(operator.getitem, cell, 1))
            elif isinstance(rnn, nn.GRU):
                h_out = self.call(torch.gru_cell, step_in, h_in, *weights)
            else:
                cell_op = torch.rnn_tanh_cell if rnn.nonlinearity == "tanh" else torch.rnn_relu_cell
                h_out = self.call(cell_op, step_in, h_in, *weights)
            hs.append(h_out)
            step_in = h_out  # dropout between layers is off in eval mode
        if not batched:
            step_in = self.method("squeeze", step_in, 0)
            hs = [self.method("squeeze", v, 0) for v in hs]
            cs = [self.method("squeeze", v, 0) for v in cs]
        self.update(h_state, self.call(torch.stack, hs))
        if c_state is not None:
            self.update(c_state, self.call(torch.stack, cs))
        self.env[node.name] = [step_in, None, None]

    def leaf(self, node: fx.Node, handler: ListHandler) -> None:
        inner = handler.inner
        module = inner.holder if isinstance(inner, ModuleStreamHandler) else None
        if not isinstance(module, (nn.MaxPool1d, nn.AvgPool1d)):
            raise refuse(
                node,
                "step models do not run layers with a registered streamer",
                _STREAM_REMEDY,
            )
        self.module_window(node, module, self.offset[node.name])
        self.env[node.name] = [self.env[node.name]]

    def padded(self, node: fx.Node, module: nn.Module, source: fx.Node, offset: int) -> bool:
        """Handle ``module`` if it is a padding layer: its left padding becomes values before
        the signal (``offset``); padding that copies the signal is refused."""
        if not isinstance(module, (nn.ConstantPad1d, nn.ReflectionPad1d, nn.ReplicationPad1d)):
            return False
        left = int(module.padding[0])
        if left > 0 and not isinstance(module, nn.ConstantPad1d):
            self.prehistory(node, offset + left)  # refuses: the pad copies the signal
        self.env[node.name] = self.env[source.name]
        self.offset[node.name] = offset + left
        return True

    def pool_geometry(self, node: fx.Node, module: nn.Module) -> tuple[int, int, int]:
        """``(kernel, stride, dilation)`` of a pool without padding or ``ceil_mode`` (refused
        otherwise)."""
        kernel, stride, padding, dilation = pool_geometry(module)  # type: ignore[arg-type]
        if padding != 0:
            raise refuse(
                node,
                "step models do not run pools with padding inside the pool",
                "pad explicitly before the pool (F.pad), or " + _STREAM_REMEDY,
            )
        if getattr(module, "ceil_mode", False):
            raise refuse(
                node,
                "step models do not run pools with ceil_mode=True (a last, partial window "
                "exists or not depending on the signal's length)",
                "build the pool with ceil_mode=False and pad explicitly before it, or "
                + _STREAM_REMEDY,
            )
        return kernel, stride, dilation

    def module_window(self, node: fx.Node, module: nn.Module, offset: int) -> None:
        source = node.args[0]
        assert isinstance(source, fx.Node)
        if self.padded(node, module, source, offset):
            return
        if isinstance(module, (nn.AvgPool1d, nn.MaxPool1d)):
            kernel, _, dilation = self.pool_geometry(node, module)
            kind = "mean" if isinstance(module, nn.AvgPool1d) else "amax"
            self.window(node, source, kernel, dilation, 0, offset, kind)
            return
        assert isinstance(module, (nn.Conv1d, nn.ConvTranspose1d))
        kernel, dilation = int(module.kernel_size[0]), int(module.dilation[0])
        weight: Any = node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        w = self.values[weight.name]
        b = self.values[bias.name] if isinstance(bias, fx.Node) else None
        span = dilation * (kernel - 1) + 1
        if isinstance(module, nn.ConvTranspose1d):  # stride 1: a convolution, kernel flipped
            groups = module.groups
            cin, og = w.shape[0], w.shape[1]
            w = w.reshape(groups, cin // groups, og, kernel).transpose(1, 2)
            w = w.reshape(groups * og, cin // groups, kernel).flip(-1)
            left = span - 1 - int(module.padding[0])
        elif isinstance(module.padding, str):
            left = 0 if module.padding == "valid" else (span - 1) // 2
        else:
            left = int(module.padding[0])
        if left < 0:
            raise refuse(node, "its padding crops more than its window", _STREAM_REMEDY)
        self.window(node, source, kernel, dilation, left, offset, "conv", w, b, module.groups)

    def window(
        self,
        node: fx.Node,
        source: fx.Node,
        kernel: int,
        dilation: int,
        left: int,
        offset: int,
        kind: str,
        weight: Optional[Tensor] = None,
        bias: Optional[Tensor] = None,
        groups: int = 1,
    ) -> None:
        """A window op over time: conv (``weight [O, C/groups, K]``), ``mean`` or ``amax``."""
        span = dilation * (kernel - 1) + 1
        available = offset + left  # samples before the signal starts, padding included
        self.offset[node.name] = available - (span - 1)
        if self.offset[node.name] < 0:
            self.check_length(node, self.offset[node.name])
        full = self.values[source.name]
        *lead, channels, _ = full.shape
        x = self.env[source.name]
        if span > 1:
            before = self.prehistory(source, offset)
            zeros = before.new_zeros([*lead, channels, left])
            before = torch.cat([zeros, before], -1)[..., available - (span - 1) :]
            initial = before.movedim(-1, -2).reshape([*lead, (span - 1) * channels])
            held = self.state(node, "window", initial)
            window = self.call(torch.cat, [held, x], -1)
            self.update(held, self.method("narrow", window, -1, channels, (span - 1) * channels))
        else:
            window = x
        if dilation > 1 and kernel > 1:
            taps = torch.arange(0, span, dilation)
            window = self.method("view", window, [*lead, span, channels])
            window = self.method("index_select", window, -2, self.constant(taps))
            window = self.method("reshape", window, [*lead, kernel * channels])
        if kind != "conv":
            taps_view = self.method("view", window, [*lead, kernel, channels])
            self.env[node.name] = self.method(kind, taps_view, -2)
            return
        assert weight is not None
        out_channels = weight.shape[0]
        if groups == 1:
            flat = weight.permute(0, 2, 1).reshape(out_channels, kernel * channels)
            if len(lead) == 1 and bias is not None:
                y = self.call(torch.addmm, self.constant(bias), window, self.constant(flat.t()))
            else:
                b = self.constant(bias) if bias is not None else None
                y = self.call(F.linear, window, self.constant(flat), b)
            self.env[node.name] = y
            return
        per_in, per_out = channels // groups, out_channels // groups
        rows = 1
        for size in lead:
            rows *= int(size)
        # [rows, K, groups, C/g] -> [groups, rows, K * C/g] against [groups, K * C/g, O/g]
        grouped = self.method("view", window, [rows, kernel, groups, per_in])
        grouped = self.method("permute", grouped, [2, 0, 1, 3])
        grouped = self.method("reshape", grouped, [groups, rows, kernel * per_in])
        w = weight.reshape(groups, per_out, per_in, kernel).permute(0, 3, 2, 1)
        w = w.reshape(groups, kernel * per_in, per_out)
        offsets = bias if bias is not None else weight.new_zeros(out_channels)
        y = self.call(
            torch.baddbmm, self.constant(offsets.reshape(groups, 1, -1)), grouped, self.constant(w)
        )
        y = self.method("permute", y, [1, 0, 2])
        self.env[node.name] = self.method("reshape", y, [*lead, out_channels])


def _projected_lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Tensor,
) -> tuple[Tensor, Tensor]:
    """One step of an LSTM layer with ``proj_size`` (``torch.lstm_cell`` has no projection)."""
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return F.linear(torch.sigmoid(o) * torch.tanh(c), w_hr), c


def _minimal_frame(source: GraphStream) -> int:
    from torchstreamer.step.frames import minimal_frame  # frames builds on this module

    return minimal_frame(source)


def _lookahead(samples: int) -> str:
    return f"a lookahead of {samples} sample{'s' if samples != 1 else ''}"


def build_step_graph(
    model: nn.Module, example: Tensor, axis: int, frame: Union[int, str, None] = None
) -> StepGraph:
    """Capture ``model`` on ``example`` and rewrite it as one time step (see the module doc), or
    as one frame of ``frame`` input samples (``"auto"``: the smallest that fits every layer's
    rate; see :mod:`torchstreamer.step.frames`).

    Raises:
        NotStreamableError: the model cannot stream, needs lookahead, or changes the rate (and
            no frame was asked for).
    """
    if example.dim() == 0:
        raise NotStreamableError("The example input must have a time axis.")
    source = GraphStream(model, example, axis)
    try:
        if frame is None:
            return _Builder(source, example).build()
        from torchstreamer.step.frames import build_frame_graph, minimal_frame

        smallest = minimal_frame(source)
        if frame == "auto":
            frame = smallest
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
            raise StreamError(
                f"frame must be None, 'auto' or a positive number of samples, not {frame!r}."
            )
        if frame % smallest:
            raise NotStreamableError(
                f"A frame of {frame} samples does not fit {type(model).__name__}: its layers "
                f"run at rates that need a multiple of {smallest} input samples per call; "
                f"use frame={smallest} or frame='auto'."
            )
        return build_frame_graph(source, example, frame)
    except StreamError:
        raise
    except (RuntimeError, ValueError, IndexError) as error:  # pragma: no cover - a bug of ours
        raise StreamError(
            f"Building the step model of {type(model).__name__} failed: {error}. Please report "
            "it with the model; " + _STREAM_REMEDY + " meanwhile."
        ) from error
