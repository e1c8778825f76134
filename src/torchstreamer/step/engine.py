"""The frame engine behind :func:`torchstreamer.stream`: the generated frame code of a captured
graph, run block by block.

:mod:`torchstreamer.step.frames` rewrites the captured graph into straight-line code over whole
frames (the smallest number of input samples that gives every layer whole outputs), with window
ops as time-major matrix products over held windows. A :class:`~torchstreamer.StepStream` cuts
blocks of any size into those frames. For a stream the code may lag the input: a window without
left padding (``padding="valid"``) returns its output ``j`` once input ``j + span - 1`` is in,
so the first values the frames compute lie before the signal; the stream drops them
(``StepModel.skips``).

The frames may get the first outputs wrong (padding read where lagging frames hold values
from before the signal, or padding that copies samples) and never compute the outputs that the
end of the signal determines (right padding, transposed-convolution tails): a
:class:`FrameEngine` takes those from the offline model, run on the first samples while they
come (the *start entry*) and on the last samples at ``final`` (the *end entry*), which it keeps
in a bounded history. How many outputs the start entry gives is counted exactly while the
frame code is built (``StepModel.dirty``), the history from the plan's receptive field.
Models that still need more (a recurrent layer or a running sum after a lagging window, an end
that depends on an unbounded memory, a length-dependent pad or crop that the end determines)
run on the graph stream's per-node interpreter; ``GraphStream.engine`` says which runs and why.

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.ReLU()).eval()
    >>> s = pts.stream(model, torch.randn(1, 1, 32))
    >>> s.engine
    'frames of 1 sample'
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from torchstreamer.base import BaseStream
from torchstreamer.errors import NotStreamableError, StreamError
from torchstreamer.graph.analysis import length_period, time_length

if TYPE_CHECKING:
    from torchstreamer.graph.stream import GraphStream
    from torchstreamer.step.blocks import StepStream

__all__ = ["FrameEngine", "frame_engine"]

_PHASES = 16  # the most frame phases tried (one frame graph built each)
_RESIDUES = 3  # the most other signal lengths (modulo the frame period) whose end is checked


def frame_engine(
    source: GraphStream, example: Tensor, check: bool = True, phase: Optional[int] = None
) -> tuple[Optional[FrameEngine], str]:
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
                label = f"frame engine of {type(source.model).__name__}"
                frames = StepStream(StepModel(graph, label, source._axis), ends_elsewhere=True)
                break
            except NotStreamableError as error:  # another phase may end frames in time
                first = first or error
        else:
            assert first is not None
            raise first
        engine = FrameEngine(frames, source, int(example.shape[source._axis]))
    except NotStreamableError as error:
        return None, str(error)
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as error:
        return None, f"the frame code could not be built ({type(error).__name__}: {error})"
    if check and not _reproduces(engine, source, example):
        return None, "the frame code did not reproduce the model on the example"
    plural = "s" * (start != 1)  # (frames start `start` samples early: zeros, in StepStream)
    return engine, f"frames of {frame} sample{'s' * (frame != 1)}" + (
        f"; the first frame starts with {start} zero sample{plural} before the signal, so that "
        "frames end where outputs complete"
        if start
        else ""
    )


class FrameEngine(BaseStream):
    """The frames of a graph stream, with a start and an end entry.

    The frames return every output from the first that is right in them (``dirty`` says how
    many come before: outputs that read padding where lagging frames still hold values from
    before the signal, or padding that copies samples). Those first outputs, and at
    ``final`` the outputs that the end of the signal determines (right padding, the overlap of
    transposed convolutions, a window the end closes), come from the offline model run on the
    samples this engine keeps: the last ``history`` input samples (all of them while the first
    outputs come). Where the model pads, crops or floors by amounts computed from the length
    (``length_period``), the end entry's samples start a whole number of periods into the
    signal, and the start entry pads its samples to a length the model accepts, so that both
    compute what the whole signal gives.
    """

    _state_tensors = ("_history",)
    _state_ints = ("_seen", "_emitted", "_from_frames", "_seeded")
    frames: StepStream
    _period: int
    _head_period: int
    _head_residue: int
    _example_length: int
    _history: Tensor

    def __init__(self, frames: StepStream, source: GraphStream, example_length: int) -> None:
        super().__init__()
        self.frames = frames
        step = frames.step
        self._axis = source._axis
        self._frame = frames._frame
        self._dirty = list(step.dirty)
        self._leads = list(step.leads)  # the frames' first value is output `lead` (see reset)
        self._axes = list(step.output_axes)
        symbol = next(iter(time_length(source._input).free_symbols))
        # a crop at the end (the model returns fewer values than the frames compute, or values
        # that differ where the signal ends: _FrameBuilder.speculates): the frames' last values
        # wait until more input guarantees them (see _settled), the rest come from the end
        self._crops_end = bool(step.crops_end)
        self._lengths = [
            _length_function(time_length(o), symbol, self._crops_end) for o in source._outputs
        ]
        self._names = [o.name for o in source._outputs]
        self._counts = [Fraction(source._rate_of(o)) * self._frame for o in source._outputs]
        needs_end = not step.drops_partial_frames or step.crops_end  # (the end entry gives them)
        history = 0
        for name, dirty in zip(self._names, self._dirty):
            if dirty:
                arrivals = source.timing.arrivals(name)
                if dirty > arrivals.numel():
                    raise NotStreamableError(
                        f"The frames get the first {dirty} outputs wrong, more than the plan "
                        "follows; the interpreter streams this model."
                    )
                history = max(history, int(arrivals[dirty - 1]) + self._frame)
        # the end entry's samples start a whole number of periods into the signal, so that the
        # model pads, crops and floors them at the end as it does the whole signal
        lengths_period = length_period(source._graph)
        # a model may run only on some lengths (a U-Net's skips need a multiple of its strides):
        # the start entry runs it on its first samples padded to a length like the example's
        self._head_period = lengths_period or 1
        self._head_residue = example_length % self._head_period
        self._example_length = example_length
        if needs_end and source._length_dependent and lengths_period is None:
            raise NotStreamableError(
                "The end of the signal determines outputs of this model, and it pads or crops "
                "by amounts computed from the signal's length in a way the library cannot "
                "follow (not floors and remainders of whole numbers); the interpreter streams it."
            )
        self._period = math.lcm(self._frame, self._head_period)
        # recurrent layers and running sums whose state the end entry carries on (_carrying)
        self._carried: list[tuple[nn.RNNBase, dict[str, str], Fraction]] = []
        self._sums: list[tuple[dict[str, str], Fraction, int]] = []
        if needs_end:
            fields = [source.timing.receptive_field(name) for name in self._names]
            if any(field is None for field in fields):
                from torchstreamer.step.frames import carried_history

                self._carried, self._sums = _carried_layers(source, step.carried)
                carried = carried_history(source, self._frame)
                if carried is None:
                    raise NotStreamableError(
                        "The end of the signal determines outputs of this model after a "
                        "recurrent layer, and its receptive field stays unbounded with that "
                        "layer's state carried on; the interpreter streams it."
                    )
                history = max(history, carried)
            else:
                field = max(int(f) for f in fields if f is not None)
                history = max(history, field + 3 * self._frame + self._period - self._frame)
        # recurrent layers that skip the values the frames get wrong at first: the stream
        # seeds their state from the model run offline on the first samples (see _seed)
        self._seeds = _seeded_layers(source, step.carried)
        for _, _, dirty, name in self._seeds:
            arrivals = source.timing.arrivals(name)
            history = max(history, int(arrivals[min(dirty, arrivals.numel()) - 1]) + self._frame)
        self._seeded = 0
        self._steady = False  # see _settled
        self._size = self._runnable_history(source, step, history)
        history = self._size
        shape = list(step._input_shape)
        shape[self._axis] = history
        buffer = torch.zeros(shape, dtype=step._dtype or torch.float32, device=step._device)
        self.register_buffer("_history", buffer, persistent=False)
        self._seen = 0
        self._emitted = [0] * len(self._names)
        self._from_frames = list(self._leads)
        for i in range(len(self._names)):  # (see run: frame outputs that wait for the start's)
            self.register_buffer(f"_waiting_{i}", buffer.new_zeros(0), persistent=False)

    def _runnable_history(self, source: GraphStream, step: Any, history: int) -> int:
        """``history``, or more where the model refuses the end entry's shortest window (a
        period less): an exported program guards a minimum length, say. Up to the example's
        length, which the model takes."""
        if history == 0:
            return 0
        shape = list(step._input_shape)
        candidate, limit = history, self._example_length + self._period
        while candidate < limit:
            probe = max(1, candidate - self._period + 1)
            probe += (self._head_residue - probe) % self._head_period  # a length it may take
            shape[self._axis] = probe
            try:
                with torch.no_grad():
                    source.model(torch.zeros(shape, dtype=step._dtype, device=step._device))
                return candidate
            except Exception:  # (whatever the model raises for a length it refuses)
                candidate *= 2
        return max(history, limit)

    @property
    def _phase(self) -> int:
        return self.frames._phase

    def reset(self) -> None:
        self._steady = False
        self.frames.reset()
        for i in range(len(self._names)):
            setattr(self, f"_waiting_{i}", self._history.new_zeros(0))
        self._seeded = 0
        self._seen = 0
        self._emitted = [0] * len(self._names)
        self._from_frames = list(self._leads)

    def get_state(self) -> dict[str, Tensor]:
        """The frames' state under ``frames.``, the samples kept and the counters."""
        state = {f"frames.{k}": v for k, v in self.frames.get_state().items()}
        state["_history"] = self._history.clone()
        state["_seen"] = torch.tensor(self._seen)
        state["_emitted"] = torch.tensor(self._emitted, dtype=torch.int64)
        state["_from_frames"] = torch.tensor(self._from_frames, dtype=torch.int64)
        state["_seeded"] = torch.tensor(self._seeded)
        for i in range(len(self._names)):
            state[f"_waiting_{i}"] = getattr(self, f"_waiting_{i}").clone()
        return state

    def set_state(self, state: dict[str, Tensor]) -> None:
        """Restore a state from :meth:`get_state` (checked first; nothing changes if it does
        not fit)."""
        own = self.get_state()
        if set(state) != set(own):
            raise StreamError(
                f"The state does not fit this stream: missing {sorted(set(own) - set(state))}, "
                f"unexpected {sorted(set(state) - set(own))}."
            )
        for key in ("_history", "_seen", "_emitted", "_from_frames", "_seeded"):
            value, mine = state[key], own[key]
            if value.shape != mine.shape or value.dtype != mine.dtype:
                raise StreamError(
                    f"State '{key}' must be {mine.dtype} shaped {list(mine.shape)} but is "
                    f"{value.dtype} shaped {list(value.shape)}."
                )
            if key != "_history" and bool((value < 0).any()):
                raise StreamError(f"State '{key}' counts samples and cannot be negative.")
        for i in range(len(self._names)):
            value = state[f"_waiting_{i}"]
            if value.numel() and value.dtype != self._history.dtype:
                raise StreamError(f"State '_waiting_{i}' must be {self._history.dtype}.")
        self.frames.set_state(
            {k[len("frames.") :]: v for k, v in state.items() if k.startswith("frames.")}
        )
        with torch.no_grad():
            self._history.copy_(state["_history"])
        self._seen = int(state["_seen"])
        self._emitted = [int(v) for v in state["_emitted"].tolist()]
        self._from_frames = [int(v) for v in state["_from_frames"].tolist()]
        self._seeded = int(state["_seeded"])
        for i in range(len(self._names)):
            setattr(self, f"_waiting_{i}", state[f"_waiting_{i}"].detach().clone())
        self._steady = self._settled()

    def run(
        self, x: Tensor, final: bool, source: GraphStream
    ) -> Optional[Union[Tensor, tuple[Tensor, ...]]]:
        """Stream one checked block: the outputs it completes (``None`` if none)."""
        if x.requires_grad:  # the samples kept must not record autograd history
            x = x.detach()
        axis = self._axis
        length = x.shape[axis]
        seen = self._seen + length
        if self._steady and not final:  # past the start entry: the frames' outputs as they come
            frames: Any = self._modules["frames"]  # (no nn.Module attribute lookup: hot path)
            framed = frames._stream(x, False)
            if self._size:
                self._remember(x)
            self.__dict__["_seen"] = seen  # (a plain int: no nn.Module bookkeeping)
            if framed is None:
                return None
            values = framed if isinstance(framed, tuple) else (framed,)
            for i, value in enumerate(values):
                got = int(value.shape[self._axes[i]]) if value is not None else 0
                self._from_frames[i] += got
                self._emitted[i] += got
            return framed
        if self._seeds and not self._seeded:
            self._seed(source, x, seen)  # (before the frames run past the values it seeds)
        framed = self.frames._stream(x, False)  # whole frames; the rest waits, or ends below
        parts = list(framed) if isinstance(framed, tuple) else [framed]
        kept = min(self._seen, self._size)
        window = (self._history.narrow(axis, 0, kept), x)  # samples seen - kept .. seen
        head = any(e < d for e, d in zip(self._emitted, self._dirty))
        results: list[Tensor] = []
        offline: Optional[list[Tensor]] = None
        start_of_offline = 0
        for i, part in enumerate(parts):
            out_axis, emitted, dirty = self._axes[i], self._emitted[i], self._dirty[i]
            before = self._from_frames[i]
            got = 0 if part is None else int(part.shape[out_axis])
            after = before + got
            waiting: Tensor = getattr(self, f"_waiting_{i}")
            if waiting.numel():  # frame outputs an earlier call gave before the start entry's
                part = waiting if part is None else torch.cat([waiting, part], out_axis)
                before -= waiting.shape[out_axis]
            if final:
                ready = self._lengths[i](seen)
            elif emitted < dirty:
                count = source.timing.count_at(self._names[i], seen)
                ready = count if count < dirty else max(count, after)
            else:
                ready = after
            framed_until = after  # the frame outputs that hold for the signal as it ends
            if self._crops_end:
                # frame values that exist only if more comes (the model's length caps them),
                # and values that exist either way but differ if more comes (a transposed
                # convolution's last output, which a gap after the signal's end would reach):
                # until more comes only the plan's complete outputs go, and at the end the
                # rest come from the end entry
                complete = max(source.timing.count_at(self._names[i], seen), emitted)
                if final:
                    framed_until = min(after, complete)
                else:
                    ready = min(ready, self._lengths[i](seen), complete)
            pieces: list[Tensor] = []
            j = emitted
            while j < ready:
                if max(dirty, before) <= j < framed_until:  # from the frames
                    stop = min(ready, framed_until)
                    assert part is not None
                    pieces.append(part.narrow(out_axis, j - before, stop - j))
                else:  # from the model run offline on the samples kept
                    stop = min(ready, dirty) if j < dirty else ready
                    if offline is None:
                        offline, start_of_offline = self._offline(source, window, seen, head, final)
                    shift = int(self._counts[i] * start_of_offline / self._frame)
                    pieces.append(offline[i].narrow(out_axis, j - shift, stop - j))
                j = stop
            self._from_frames[i] = after
            self._emitted[i] = max(emitted, ready)
            # the frames' outputs that wait while earlier ones come from the start entry
            keep_from = max(dirty, self._emitted[i], before)
            if part is not None and keep_from < after and not final:
                waiting = part.narrow(out_axis, keep_from - before, after - keep_from)
            else:
                waiting = waiting.new_zeros(0)
            setattr(self, f"_waiting_{i}", waiting)
            results.append(
                torch.cat(pieces, out_axis)
                if len(pieces) > 1
                else pieces[0]
                if pieces
                else x.new_zeros(0)
            )
        if self._size and not final:
            self._remember(x)  # (after the outputs: `window` views the samples kept)
        self._seen = seen
        self._steady = self._settled()
        if final:
            self.reset()
        if all(r.dim() <= 1 and r.numel() == 0 for r in results):
            return None
        return tuple(results) if len(results) > 1 else results[0]

    def _runnable(self, samples: Tensor) -> Tensor:
        """The first samples of the signal, followed by zeros up to a length the model runs on
        (the example's at least, and like it where the model runs only on some lengths). What
        those samples determine does not read what follows them, so the zeros change none of
        the outputs the start entry takes (a short prefix could be too short to reflect)."""
        axis, length = self._axis, samples.shape[self._axis]
        target = max(length, self._example_length)
        target += (self._head_residue - target) % self._head_period
        if target == length:
            return samples
        shape = list(samples.shape)
        shape[axis] = target - length
        return torch.cat([samples, samples.new_zeros(shape)], axis)

    def _settled(self) -> bool:
        """Whether the start entry is done: every output the frames get wrong given, no frame
        output waiting, every recurrent layer seeded. From then on, until ``final``, a call
        returns what the frames return."""
        if (self._seeds and not self._seeded) or self._crops_end:  # (a crop: every call caps)
            return False
        if any(e < d or e != f for e, d, f in zip(self._emitted, self._dirty, self._from_frames)):
            return False
        return all(not getattr(self, f"_waiting_{i}").numel() for i in range(len(self._names)))

    def _seed(self, source: GraphStream, x: Tensor, seen: int) -> None:
        """Once the samples determine the first values that the frames get wrong at a
        recurrent layer's input, run the model offline on them and start the layer's frame
        state after them: the hidden state, the outputs and the count the frames would have
        had."""
        if any(source.timing.count_at(name, seen) < dirty for _, _, dirty, name in self._seeds):
            return
        axis = self._axis
        assert self._seen <= self._size, "the samples kept reach back to the start"
        samples = torch.cat([self._history.narrow(axis, 0, self._seen), x], axis)
        samples = self._runnable(samples)
        inputs: dict[int, Tensor] = {}
        layers = [layer for layer, _, _, _ in self._seeds]
        try:
            for layer in layers:
                layer.forward = _recording_forward(layer, inputs)
            with torch.no_grad():
                source.model(samples)
        finally:
            for layer in layers:
                del layer.forward
        step = self.frames.step.step_function
        with torch.no_grad():
            for layer, names, dirty, _ in self._seeds:
                values = inputs[id(layer)]
                at = (1 if layer.batch_first else 0) if values.dim() == 3 else 0
                y, hidden = type(layer).forward(layer, values.narrow(at, 0, dirty))
                h, c = hidden if isinstance(hidden, tuple) else (hidden, None)
                getattr(step, names["hidden"]).copy_(h)
                if c is not None:
                    getattr(step, names["cell"]).copy_(c)
                getattr(step, names["consumed"]).fill_(dirty)
                last = getattr(step, names["last"])
                if last.shape[at]:
                    joined = torch.cat([last, y], at)
                    last.copy_(joined.narrow(at, joined.shape[at] - last.shape[at], last.shape[at]))
        self._seeded = 1

    @contextlib.contextmanager
    def _carrying(self, start: int, head: bool) -> Iterator[None]:
        """While the end entry runs the model on its last samples (from input sample
        ``start``): each carried recurrent layer returns the outputs its frames gave and runs
        only over the values they have not run over, from the state they left. The model then
        computes from the layer's true state, which no bounded history of samples gives."""
        if head or not (self._carried or self._sums):
            yield
            return
        step = self.frames.step.step_function
        patched: list[nn.RNNBase] = []
        sums = []
        for names, rate, axis in self._sums:
            first = start * rate
            assert first.denominator == 1, "the end entry starts on a whole frame"
            done = int(getattr(step, names["consumed"])) - int(first)
            sums.append((getattr(step, names["sum"]), done, axis))
        try:
            for layer, names, rate in self._carried:
                first = start * rate
                assert first.denominator == 1, "the end entry starts on a whole frame"
                done = int(getattr(step, names["consumed"])) - int(first)
                cell = getattr(step, names["cell"]) if names["cell"] else None
                state = (getattr(step, names["hidden"]), cell)
                layer.forward = _carried_forward(layer, done, getattr(step, names["last"]), state)
                patched.append(layer)
            with _CarriedSums(sums) if sums else contextlib.nullcontext():
                yield
        finally:
            for layer in patched:
                del layer.forward

    def _remember(self, x: Tensor) -> None:
        """Keep the last ``history`` input samples (all of them until there are that many)."""
        axis, size, seen, length = self._axis, self._size, self._seen, x.shape[self._axis]
        history = self._history
        if seen + length <= size:
            history.narrow(axis, seen, length).copy_(x)
            return
        kept = min(seen, size)
        joined = torch.cat([history.narrow(axis, 0, kept), x], axis)
        history.copy_(joined.narrow(axis, joined.shape[axis] - size, size))

    def _offline(
        self,
        source: GraphStream,
        window: tuple[Tensor, Tensor],
        seen: int,
        head: bool,
        final: bool,
    ) -> tuple[list[Tensor], int]:
        """The model's outputs on the samples at hand (those kept and the block), and the input
        sample they start at: 0 while the first outputs come, else a whole number of frames
        (so that every layer's samples line up) at least ``history`` samples before the end."""
        axis = self._axis
        samples = torch.cat(window, axis) if window[0].shape[axis] else window[1]
        first = seen - samples.shape[axis]
        period = self._period  # (a whole number of frames)
        start = 0 if head else max(-(-(seen - self._size) // period) * period, 0)
        assert start >= first, "the samples kept reach back far enough"
        samples = samples.narrow(axis, start - first, seen - start)
        if head and not final:
            samples = self._runnable(samples)
        try:
            with torch.no_grad(), self._carrying(start, head):
                result = source.model(samples)
        except RuntimeError as error:
            if not (final and start == 0):
                raise
            self.reset()  # (the signal ends here: the next call starts a new one)
            raise StreamError(
                f"The model cannot end this signal: run offline on all of its {seen} samples "
                f"it raises {type(error).__name__}: {str(error).splitlines()[0]} (a signal too "
                "short for its layers has no output offline either). The stream is ready for a "
                "new signal."
            ) from error
        return (list(result) if isinstance(result, tuple) else [result]), start


def _phases(source: GraphStream, frame: int) -> list[int]:
    """The frame phases worth trying, best first: 0, then those that end a frame where an
    output completes (the plan's arrivals), then the rest, at most ``_PHASES``."""
    candidates = [0]
    for output in source._outputs:
        arrivals = source.timing.arrivals(output.name)[: 4 * frame]
        candidates += [(-int(a)) % frame for a in arrivals]
    candidates += range(frame)
    return list(dict.fromkeys(candidates))[:_PHASES]


def _reproduces(engine: FrameEngine, source: GraphStream, example: Tensor) -> bool:
    """Whether ``engine`` streams, in uneven blocks (0 and 1 included), as the model computes
    offline: a signal made of ``example``, and one of seeded noise of the same shape (a flat or
    zero example alone would hide wrong code; the noise is skipped where the model gives
    values that are not finite for it)."""
    axis = source._axis
    signal = example
    while signal.shape[axis] < 4 * engine._frame + engine._size + 16:
        signal = torch.cat([signal, example.flip(axis)], axis)
    noise = torch.randn(
        signal.shape, generator=torch.Generator().manual_seed(0), dtype=signal.dtype
    ).to(signal.device)
    spread = float(signal.std()) if signal.numel() > 1 else 0.0
    noisy = signal + noise * (spread if spread > 0 and math.isfinite(spread) else 1.0)
    if not (
        _streams_exactly(engine, source, signal, False)
        and _streams_exactly(engine, source, noisy, True)
    ):
        return False
    # what the end of a signal determines depends on its length modulo the period (a window
    # that the end closes, a pool's last window): end signals of other residues too, fed in
    # one block up to their last frames
    length, period = noisy.shape[axis], engine._period
    shorter = [
        r for r in dict.fromkeys([1, period // 2, period - 1, period // 3]) if 0 < r < period
    ]
    return all(
        _streams_exactly(engine, source, noisy.narrow(axis, 0, length - r), True, bulk=True)
        for r in shorter[:_RESIDUES]
    )


def _streams_exactly(
    engine: FrameEngine, source: GraphStream, signal: Tensor, probe: bool, bulk: bool = False
) -> bool:
    """Whether ``engine`` streams ``signal`` as the model computes it offline (a ``probe``
    signal that the model itself cannot take counts as streamed). In uneven small blocks, or
    with ``bulk`` in one block up to its last ``2 * frame + 8`` samples, then small ones. For
    a ``probe`` in small blocks, what a few calls have returned so far must also be what the
    model gives for the signal ending there (no value that differs if the signal ends)."""
    axis = source._axis
    rng = random.Random(0)
    checks = _SO_FAR_CHECKS if probe and not bulk else 0
    pieces, start, length = [], 0, signal.shape[axis]
    if bulk:
        start = max(0, length - 2 * engine._frame - 8)
    try:
        with torch.no_grad():
            expected = source.model(signal)
    except Exception:  # (a probe outside what the model accepts)
        return probe
    offline = list(expected) if isinstance(expected, tuple) else [expected]
    if probe and not all(bool(torch.isfinite(y).all()) for y in offline):
        return True
    try:
        with torch.no_grad():
            if start:
                y = engine.run(signal.narrow(axis, 0, start), False, source)
                if y is not None:
                    pieces.append(y)
            while start < length:
                size = min(rng.choice([0, 1, 2, 3, 5, engine._frame, 17]), length - start)
                final = start + size == length
                y = engine.run(signal.narrow(axis, start, size), final, source)
                if y is not None:
                    pieces.append(y)
                start += size
                if checks and not final and pieces and rng.random() < 0.2:
                    checks -= 1
                    if not _so_far_holds(engine, source, signal.narrow(axis, 0, start), pieces):
                        return False
    except (RuntimeError, ValueError, IndexError, AssertionError, StreamError):
        return False
    finally:
        engine.reset()
    return _returned_is(offline, pieces, engine._axes, whole=True)


_SO_FAR_CHECKS = 6  # calls of the build check's noise signal compared with the model so far


def _so_far_holds(
    engine: FrameEngine, source: GraphStream, prefix: Tensor, pieces: list[Any]
) -> bool:
    """Whether the values returned for the signal ``prefix`` are the first values the model
    gives for a signal that ends there (a prefix the model cannot take proves nothing)."""
    try:
        with torch.no_grad():
            ending = source.model(prefix)
    except Exception:  # (too short for the model, say)
        return True
    offline = list(ending) if isinstance(ending, tuple) else [ending]
    return _returned_is(offline, pieces, engine._axes, whole=False)


def _returned_is(offline: list[Tensor], pieces: list[Any], axes: list[int], whole: bool) -> bool:
    """Whether the ``pieces`` returned are ``offline`` (``whole``) or its first values."""
    for i, (reference, out_axis) in enumerate(zip(offline, axes)):
        parts = [p[i] if isinstance(p, tuple) else p for p in pieces]
        if whole and not parts:
            return False
        parts = [p for p in parts if p.dim() > out_axis]  # (a call that gave this output none)
        if not parts:
            continue
        streamed = torch.cat(parts, out_axis)
        count = streamed.shape[out_axis]
        if count > reference.shape[out_axis] or (whole and count != reference.shape[out_axis]):
            return False
        reference = reference.narrow(out_axis, 0, count)
        scale = float(reference.abs().max()) if reference.numel() else 0.0
        rtol, atol = _rounding(reference.dtype)
        if streamed.shape != reference.shape or not torch.allclose(
            streamed, reference, rtol=rtol, atol=atol * max(1.0, scale)
        ):
            return False
    return True


def _rounding(dtype: torch.dtype) -> tuple[float, float]:
    """The relative and absolute (per unit of the output's scale) differences the build check
    lets pass: the frame code sums the same products in another order, which rounds otherwise
    in half precision (a wrong rewrite differs by about the scale of the output)."""
    if dtype.is_floating_point and torch.finfo(dtype).eps > torch.finfo(torch.float32).eps:
        spread = 8 * torch.finfo(dtype).eps  # float16: 0.0078, bfloat16: 0.0625
        return spread, spread
    return 1e-4, 1e-5


def _carried_layers(
    source: GraphStream, carried: dict[str, dict[str, str]]
) -> tuple[
    list[tuple[nn.RNNBase, dict[str, str], Fraction]], list[tuple[dict[str, str], Fraction, int]]
]:
    """The recurrent layers and running sums whose state an end entry carries on, with their
    states' names and rates (and a sum's time axis); refuses models whose unbounded memory the
    frames do not carry, or whose receptive field stays unbounded with those states carried."""
    from torchstreamer.graph.handlers import RecurrentHandler, RunningSum

    timing = source.timing
    sources = [n for n in timing.nodes if timing.rules[n].reads is None]
    handlers = {n: source.handlers[n] for n in sources}
    kinds = (RecurrentHandler, RunningSum)
    if any(not isinstance(h, kinds) for h in handlers.values()) or any(
        n not in carried or not carried[n] for n in sources
    ):
        raise NotStreamableError(
            "The end of the signal determines outputs of this model (right padding or a "
            "transposed convolution's overlap) after a recurrent layer that the frames do not "
            "run from the start of the signal: no bounded history gives them; the interpreter "
            "streams it."
        )
    layers: list[nn.RNNBase] = [h.rnn for h in handlers.values() if isinstance(h, RecurrentHandler)]
    _check_own_layers(source, layers, "The end entry carries recurrent layers' states on")
    rate = {n: Fraction(source._rate_of(source._nodes[n])) for n in sources}
    recurrent = [n for n in sources if isinstance(handlers[n], RecurrentHandler)]
    sums = [  # in the order the model computes them (the order of its cumsum calls)
        (carried[n], rate[n], int(h.axis)) for n, h in handlers.items() if isinstance(h, RunningSum)
    ]
    return [(layer, carried[n], rate[n]) for n, layer in zip(recurrent, layers)], sums


class _CarriedSums(torch.overrides.TorchFunctionMode):
    """While the end entry runs the model offline: each ``cumsum`` over time (the model's
    running sums, in the order it computes them) sums on from the total the frames carry.
    Its value ``done - 1`` (the last the frames summed) becomes that total; the values after
    it add the values after it (as the frames would), the values before subtract those up to
    it, so that none depends on the start of the end entry's window (which lacks its past)."""

    def __init__(self, sums: list[tuple[Tensor, int, int]]) -> None:
        super().__init__()
        self.sums = sums
        self.index = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func not in (torch.cumsum, Tensor.cumsum) or self.index >= len(self.sums):
            return result
        x = args[0]
        dim = args[1] if len(args) > 1 else kwargs["dim"]
        carry, done, axis = self.sums[self.index]
        if dim % x.dim() != axis % x.dim():  # a sum over another axis (channels, say)
            return result
        self.index += 1
        count = x.shape[axis]
        assert 0 <= done <= count, "the samples kept reach back far enough"
        parts = []
        if done > 1:  # value p: the total less the values p + 1 .. done - 1
            later = x.narrow(axis, 1, done - 1).flip(axis).cumsum(axis).flip(axis)
            parts.append(carry - later)
        if done > 0:
            parts.append(carry.expand_as(x.narrow(axis, 0, 1)))
        if count > done:
            parts.append(carry + x.narrow(axis, done, count - done).cumsum(axis))
        return torch.cat(parts, axis).to(result.dtype)


def _seeded_layers(
    source: GraphStream, carried: dict[str, dict[str, str]]
) -> list[tuple[nn.RNNBase, dict[str, str], int, str]]:
    """The recurrent layers of a frame graph that skip values the frames get wrong at first,
    with their states' names, how many values they skip so, and their node's name."""
    from torchstreamer.graph.handlers import RecurrentHandler

    seeds = []
    for name, names in carried.items():
        dirty = int(names.get("dirty", "0"))
        handler = source.handlers[name]
        if dirty and isinstance(handler, RecurrentHandler):
            seeds.append((handler.rnn, names, dirty, name))
    _check_own_layers(
        source,
        [layer for layer, _, _, _ in seeds],
        "A recurrent layer reads values that the frames get wrong at first and the stream "
        "would seed its state",
    )
    return seeds


def _check_own_layers(source: GraphStream, layers: list[nn.RNNBase], what: str) -> None:
    """Refuse unless every layer is one of the model's own modules, called once: the engine
    runs them in the model's place while its entries run the model offline."""
    owned = {id(m) for m in source.model.modules() if isinstance(m, nn.RNNBase)}
    if len({id(m) for m in layers}) != len(layers) or any(id(m) not in owned for m in layers):
        raise NotStreamableError(
            f"{what}, but a recurrent layer here is called more than once or is not one of the "
            "model's modules; the interpreter streams it."
        )


def _recording_forward(layer: nn.RNNBase, inputs: dict[int, Tensor]) -> Callable[..., Any]:
    """A ``forward`` for ``layer`` that records its input under ``id(layer)``."""

    def forward(x: Tensor, hx: Any = None) -> Any:
        inputs[id(layer)] = x
        return type(layer).forward(layer, x, hx)

    return forward


def _carried_forward(
    layer: nn.RNNBase, done: int, last: Tensor, state: tuple[Tensor, Optional[Tensor]]
) -> Callable[..., tuple[Tensor, Any]]:
    """A ``forward`` for ``layer`` over the end entry's values: the first ``done`` outputs are
    the last ones the frames gave (``last``), the rest run from the frames' ``state``."""
    hidden, cell = state

    def forward(x: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        axis = (1 if layer.batch_first else 0) if x.dim() == 3 else 0
        count, kept = x.shape[axis], last.shape[axis]
        assert 0 <= done <= min(count, kept), "the samples kept reach back far enough"
        carried: Any = (hidden, cell) if cell is not None else hidden
        parts = [last.narrow(axis, kept - done, done)]
        if count > done:
            y, carried = type(layer).forward(layer, x.narrow(axis, done, count - done), carried)
            parts.append(y)
        return torch.cat(parts, axis), carried

    return forward


def _length_function(length: Any, symbol: Any, often: bool = False) -> Callable[[int], int]:
    """The output length for ``n`` input samples. Asked once per signal, at its end; ``often``
    (on every call): compiled to plain arithmetic, when that gives the same lengths."""

    def exact(n: int) -> int:
        return max(0, int(length.subs(symbol, n)))

    if not often:
        return exact
    import sympy

    compiled = sympy.lambdify(symbol, length, modules="math")

    def fast(n: int) -> int:
        return max(0, int(compiled(n)))

    try:
        if all(fast(n) == exact(n) for n in [*range(64), 1000, 4099, 65537, 1 << 20]):
            return fast
    except (TypeError, ValueError, NameError, AttributeError):
        pass
    return exact
