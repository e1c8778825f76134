"""`stream(model, example)`: a stream of any model that ``torch.export`` can capture.

The captured graph is analysed once: every node whose value depends on the time axis gets a
handler (:mod:`torchstreamer.graph.handlers`); nodes that depend only on parameters (weight
norm, constants) are recomputed from the model's current parameters on every call.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor, fx, nn

from torchstreamer.base import BaseStream, check_block
from torchstreamer.graph.analysis import refuse, time_axis
from torchstreamer.graph.capture import capture
from torchstreamer.graph.handlers import Handler, TimeSlice, build_handler

__all__ = ["GraphStream", "stream"]


class GraphStream(BaseStream):
    """Streams a captured model: blocks in, the completed outputs out (see :func:`stream`)."""

    def __init__(self, model: nn.Module, example: Tensor, axis: int = -1) -> None:
        super().__init__()
        self.model = model
        self._axis = axis % example.dim()
        self._example_shape = list(example.shape)
        program, leaves = capture(model, example, self._axis)
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
                    handlers[node.name], TimeSlice
                ):
                    raise refuse(
                        node, "it uses the length of the signal, which is unknown while streaming"
                    )
            elif time_axis(node) is not None:
                raise refuse(node, "its time axis does not come from the input")
        self.handlers = nn.ModuleDict(handlers)
        outputs = next(n for n in self._graph.nodes if n.op == "output").args[0]
        self._outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        for output in self._outputs:
            if not isinstance(output, fx.Node) or output.name not in self._timed:
                raise refuse(output, "the model returns a value that does not follow the time axis")

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
        if x.dim() != len(self._example_shape):
            check_block(self._label, x, -1, None, 0, -1)
        shape = list(x.shape)
        expected = list(self._example_shape)
        shape[self._axis] = expected[self._axis] = -1
        if shape[1:] != expected[1:] if self._axis != 0 else shape != expected:
            raise_input(self._label, x, self._example_shape, self._axis)
        env: dict[str, Any] = {}
        for node in self._graph.nodes:
            if node.op == "placeholder":
                env[node.name] = x if node is self._input else self._source(node.name)
            elif node.op == "call_function":
                if node.name in self._symbolic:  # read by time slices at build time only
                    env[node.name] = None
                    continue
                args = fx.node.map_arg(node.args, lambda n: env[n.name])
                if node.name in self.handlers:
                    env[node.name] = self.handlers[node.name].step(list(args), final)  # type: ignore[operator]
                else:
                    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
                    env[node.name] = node.target(*args, **kwargs)
        results = [env[o.name] for o in self._outputs]
        if len(results) == 1:
            y = results[0]
            return None if y.shape[time_axis(self._outputs[0])] == 0 else y
        return tuple(results)

    @torch.jit.unused
    def reset(self) -> None:
        for handler in self.handlers.values():
            handler.reset()  # type: ignore[operator]


def raise_input(label: str, x: Tensor, example: list[int], axis: int) -> None:
    from torchstreamer.errors import StreamInputError

    shape = ["T" if i == axis else str(s) for i, s in enumerate(example)]
    raise StreamInputError(
        f"The {label} was built for blocks shaped [{', '.join(shape)}] (any batch size) but got "
        f"shape {list(x.shape)}."
    )


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
