"""Timing and state measurements of every way to run a model, shared by ``benchmarks/run.py`` and
the ``torchstreamer bench`` command.

A :class:`Runner` streams a whole signal in blocks of a given size and returns the concatenated
output; :func:`time_runners` runs several of them interleaved (so that they share the machine's
state), after a warm-up run that also checks each output against the offline model.

Example:
    >>> import torch
    >>> from torchstreamer.measure import runners_for, time_runners
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3, padding=1), torch.nn.Tanh()).eval()
    >>> runners = runners_for(model, torch.randn(1, 1, 64))
    >>> ", ".join(r.name for r in runners)
    'module, script, graph, offline, chunks'
    >>> rows = time_runners(runners, model, torch.randn(1, 1, 256), block=16, repeats=1)
    >>> rows["graph"].status, rows["graph"].max_error < 1e-5
    ('ok', True)
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from torchstreamer.base import BaseStream
from torchstreamer.errors import NotStreamableError, StreamError
from torchstreamer.graph.stream import stream
from torchstreamer.step.blocks import StepStream
from torchstreamer.step.transform import StepModel, streaming_transform
from torchstreamer.streams.registry import create_stream

__all__ = ["FailedRunner", "Measurement", "Runner", "runners_for", "state_bytes", "time_runners"]


class Runner:
    """Streams a whole signal in blocks; ``calls`` collects per-call times when it is a list."""

    name = "runner"

    def __init__(self) -> None:
        self.calls: Optional[list[float]] = None

    def reset(self) -> None:
        """Start a new signal."""

    def run(self, x: Tensor, block: int) -> Tensor:
        raise NotImplementedError

    def state_bytes(self) -> Optional[int]:
        """Bytes of stream state held now (``None`` when the runner keeps none)."""
        return None

    def feed(self, block: Tensor) -> None:
        """Stream one block of a signal that goes on (for state measurements)."""

    def _timed(self, call: Callable[[Tensor], Any], x: Tensor) -> Any:
        if self.calls is None:
            return call(x)
        start = time.perf_counter()
        result = call(x)
        self.calls.append(time.perf_counter() - start)
        return result


def state_bytes(stream: nn.Module) -> Optional[int]:
    """Bytes of the state tensors of a stream or step model (``None`` for a scripted stream,
    whose state is not collected from Python)."""
    if isinstance(stream, StepModel):
        return sum(t.numel() * t.element_size() for t in stream.snapshot().values())
    if not isinstance(stream, BaseStream):
        return None
    return sum(t.numel() * t.element_size() for t in stream.get_state().values())


class StreamRunner(Runner):
    """A block stream (module, scripted module or graph): blocks, then an empty ``final=True``
    call."""

    def __init__(self, name: str, stream_: Any) -> None:
        super().__init__()
        self.name, self.stream = name, stream_

    def reset(self) -> None:
        self.stream.reset()

    def run(self, x: Tensor, block: int) -> Tensor:
        outputs = []
        for start in range(0, x.shape[-1], block):
            piece = x[..., start : start + block]
            y = self._timed(self.stream, piece)
            if y is not None:
                outputs.append(y[0] if isinstance(y, tuple) else y)
        y = self.stream(x[..., :0], final=True)
        if y is not None:
            outputs.append(y[0] if isinstance(y, tuple) else y)
        return torch.cat(outputs, -1)

    def state_bytes(self) -> Optional[int]:
        return state_bytes(self.stream)

    def feed(self, block: Tensor) -> None:
        self.stream(block)


class StepRunner(Runner):
    """A one-sample step model: one call per sample (timed at block 1 only)."""

    name = "step_1"

    def __init__(self, step: StepModel, axis: int) -> None:
        super().__init__()
        self.step, self.axis = step, axis

    def reset(self) -> None:
        self.step.reset()

    def run(self, x: Tensor, block: int) -> Tensor:
        if block != 1:
            raise ValueError("a one-sample step takes one sample per call: see block 1")
        step = self.step
        if self.calls is None:
            outputs = [step(x[..., t]) for t in range(x.shape[-1])]
        else:
            outputs = [self._timed(step, x[..., t]) for t in range(x.shape[-1])]
        first = [o[0] if isinstance(o, tuple) else o for o in outputs]
        return torch.stack(first, self.axis)

    def state_bytes(self) -> Optional[int]:
        return state_bytes(self.step)

    def feed(self, block: Tensor) -> None:
        for t in range(block.shape[-1]):
            self.step(block[..., t])


class FailedRunner(Runner):
    """A path that applies but could not be set up (``reason`` says why): measured as
    ``failed``, so that a table shows it and no target counts it as met."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__()
        self.name, self.reason = name, reason

    def run(self, x: Tensor, block: int) -> Tensor:
        raise RuntimeError(self.reason)


class OfflineRunner(Runner):
    """The model on the whole signal (``block`` is ignored)."""

    name = "offline"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def run(self, x: Tensor, block: int) -> Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, tuple) else y


class ChunkRunner(Runner):
    """The model on independent chunks of ``block`` samples: no state, so not the same output,
    but the cost floor of running the model at that block size."""

    name = "chunks"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def run(self, x: Tensor, block: int) -> Tensor:
        outputs = []
        for start in range(0, x.shape[-1], block):
            y = self.model(x[..., start : start + block])
            outputs.append(y[0] if isinstance(y, tuple) else y)
        return torch.cat(outputs, -1)


def runners_for(
    model: nn.Module, example: Tensor, module_padding: str = "model", step: bool = True
) -> list[Runner]:
    """Every torch-streamer path that applies to ``model`` (time on the last axis of
    ``example``), then the offline forward and the stateless chunks."""
    runners: list[Runner] = []
    if isinstance(model, nn.Sequential):
        with contextlib.suppress(NotStreamableError):
            runners.append(StreamRunner("module", create_stream(model, module_padding)))
        try:  # the same, under TorchScript
            scripted = torch.jit.script(create_stream(copy.deepcopy(model), module_padding))
            runners.append(StreamRunner("script", scripted))
        except NotStreamableError:  # (the module face does not apply either)
            pass
        except Exception as error:  # TorchScript refused: reported, not dropped
            runners.append(FailedRunner("script", f"torch.jit.script raised {error!r}"))
    with contextlib.suppress(NotStreamableError):
        runners.append(StreamRunner("graph", stream(model, example)))
    if step:
        # the step model in frames (one sample for rate-1 models), fed blocks by StepStream
        with contextlib.suppress(StreamError):
            frames, _ = streaming_transform(model, example, -1, frame="auto")
            runners.append(StreamRunner("step", StepStream(frames)))
        with contextlib.suppress(StreamError):  # and the one-sample step itself
            step_model, axis = streaming_transform(model, example, -1)
            if isinstance(axis, int):
                runners.append(StepRunner(step_model, axis))
    runners += [OfflineRunner(model), ChunkRunner(model)]
    return runners


@dataclass
class Measurement:
    """One runner at one block size: cost per input sample and what else was measured."""

    runner: str
    status: str = "ok"  # "ok", "disagrees", "unsupported: ...", "failed: ..."
    us_per_sample: Optional[float] = None
    max_error: Optional[float] = None
    latency_median_us: Optional[float] = None
    latency_p99_us: Optional[float] = None
    state_bytes: Optional[int] = None
    state_bounded: Optional[bool] = None
    runs_us: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_runners(
    runners: list[Runner],
    model: nn.Module,
    x: Tensor,
    block: int,
    repeats: int = 5,
    tolerance: float = 1e-4,
) -> dict[str, Measurement]:
    """Time every runner on ``x`` in blocks of ``block``: a warm-up run that checks the output
    against ``model(x)`` (the stateless chunks are not checked), then ``repeats`` interleaved
    timed runs; the figure is the median. Block-1 and step runners also get the median and 99th
    percentile of the time per call, and the state size at two points of the signal (bounded
    when it does not grow)."""
    results = {r.name: Measurement(r.name) for r in runners}
    with torch.inference_mode():
        expected = OfflineRunner(model).run(x, block)
        live = []
        for runner in runners:
            result = results[runner.name]
            if isinstance(runner, FailedRunner):
                result.status = f"failed: {runner.reason.splitlines()[0][:160]}"
                continue
            try:
                runner.reset()
                y = runner.run(x, block)
            except Exception as error:  # a runner that cannot take this block size
                result.status = f"unsupported: {str(error).splitlines()[0][:120]}"
                continue
            if runner.name != "chunks":
                if y.shape != expected.shape:
                    result.status = f"disagrees: shape {list(y.shape)}"
                    continue
                scale = max(1.0, float(expected.abs().max()))
                result.max_error = float((y - expected).abs().max())
                if result.max_error > tolerance * scale:
                    result.status = "disagrees"
                    continue
            live.append(runner)
        for _ in range(repeats):
            for runner in live:
                runner.reset()
                start = time.perf_counter()
                runner.run(x, block)
                results[runner.name].runs_us.append((time.perf_counter() - start) * 1e6)
        for runner in live:
            result = results[runner.name]
            result.us_per_sample = statistics.median(result.runs_us) / x.shape[-1]
            if (block == 1 or runner.name.startswith("step")) and isinstance(
                runner, (StreamRunner, StepRunner)
            ):
                runner.calls = []
                runner.reset()
                runner.run(x, block)
                result.latency_median_us = statistics.median(runner.calls) * 1e6
                result.latency_p99_us = _percentile(runner.calls, 0.99) * 1e6
                runner.calls = None
            result.state_bytes, result.state_bounded = _state_growth(runner, x, block)
    return results


def _state_growth(runner: Runner, x: Tensor, block: int) -> tuple[Optional[int], Optional[bool]]:
    """State bytes after half the signal, and whether they stayed at most what they were after a
    quarter (at the same phase of the block pattern)."""
    if runner.state_bytes() is None:
        return None, None
    quarter = max(block, (x.shape[-1] // 4) // block * block)
    sizes = []
    for end in (quarter, 2 * quarter):
        runner.reset()
        for start in range(0, end, block):
            runner.feed(x[..., start : start + block])
        sizes.append(runner.state_bytes())
    runner.reset()
    first, second = sizes
    assert first is not None
    assert second is not None
    return second, second <= first


def plot_costs(panels: dict[str, list[dict[str, Any]]], path: Any, ylabel: str) -> Optional[str]:
    """Draw cost per input sample against block size (log-log), one panel per key of
    ``panels`` (rows with ``runner``, ``block``, ``us_per_sample``), one line per runner.
    Returns why nothing was drawn, or ``None``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'torch-streamer[bench]'): no plot"
    names = list(dict.fromkeys(r["runner"] for rows in panels.values() for r in rows))
    palette = plt.get_cmap("tab20" if len(names) > 10 else "tab10")

    def colour(index: int) -> Any:  # one colour per runner, fixed by its place in the list
        return palette(index % palette.N)

    # the legend goes below the panels, in as many columns as fit the figure's width
    figure_width = 4.0 * len(panels)
    entry_width = 0.7 + 0.075 * max([len(n) for n in names] or [1])  # inches at fontsize 8
    columns = max(1, min(len(names), int((figure_width - 0.3) / entry_width)))
    legend_rows = -(-len(names) // columns)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(figure_width, 3.6 + 0.22 * legend_rows), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for axis, (title, rows) in zip(axes[0], panels.items()):
        for name in names:
            mine = sorted(
                (r for r in rows if r["runner"] == name and r["us_per_sample"]),
                key=lambda r: r["block"],
            )
            if mine:
                axis.plot([r["block"] for r in mine], [r["us_per_sample"] for r in mine],
                          marker="o", label=name, color=colour(names.index(name)))  # fmt: skip
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xlabel("block size (samples)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    handles = [plt.Line2D([], [], color=colour(i), marker="o") for i in range(len(names))]
    figure.legend(handles, names, loc="outside lower center", ncol=columns, fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
