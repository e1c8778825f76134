"""What the library knows about each node of a captured graph: its time axis and its origin."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import fx

from torchstreamer.errors import NotStreamableError
from torchstreamer.graph.capture import time_symbol

__all__ = ["describe", "length_period", "refuse", "same_lengths", "time_axis", "time_length"]


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


def length_period(graph: fx.Graph) -> Optional[int]:
    """A number of samples ``P`` such that every length in ``graph`` (time axes, and sizes
    computed from the length) changes by a whole constant when the signal gets ``P`` samples
    longer: then a signal ``P * k`` samples shorter pads, crops and floors the same way at its
    end. ``None`` where an expression is not of that kind.

    Example: ``(T // 2) // 2`` and ``(-T) % 4`` have period 4.
    """
    import sympy

    def period(expr: Any) -> Optional[int]:
        if isinstance(expr, (sympy.Integer, sympy.Symbol)) or expr.is_number:
            return 1
        name = type(expr).__name__
        if name in ("FloorDiv", "PythonMod", "Mod", "CleanDiv") and len(expr.args) == 2:
            inner, divisor = expr.args
            if not isinstance(divisor, sympy.Integer) or int(divisor) <= 0:
                return None
            base = period(inner)
            if base is None:
                return None
            symbols = list(inner.free_symbols)
            if len(symbols) != 1:  # a constant
                return base
            t = 1000 * base * int(divisor)  # (past the small lengths where floors clamp)
            step = inner.subs(symbols[0], t + base) - inner.subs(symbols[0], t)
            if not step.is_integer:
                return None
            return base * int(divisor) // math.gcd(int(step), int(divisor))
        if isinstance(expr, (sympy.Add, sympy.Mul)):
            if isinstance(expr, sympy.Mul) and any(
                a.is_number and not a.is_integer for a in expr.args
            ):
                return None
            total = 1
            for arg in expr.args:
                own = period(arg)
                if own is None:
                    return None
                total = math.lcm(total, own)
            return total
        return None

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
                own = period(size.node.expr)
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
