"""``torchstreamer inspect MODEL``: can it stream, with what latency, state and receptive field."""

from __future__ import annotations

from typing import Any, Optional

from torchstreamer.cli.show import count, message, stage, table
from torchstreamer.cli.spec import LoadedModel
from torchstreamer.errors import NotStreamableError, StreamError
from torchstreamer.graph.stream import GraphStream, stream
from torchstreamer.step.transform import StepModel, streaming_transform

__all__ = ["inspect_model"]


def inspect_model(loaded: LoadedModel, sample_rate: Optional[int] = None) -> int:
    """Print the per-layer table and the totals; exit code 1 when the model cannot stream."""
    try:
        with stage(f"tracing {loaded.name}"):
            graph = stream(loaded.model, loaded.example)
    except NotStreamableError as error:
        message(f"{loaded.name} cannot stream.\n{error}", error=True)
        return 1
    rate_hz = sample_rate or loaded.sample_rate
    with stage(f"measuring each layer of {loaded.name}"):
        rows = graph.layers()
        contributions = _contributions(graph, rows)
    with stage(f"measuring the latency and receptive field of {loaded.name}"):
        latency, receptive_field = graph.latency, graph.receptive_field
    with stage(f"trying a step model of {loaded.name}"):
        verdict = _step_verdict(loaded)
    table(
        f"{loaded.name}: streamed ops (input shape {list(loaded.example.shape)})",
        ["layer", "op", "length", "rate", "window", "receptive field", "latency", "+latency",
         "state bytes"],
        [
            [
                r["layer"] or "(forward)", r["op"].removeprefix("aten.").removesuffix(".default"),
                r["length"], str(r["rate"]), "unbounded" if r["window"] is None else r["window"],
                "unbounded" if r["receptive_field"] is None else r["receptive_field"],
                r["latency"], contributions[r["node"]], r["state_bytes"],
            ]
            for r in rows
        ],
    )  # fmt: skip

    def at_rate(samples: Optional[int]) -> str:
        if samples is None:
            return "unbounded"
        return count(samples, "sample") + (
            f" ({1000 * samples / rate_hz:.2f} ms)" if rate_hz else ""
        )

    state = sum(r["state_bytes"] for r in rows)
    rate = graph.rate
    per = "input sample" if rate.denominator == 1 else count(rate.denominator, "input sample")
    message(f"rate: {count(rate.numerator, 'output sample')} per {per}")
    message(f"latency: {at_rate(latency)}")
    message(f"receptive field: {at_rate(receptive_field)}")
    message(f"state: {count(state, 'byte')} for batch size {loaded.example.shape[0]}")
    message(f"stream engine: {graph.engine}")
    message(f"step model: {verdict}")
    return 0


def _contributions(graph: GraphStream, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Latency each node adds to the most delayed of its inputs."""
    latency = {r["node"]: r["latency"] for r in rows}

    def upstream(name: str, seen: set[str]) -> int:
        best = 0
        for node in graph._nodes[name].all_input_nodes:
            if node.name in seen:
                continue
            seen.add(node.name)
            best = max(
                best, latency[node.name] if node.name in latency else upstream(node.name, seen)
            )
        return best

    return {name: value - upstream(name, set()) for name, value in latency.items()}


def _step_verdict(loaded: LoadedModel) -> str:
    try:
        step, _ = streaming_transform(loaded.model, loaded.example, -1)
    except NotStreamableError as error:
        refusal = _reason(error)
        try:  # a model that changes the rate may run in frames
            step, _ = streaming_transform(loaded.model, loaded.example, -1, frame="auto")
        except StreamError as frame_error:
            return f"no: {refusal}; in frames: {_reason(frame_error)}"
        frames = count(step.frame or 1, "input sample")  # (None: one sample per call)
        return f"yes, in frames of {frames} (frame='auto'): {_frames(step)}"
    except StreamError as error:
        return f"no: {error}"
    size = _state_size(step)
    return f"yes: streaming_transform gives one sample per call ({count(size, 'byte')} of state)"


def _reason(error: StreamError) -> str:
    return str(error).split(": ", 1)[-1].split(". To stream it")[0]


def _state_size(step: StepModel) -> int:
    return sum(t.numel() * t.element_size() for t in step.snapshot().values())


def _frames(step: StepModel) -> str:
    if step.held_back:
        stream = f"frames hold outputs back by up to {count(step.held_back, 'sample')}"
    elif not step.drops_partial_frames:
        stream = "the model returns outputs when the signal ends, which frames never compute"
    else:
        stream = "StepStream streams it block by block"
    return f"{count(_state_size(step), 'byte')} of state; {stream}"
