"""`StreamPool`: many independent signals through one model, batched.

A server holds one pool per model. Each client's signal gets a *slot* (a row of a batched step
model); slots open and close at any time, a call feeds blocks of any length to any subset of
open slots, and each slot's outputs equal its own signal's offline output. The whole frames
that a call completes run as one batched step (one GEMM per layer for all slots), so the cost
of a call grows with the number of slots far more slowly than one stream per client.

Models without a step form (lookahead, right padding) still get a pool: then each slot is its
own :func:`torchstreamer.stream`, run one after the other (``pool.batched`` is ``False``).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from torchstreamer.errors import NotStreamableError, StreamError, StreamInputError
from torchstreamer.graph.stream import GraphStream, stream
from torchstreamer.step.transform import StepModel, streaming_transform

__all__ = ["StreamPool"]

Outputs = Union[Tensor, tuple[Tensor, ...]]


class StreamPool(nn.Module):
    """A fixed number of stream slots over one model, each slot its own signal.

    ``example`` is one signal shaped like the model's input (its batch axis, the first, of
    size 1); blocks are shaped the same with any length on ``axis``.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> model = torch.nn.Sequential(pts.PaddedConv1d(1, 4, 5), torch.nn.Tanh()).eval()
        >>> pool = pts.StreamPool(model, torch.randn(1, 1, 64), slots=8)
        >>> a, b = pool.open(), pool.open()
        >>> x, z = torch.randn(1, 1, 30), torch.randn(1, 1, 20)
        >>> first = pool.feed({a: x[..., :10], b: z})
        >>> second = pool.feed({a: x[..., 10:]})  # b pauses: its state waits
        >>> y = torch.cat([first[a], second[a]], -1)
        >>> torch.allclose(y, model(x), atol=1e-6), torch.allclose(first[b], model(z), atol=1e-6)
        (True, True)
        >>> pool.close(b)
        >>> pool.open() == b  # the slot serves a new signal
        True
    """

    def __init__(self, model: nn.Module, example: Tensor, slots: int, axis: int = -1) -> None:
        super().__init__()
        try:
            count = operator.index(slots)
        except TypeError:
            count = 0
        if isinstance(slots, bool) or count < 1:
            raise StreamError(f"A pool needs a whole number of slots, at least one, not {slots!r}.")
        slots = count
        if example.dim() < 2 or example.shape[0] != 1:
            raise StreamInputError(
                "The example of a pool is one signal: a tensor whose first (batch) axis has "
                f"size 1, but it is shaped {list(example.shape)}."
            )
        self.slots = slots
        self.axis = axis % example.dim()
        if self.axis == 0:
            raise StreamInputError("The time axis of a pool's signals cannot be the batch axis.")
        self._row_shape = list(example.shape)
        self._dtype, self._device = example.dtype, example.device
        self.step: Optional[StepModel] = None
        self._pending: Tensor
        self.reason = ""  # why the slots are not batched (when they are not)
        try:
            batch = example.expand(slots, *example.shape[1:]).contiguous()
            step, _ = streaming_transform(model, batch, self.axis, frame="auto")
            if step.held_back:
                raise NotStreamableError(
                    f"its frames of {step.frame} samples would hold outputs back by up to "
                    f"{step.held_back} samples (outputs at different rates)"
                )
            if not step.drops_partial_frames:
                raise NotStreamableError(
                    "the end of its signals determines outputs (right padding, a window that "
                    "the end closes), which only torchstreamer.stream computes"
                )
            step.row_layout()  # refuses models that mix the rows of a batch
            self.step = step
        except StreamError as error:
            self.reason = str(error)
        self._open = [False] * slots
        self._fresh = [False] * slots  # opened since the last call: restart before it
        if self.step is not None:
            frame = self.step.frame or 1
            self._frame = frame
            shape = list(example.shape)
            shape[0], shape[self.axis] = slots, frame
            self.register_buffer("_pending", example.new_zeros(shape), persistent=False)
            self._filled = [0] * slots
            self._streams: list[Optional[GraphStream]] = []
        else:
            self._prototype = stream(model, example, self.axis)
            self._streams = [None] * slots

    def _apply(self, fn: Any, recurse: bool = True) -> StreamPool:
        """``.to()``, ``.double()``, ``.cuda()``: the step model, the waiting samples and the
        open slots' streams move; blocks must then come in the new dtype and device."""
        result = super()._apply(fn, recurse)
        probe = fn(torch.empty(0, dtype=self._dtype, device=self._device))
        self._dtype, self._device = probe.dtype, probe.device
        for own in self._streams:
            if own is not None:
                own._apply(fn, recurse)
        return result

    @property
    def batched(self) -> bool:
        """Whether the slots run as rows of one batched step model (else one stream each,
        see :attr:`reason`)."""
        return self.step is not None

    @property
    def free(self) -> int:
        """How many slots are free."""
        return self._open.count(False)

    def open(self) -> int:
        """Take a free slot for a new signal and return its number.

        Raises:
            StreamError: every slot is taken.
        """
        if False not in self._open:
            raise StreamError(
                f"All {self.slots} slots of this pool are open; close one or build a larger pool."
            )
        slot = self._open.index(False)
        self._open[slot] = True
        if self.step is not None:
            self._fresh[slot] = True
            self._filled[slot] = 0
        else:
            self._streams[slot] = copy.deepcopy(self._prototype)
        return slot

    def close(self, slot: int) -> Optional[Outputs]:
        """End the signal in ``slot`` and free it. Returns what the end of the signal still
        determines (right padding, for an unbatched pool), or ``None``: a batched pool's step
        model drops samples short of a frame, as the offline model does."""
        slot = self._check_open(slot)
        self._open[slot] = False
        if self.step is not None:
            self._filled[slot] = 0
            return None
        own = self._streams[slot]
        assert own is not None
        self._streams[slot] = None
        empty = self._prototype_block(0)
        return own(empty, final=True)

    def feed(self, blocks: Mapping[int, Tensor]) -> dict[int, Optional[Outputs]]:
        """Stream one block into each slot named in ``blocks`` (any subset of the open slots,
        blocks of any length, 0 included); return each slot's completed outputs, or ``None``.
        Slots not named keep their state. A bad block raises before any slot changes."""
        if not isinstance(blocks, Mapping):
            raise StreamInputError(
                f"feed() takes a dict of slot numbers to blocks, not a {type(blocks).__name__}."
            )
        blocks = {self._check_open(slot): block for slot, block in blocks.items()}
        for slot, block in blocks.items():
            self._check_block(slot, block)
        if self.step is None:
            return {slot: self._own(slot)(block) for slot, block in blocks.items()}
        return self._feed_rows(blocks)

    # -- the batched form ---------------------------------------------------------------

    def _feed_rows(self, blocks: Mapping[int, Tensor]) -> dict[int, Optional[Outputs]]:
        step, axis, frame = self.step, self.axis, self._frame
        assert step is not None
        if any(self._fresh):
            step.restart_rows(torch.tensor(self._fresh))
            self._fresh = [False] * self.slots
        groups: dict[int, list[int]] = {}
        for slot, block in blocks.items():
            frames = (self._filled[slot] + block.shape[axis]) // frame
            groups.setdefault(frames, []).append(slot)
        results: dict[int, Optional[Outputs]] = dict.fromkeys(blocks)
        for frames, members in groups.items():
            if frames:
                outputs = self._run(members, blocks, frames * frame)
                for slot in members:
                    results[slot] = _row(outputs, slot)
        pending = self._pending
        for slot, block in blocks.items():  # keep the samples short of a whole frame
            filled, length = self._filled[slot], block.shape[axis]
            rest = (filled + length) % frame
            if rest:
                row = pending[slot : slot + 1]
                if filled + length >= frame:
                    row.narrow(axis, 0, rest).copy_(block.narrow(axis, length - rest, rest))
                else:
                    row.narrow(axis, filled, length).copy_(block)
            self._filled[slot] = rest
        return results

    def _run(self, members: list[int], blocks: Mapping[int, Tensor], length: int) -> Outputs:
        """One batched step over ``length`` samples of each member slot (their waiting samples
        first); the other rows keep their state."""
        step, axis = self.step, self.axis
        assert step is not None
        shape = list(self._pending.shape)
        shape[axis] = length
        x = self._pending.new_zeros(shape)
        for slot in members:
            filled = self._filled[slot]
            row = x[slot : slot + 1]
            if filled:
                row.narrow(axis, 0, filled).copy_(
                    self._pending[slot : slot + 1].narrow(axis, 0, filled)
                )
            row.narrow(axis, filled, length - filled).copy_(
                blocks[slot].narrow(axis, 0, length - filled)
            )
        if len(members) == self.slots:
            return step(x)
        active = torch.zeros(self.slots, dtype=torch.bool)
        active[members] = True
        return step.step_rows(x, active)

    # -- checks and the unbatched form --------------------------------------------------

    def _own(self, slot: int) -> GraphStream:
        own = self._streams[slot]
        assert own is not None
        return own

    def _prototype_block(self, length: int) -> Tensor:
        shape = list(self._row_shape)
        shape[self.axis] = length
        return torch.zeros(shape, dtype=self._dtype, device=self._device)

    def _check_open(self, slot: Any) -> int:
        """``slot`` as an ``int`` (any integer type), if it is open."""
        try:
            number = operator.index(slot)
        except TypeError:
            number = None
        if number is None or isinstance(slot, bool) or getattr(slot, "dtype", None) == torch.bool:
            raise StreamInputError(
                f"A slot is the whole number that open() returned, not {slot!r} "
                f"({type(slot).__name__})."
            )
        if not 0 <= number < self.slots or not self._open[number]:
            raise StreamInputError(
                f"Slot {number} is not open in this pool of {self.slots} slots; open() gives "
                "a slot for each new signal."
            )
        return number

    def _check_block(self, slot: int, block: Tensor) -> None:
        shape = self._row_shape
        if (
            not isinstance(block, Tensor)
            or block.dim() != len(shape)
            or any(s != o for d, (s, o) in enumerate(zip(block.shape, shape)) if d != self.axis)
        ):
            expected = ["T" if d == self.axis else str(s) for d, s in enumerate(shape)]
            got = list(block.shape) if isinstance(block, Tensor) else type(block).__name__
            raise StreamInputError(
                f"The block for slot {slot} must be shaped [{', '.join(expected)}] but is {got}."
            )
        if block.dtype != self._dtype or block.device != self._device:
            raise StreamInputError(
                f"The block for slot {slot} is {block.dtype} on {block.device} but the pool "
                f"computes in {self._dtype} on {self._device}."
            )

    def extra_repr(self) -> str:
        form = "batched step" if self.step is not None else "one stream per slot"
        return f"slots={self.slots}, open={self.slots - self.free}, {form}"


def _row(outputs: Outputs, slot: int) -> Outputs:
    if isinstance(outputs, tuple):
        return tuple(o[slot : slot + 1] for o in outputs)
    return outputs[slot : slot + 1]
