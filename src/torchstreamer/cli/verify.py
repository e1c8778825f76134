"""``torchstreamer verify MODEL``: stream random signals in random blocks and compare with the
offline model; on a mismatch, name the first layer whose streamed output diverges."""

from __future__ import annotations

import random
from typing import Any, Optional

import torch
from torch import Tensor

from torchstreamer.cli.show import count, message, progress, stage
from torchstreamer.cli.spec import LoadedModel
from torchstreamer.errors import NotStreamableError
from torchstreamer.graph.analysis import describe, time_axis
from torchstreamer.graph.stream import GraphStream, stream

__all__ = ["verify_model"]


def verify_model(
    loaded: LoadedModel, signals: int = 5, seed: int = 0, tolerance: float = 1e-5
) -> int:
    """Exit code 0 when every streamed output equals the offline one (relative ``tolerance``),
    1 on a mismatch or when the model cannot stream."""
    try:
        with stage(f"tracing {loaded.name}"):
            graph = stream(loaded.model, loaded.example)
    except NotStreamableError as error:
        message(f"{loaded.name} cannot stream.\n{error}", error=True)
        return 1
    chooser = random.Random(seed)
    base = loaded.example.shape[-1]
    worst = 0.0
    for index in progress(list(range(signals)), "verifying"):
        x = loaded.signal(chooser.randint(max(1, base // 2), 2 * base), seed=seed + index)
        sizes = [0, 1, *(chooser.randint(0, 2 * base) for _ in range(3))]
        chooser.shuffle(sizes)
        with torch.no_grad():
            streamed = _run(graph, x, sizes, None)
            expected = loaded.model(x)
        gap = _error(streamed, expected)
        if gap is None or gap > tolerance:
            shown = "different shapes" if gap is None else f"max relative error {gap:.2e}"
            length = count(x.shape[-1], "sample")
            message(f"MISMATCH on signal {index} ({length}, blocks {sizes}): {shown}.")
            with stage("looking for the first layer that diverges"):
                culprit = _first_divergence(graph, x, sizes, tolerance)
            if culprit:
                message(f"first layer whose streamed output diverges: {culprit}")
            return 1
        worst = max(worst, gap)
    message(
        f"{loaded.name}: exact. {count(signals, 'random signal')} in random blocks (0 and 1 "
        f"included); max relative error {worst:.2e} (tolerance {tolerance:.0e})."
    )
    return 0


def _run(
    graph: GraphStream, x: Tensor, sizes: list[int], record: Optional[dict[str, list[Any]]]
) -> Tensor:
    graph.reset()
    outputs, start, turn = [], 0, 0
    while True:
        size = sizes[turn % len(sizes)]
        turn += 1
        final = start + size >= x.shape[-1]
        if record is not None:
            graph._record = {}
        try:
            y = graph(x[..., start : start + size], final=final)
            if record is not None:
                assert graph._record is not None
                for name, value in graph._record.items():
                    record.setdefault(name, []).append(value)
        finally:
            graph._record = None
        if y is not None:
            outputs.append(y[0] if isinstance(y, tuple) else y)
        start += size
        if final:
            break
    return torch.cat(outputs, -1) if outputs else x.new_zeros(0)


def _error(streamed: Tensor, expected: Any) -> Optional[float]:
    expected = expected[0] if isinstance(expected, tuple) else expected
    if streamed.shape != expected.shape:
        return None
    if expected.numel() == 0:
        return 0.0
    scale = max(1.0, float(expected.abs().max()))
    return float((streamed - expected).abs().max()) / scale


def _first_divergence(graph: GraphStream, x: Tensor, sizes: list[int], tolerance: float) -> str:
    record: dict[str, list[Any]] = {}
    with torch.no_grad():
        _run(graph, x, sizes, record)
        offline = graph.offline_values(x)
    for node in graph._graph.nodes:
        axis = time_axis(node) if node.name in record else None
        if axis is None:
            continue
        blocks = [b for b in record[node.name] if isinstance(b, Tensor)]
        streamed = torch.cat(blocks, axis) if blocks else None
        if streamed is None or _error(streamed, offline[node.name]) is None:
            return describe(node) + " (its streamed length differs from the offline one)"
        error = _error(streamed, offline[node.name])
        if error is not None and error > tolerance:
            return describe(node) + f" (max relative error {error:.2e})"
    return ""
