"""The frame engine behind :func:`torchstreamer.stream`: the generated frame code of a captured
graph, run block by block.

:mod:`torchstreamer.step.frames` rewrites the captured graph into straight-line code over whole
frames (the smallest number of input samples that gives every layer whole outputs), with window
ops as time-major matrix products over held windows. A :class:`~torchstreamer.StepStream` cuts
blocks of any size into those frames. For a stream the code may lag the input: a window without
left padding (``padding="valid"``) returns its output ``j`` once input ``j + span - 1`` is in,
so the first values the frames compute lie before the signal; the stream drops them
(``StepModel.skips``).

The engine runs a model when the frames return every output with the call that completes it and
the model's output ends with its last whole frame. Models that need more (padding that copies
samples, padding of a lagging layer, right padding and transposed-convolution tails at the end,
lengths known only at the end) run on the graph stream's per-node interpreter instead;
``GraphStream.engine`` says which one runs and why.

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.ReLU()).eval()
    >>> s = pts.stream(model, torch.randn(1, 1, 32))
    >>> s.engine
    'frames of 1 samples'
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from torchstreamer.errors import NotStreamableError, StreamError

if TYPE_CHECKING:
    from torchstreamer.graph.stream import GraphStream
    from torchstreamer.step.blocks import StepStream

__all__ = ["frame_engine"]

_PHASES = 16  # the most frame phases tried (one frame graph built each)


def frame_engine(
    source: GraphStream, example: Tensor, check: bool = True, phase: Optional[int] = None
) -> tuple[Optional[StepStream], str]:
    """The frame engine of ``source`` for blocks shaped like ``example`` (its batch size), and
    what it runs; ``(None, reason)`` when the frame code cannot run the model exactly.

    The frames start ``phase`` samples before the signal (by default the first phase whose
    frames end where outputs complete). With ``check``, the engine streams a signal in uneven
    blocks and must reproduce the model (a guard against a rewrite that would be silently
    wrong: then the interpreter runs it)."""
    from torchstreamer.step.blocks import StepStream
    from torchstreamer.step.frames import build_frame_graph, minimal_frame
    from torchstreamer.step.transform import StepModel

    try:
        frame = minimal_frame(source)
        phases = [phase] if phase is not None else _phases(source, frame)
        first: Optional[Exception] = None
        for start in phases:
            try:
                with torch.no_grad():
                    graph = build_frame_graph(source, example, frame, True, start)
                model = StepModel(
                    graph, f"frame engine of {type(source.model).__name__}", source._axis
                )
                engine = StepStream(model)
                break
            except NotStreamableError as error:  # another phase may end frames in time
                first = first or error
        else:
            assert first is not None
            raise first
    except NotStreamableError as error:
        return None, str(error)
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as error:
        return None, f"the frame code could not be built ({type(error).__name__}: {error})"
    if check and not _reproduces(engine, source, example):
        return None, "the frame code did not reproduce the model on the example"
    return engine, f"frames of {frame} samples" + (
        f", from {start} before the signal" if start else ""
    )


def _phases(source: GraphStream, frame: int) -> list[int]:
    """The frame phases worth trying, best first: 0, then those that end a frame where an
    output completes (the plan's arrivals), then the rest, at most ``_PHASES``."""
    candidates = [0]
    for output in source._outputs:
        arrivals = source.timing.arrivals(output.name)[: 4 * frame]
        candidates += [(-int(a)) % frame for a in arrivals]
    candidates += range(frame)
    return list(dict.fromkeys(candidates))[:_PHASES]


def _reproduces(engine: StepStream, source: GraphStream, example: Tensor) -> bool:
    """Whether ``engine`` streams a signal made of ``example`` in uneven blocks (0 and 1
    included) as the model computes it offline."""
    axis = source._axis
    signal = example
    while signal.shape[axis] < 4 * engine._frame + 16:
        signal = torch.cat([signal, example.flip(axis)], axis)
    rng = random.Random(0)
    pieces, start, length = [], 0, signal.shape[axis]
    try:
        with torch.no_grad():
            expected = source.model(signal)
            while start < length:
                size = min(rng.choice([0, 1, 2, 3, 5, engine._frame, 17]), length - start)
                final = start + size == length
                y = engine(signal.narrow(axis, start, size), final=final)
                if y is not None:
                    pieces.append(y)
                start += size
    except (RuntimeError, ValueError, IndexError, AssertionError, StreamError):
        return False
    finally:
        engine.reset()
    offline = list(expected) if isinstance(expected, tuple) else [expected]
    for i, (reference, out_axis) in enumerate(zip(offline, engine.step.output_axes)):
        parts = [p[i] if isinstance(p, tuple) else p for p in pieces]
        if not parts:
            return False
        streamed = torch.cat(parts, out_axis)
        scale = float(reference.abs().max()) if reference.numel() else 0.0
        if streamed.shape != reference.shape or not torch.allclose(
            streamed, reference, rtol=1e-4, atol=1e-5 * max(1.0, scale)
        ):
            return False
    return True
