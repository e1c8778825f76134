"""The step of a model as a *sequence step*: the form a stateful serving engine batches.

``(signal, start, states) -> (*outputs, *new_states)``, every tensor with its rows (one per
sequence) first and any number of rows per call. ``start`` (one value per row, non-zero for
the first request of a sequence) puts that row's state back to the start of a signal inside
the function, so a server may feed anything (zeros) as the state of a new sequence. The time
axis carries whole frames of the step model (any number of them per call).

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> from torchstreamer.serve.sequence import SequenceStep
    >>> step, _ = pts.streaming_transform(pts.PaddedConv1d(1, 2, 3), torch.randn(2, 1, 8), -1,
    ...                                   frame="auto")
    >>> sequence = SequenceStep(step)
    >>> x, states = torch.randn(3, 1, 4), sequence.zero_states(3)
    >>> y, *states = sequence(x, torch.ones(3, 1), tuple(states))
    >>> y.shape
    torch.Size([3, 2, 4])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchstreamer.errors import StreamError
from torchstreamer.serve.rows import input_row_axis
from torchstreamer.step.transform import StepModel

__all__ = ["SequenceStep"]


class SequenceStep(nn.Module):
    """A frame step model with rows first, a per-row ``start`` flag, and its state in and out.

    Attributes:
        frame: input samples per frame (the time length of a call is a multiple of it).
        row_shapes: each state's shape for one row (rows first, the row axis of size 1).
    """

    def __init__(self, step: StepModel) -> None:
        super().__init__()
        if step.frame is None:
            raise StreamError(
                "A sequence step needs a frame step model (streaming_transform(..., "
                "frame='auto')): a serving request carries a block of samples."
            )
        if input_row_axis(step) != 0:
            raise StreamError(
                "A sequence step needs the model's batch on the first axis of its input "
                f"(this step model's time axis is {step.axis})."
            )
        layout = step.row_layout()
        if layout.rows < 2:
            raise StreamError(
                "A sequence step needs a step model built for at least two rows: the rows of "
                "its state are found by comparing them."
            )
        self.frame = step.frame
        self.axis = step.axis
        self.state_names = step.state_names
        self.output_axes = step.output_axes
        axes = [a for a in layout.axes if a is not None]
        assert len(axes) == len(layout.axes), "with two rows or more each state has its row axis"
        self._axes = tuple(axes)
        self._outputs = len(step.output_axes)
        self.pure = step.pure()
        self.row_shapes: list[list[int]] = []
        for index, (name, axis) in enumerate(zip(step.state_names, self._axes)):
            initial = step.initial.get_buffer(name).movedim(axis, 0)
            if initial.dim() == 0 or not bool((initial == initial[:1]).all()):
                raise StreamError(
                    f"State '{name}' does not start equal in every row, so a sequence's first "
                    "state cannot be one row; serve this model with torchstreamer.StreamPool."
                )
            self.register_buffer(f"initial_{index}", initial[:1].clone())
            self.row_shapes.append([1, *initial.shape[1:]])

    def initial_rows(self) -> list[Tensor]:
        """Each state's value for one row at the start of a signal (rows first)."""
        return [self.get_buffer(f"initial_{i}") for i in range(len(self.row_shapes))]

    def zero_states(self, rows: int) -> list[Tensor]:
        """States of ``rows`` rows, all zero (what a server holds for a new sequence)."""
        return [
            torch.zeros(rows, *shape[1:], dtype=t.dtype)
            for shape, t in zip(self.row_shapes, self.initial_rows())
        ]

    def forward(self, signal: Tensor, start: Tensor, states: tuple[Tensor, ...]) -> Any:
        flags = start.reshape(-1) != 0
        inner = []
        for state, initial, axis in zip(states, self.initial_rows(), self._axes):
            mask = flags.reshape([-1] + [1] * (state.dim() - 1))
            fresh = torch.where(mask, initial.expand_as(state), state)
            inner.append(fresh.movedim(0, axis))
        results = self.pure(signal, *inner)
        results = results if isinstance(results, (tuple, list)) else (results,)
        outputs = list(results[: self._outputs])
        news = [s.movedim(axis, 0) for s, axis in zip(results[self._outputs :], self._axes)]
        return (*outputs, *news)


def export_sequence(
    step: StepModel, block: int = 0, max_rows: int = 64
) -> torch.export.ExportedProgram:
    """The sequence step of ``step`` captured by ``torch.export`` for ``block`` input samples
    per call (a multiple of the frame; 0: one frame) and a dynamic number of rows (1 to
    ``max_rows``).

    Raises:
        StreamError: ``block`` is not a whole number of frames, or the step cannot be captured
            with a dynamic number of rows (a batch size baked into the model's code).
    """
    from torch.export import Dim

    from torchstreamer.step.export import _quiet_export

    sequence = SequenceStep(step).eval()
    block = block or sequence.frame
    if block % sequence.frame:
        raise StreamError(
            f"A block of {block} samples is not a whole number of the model's frames of "
            f"{sequence.frame} samples; use a multiple of {sequence.frame}."
        )
    rows = Dim("rows", min=1, max=max(2, max_rows))
    shape = list(step._input_shape)
    shape[0], shape[sequence.axis] = 2, block
    signal = torch.zeros(shape, dtype=step._dtype or torch.float32, device=step._device)
    dynamic = ({0: rows}, {0: rows}, tuple({0: rows} for _ in sequence.row_shapes))
    example = (signal, torch.zeros(2, 1), tuple(sequence.zero_states(2)))
    try:
        with _quiet_export():
            return torch.export.export(sequence, example, dynamic_shapes=dynamic, strict=False)
    except Exception as error:  # torch.export's own errors have many types
        raise StreamError(
            "The sequence step could not be captured with a dynamic number of rows "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0]})."
        ) from error
