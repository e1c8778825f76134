"""`stream(model, example)`: a stream of any model that ``torch.export`` can capture.

The captured graph is analysed once: every node whose value depends on the time axis gets a
handler (:mod:`torchstreamer.graph.handlers`), which gives the plan its time rules. The stream
then runs on the frame engine (:mod:`torchstreamer.step.engine`: generated frame code, weights
copied when the stream is built) when that code reproduces the model, and otherwise on the
handlers, one per node, which recompute nodes that depend only on parameters (weight norm) from
the model's current parameters on every call. ``GraphStream.engine`` says which runs.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import Tensor, fx, nn

from torchstreamer.base import (
    ONE_BUILD_AT_A_TIME,
    BaseStream,
    Stateful,
    check_state_values,
    state_int,
)
from torchstreamer.errors import NotStreamableError, StreamError, StreamInputError
from torchstreamer.generated import Source
from torchstreamer.graph.analysis import refuse, time_axis, time_length
from torchstreamer.graph.capture import capture, prune_unused
from torchstreamer.graph.handlers import (
    Aligned,
    Handler,
    Interleave,
    LengthPadding,
    ModuleStreamHandler,
    RecurrentHandler,
    Reshape,
    ResolvedPadding,
    TimeSlice,
    argument_at,
    build_handler,
)
from torchstreamer.graph.leaves import LEAF_OP
from torchstreamer.plan.timing import Schedule, Timing, graph_timing

if TYPE_CHECKING:
    from torchstreamer.step.engine import FrameEngine

__all__ = ["GraphStream", "stream"]


class GraphStream(BaseStream):
    """Streams a captured model: blocks in, the completed outputs out (see :func:`stream`)."""

    _state_tensors = ("_pending",)
    _state_ints = ("_batch", "_filled", "_seen")
    _pending: Tensor
    _weight: Optional[Tensor]  # a parameter of the model (see _find_weight)

    def __init__(self, model: nn.Module, example: Tensor, axis: int = -1) -> None:
        super().__init__()
        with ONE_BUILD_AT_A_TIME:  # (the capture and the engine's check: see base)
            self._build(model, example, axis)

    def _build(self, model: nn.Module, example: Tensor, axis: int) -> None:
        self.model = model
        self._axis = axis % example.dim()
        self._example_shape = list(example.shape)
        self._example_dtype = example.dtype
        program, leaves = capture(model, example, self._axis)
        self._leaves = leaves
        self._graph = program.graph
        prune_unused(self._graph)  # (what no output reads is neither streamed nor refused)
        signature = program.graph_signature
        self._sources: dict[str, str] = {
            **signature.inputs_to_parameters, **signature.inputs_to_buffers,
            **signature.inputs_to_lifted_tensor_constants,
        }  # fmt: skip
        self._constants = dict(program.constants)
        self._input = next(
            n
            for n in self._graph.nodes
            if n.op == "placeholder" and n.name in signature.user_inputs
        )
        self._label = f"stream of {type(model).__name__}"
        # what every block must match: sizes other than batch and time, and the model's dtype
        self._fixed_sizes = [
            (i, size) for i, size in enumerate(example.shape) if i not in (0, self._axis)
        ]
        self._find_weight()
        self._batch = -1
        # samples that wait for a call that returns something (see plan.Schedule)
        self.register_buffer("_pending", torch.zeros(0), persistent=False)
        self._filled = 0
        self._seen = 0
        self._schedule: Optional[Schedule] = None
        self._gated = True  # tests turn the schedule off to compare with every call running
        self._timing: Optional[Timing] = None
        self._sizes: Optional[dict[str, int]] = None
        # when a dict, forward() puts every streamed node's block in it (verify, inspect)
        self._record: Optional[dict[str, Any]] = None
        handlers: dict[str, Handler] = {}
        self._timed: set[str] = {self._input.name}
        self._symbolic: set[str] = set()
        for node in self._graph.nodes:
            if node.op != "call_function":
                continue
            value = node.meta.get("val")
            if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                self._symbolic.add(node.name)  # sizes, used by slices and pads at build time
                continue
            inputs = node.all_input_nodes
            if any(n.name in self._timed for n in inputs):
                handlers[node.name] = build_handler(node, leaves)
                self._timed.add(node.name)
                if any(n.name in self._symbolic for n in inputs) and not isinstance(
                    handlers[node.name],
                    (TimeSlice, Reshape, LengthPadding, ResolvedPadding, Interleave),
                ):
                    raise refuse(
                        node, "it uses the length of the signal, which is unknown while streaming"
                    )
            elif time_axis(node) is not None:
                raise refuse(
                    node,
                    "it makes a tensor as long as the signal from the signal's length, which is "
                    "unknown while streaming (its time axis does not come from the input)",
                )
        self.handlers = nn.ModuleDict(handlers)
        self._length_dependent = [
            h
            for h in handlers.values()
            if isinstance(h, LengthPadding) or (isinstance(h, TimeSlice) and h.at_end)
        ]
        self._nodes = {node.name: node for node in self._graph.nodes}
        outputs = next(n for n in self._graph.nodes if n.op == "output").args[0]
        self._outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        for output in self._outputs:
            if not isinstance(output, fx.Node) or output.name not in self._timed:
                raise refuse(output, "the model returns a value that does not follow the time axis")
            if time_axis(output) is None:  # the capture fixed a length of 0 or 1 for it
                shape = list(output.meta["val"].shape)
                raise NotStreamableError(
                    f"The example input (shape {list(example.shape)}) is too short for "
                    f"{type(model).__name__}: its output (shape {shape}) has too few samples to "
                    "follow the input's length. Give a longer example, several times the "
                    "model's total stride."
                )
        self._output_axis = time_axis(self._outputs[0])
        self._output_axes = [time_axis(o) for o in self._outputs]
        # generated on first use: the call, and the same call recording every streamed block
        self._runs: dict[bool, Callable[..., list[Any]]] = {}
        # the generated frame code, when it runs this model exactly (step.engine); else None
        self._engine: Optional[FrameEngine] = None
        self._engine_rows = int(example.shape[0]) if self._axis != 0 else -1
        self._engine_refusal = ""
        self._engine_on = True  # tests turn the engine off to check the interpreter
        self._build_engine(example)

    def _build_engine(
        self, example: Tensor, check: bool = True, phase: Optional[int] = None
    ) -> None:
        from torchstreamer.step.engine import frame_engine  # the engine builds on this module

        with ONE_BUILD_AT_A_TIME:  # (also for a new batch size, mid-stream: see base)
            engine, why = frame_engine(self, example, check, phase)
        self._engine = engine
        self._engine_refusal = "" if engine is not None else why
        self._engine_what = why if engine is not None else ""

    @property
    def engine(self) -> str:
        """What runs this stream: ``"frames of N samples"`` (the generated frame code) or
        ``"interpreter: <why the frame code cannot run the model>"`` (one handler per node)."""
        if self._uses_engine():
            return self._engine_what
        return f"interpreter: {self._engine_refusal or 'the frame engine is off'}"

    def _uses_engine(self) -> bool:
        return self._engine is not None and self._engine_on and self._record is None

    def _engine_for_rows(self, rows: int) -> None:
        """Rebuild the frame code for a new signal of ``rows`` batch rows (its state and
        shapes are built for one batch size)."""
        shape = list(self._example_shape)
        shape[0] = rows
        reference = next(iter(self.model.parameters()), None)
        example = torch.zeros(
            shape,
            dtype=reference.dtype if reference is not None else self._example_dtype,
            device=reference.device if reference is not None else None,
        )
        phase = self._engine._phase if self._engine is not None else None
        self._build_engine(example, check=False, phase=phase)
        self._engine_rows = rows

    def _source(self, name: str) -> Tensor:
        target = self._sources[name]
        if target in self._constants:
            return self._constants[target]
        try:
            return self.model.get_parameter(target)
        except AttributeError:
            return self.model.get_buffer(target)

    def forward(  # type: ignore[override]  # several outputs come as a tuple
        self, x: Tensor, final: bool = False
    ) -> Optional[Union[Tensor, tuple[Tensor, ...]]]:
        """Stream one block; return the outputs it completes (a tuple for several outputs), or
        ``None`` when it completes none. ``final=True`` ends the signal."""
        self._check_block(x)
        engine = self._modules.get("_engine")  # (the hot path: no nn.Module attribute lookup)
        if engine is not None and self._engine_on and self._record is None:
            if self._batch >= 0 and not final:  # a signal in progress: its rows fit the engine
                return engine.run(x, False, self)  # type: ignore[operator]
            return self._engine_forward(x, final)
        length = x.shape[self._axis]
        if not final and self._waits(length):
            self._keep(x)  # no output can come yet: run nothing, keep the samples
            return None
        if self._filled:
            x = torch.cat([self._pending.narrow(self._axis, 0, self._filled), x], self._axis)
            self._filled = 0
        if final:  # crops and pads at the end that depend on the signal's length
            for handler in self._length_dependent:
                handler.signal_length = self._seen + length
        results = self._run_block(x, final)
        self._seen = 0 if final else self._seen + length
        if all(y.shape[a] == 0 for y, a in zip(results, self._output_axes)):
            return None
        return results[0] if len(results) == 1 else tuple(results)

    def _engine_forward(
        self, x: Tensor, final: bool
    ) -> Optional[Union[Tensor, tuple[Tensor, ...]]]:
        rows = int(x.shape[0]) if self._axis != 0 else -1
        if self._batch < 0 and rows != self._engine_rows:
            self._engine_for_rows(rows)
        engine = self._engine
        if engine is None:  # the frame code does not fit this batch size: interpret
            self._engine_refusal = f"for {rows} batch rows, {self._engine_refusal}"
            return self.forward(x, final)
        try:
            y = engine.run(x, final, self)  # the block is checked: it fits the engine's rows
        finally:
            self._batch = -1 if final else rows
        return y

    def _waits(self, length: int) -> bool:
        """Whether ``length`` more samples complete no output, by the plan's schedule (not
        while recording every node's blocks, nor when the schedule is off)."""
        if self._record is not None or not self._gated:
            return False
        schedule = self._schedule_or_none()
        return schedule is not None and self._seen + length < schedule.next_return(self._seen)

    def _schedule_or_none(self) -> Optional[Schedule]:
        """The schedule of this stream's returns, made on first use (``None``: off)."""
        if self._schedule is None and self._gated:
            try:
                self._schedule = Schedule(self.timing, [o.name for o in self._outputs])
            except ValueError:  # no period within reach: every call runs the layers
                self._gated = False
        return self._schedule

    def _keep(self, x: Tensor) -> None:
        """Add ``x`` to the samples that wait for the next call that returns something."""
        length = x.shape[self._axis]
        shape = list(x.shape)
        shape[self._axis] = self._schedule.longest_wait if self._schedule else length
        pending = self._pending
        if self._filled == 0 and (
            list(pending.shape) != shape or pending.dtype != x.dtype or pending.device != x.device
        ):
            pending = self._pending = x.new_zeros(shape)  # a new signal: size it once
        pending.narrow(self._axis, self._filled, length).copy_(x.detach())
        self._filled += length
        self._seen += length
        self._batch = int(x.shape[0])

    def _run_block(self, x: Tensor, final: bool) -> list[Any]:
        """Run every layer on ``x`` (the generated call; see :meth:`_generate`)."""
        recording = self._record is not None
        if recording not in self._runs:
            self._runs[recording] = self._generate(recording)
        results = self._runs[recording](self, x, final)
        self._batch = -1 if final else int(x.shape[0])
        return results

    # the captured graph carries fake tensors, which neither copy nor pickle: a copy shares it
    # (it never changes once built), and a pickle holds the model and captures it again on load
    _SHARED = ("_graph", "_nodes", "_input", "_outputs", "_timing", "_sizes", "_schedule")

    def __deepcopy__(self, memo: dict[int, Any]) -> GraphStream:
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        for key, value in self.__dict__.items():
            if key == "_runs":
                twin.__dict__[key] = {}  # generated on first use, for the twin's own values
            elif key in self._SHARED:
                twin.__dict__[key] = value
            else:
                twin.__dict__[key] = copy.deepcopy(value, memo)
        return twin

    def __getstate__(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "example": (self._example_shape, self._example_dtype),
            "axis": self._axis,
            "state": self.get_state(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        shape, dtype = state["example"]
        reference = next(iter(state["model"].parameters()), None)
        device = reference.device if reference is not None else None
        example = torch.zeros(shape, dtype=dtype, device=device)
        type(self).__init__(self, state["model"], example, state["axis"])
        self.set_state(state["state"])

    def _generate(self, recording: bool = False) -> Callable[..., list[Any]]:
        """The same call as straight-line Python: parameters read from their owner modules'
        dicts, handlers from ``self.handlers``, one line per node (no per-node dispatch). With
        ``recording``, every streamed node's block also goes into ``self._record``."""
        source = Source("run(self, x, final)")
        source.line("m, h, c = self.model, self.handlers._modules, self._constants")
        # free every value after its last use, as eager code does: intermediates of large
        # blocks held to the end of the call cost memory traffic
        last_user = {used: node for node in self._graph.nodes for used in node.all_input_nodes}
        frees: dict[fx.Node, list[fx.Node]] = {}
        for used, user in last_user.items():
            if used not in self._outputs:
                frees.setdefault(user, []).append(used)
        for index, node in enumerate(self._graph.nodes):
            name = source.names[node] = f"v{index}"
            if node.op == "placeholder":
                source.line(f"{name} = {self._placeholder_expression(node)}")
            elif node.op == "call_function":
                if node.name in self._symbolic:
                    source.line(f"{name} = None")
                elif node.name in self.handlers:
                    source.line(
                        f"{name} = h[{node.name!r}].step({source.show(list(node.args))}, final)"
                    )
                    if recording:
                        source.line(f"self._record[{node.name!r}] = {name}")
                else:
                    call = source.arguments(node.args, node.kwargs)
                    source.line(f"{name} = {source.show(node.target)}({call})")
                if node in frees:
                    source.line("del " + ", ".join(source.names[n] for n in frees[node]))
        source.line("return [" + ", ".join(source.names[o] for o in self._outputs) + "]")
        return source.compile(f"<stream of {type(self.model).__name__}>")

    def _placeholder_expression(self, node: fx.Node) -> str:
        """Where an input of the graph comes from: the block, a constant, or a parameter or
        buffer read from its owner module's dict (no attribute lookups by path)."""
        if node is self._input:
            return "x"
        target = self._sources[node.name]
        if target in self._constants:
            return f"c[{target!r}]"
        *path, leaf = target.split(".")
        owner = "m" + "".join(f"._modules[{p!r}]" for p in path)
        kind = "_parameters" if self._is_parameter(target) else "_buffers"
        return f"{owner}.{kind}[{leaf!r}]"

    def _is_parameter(self, target: str) -> bool:
        try:
            self.model.get_parameter(target)
        except AttributeError:
            return False
        return True

    def offline_values(self, x: Tensor) -> dict[str, Any]:
        """Every node's value when the captured graph runs offline on the whole signal ``x``
        (what the step-model transform reads constants and edge values from)."""
        env: dict[str, Any] = {}
        handlers = dict(self.handlers.items())
        for node in self._graph.nodes:
            if node.op == "placeholder":
                env[node.name] = x if node is self._input else self._source(node.name)
            elif node.op == "call_function":
                args = fx.node.map_arg(node.args, lambda n: env[n.name])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
                reshape = handlers.get(node.name)
                if node.target is LEAF_OP:
                    env[node.name] = _run_leaf(self._leaves[str(args[1])], args[0])
                elif isinstance(reshape, Reshape):  # (the capture fixed the example's batch)
                    env[node.name] = reshape.step([args[0]], False)
                else:
                    env[node.name] = node.target(*args, **kwargs)
        return env

    @property
    def timing(self) -> Timing:
        """The plan's time figures of every streamed node (computed once, without streaming)."""
        if self._timing is None:
            self._timing = graph_timing(self)
        return self._timing

    @property
    def rate(self) -> Fraction:
        """Output samples per input sample (of the first output), e.g. ``Fraction(2)`` for a
        2x upsampler: the product of the rates of the layers on the way."""
        return self._rate_of(self._outputs[0])

    def _rate_of(self, node: fx.Node) -> Fraction:
        return self.timing.rates[node.name]

    @property
    def latency(self) -> int:
        """Input samples of lookahead: how many samples past the one an output sits at (output
        ``j`` sits at input ``j / rate``) the stream needs before it returns that output.

        Read off the layers' time rules (:mod:`torchstreamer.plan`), exactly, for every output.
        """
        return self._node_latency(self._outputs[0])

    def _node_latency(self, node: fx.Node) -> int:
        return self.timing.latency(node.name)

    @property
    def receptive_field(self) -> Optional[int]:
        """Input samples that one output depends on, from the first to the last (the widest
        over the outputs' phases); ``None`` when it is unbounded (after a recurrent layer or a
        running sum over time). Read off the layers' windows, exactly."""
        return self.timing.receptive_field(self._outputs[0].name)

    def _probe_signal(self) -> Tensor:
        shape = list(self._example_shape)
        shape[self._axis] *= 4
        reference = next(iter(self.model.parameters()), None)
        dtype = reference.dtype if reference is not None else torch.float32
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        return x if reference is None else x.to(reference.device)

    def _state_sizes(self) -> dict[str, int]:
        """Bytes of state each handler holds while a signal streams: one block of the probe
        signal through a copy of the handlers (sharing the model's modules)."""
        if self._sizes is not None:
            return self._sizes
        shared = {
            id(t): t
            for t in [*self.model.modules(), *self.model.parameters(), *self.model.buffers()]
        }
        original, batch = self.handlers, self._batch
        self.handlers = copy.deepcopy(original, shared)
        try:
            self.reset()
            with torch.no_grad():
                self._run_block(self._probe_signal(), False)
            sizes = {}
            for name, handler in self.handlers.items():
                sizes[name] = sum(
                    getattr(m, t).numel() * getattr(m, t).element_size()
                    for m in handler.modules()
                    if isinstance(m, Stateful)
                    for t in m._state_tensors
                )
        finally:
            self.handlers, self._batch = original, batch
        self._sizes = sizes
        return sizes

    def layers(self) -> list[dict[str, Any]]:
        """One row per streamed node that runs along time: ``node``, ``op``, ``layer`` (its path
        in the model), ``length`` (in terms of the input length ``T``), ``rate`` (against the
        input), ``window`` (input samples the op reads per output: kernel span; ``None`` for
        recurrent layers, whose memory is unbounded), ``receptive_field`` (input samples that one
        of its outputs depends on; ``None`` after a recurrent layer), ``latency`` (lookahead
        accumulated up to this node, in input samples) and ``state_bytes``."""
        sizes = self._state_sizes()
        timing = self.timing
        symbol = next(iter(time_length(self._input).free_symbols))
        rows = []
        for node in self._graph.nodes:
            if node.name not in self.handlers or time_axis(node) is None:
                continue
            handler = self.handlers[node.name]
            op, state = str(node.target), sizes.get(node.name, 0)
            source = node.args[0] if node.args else None
            if isinstance(source, fx.Node) and source.target is LEAF_OP:
                # the output of an opaque leaf (a recurrent layer, a max pool): report the layer
                handler = self.handlers[source.name]
                op = f"{type(self._leaves[str(source.args[1])]).__name__} (leaf)"
                state = sizes.get(source.name, 0)
            stack = node.meta.get("nn_module_stack") or {}
            window: Optional[int] = 1
            inner = getattr(handler, "inner", handler)
            if isinstance(inner, RecurrentHandler):
                window = None
            elif isinstance(inner, ModuleStreamHandler):
                window = int(getattr(inner.stream, "_span", 1))
            rows.append(
                {
                    "node": node.name,
                    "op": op,
                    "layer": str(list(stack.values())[-1][0]) if stack else "",
                    "length": str(time_length(node)).replace(str(symbol), "T"),
                    "rate": timing.rates[node.name],
                    "window": window,
                    "receptive_field": timing.receptive_field(node.name),
                    "latency": timing.latency(node.name),
                    "state_bytes": state,
                }
            )
        return rows

    def summary(self) -> str:
        """A table of the streamed nodes: op, layer, and the length of its output in terms of
        the input length ``T``."""
        symbol = next(iter(time_length(self._input).free_symbols))
        rows = ["| node | op | layer | length |", "|---|---|---|---|"]
        for node in self._graph.nodes:
            if node.name not in self.handlers:
                continue
            stack = node.meta.get("nn_module_stack") or {}
            layer = list(stack.values())[-1][0] if stack else ""
            length = (
                str(time_length(node)).replace(str(symbol), "T")
                if time_axis(node) is not None
                else "-"
            )
            rows.append(f"| {node.name} | {node.target} | {layer} | {length} |")
        rows.append(
            f"\nrate {self.rate}, latency {self.latency} samples, "
            f"receptive field {self.receptive_field} samples"
        )
        return "\n".join(rows)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> GraphStream:
        result = super()._apply(fn, recurse)
        self._find_weight()  # .to() may replace it
        return result

    def _find_weight(self) -> None:
        """Note a parameter of the model: blocks must have its dtype and device. (Kept out of
        nn.Module's registries: it is the model's own parameter.)"""
        self.__dict__["_weight"] = next(iter(self.model.parameters()), None)

    def _check_block(self, x: Tensor) -> None:
        """Raise :class:`StreamInputError` before any state changes unless ``x`` fits."""
        reference, shape = self._weight, x.shape
        if (
            x.dim() == len(self._example_shape)
            and all(shape[i] == size for i, size in self._fixed_sizes)
            and x.is_floating_point()
            and (reference is None or (x.dtype == reference.dtype and x.device == reference.device))
            and (self._batch < 0 or self._axis == 0 or shape[0] == self._batch)
        ):
            return  # the common case, checked fast; otherwise say what does not fit
        self._refuse_block(x)

    def _refuse_block(self, x: Tensor) -> None:
        expected = ["T" if i == self._axis else str(s) for i, s in enumerate(self._example_shape)]
        expected[0] = "B" if self._axis != 0 else expected[0]
        shape = list(x.shape)
        fits = x.dim() == len(self._example_shape) and all(
            i in (0, self._axis) or shape[i] == size for i, size in enumerate(self._example_shape)
        )
        if not fits:
            raise StreamInputError(
                f"The {self._label} was built for blocks shaped [{', '.join(expected)}] but got "
                f"shape {shape}."
            )
        if not x.is_floating_point():
            raise StreamInputError(
                f"The {self._label} expects a floating-point block but got dtype {x.dtype}."
            )
        reference = self._weight
        if reference is not None and (x.dtype != reference.dtype or x.device != reference.device):
            raise StreamInputError(
                f"The {self._label} computes in {reference.dtype} on {reference.device} but the "
                f"block is {x.dtype} on {x.device}; convert the block or the model."
            )
        if self._batch >= 0 and self._axis != 0 and x.shape[0] != self._batch:
            raise StreamInputError(
                f"The {self._label} is in the middle of a signal with batch size {self._batch} "
                f"but got a block with batch size {x.shape[0]}; finish the signal with "
                "final=True or call reset() first."
            )

    def _check_state(self, state: dict[str, Tensor]) -> None:
        """The samples kept for the next call, and every join's and crop's held samples,
        against what the plan says they are after the samples the layers have taken."""
        filled, seen = state_int(state, "_filled"), state_int(state, "_seen")
        schedule = self._schedule_or_none()
        wait = schedule.longest_wait if schedule is not None else 0
        found = ""
        if seen < 0 or not 0 <= filled <= min(seen, wait):
            found = (
                f"'_filled' is {filled} and '_seen' {seen}, but at most {wait} samples wait, "
                "and no more than have come"
            )
        elif filled and state["_pending"].shape[self._axis] != wait:
            found = f"'_pending' has shape {list(state['_pending'].shape)}"
        taken = seen - filled
        for name, handler in self.handlers.items():
            if found:
                break
            found = self._held_fits(name, handler, state, taken)
        if found:
            raise StreamError(
                f"The state does not fit the {self._label}: {found}; restore a state that "
                "get_state() returned for a stream of the same model."
            )

    def _held_fits(self, name: str, handler: Any, state: dict[str, Tensor], taken: int) -> str:
        """What is wrong with the samples that a join or crop holds (``""`` if nothing)."""
        timing = self.timing

        def count(node: str) -> int:
            return timing.count_at(node, taken)

        def length(key: str, axis: int) -> int:
            value = state[f"handlers.{name}.{key}"]
            return 0 if value.dim() <= 1 else int(value.shape[axis])

        node = self._nodes[name]
        if isinstance(handler, TimeSlice):
            source = self.timing.inputs[name][0]
            held = min(handler.right, max(0, count(source) - handler.start))
            if taken and length("_held", handler.axis) != held:
                return f"crop {name} holds {length('_held', handler.axis)} samples, not {held}"
        elif isinstance(handler, Aligned) and len(handler.positions) > 1:
            for i, (position, axis) in enumerate(zip(handler.positions, handler.axes)):
                source = argument_at(node.args, position)
                if not isinstance(source, fx.Node) or source.name not in timing.counts:
                    continue
                waiting = count(source.name) - count(name)
                if length(f"_pending{i}", axis) != waiting:
                    return (
                        f"join {name} keeps {length(f'_pending{i}', axis)} samples of its input "
                        f"{i}, not {waiting}"
                    )
        return ""

    def get_state(self) -> dict[str, Tensor]:
        """The state as tensors, keyed by name (see :meth:`BaseStream.get_state`); with the frame
        engine, its state under ``engine.`` and the batch size it is built for."""
        if not self._uses_engine():  # the handlers' state (the engine's is not in use)
            return {k: v for k, v in super().get_state().items() if not k.startswith("_engine.")}
        engine = self._engine
        assert engine is not None
        state = {f"engine.{k}": v for k, v in engine.get_state().items()}
        state["_batch"] = torch.tensor(self._batch)
        state["_rows"] = torch.tensor(self._engine_rows)
        return state

    def set_state(self, state: dict[str, Tensor]) -> None:
        """Restore a state from :meth:`get_state`; nothing changes when it does not fit.

        Raises:
            StreamError: the state does not fit this stream.
        """
        check_state_values(state)
        if not self._uses_engine():
            super().set_state(state)
            return
        engine = self._engine
        assert engine is not None
        own = {"_batch", "_rows"} | {f"engine.{k}" for k in engine.get_state()}
        if set(state) - {k for k in state if k.startswith("engine.")} != {"_batch", "_rows"}:
            raise StreamError(
                f"The state does not fit this stream: missing {sorted(own - set(state))}, "
                f"unexpected {sorted(set(state) - own)}."
            )
        for key in ("_batch", "_rows"):
            value = state[key]
            if value.dim() != 0 or value.dtype != torch.int64:
                raise StreamError(
                    f"State '{key}' is a counter and must be a 0-d int64 tensor but is a "
                    f"{value.dtype} tensor shaped {list(value.shape)}."
                )
        batch, rows = state_int(state, "_batch"), state_int(state, "_rows")
        if (self._axis != 0 and rows < 1) or batch not in (-1, rows):
            raise StreamError(
                f"The state does not fit the {self._label}: '_batch' is {batch} and '_rows' "
                f"{rows}; restore a state that get_state() returned for a stream of the same "
                "model."
            )
        kept = (engine, self._engine_rows)
        try:
            if rows != self._engine_rows:
                self._engine_for_rows(rows)
            if self._engine is None:
                raise StreamError(
                    f"The state is for {rows} batch rows, which the {self._label} runs only on "
                    f"its interpreter: {self._engine_refusal}."
                )
            self._engine.set_state(
                {k[len("engine.") :]: v for k, v in state.items() if k.startswith("engine.")}
            )
        except StreamError:
            self._engine, self._engine_rows = kept
            raise
        self._batch = batch

    def reset(self) -> None:
        """Drop the signal in progress."""
        self._batch = -1
        self._filled = 0
        self._seen = 0
        if self._engine is not None:
            self._engine.reset()
        for handler in self.handlers.values():
            handler.reset()  # type: ignore[operator]


def _run_leaf(module: nn.Module, x: Tensor) -> list[Tensor]:
    """What the leaf op returns for ``module`` on ``x``: its outputs, flattened."""
    result = module(x)
    flat: list[Tensor] = []
    for part in result if isinstance(result, tuple) else [result]:
        flat.extend(part if isinstance(part, tuple) else [part])
    return flat


def stream(model: nn.Module, example: Tensor, axis: int = -1) -> GraphStream:
    """Build a stream of ``model``, captured with ``torch.export`` on ``example``.

    The stream takes blocks shaped like ``example`` with any length on ``axis`` (and any batch
    size) and returns, per call, the outputs those blocks complete; after ``final=True`` the
    concatenated outputs equal ``model(x)`` on the whole signal, padding and edges included.

    This is a first version: convolutions, transposed convolutions, padding, average pooling,
    elementwise ops, joins (add, mul, cat over channels...) aligned by index, channel splits,
    time slices with fixed offsets, and per-step ``linear``/``layer_norm``/``softmax`` stream;
    every other op that touches time is refused with the layer's path. The stream reads the
    model's weights when it is built (the frame engine copies them): build a new stream after
    changing them.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> class Block(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = torch.nn.Conv1d(2, 2, 3, padding=1)
        ...     def forward(self, x):
        ...         return x + torch.tanh(self.conv(x))
        >>> model, x = Block().eval(), torch.randn(1, 2, 64)
        >>> s = pts.stream(model, x)
        >>> y = torch.cat([s(x[..., :10]), s(x[..., 10:], final=True)], -1)
        >>> torch.allclose(y, model(x), atol=1e-6)
        True
    """
    return GraphStream(model, example, axis)
