"""What the library knows about each node of a captured graph: its time axis and its origin."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Optional

import torch
from torch import fx

from torchstreamer.errors import NotStreamableError
from torchstreamer.graph.capture import time_symbol

__all__ = [
    "describe",
    "expression_period",
    "length_period",
    "refuse",
    "same_lengths",
    "time_axis",
    "time_length",
]


def _value(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def time_axis(node: Any) -> Optional[int]:
    """The axis of a node's tensor that depends on the time length, or ``None`` if none does."""
    value = _value(node)
    if not isinstance(value, torch.Tensor):
        return None
    axes = [i for i, size in enumerate(value.shape) if time_symbol(size)]
    if len(axes) > 1:
        raise refuse(node, f"its result has {len(axes)} axes that depend on time")
    return axes[0] if axes else None


def time_length(node: fx.Node) -> Any:
    """The symbolic length of a node's time axis (a sympy expression)."""
    axis = time_axis(node)
    assert axis is not None
    return node.meta["val"].shape[axis].node.expr


def expression_period(expr: Any) -> Optional[int]:
    """A number of samples ``P`` such that the length expression ``expr`` (sympy, in the
    signal's length) grows by a constant every ``P`` samples, far from the start; ``None``
    where it is not of that kind (see :func:`length_period`)."""
    import sympy

    def step(expr: Any, base: int) -> Optional[Fraction]:
        """How much ``expr`` grows over ``base`` samples, far from the start (a fraction)."""
        symbols = list(expr.free_symbols)
        if len(symbols) != 1:
            return Fraction(0)
        t = 1000 * base + 7919  # (past the short lengths where floors and ceilings clamp)
        try:
            grown = float(expr.subs(symbols[0], t + base) - expr.subs(symbols[0], t))
        except (TypeError, ValueError):
            return None
        return Fraction(grown).limit_denominator(1 << 20)

    def floored(inner: Any) -> Optional[int]:
        """The period of an integer part of ``inner``: until ``inner`` grows by a whole."""
        base = period(inner)
        grown = step(inner, base) if base is not None else None
        return None if base is None or grown is None else base * grown.denominator

    def period(expr: Any) -> Optional[int]:
        if isinstance(expr, sympy.Symbol) or expr.is_number:
            return 1
        name = type(expr).__name__
        if name in ("FloorDiv", "PythonMod", "Mod", "CleanDiv") and len(expr.args) == 2:
            inner, divisor = expr.args
            if not isinstance(divisor, sympy.Integer) or int(divisor) <= 0:
                return None
            return floored(inner / divisor)
        if name in ("CeilToInt", "FloorToInt", "TruncToInt") and len(expr.args) == 1:
            return floored(expr.args[0])  # (EnCodec: ceil((T - k + p) / stride + 1))
        if name in ("IntTrueDiv", "FloatTrueDiv") and len(expr.args) == 2:
            if not expr.args[1].is_number:
                return None
            return period(expr.args[0])
        if isinstance(expr, (sympy.Add, sympy.Mul)):
            if isinstance(expr, sympy.Mul) and sum(not a.is_number for a in expr.args) > 1:
                return None  # (a product of two lengths)
            total = 1
            for arg in expr.args:
                own = period(arg)
                if own is None:
                    return None
                total = math.lcm(total, own)
            return total
        return None

    return period(expr)


def length_period(graph: fx.Graph) -> Optional[int]:
    """A number of samples ``P`` such that every length in ``graph`` (time axes, and sizes
    computed from the length) changes by a whole constant when the signal gets ``P`` samples
    longer: then a signal ``P * k`` samples shorter pads, crops and floors the same way at its
    end. ``None`` where an expression is not of that kind.

    Example: ``(T // 2) // 2`` and ``(-T) % 4`` have period 4, ``ceil((T - 1) / 2 + 1)`` 2.
    """
    total = 1
    for node in graph.nodes:
        value = _value(node)
        sizes = (
            list(value.shape)
            if isinstance(value, torch.Tensor)
            else [value]
            if isinstance(value, torch.SymInt)
            else []
        )
        for size in sizes:
            if isinstance(size, torch.SymInt):
                own = expression_period(size.node.expr)
                if own is None:
                    return None
                total = math.lcm(total, own)
    return total


def describe(node: fx.Node) -> str:
    """``layer 'enc.0' (Conv1d), op aten.conv1d.default, at model.py:12 `return ...```."""
    stack = node.meta.get("nn_module_stack") or {}
    path, kind = list(stack.values())[-1] if stack else ("", "")
    kind = str(kind).rsplit(".", 1)[-1]
    where = f"layer '{path}' ({kind})" if path else "the model's forward"
    text = f"{where}, op {node.target}"
    trace = [line.strip() for line in str(node.meta.get("stack_trace") or "").splitlines()]
    frames = [
        (trace[i], trace[i + 1] if i + 1 < len(trace) else "")
        for i in range(len(trace))
        if trace[i].startswith("File ")
        and "site-packages/torch" not in trace[i]
        and "torchstreamer/graph/leaves.py" not in trace[i]
    ]
    if frames:
        location, code = frames[-1]
        parts = location.split(",")
        line = parts[1].strip().replace("line ", "") if len(parts) > 1 else "?"
        text += f", at {parts[0][5:].strip(chr(34)).rsplit('/', 1)[-1]}:{line} `{code}`"
    return text


def refuse(node: fx.Node, reason: str, remedy: str = "") -> NotStreamableError:
    """The error for a node that cannot be streamed: where it comes from, why, what to do."""
    remedy = remedy or (
        "change the model so that this op does not depend on the whole time axis, or wrap the "
        "layer in a module and register a streamer for it"
    )
    return NotStreamableError(f"Cannot stream {describe(node)}: {reason}. To stream it, {remedy}.")


def same_lengths(nodes: list[fx.Node]) -> bool:
    """Whether the nodes' time lengths are equal for every input length the capture allows.

    Lengths such as ``T//2`` and ``2*(T//4)`` are equal only when ``T`` is a multiple of 4,
    which the capture records as a guard; they are compared on the lengths that satisfy every
    guard (a few hundred of them).
    """
    expressions = [time_length(n) for n in nodes]
    if all(e == expressions[0] for e in expressions):
        return True
    size = nodes[0].meta["val"].shape[time_axis(nodes[0])]
    shape_env = size.node.shape_env
    symbols = set().union(*(e.free_symbols for e in expressions))
    if len(symbols) != 1:
        return False
    symbol = symbols.pop()
    guards = [g.expr for g in shape_env.guards if g.expr.free_symbols <= {symbol}]
    tested = 0
    for length in range(2, 2048):
        if not all(bool(g.subs(symbol, length)) for g in guards):
            continue
        values = {int(e.subs(symbol, length)) for e in expressions}
        if len(values) != 1:
            return False
        tested += 1
        if tested >= 64:
            break
    return tested > 0
