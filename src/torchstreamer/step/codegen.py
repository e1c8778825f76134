"""Compile a step graph into one flat Python function with its tensors bound as globals.

``torch.fx``'s own code reads every weight and state through ``nn.Module`` attribute lookups and
runs inside two module calls; for a step that takes microseconds, those lookups are a large part
of the cost. The generated function names each tensor directly instead. It must be rebuilt when
the tensors are replaced (``.to()``), which :class:`StepModel` does.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import fx, nn

__all__ = ["compile_graph"]


def compile_graph(graph: fx.Graph, root: nn.Module) -> Callable[..., Any]:
    """A function equal to ``fx.GraphModule(root, graph).forward`` that reads ``root``'s
    buffers, parameters and submodules once, now."""
    names: dict[fx.Node, str] = {}
    bound: dict[str, Any] = {}
    lines: list[str] = []
    inputs: list[str] = []

    def bind(value: Any) -> str:
        name = f"_k{len(bound)}"
        bound[name] = value
        return name

    def show(value: Any) -> str:
        if isinstance(value, fx.Node):
            return names[value]
        if isinstance(value, (list, tuple)):
            items = ", ".join(show(v) for v in value)
            return f"[{items}]" if isinstance(value, list) else f"({items}{',' if value else ''})"
        if value is None or isinstance(value, (bool, int, str)):
            return repr(value)
        return bind(value)

    def call(node: fx.Node, function: str, args: tuple[Any, ...]) -> str:
        return f"{function}({_join(show, list(args), node)})"

    for index, node in enumerate(graph.nodes):
        name = f"v{index}"
        names[node] = name
        if node.op == "placeholder":
            inputs.append(name)
        elif node.op == "get_attr":
            names[node] = bind(_attribute(root, str(node.target)))
        elif node.op == "call_function":
            lines.append(f"{name} = {call(node, bind(node.target), node.args)}")
        elif node.op == "call_method":
            receiver, *rest = node.args
            lines.append(f"{name} = {show(receiver)}.{node.target}({_join(show, rest, node)})")
        elif node.op == "call_module":
            module = bind(root.get_submodule(str(node.target)))
            lines.append(f"{name} = {call(node, module, node.args)}")
        elif node.op == "output":
            lines.append(f"return {show(node.args[0])}")
    source = f"def step({', '.join(inputs)}):\n" + "".join(f"    {line}\n" for line in lines)
    namespace: dict[str, Any] = dict(bound)
    exec(compile(source, "<torchstreamer step>", "exec"), namespace)
    function: Callable[..., Any] = namespace["step"]
    function.__doc__ = source  # the generated code, for whoever wants to read it
    return function


def _join(show: Callable[[Any], str], args: list[Any], node: fx.Node) -> str:
    parts = [show(a) for a in args] + [f"{k}={show(v)}" for k, v in node.kwargs.items()]
    return ", ".join(parts)


def _attribute(root: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)
