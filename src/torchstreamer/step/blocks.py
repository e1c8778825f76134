"""`StepStream`: blocks of any size through a step model, frame by frame."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from torchstreamer.base import BaseStream, check_state_values
from torchstreamer.errors import NotStreamableError, StreamError, StreamInputError
from torchstreamer.step.transform import StepModel

__all__ = ["StepStream"]

Outputs = Union[Tensor, tuple[Tensor, ...]]


class StepStream(BaseStream):
    """A stream over a :class:`StepModel`: blocks of any length along the model's time axis,
    cut into the step model's frames (one sample each for a one-sample step model).

    Samples wait in a buffer of one frame until the frame is whole; the whole frames of a block
    run in one call of the step model. Each call returns the outputs its samples complete (or
    ``None``), so the concatenated outputs equal the offline model's. It is the fast path for
    small blocks; :func:`torchstreamer.stream` runs large blocks at the offline model's speed.

    Raises:
        NotStreamableError: the step model's frames would hold outputs back (a frame larger
            than the model needs) or the model returns outputs for samples after its last whole
            frame (then only :func:`torchstreamer.stream` ends such signals exactly).

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 4, stride=4), torch.nn.GELU())
        >>> x = torch.randn(1, 1, 40)
        >>> step, _ = pts.streaming_transform(model.eval(), x, -1, frame="auto")
        >>> stream = pts.StepStream(step)
        >>> outputs = [stream(x[..., t : t + 3]) for t in range(0, 40, 3)]
        >>> y = torch.cat([o for o in outputs if o is not None], -1)
        >>> torch.allclose(y, model(x), atol=1e-6)
        True
    """

    _state_tensors = ("_pending",)
    _state_ints = ("_filled",)

    def __init__(self, step: StepModel, ends_elsewhere: bool = False) -> None:
        super().__init__()
        if step.held_back > 0:
            raise NotStreamableError(
                f"The frames of {step.frame} samples of this step model hold outputs back by up "
                f"to {step.held_back} samples: a stream must return each output with the block "
                "that completes it. Transform with frame='auto' if the frame is larger than it "
                "needs to be; if it is already the smallest, change the left padding so that "
                "each window ends on a frame's last sample, or use torchstreamer.stream(model, "
                "example), which returns each output as soon as it is complete."
            )
        if not step.drops_partial_frames and not ends_elsewhere:  # (a graph stream ends it)
            raise NotStreamableError(
                "The model returns outputs for the samples after its last whole frame of "
                f"{step.frame} (right padding or a window that the end of the signal closes), "
                "which a step model never computes; use torchstreamer.stream(model, example)."
            )
        self.step = step
        self._axis = step.axis
        self._frame = step.frame if step.frame is not None else 1
        shape = list(step._input_shape)
        if step.frame is None:
            shape.insert(step.axis, 1)
        self._shape = shape
        self._rank = len(shape)
        self._before = torch.Size(shape[: step.axis])
        self._after = torch.Size(shape[step.axis + 1 :])
        pending = torch.zeros(shape, dtype=step._dtype or torch.float32, device=step._device)
        self.register_buffer("_pending", pending, persistent=False)
        # a lagging frame model may start its first frame with samples from before the signal
        self._phase = getattr(step, "phase", 0)
        self._filled = self._phase
        # values from before the signal that a lagging model still returns first, per output
        self._skips = list(step.skips)
        self._dropping = list(self._skips)

    def forward(  # type: ignore[override]
        self, x: Tensor, final: bool = False, start: Optional[Tensor] = None
    ) -> Optional[Outputs]:
        """Stream one block; return the outputs it completes, or ``None``. ``final=True`` ends
        the signal: samples short of a whole frame are dropped, as the offline model drops
        them.

        ``start`` (one bool per row of the batch) starts a new signal in the flagged rows with
        this block while the other rows go on; rows restart between whole frames (a frame
        model's stream raises while it holds part of a frame: feed whole frames, or use
        :class:`torchstreamer.StreamPool`, whose rows are fully independent)."""
        axis = self._axis
        pending = self._held()
        if (
            x.dim() != self._rank
            or x.shape[:axis] != self._before
            or x.shape[axis + 1 :] != self._after
            or x.dtype != pending.dtype
            or x.device != pending.device
        ):
            self._refuse(x, pending)  # (before any row restarts: nothing changes)
        if start is not None:
            self._restart_rows(start)
        return self._stream(x, final)

    def _restart_rows(self, start: Tensor) -> None:
        layout = self.step.row_layout()
        flags = layout.check_flags(start, "start")
        if not bool(flags.any()):
            return
        if self._filled != self._phase or any(self._dropping):
            raise StreamError(
                f"Rows of this stream can restart only between whole frames of {self._frame} "
                f"samples, but it holds {self._filled - self._phase} samples of a partial frame "
                "for every row; feed blocks of whole frames, or serve the signals with "
                "torchstreamer.StreamPool, which keeps each row's samples apart."
            )
        self.step.restart_rows(flags)

    def _stream(self, x: Tensor, final: bool) -> Optional[Outputs]:
        """:meth:`forward` for a block already checked (a graph stream checks its blocks)."""
        if x.requires_grad:  # the samples that wait must not record autograd history
            x = x.detach()
        own = self.__dict__  # (the hot path: plain reads and writes of the counters)
        axis, frame, filled = own["_axis"], own["_frame"], own["_filled"]
        pending = self._buffers["_pending"]
        assert pending is not None
        length = x.shape[axis]
        if filled + length < frame and not final:  # the common small block: the samples wait
            if length:
                pending.narrow(axis, filled, length).copy_(x)
                own["_filled"] = filled + length
            return None
        results: list[Outputs] = []
        start = 0
        completed = False  # the pending frame is whole
        if filled or length < frame:
            start = min(frame - filled, length)
            pending.narrow(axis, filled, start).copy_(x.narrow(axis, 0, start))
            completed = filled + start == frame
            filled = 0 if completed else filled + start
        whole = (length - start) // frame * frame
        if completed and whole:  # one step over all the frames: each op runs once per call
            results.append(self._run(torch.cat([pending, x.narrow(axis, start, whole)], axis)))
        elif completed:
            results.append(self._run(pending))
        elif whole:
            results.append(self._run(x.narrow(axis, start, whole)))
        rest = length - start - whole
        if rest:
            pending.narrow(axis, 0, rest).copy_(x.narrow(axis, start + whole, rest))
            filled = rest
        self._filled = filled
        joined: Optional[Outputs] = None
        if results:
            joined = results[0] if len(results) == 1 else _join(results, self.step.output_axes)
            if any(self._dropping):
                joined = self._drop(joined)
        if final:
            self.reset()
        return joined

    def _drop(self, outputs: Outputs) -> Optional[Outputs]:
        """``outputs`` without the values from before the signal that a lagging model returns
        first (``None`` if nothing is left)."""
        parts = list(outputs) if isinstance(outputs, tuple) else [outputs]
        for i, (part, axis) in enumerate(zip(parts, self.step.output_axes)):
            drop = min(self._dropping[i], part.shape[axis])
            if drop:
                parts[i] = part.narrow(axis, drop, part.shape[axis] - drop)
                self._dropping[i] -= drop
        if all(p.shape[a] == 0 for p, a in zip(parts, self.step.output_axes)):
            return None
        return tuple(parts) if isinstance(outputs, tuple) else parts[0]

    def _run(self, frames: Tensor) -> Outputs:
        step = self.step
        if step.frame is not None:
            return step(frames)
        points = [step(frames.select(self._axis, t)) for t in range(frames.shape[self._axis])]
        if isinstance(points[0], tuple):
            return tuple(
                torch.stack([p[i] for p in points], axis) for i, axis in enumerate(step.output_axes)
            )
        return torch.stack(points, step.output_axes[0])

    def _refuse(self, x: Tensor, pending: Tensor) -> None:
        """Raise :class:`StreamInputError` for a block that does not fit (no state changed)."""
        shape = self._shape
        if x.dim() != len(shape) or any(
            size != own for d, (size, own) in enumerate(zip(x.shape, shape)) if d != self._axis
        ):
            expected = ["T" if d == self._axis else str(s) for d, s in enumerate(shape)]
            raise StreamInputError(
                f"The stream of the {self.step._label} takes blocks shaped "
                f"[{', '.join(expected)}] but got shape {list(x.shape)}."
            )
        raise StreamInputError(
            f"The stream of the {self.step._label} computes in {pending.dtype} on "
            f"{pending.device} but the block is {x.dtype} on {x.device}; convert the block "
            "or the model."
        )

    def _held(self) -> Tensor:
        """The buffer of samples that wait for their frame to be whole."""
        pending = self._buffers["_pending"]
        assert pending is not None
        return pending

    def reset(self) -> None:
        """Drop the signal in progress: the partial frame and the step model's state."""
        self._filled = self._phase
        if self._phase:
            self._held().narrow(self._axis, 0, self._phase).zero_()
        self._dropping = list(self._skips)
        self.step.reset()

    def get_state(self) -> dict[str, Tensor]:
        """The pending samples, their count and the step model's state (see
        :meth:`StepModel.snapshot`), keyed by name."""
        state = {"_pending": self._held().clone(), "_filled": torch.tensor(self._filled)}
        if any(self._skips):
            state["_dropping"] = torch.tensor(self._dropping)
        state.update({f"step.{k}": v for k, v in self.step.snapshot().items()})
        return state

    def set_state(self, state: dict[str, Tensor]) -> None:
        """Restore a state from :meth:`get_state`.

        Raises:
            StreamError: the state does not fit this stream.
        """
        check_state_values(state)
        own = {"_pending", "_filled"} | {f"step.{n}" for n in self.step.state_names}
        if any(self._skips):
            own.add("_dropping")
        if set(state) != own:
            raise StreamError(
                f"The state does not fit this stream: missing {sorted(own - set(state))}, "
                f"unexpected {sorted(set(state) - own)}."
            )
        pending, own_pending = state["_pending"], self._held()
        if pending.shape != own_pending.shape or pending.dtype != own_pending.dtype:
            raise StreamError(
                f"State '_pending' must be {own_pending.dtype} shaped "
                f"{list(own_pending.shape)} but is {pending.dtype} shaped {list(pending.shape)}."
            )
        counter = state["_filled"]
        if (
            counter.dim() != 0
            or counter.dtype.is_floating_point
            or counter.dtype in (torch.bool, torch.complex64, torch.complex128)
        ):
            raise StreamError(
                "State '_filled' must be a 0-d integer tensor (the number of samples waiting "
                f"for their frame) but is a {counter.dtype} tensor shaped {list(counter.shape)}; "
                "restore a state that get_state() returned for this stream's model."
            )
        filled = int(counter.item())
        if not 0 <= filled < self._frame:
            raise StreamError(f"State '_filled' must be in [0, {self._frame}) but is {filled}.")
        dropping = self._dropping
        if any(self._skips):
            dropping = _dropping(state["_dropping"], self._skips)
        self.step.restore({k[len("step.") :]: v for k, v in state.items() if k.startswith("step.")})
        self._dropping = dropping
        with torch.no_grad():
            own_pending.copy_(pending)
        self._filled = filled


def _dropping(value: Tensor, skips: list[int]) -> list[int]:
    """The counters of values still to drop, from a state (checked against ``skips``)."""
    if value.dtype != torch.int64 or list(value.shape) != [len(skips)]:
        raise StreamError(
            f"State '_dropping' must be an int64 tensor shaped [{len(skips)}] but is a "
            f"{value.dtype} tensor shaped {list(value.shape)}."
        )
    counts = [int(v) for v in value.tolist()]
    if any(not 0 <= c <= s for c, s in zip(counts, skips)):
        raise StreamError(f"State '_dropping' must count down from {skips} but is {counts}.")
    return counts


def _join(results: list[Outputs], axes: tuple[int, ...]) -> Outputs:
    if isinstance(results[0], tuple):
        return tuple(torch.cat([r[i] for r in results], axis) for i, axis in enumerate(axes))
    return torch.cat(results, axes[0])  # type: ignore[arg-type]
