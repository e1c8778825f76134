"""Compile a step graph into one flat Python function with its tensors bound as globals.

``torch.fx``'s own code reads every weight and state through ``nn.Module`` attribute lookups and
runs inside two module calls; for a step that takes microseconds, those lookups are a large part
of the cost. The generated function names each tensor directly instead. It must be rebuilt when
the tensors are replaced (``.to()``), which :class:`StepModel` does.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import fx, nn

from torchstreamer.generated import Source

__all__ = ["compile_graph"]

_COMPUTED = ("call_function", "call_method", "call_module")


def compile_graph(graph: fx.Graph, root: nn.Module) -> Callable[..., Any]:
    """A function equal to ``fx.GraphModule(root, graph).forward`` that reads ``root``'s
    buffers, parameters and submodules once, now."""
    inputs = [f"v{i}" for i, n in enumerate(graph.nodes) if n.op == "placeholder"]
    source = Source(f"step({', '.join(inputs)})")
    last_use = {value: node for node in graph.nodes for value in node.all_input_nodes}
    for index, node in enumerate(graph.nodes):
        name = source.names[node] = f"v{index}"
        if node.op == "get_attr":
            source.names[node] = source.bind(_attribute(root, str(node.target)))
        elif node.op == "call_function":
            call = f"{source.bind(node.target)}({source.arguments(node.args, node.kwargs)})"
            source.line(f"{name} = {call}")
        elif node.op == "call_method":
            receiver, *rest = node.args
            call = f"{source.show(receiver)}.{node.target}({source.arguments(rest, node.kwargs)})"
            source.line(f"{name} = {call}")
        elif node.op == "call_module":
            module = source.bind(root.get_submodule(str(node.target)))
            source.line(f"{name} = {module}({source.arguments(node.args, node.kwargs)})")
        elif node.op == "output":
            source.line(f"return {source.show(node.args[0])}")
        # values whose last use this was: freed now, as offline (long frames hold large ones)
        dead = [v for v in node.all_input_nodes if last_use[v] is node and v.op in _COMPUTED]
        dead += [node] if node.op in _COMPUTED and not node.users else []
        if dead and node.op != "output":
            source.line(f"del {', '.join(source.names[v] for v in dead)}")
    return source.compile("<torchstreamer step>")


def _attribute(root: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)
