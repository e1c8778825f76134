"""Straight-line Python generated from a graph: one line per node, every object the code names
bound as a global of the function. Graph streams and step models both run such code, so that a
call pays for its ops and not for a dispatch loop over the graph.

Example:
    >>> source = Source("add_one(x)")
    >>> source.line(f"return x + {source.bind(1.5)}")
    >>> source.compile("<example>")(1.0)
    2.5
"""

from __future__ import annotations

from typing import Any, Callable

from torch import fx

__all__ = ["Source"]


class Source:
    """A function's source built line by line; :meth:`show` writes a node argument."""

    def __init__(self, signature: str) -> None:
        self.signature = signature
        self.lines: list[str] = []
        self.bound: dict[str, Any] = {}
        self.names: dict[fx.Node, str] = {}  # the local variable of every node already written

    def bind(self, value: Any) -> str:
        """A global name for ``value``."""
        name = f"_k{len(self.bound)}"
        self.bound[name] = value
        return name

    def show(self, value: Any) -> str:
        """``value`` as an expression: nodes by their variable, literals as they are, any
        other object bound as a global."""
        if isinstance(value, fx.Node):
            return self.names[value]
        if isinstance(value, list):
            return "[" + ", ".join(self.show(v) for v in value) + "]"
        if isinstance(value, tuple):
            return "(" + "".join(self.show(v) + ", " for v in value) + ")"
        if value is None or isinstance(value, (bool, int, str)):
            return repr(value)
        return self.bind(value)

    def arguments(self, args: Any, kwargs: dict[str, Any]) -> str:
        """``a, b, key=c`` for a node's arguments."""
        parts = [self.show(a) for a in args] + [f"{k}={self.show(v)}" for k, v in kwargs.items()]
        return ", ".join(parts)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def compile(self, filename: str) -> Callable[..., Any]:
        """The function; its source is its ``__doc__``."""
        text = f"def {self.signature}:\n" + "".join(f"    {line}\n" for line in self.lines)
        namespace = dict(self.bound)
        exec(compile(text, filename, "exec"), namespace)
        function: Callable[..., Any] = namespace[self.signature.split("(", 1)[0]]
        function.__doc__ = text
        return function
