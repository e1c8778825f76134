"""Rows of a batched step model that start, stop and pause on their own.

A step model built from a batched example runs every row of its batch in one call. Serving
many signals on one model needs each row to be its own signal: a row restarts (its state back
to the state at the start of a signal) while the others go on, and a row that has no data in a
call keeps its state. :class:`RowLayout` finds, once per step model, which axis of each state
tensor holds the rows, and checks that rows never mix: a model whose output or state in one row
depends on another row's input (a normalisation over the batch, a reshape that folds the
batch) cannot be served row by row, and is refused.

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> model = pts.PaddedConv1d(1, 2, 3).eval()
    >>> step, _ = pts.streaming_transform(model, torch.randn(3, 1, 8), 2)
    >>> step(torch.ones(3, 1)).shape
    torch.Size([3, 2])
    >>> y = step(torch.ones(3, 1), start=torch.tensor([False, True, False]))
    >>> torch.equal(y[1], model(torch.ones(1, 1, 1))[0, :, 0])
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from torchstreamer.errors import StreamError, StreamInputError

if TYPE_CHECKING:
    from torchstreamer.step.transform import StepModel

__all__ = ["RowLayout", "input_row_axis"]

_PROBE_CALLS = 3  # calls of the step over which a row's input must stay in its row


def input_row_axis(step: StepModel) -> int:
    """The axis of the step's input (``x_t`` or a frame) that holds the rows: the model input's
    batch axis, its first axis (its second where time comes first)."""
    if step.axis != 0:
        return 0
    return 0 if step.frame is None else 1


class RowLayout:
    """Where the rows of a batched step model lie in its state, found by running the pure
    step: a random input that differs in one row only must change that row only.

    Attributes:
        rows: the batch size the step model was built for.
        axes: per state tensor, the axis of its rows (``None``: the state has no rows, which
            is only allowed with one row).
    """

    def __init__(self, step: StepModel) -> None:
        self.rows = int(step._input_shape[input_row_axis(step)])
        self.axes: tuple[Optional[int], ...] = self._find_axes(step)

    def _find_axes(self, step: StepModel) -> tuple[Optional[int], ...]:
        initial = step.initial_state()
        if self.rows == 1:  # one row: a restart is a reset of everything
            return tuple(None for _ in initial)
        changed = _row_changes(step, self.rows - 1)
        axes: list[Optional[int]] = []
        for name, value, diff in zip(step.state_names, initial, changed[len(step.output_axes) :]):
            axes.append(self._state_axis(name, value, diff))
        for index, (diff, axis) in enumerate(zip(changed, step.output_axes)):
            out_axis = 0 if axis != 0 else 1
            if not _confined(diff, out_axis, self.rows - 1):
                raise StreamError(
                    f"The {step._label} mixes the rows of its batch: output {index} of one row "
                    "depends on another row's input (a normalisation or reshape over the "
                    "batch?). Its rows cannot start and stop on their own; serve one signal "
                    "per model instead."
                )
        return tuple(axes)

    def _state_axis(self, name: str, value: Tensor, diff: Tensor) -> Optional[int]:
        candidates = [d for d in range(value.dim()) if value.shape[d] == self.rows]
        for axis in candidates:
            if _confined(diff, axis, self.rows - 1):
                return axis
        raise StreamError(
            f"State '{name}' (shaped {list(value.shape)}) has no axis of the {self.rows} rows "
            "that keeps each row's values apart, so one row cannot restart while the others go "
            "on. Build the step model with a batch of one per signal, or serve the signals "
            "in lockstep."
        )

    def mask(self, flags: Tensor, value: Tensor, axis: Optional[int]) -> Tensor:
        """``flags`` (one bool per row) shaped to broadcast over ``value`` along ``axis``."""
        if axis is None:
            return flags.reshape([1] * value.dim()) if value.dim() else flags.reshape(())
        shape = [1] * value.dim()
        shape[axis] = self.rows
        return flags.reshape(shape)

    def check_flags(self, flags: Tensor, what: str) -> Tensor:
        """``flags`` as a bool tensor of one value per row, or a clear error."""
        if not isinstance(flags, Tensor):
            flags = torch.as_tensor(flags)
        if flags.is_meta:
            raise StreamInputError(
                f"'{what}' is a tensor on the meta device, which has no values; pass the flags "
                "as a bool tensor on the CPU or the model's device."
            )
        if flags.dim() != 1 or flags.shape[0] != self.rows:
            raise StreamInputError(
                f"'{what}' must hold one flag per row: a bool tensor shaped [{self.rows}], "
                f"but it is shaped {list(flags.shape)}."
            )
        if flags.dtype != torch.bool:
            if flags.dtype.is_floating_point or flags.dtype.is_complex:
                raise StreamInputError(
                    f"'{what}' must be a bool (or integer 0/1) tensor, not {flags.dtype}."
                )
            flags = flags != 0
        return flags


def _row_changes(step: StepModel, row: int) -> list[Tensor]:
    """Per output and state of the pure step, after a few calls: where a run whose input
    differs in ``row`` only differs from the first run (a bool tensor shaped like the value)."""
    pure = step.pure()
    dtype = step._dtype or torch.float32  # (no floating state: the input is float32)
    device = step._device or torch.device("cpu")
    generator = torch.Generator().manual_seed(7)
    axis = input_row_axis(step)
    first = list(step.initial_state())
    second = list(step.initial_state())
    outputs = len(step.output_axes)
    changed: list[Tensor] = []
    with torch.no_grad():
        for _ in range(_PROBE_CALLS):
            x = torch.randn(step._input_shape, generator=generator).to(dtype=dtype, device=device)
            other = x.clone()
            other.select(axis, row).copy_(
                torch.randn(other.select(axis, row).shape, generator=generator)
            )
            a = _as_tuple(pure(x, *first))
            b = _as_tuple(pure(other, *second))
            step_changes = [_differs(u, v) for u, v in zip(a, b)]
            changed = (
                step_changes if not changed else [c | d for c, d in zip(changed, step_changes)]
            )
            first, second = list(a[outputs:]), list(b[outputs:])
    return changed


def _as_tuple(value: Any) -> tuple[Tensor, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _differs(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or a.is_complex():
        return ~torch.isclose(a, b, rtol=0, atol=0, equal_nan=True)
    return a != b


def _confined(diff: Tensor, axis: int, row: int) -> bool:
    """Whether every ``True`` of ``diff`` lies at index ``row`` of ``axis``."""
    if diff.dim() == 0:
        return not bool(diff)
    outside = torch.cat(
        [diff.narrow(axis, 0, row), diff.narrow(axis, row + 1, diff.shape[axis] - row - 1)], axis
    )
    return not bool(outside.any())
