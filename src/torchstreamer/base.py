"""`BaseStream`: the call contract, input validation and the state protocol of every stream.

A stream is an ``nn.Module`` called block by block: ``stream(x, final=False)`` takes a block
shaped ``[C, T]`` or ``[B, C, T]`` (any ``T`` from 0 up) and returns the outputs that the block
completes, or ``None`` while it has none. ``final=True`` flushes the end of the signal, after
which the stream is ready for a new one. ``reset()`` drops a signal half way.

State lives in tensors registered as buffers when the stream is built, resized only when a new
signal starts (a new batch size, dtype or device) and otherwise written in place; position
counters are plain integers. ``get_state()`` flattens all of it to ``dict[str, Tensor]`` keyed
by path, and ``set_state()`` restores it after checking names, shapes, dtypes and devices.

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> stream = pts.Conv1dStream(torch.nn.Conv1d(2, 3, 4))
    >>> stream(torch.randn(2, 2)) is None  # 2 samples: not enough for a window of 4
    True
    >>> stream(torch.randn(2, 5)).shape
    torch.Size([3, 4])
    >>> state = stream.get_state()  # buffers and counters, as tensors
    >>> state["_pending"].shape, int(state["_fill"])
    (torch.Size([1, 2, 3]), 3)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor, nn

from torchstreamer.errors import StreamError, StreamInputError

__all__ = ["ONE_BUILD_AT_A_TIME", "BaseStream", "Stateful", "check_state_values"]

# Held (re-entrant) while a stream or a step model is built, from the capture to the last check
# that runs the model: torch.export patches process-wide state while it traces (nn.Module's
# __call__ and __getattr__, the modules it captures, with leaves swapped into them), which a
# model run from another thread's build would go through. Builds from several threads so run
# one after the other; streams already built run in parallel (they never take it).
ONE_BUILD_AT_A_TIME = threading.RLock()


class Stateful(nn.Module):
    """A module whose state is the tensors and integers named by ``_state_tensors`` and
    ``_state_ints``; :meth:`BaseStream.get_state` collects them from every such module."""

    _state_tensors: tuple[str, ...] = ()
    _state_ints: tuple[str, ...] = ()

    @torch.jit.unused
    def __setattr__(self, name: str, value: Any) -> None:
        # Streams update counters and buffers on every call; nn.Module.__setattr__ checks each
        # assignment against parameters, modules and hooks, which costs more than the update.
        # Plain numbers and tensors that replace a registered buffer take a direct path.
        kind = type(value)
        if kind is int or kind is bool or kind is float:
            if name not in self.__dict__.get("_buffers", ()):
                self.__dict__[name] = value
                return
        elif kind is Tensor:
            buffers = self.__dict__.get("_buffers")
            if buffers is not None and name in buffers:
                buffers[name] = value
                return
        super().__setattr__(name, value)

    @torch.jit.unused
    def _check_state(self, state: dict[str, Tensor]) -> None:
        """Raise :class:`StreamError` unless ``state`` is one this module can be in.

        ``state`` is this module's part of a state given to :meth:`BaseStream.set_state`, keyed
        as this module's own ``get_state()`` would key it (descendants included). Names,
        dtypes, numbers of dimensions and devices are already checked; modules override this
        to check buffer shapes and counters. It runs before anything is written, so a refused
        state leaves the stream as it was.
        """


class BaseStream(Stateful):
    """Base class of all streams: ``forward(x, final=False) -> Optional[Tensor]``.

    Subclasses implement :meth:`forward` and, when they keep state, :meth:`reset` and the class
    attributes ``_state_tensors``/``_state_ints`` (names of the buffers and integer counters that
    make up the state). ``output_length(n)`` tells how many outputs a signal of ``n`` samples
    gives; containers use it to align residual connections.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> class Double(pts.BaseStream):
        ...     def forward(self, x: torch.Tensor, final: bool = False):
        ...         return 2 * x
        >>> Double()(torch.ones(1, 3)).tolist()
        [[2.0, 2.0, 2.0]]
    """

    def forward(self, x: Tensor, final: bool = False) -> Optional[Tensor]:
        """Stream one block; return the outputs it completes, or ``None``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward().")

    @torch.jit.export
    def reset(self) -> None:
        """Drop the signal in progress; the next block starts a new signal."""

    @torch.jit.export
    def _reference(self) -> Optional[Tensor]:
        """A tensor whose dtype and device blocks must match (a parameter), if any."""
        return None

    @torch.jit.export
    def promise(self, n: int) -> int:
        """Note that the signal in progress reaches at least ``n`` input samples (an earlier
        layer guarantees them) and return how many outputs that guarantees in turn; 0 when the
        stream does not say.

        Containers call it before each block, so that an output whose existence, not its value,
        waits on later samples (a transposed convolution's gaps, the last outputs its padding
        crops) comes as soon as it is guaranteed. The default promises nothing."""
        return 0

    @torch.jit.export
    def _check_end(self, total: int) -> None:
        """Raise :class:`StreamInputError` if a signal of ``total`` samples cannot end now.

        Containers ask every stage before a ``final=True`` call changes any state.
        """

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        """Number of outputs the stream gives for a whole signal of ``n`` samples."""
        raise NotImplementedError(f"{type(self).__name__} does not define output_length().")

    # -- state protocol (eager only) ------------------------------------------------------

    @torch.jit.unused
    def get_state(self) -> dict[str, Tensor]:
        """Copy of the state of this stream and all streams inside it, keyed by path.

        Integer counters come back as ``int64`` tensors (0-d, or 1-d for a list of counters) so
        that the whole state is tensors.
        """
        state: dict[str, Tensor] = {}
        for path, module in self.named_modules():
            if not isinstance(module, Stateful):
                continue
            prefix = f"{path}." if path else ""
            for name in module._state_tensors:
                state[prefix + name] = getattr(module, name).detach().clone()
            for name in module._state_ints:
                value = getattr(module, name)
                state[prefix + name] = torch.tensor(value, dtype=torch.int64)
        return state

    @torch.jit.unused
    def set_state(self, state: dict[str, Tensor]) -> None:
        """Restore a state from :meth:`get_state`, so the stream continues where it was.

        Raises:
            StreamError: if names are missing or extra, a tensor has another dtype, number
                of dimensions, channel count or device than the stream's own state, or a
                buffer's shape or a counter does not fit the stream (checked by each module's
                ``_check_state``). Nothing is written then: the state stays as it was.
        """
        check_state_values(state)
        own = self.get_state()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise StreamError(
                f"The state does not fit this stream: missing {missing}, unexpected {extra}."
            )
        ints = _int_names(self)
        for key, value in state.items():
            current = own[key]
            if key in ints:
                if value.dtype != torch.int64 or value.shape != current.shape:
                    raise StreamError(
                        f"State '{key}' is a counter and must be an int64 tensor shaped "
                        f"{list(current.shape)} but is a {value.dtype} tensor shaped "
                        f"{list(value.shape)}."
                    )
                continue
            # a buffer is 1-d and empty until its layer sees a signal, then [B, C, length]
            fresh = (current.dim() == 1 and current.numel() == 0) or (
                value.dim() == 1 and value.numel() == 0
            )
            if value.dtype != current.dtype or (value.dim() != current.dim() and not fresh):
                raise StreamError(
                    f"State '{key}' must be a {current.dim()}-d {current.dtype} tensor but is "
                    f"a {value.dim()}-d {value.dtype} tensor."
                )
            if not fresh and current.dim() == 3 and value.shape[1] != current.shape[1]:
                raise StreamError(
                    f"State '{key}' must have {current.shape[1]} channels (dim 1) but has shape "
                    f"{list(value.shape)}."
                )
            if value.device != current.device and key.rsplit(".", 1)[-1] in _tensor_names(self):
                raise StreamError(
                    f"State '{key}' is on {value.device} but the stream is on {current.device}."
                )
        modules = dict(self.named_modules())
        for path, module in modules.items():  # every check before anything is written
            if isinstance(module, Stateful):
                prefix = f"{path}." if path else ""
                module._check_state(
                    {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                )
        for key, value in state.items():
            path, _, name = key.rpartition(".")
            module = modules[path]
            if name in module._state_ints:
                setattr(module, name, value.tolist())
            else:
                setattr(module, name, value.detach().clone())


def check_state_values(state: Any) -> None:
    """Refuse, before anything is written, a state that is not a mapping of names to tensors
    with values (a tensor on the meta device has a shape but no values)."""
    if not isinstance(state, Mapping):
        raise StreamError(
            f"A state is a dict of names to tensors (what get_state() returns), not a "
            f"{type(state).__name__}."
        )
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise StreamError(f"State '{key}' must be a tensor, not a {type(value).__name__}.")
        if value.is_meta:
            raise StreamError(
                f"State '{key}' is a tensor on the meta device, which has a shape but no "
                "values; restore the tensors that get_state() returned (load a saved state "
                "with torch.load(path, map_location='cpu'))."
            )


def _int_names(stream: nn.Module) -> set[str]:
    """Keys of the integer counters in ``stream.get_state()``."""
    names: set[str] = set()
    for path, module in stream.named_modules():
        if isinstance(module, Stateful):
            prefix = f"{path}." if path else ""
            names.update(prefix + name for name in module._state_ints)
    return names


def state_int(state: dict[str, Tensor], name: str) -> int:
    """The counter ``name`` of a state (a 0-d integer tensor) as a Python ``int``."""
    return int(state[name].item())


def _tensor_names(stream: nn.Module) -> set[str]:
    names: set[str] = set()
    for module in stream.modules():
        if isinstance(module, Stateful):
            names.update(module._state_tensors)
    return names


def check_block(
    label: str,
    x: Tensor,
    channels: int,
    reference: Optional[Tensor],
    rank: int,
    batch: int,
) -> None:
    """Raise :class:`StreamInputError` unless ``x`` is a valid next block.

    ``channels`` is -1 when unknown; ``rank``/``batch`` are 0/-1 when no signal is in progress.
    TorchScript compiles this function, so it uses only scriptable constructs.
    """
    if x.dim() != 2 and x.dim() != 3:
        raise StreamInputError(
            f"{label} expects a block shaped [C, T] or [B, C, T] but got shape {list(x.shape)}."
        )
    if not x.is_floating_point():
        raise StreamInputError(
            f"{label} expects a floating-point block but got dtype {x.dtype}; "
            "convert it, e.g. with block.float()."
        )
    if channels >= 0 and x.shape[-2] != channels:
        raise StreamInputError(
            f"{label} expects {channels} channels (dim -2) but the block has {x.shape[-2]} "
            f"(shape {list(x.shape)})."
        )
    if reference is not None:
        if x.dtype != reference.dtype:
            raise StreamInputError(
                f"{label} computes in {reference.dtype} but the block is {x.dtype}; "
                f"convert the block (block.to({reference.dtype})) or the model."
            )
        if x.device != reference.device:
            raise StreamInputError(
                f"{label} is on {reference.device} but the block is on {x.device}; "
                f"move the block (block.to('{reference.device}')) or the stream."
            )
    if rank != 0:
        if x.dim() != rank:
            raise StreamInputError(
                f"{label} is in the middle of a signal of {rank}-d blocks but got a "
                f"{x.dim()}-d block (shape {list(x.shape)}); finish the signal with final=True "
                "or call reset() first."
            )
        if rank == 3 and x.shape[0] != batch:
            raise StreamInputError(
                f"{label} is in the middle of a signal with batch size {batch} but got a block "
                f"with batch size {x.shape[0]}; finish the signal with final=True or call "
                "reset() first."
            )
