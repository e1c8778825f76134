"""`stream(model, example)`: a stream of any model that ``torch.export`` can capture.

The captured graph is analysed once: every node whose value depends on the time axis gets a
handler (:mod:`torchstreamer.graph.handlers`); nodes that depend only on parameters (weight
norm, constants) are recomputed from the model's current parameters on every call.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, fx, nn

from torchstreamer.base import BaseStream, Stateful
from torchstreamer.errors import StreamInputError
from torchstreamer.generated import Source
from torchstreamer.graph.analysis import refuse, time_axis, time_length
from torchstreamer.graph.capture import capture
from torchstreamer.graph.handlers import (
    Handler,
    ModuleStreamHandler,
    RecurrentHandler,
    Reshape,
    TimeSlice,
    build_handler,
)
from torchstreamer.graph.leaves import LEAF_OP

__all__ = ["GraphStream", "stream"]


class GraphStream(BaseStream):
    """Streams a captured model: blocks in, the completed outputs out (see :func:`stream`)."""

    _state_ints = ("_batch",)

    def __init__(self, model: nn.Module, example: Tensor, axis: int = -1) -> None:
        super().__init__()
        self.model = model
        self._axis = axis % example.dim()
        self._example_shape = list(example.shape)
        program, leaves = capture(model, example, self._axis)
        self._leaves = leaves
        self._graph = program.graph
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
        self._batch = -1
        self._latency: Optional[int] = None
        self._receptive_field: Optional[int] = None
        self._probe_result: Optional[tuple[dict[str, list[int]], dict[str, int]]] = None
        # when a dict, forward() puts every streamed node's block in it (verify, inspect)
        self._record: Optional[dict[str, Any]] = None
        handlers: dict[str, Handler] = {}
        self._timed: set[str] = {self._input.name}
        self._symbolic: set[str] = set()
        for node in self._graph.nodes:
            if node.op != "call_function":
                continue
            value = node.meta.get("val")
            if isinstance(value, torch.SymInt):
                self._symbolic.add(node.name)  # sizes, used by slices at build time only
                continue
            inputs = node.all_input_nodes
            if any(n.name in self._timed for n in inputs):
                handlers[node.name] = build_handler(node, leaves)
                self._timed.add(node.name)
                if any(n.name in self._symbolic for n in inputs) and not isinstance(
                    handlers[node.name], (TimeSlice, Reshape)
                ):
                    raise refuse(
                        node, "it uses the length of the signal, which is unknown while streaming"
                    )
            elif time_axis(node) is not None:
                raise refuse(node, "its time axis does not come from the input")
        self.handlers = nn.ModuleDict(handlers)
        self._nodes = {node.name: node for node in self._graph.nodes}
        outputs = next(n for n in self._graph.nodes if n.op == "output").args[0]
        self._outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        for output in self._outputs:
            if not isinstance(output, fx.Node) or output.name not in self._timed:
                raise refuse(output, "the model returns a value that does not follow the time axis")
        self._output_axis = time_axis(self._outputs[0])
        # generated on first use: the call, and the same call recording every streamed block
        self._runs: dict[bool, Callable[..., list[Any]]] = {}

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
        self._check_block(x)
        recording = self._record is not None
        if recording not in self._runs:
            self._runs[recording] = self._generate(recording)
        results = self._runs[recording](self, x, final)
        self._batch = -1 if final else int(x.shape[0])
        if len(results) == 1:
            y = results[0]
            return None if y.shape[self._output_axis] == 0 else y
        return tuple(results)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_runs"] = {}  # generated code does not pickle; it is made again on demand
        return state

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
        for node in self._graph.nodes:
            if node.op == "placeholder":
                env[node.name] = x if node is self._input else self._source(node.name)
            elif node.op == "call_function":
                args = fx.node.map_arg(node.args, lambda n: env[n.name])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
                if node.target is LEAF_OP:
                    env[node.name] = _run_leaf(self._leaves[str(args[1])], args[0])
                else:
                    env[node.name] = node.target(*args, **kwargs)
        return env

    @property
    def rate(self) -> Fraction:
        """Output samples per input sample (of the first output), e.g. ``Fraction(2)`` for a
        2x upsampler."""
        return self._rate_of(self._outputs[0])

    def _rate_of(self, node: fx.Node) -> Fraction:
        expression = time_length(node)
        symbol = next(iter(time_length(self._input).free_symbols))
        low, high = 720720 * 1000, 720720 * 2000  # multiples of every small stride product
        delta = int(expression.subs(symbol, high)) - int(expression.subs(symbol, low))
        return Fraction(delta, high - low)

    @property
    def latency(self) -> int:
        """Input samples of lookahead: how many samples past the one an output sits at (output
        ``j`` sits at input ``j / rate``) the stream needs before it returns that output.

        Measured once by streaming a signal sample by sample through a copy of the stream.
        """
        if self._latency is None:
            self._latency = self._measure_latency()
        return self._latency

    @property
    def receptive_field(self) -> int:
        """Input samples that one output depends on (from the gradient of an output in the
        middle of a random signal, over several signals)."""
        if self._receptive_field is None:
            self._receptive_field = self._measure_receptive_field()
        return self._receptive_field

    def _probe_signal(self) -> Tensor:
        shape = list(self._example_shape)
        shape[self._axis] *= 4
        reference = next(iter(self.model.parameters()), None)
        dtype = reference.dtype if reference is not None else torch.float32
        return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)

    def _measure_latency(self) -> int:
        return self._node_latency(self._outputs[0])

    def _node_latency(self, node: fx.Node) -> int:
        """Input samples of lookahead at ``node``: the most samples past an output's own position
        (``j / rate``) that arrived before the stream returned that output."""
        arrivals, _ = self._probe()
        rate = self._rate_of(node)
        worst = 0
        for j, arrived in enumerate(arrivals.get(node.name, [])):
            worst = max(worst, arrived - 1 - math.floor(j / rate))
        return worst

    def _probe(self) -> tuple[dict[str, list[int]], dict[str, int]]:
        """Stream the probe signal sample by sample through a copy of the handlers (sharing the
        model's modules): per streamed node, the sample count at which each of its outputs came
        out, and the bytes of state each handler holds at the end."""
        if self._probe_result is not None:
            return self._probe_result
        shared = {
            id(t): t
            for t in [*self.model.modules(), *self.model.parameters(), *self.model.buffers()]
        }
        original, batch = self.handlers, self._batch
        self.handlers = copy.deepcopy(original, shared)
        arrivals: dict[str, list[int]] = {name: [] for name in self.handlers}
        try:
            self.reset()
            x = self._probe_signal()
            with torch.no_grad():
                for n in range(1, x.shape[self._axis] + 1):
                    self._record = {}
                    self(x.narrow(self._axis, n - 1, 1))
                    for name, block in self._record.items():
                        node = self._nodes[name]
                        axis = time_axis(node)
                        if axis is not None and isinstance(block, Tensor):
                            arrivals[name].extend([n] * block.shape[axis])
            sizes = {}
            for name, handler in self.handlers.items():
                sizes[name] = sum(
                    getattr(m, t).numel() * getattr(m, t).element_size()
                    for m in handler.modules()
                    if isinstance(m, Stateful)
                    for t in m._state_tensors
                )
        finally:
            self._record = None
            self.handlers, self._batch = original, batch
        self._probe_result = (arrivals, sizes)
        return self._probe_result

    def _node_receptive_fields(self) -> dict[str, int]:
        """Input samples that the middle output of every time node depends on (gradients of
        that output; the union over four random signals, as a ReLU may hide part of it)."""
        shape = list(self._example_shape)
        shape[self._axis] = min(4 * shape[self._axis], 2048)
        reference = next(iter(self.model.parameters()), None)
        dtype = reference.dtype if reference is not None else torch.float32
        spans: dict[str, tuple[int, int]] = {}
        for seed in range(4):
            generator = torch.Generator().manual_seed(seed)
            x = torch.randn(shape, generator=generator, dtype=dtype)
            if reference is not None:
                x = x.to(reference.device)
            x.requires_grad_(True)
            with torch.enable_grad():
                values = self.offline_values(x)
                for node in self._graph.nodes:
                    value = values.get(node.name)
                    axis = time_axis(node) if node.name in self.handlers else None
                    if axis is None or not isinstance(value, Tensor) or not value.requires_grad:
                        continue
                    if value.shape[axis] == 0:
                        continue
                    middle = value.narrow(axis, value.shape[axis] // 2, 1).sum()
                    (grad,) = torch.autograd.grad(middle, x, retain_graph=True, allow_unused=True)
                    if grad is None:
                        continue
                    where = torch.nonzero(_over_time(grad, self._axis)).flatten()
                    if len(where) > 0:
                        low, high = spans.get(node.name, (int(where.min()), int(where.max())))
                        spans[node.name] = (min(low, int(where.min())), max(high, int(where.max())))
        return {name: high - low + 1 for name, (low, high) in spans.items()}

    def layers(self) -> list[dict[str, Any]]:
        """One row per streamed node that runs along time: ``node``, ``op``, ``layer`` (its path
        in the model), ``length`` (in terms of the input length ``T``), ``rate`` (against the
        input), ``window`` (input samples the op reads per output: kernel span; ``None`` for
        recurrent layers, whose memory is unbounded), ``receptive_field`` (input samples that one
        of its outputs depends on; ``None`` after a recurrent layer), ``latency`` (lookahead
        accumulated up to this node, in input samples) and ``state_bytes``."""
        _, sizes = self._probe()
        fields = self._node_receptive_fields()
        symbol = next(iter(time_length(self._input).free_symbols))
        rows = []
        unbounded: set[str] = set()  # nodes that a recurrent layer feeds: they remember it all
        for node in self._graph.nodes:
            if node.name in self.handlers and any(
                n.name in unbounded for n in node.all_input_nodes
            ):
                unbounded.add(node.name)
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
            if isinstance(inner, RecurrentHandler) or any(
                n.name in unbounded for n in node.all_input_nodes
            ):
                unbounded.add(node.name)
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
                    "rate": self._rate_of(node),
                    "window": window,
                    "receptive_field": None if node.name in unbounded else fields.get(node.name, 0),
                    "latency": self._node_latency(node),
                    "state_bytes": state,
                }
            )
        return rows

    def _measure_receptive_field(self) -> int:
        x = self._probe_signal()
        axis = time_axis(self._outputs[0])
        low, high = x.shape[self._axis], -1
        for seed in range(16):  # several signals: a ReLU may block the gradient of one
            probe = x.clone() if seed == 0 else torch.randn_like(x)
            probe.requires_grad_(True)
            y = self.model(probe)
            y = y[0] if isinstance(y, tuple) else y
            middle = y.shape[axis] // 2
            y.narrow(axis, middle, 1).sum().backward()
            assert probe.grad is not None
            touched = _over_time(probe.grad, self._axis)
            where = torch.nonzero(touched).flatten()
            if len(where) > 0:
                low, high = min(low, int(where.min())), max(high, int(where.max()))
        return max(0, high - low + 1)

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

    def _check_block(self, x: Tensor) -> None:
        """Raise :class:`StreamInputError` before any state changes unless ``x`` fits."""
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
        reference = next(iter(self.model.parameters()), None)
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

    def reset(self) -> None:
        """Drop the signal in progress."""
        self._batch = -1
        for handler in self.handlers.values():
            handler.reset()  # type: ignore[operator]


def _over_time(grad: Tensor, axis: int) -> Tensor:
    """``|grad|`` summed over every axis but time (a 1-D signal is its own sum)."""
    dims = [d for d in range(grad.dim()) if d != axis]
    return grad.abs().sum(dim=dims) if dims else grad.abs()


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
    every other op that touches time is refused with the layer's path.

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
