"""`LeafStream`: the call skeleton shared by the streams of single layers.

It validates a block before touching any state, lifts ``[C, T]`` blocks to ``[1, C, T]``,
allocates state when a signal starts, runs the subclass's ``_step`` and resets after
``final=True``. Subclasses implement ``_allocate``, ``_step`` and ``_reset_state``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from torchstreamer.base import BaseStream, check_block, state_int
from torchstreamer.errors import StreamError

__all__ = ["LeafStream", "check_counters", "check_signal_state", "layer_label", "materialize"]

_WEIGHT_HOOKS = ("WeightNorm", "SpectralNorm")


def layer_label(module: nn.Module, path: str) -> str:
    """How messages name a layer: ``layer 'enc.0' (Conv1d)`` or ``Conv1d stream``."""
    kind = type(module).__name__
    return f"layer '{path}' ({kind})" if path else f"{kind} stream"


def materialize(module: nn.Module) -> nn.Module:
    """A plain copy of a convolution whose weight-norm or spectral-norm weight is computed.

    TorchScript cannot run parametrizations or forward pre-hooks, so a scripted stream uses the
    weights as they are when it is scripted. The bias is shared, not copied.
    """
    from torch.nn.utils import parametrize

    hooks = [h for h in module._forward_pre_hooks.values() if type(h).__name__ in _WEIGHT_HOOKS]
    if not parametrize.is_parametrized(module) and not hooks:
        return module
    if not isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        raise TypeError(f"Cannot script a normalised {type(module).__name__}.")
    with torch.no_grad():
        refresh_weights(module)
        weight = module.weight.detach().clone()
    kind = nn.Conv1d if isinstance(module, nn.Conv1d) else nn.ConvTranspose1d
    plain = kind(
        module.in_channels, module.out_channels, module.kernel_size[0],
        module.stride[0],
        module.padding if isinstance(module.padding, str) else module.padding[0],  # type: ignore[arg-type]
        dilation=module.dilation[0], groups=module.groups, bias=module.bias is not None,
        padding_mode=module.padding_mode, device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    if isinstance(module, nn.ConvTranspose1d):
        plain.output_padding = module.output_padding
    plain.weight = nn.Parameter(weight, requires_grad=False)
    plain.bias = module.bias
    plain.train(module.training)
    return plain


def refresh_weights(module: nn.Module) -> None:
    """Recompute weights that old-style ``weight_norm``/``spectral_norm`` hooks derive.

    Those hooks set ``module.weight`` only when the module is called; a stream that reads the
    weight directly runs them first so that it always sees the current parameters.
    """
    for hook in module._forward_pre_hooks.values():
        if type(hook).__name__ in _WEIGHT_HOOKS:
            hook(module, ())


class LeafStream(BaseStream):
    """Base of the streams of one layer: validation, batching and the signal life cycle."""

    def __init__(self, label: str, in_channels: int) -> None:
        super().__init__()
        self._label = label
        self._in_channels = in_channels
        self._rank = 0
        self._batch = -1
        self._channels = -1  # channels of the signal in progress

    def forward(self, x: Tensor, final: bool = False) -> Optional[Tensor]:
        channels = self._in_channels if self._in_channels >= 0 else self._channels
        check_block(self._label, x, channels, self._reference(), self._rank, self._batch)
        batched = x.dim() == 3
        xb = x if batched else x.unsqueeze(0)
        self._check_final(xb, final)
        if self._rank == 0:
            self._allocate(xb)
            self._rank = x.dim()
            self._batch = xb.shape[0]
            self._channels = xb.shape[1]
        y = self._step(xb, final)
        if final:
            self.reset()
        if y is None:
            return None
        if y.shape[-1] == 0:  # a call without outputs returns None, never an empty tensor
            return None
        return y if batched else y.squeeze(0)

    @torch.jit.export
    def reset(self) -> None:
        """Drop the signal in progress; the next block starts a new signal."""
        self._rank = 0
        self._batch = -1
        self._channels = -1
        self._reset_state()

    @torch.jit.unused
    def _check_state(self, state: dict[str, Tensor]) -> None:
        """Check the signal counters and that every buffer has the shape this stream gives it
        (``[batch, channels, length]`` mid-signal), then the subclass's counters."""
        check_signal_state(
            self._label, state, self._in_channels, self._buffer_lengths(), self._buffer_widths()
        )
        names = list(self._buffer_lengths())
        reference = self._reference()
        if reference is not None and any(reference is b for b in self._buffers.values()):
            reference = None  # the state itself, not a parameter
        if reference is None and names:
            reference = state[names[0]]
        if state_int(state, "_rank") != 0 and reference is not None:
            for name in names:
                value = state[name]
                if value.dtype != reference.dtype or value.device != reference.device:
                    raise StreamError(
                        f"The state does not fit {self._label}: '{name}' is {value.dtype} on "
                        f"{value.device} but the stream computes in {reference.dtype} on "
                        f"{reference.device}; restore a state that get_state() returned for a "
                        "stream of the same model."
                    )
        check_counters(self._label, state, self._expected_counters(state))

    @torch.jit.unused
    def _buffer_lengths(self) -> dict[str, int]:
        """Length (dim 2) of each state buffer, as ``_allocate`` sizes it."""
        return {}

    @torch.jit.unused
    def _buffer_widths(self) -> dict[str, int]:
        """Channels (dim 1) of the state buffers that do not hold the input's channels."""
        return {}

    @torch.jit.unused
    def _expected_counters(self, state: dict[str, Tensor]) -> dict[str, int]:
        """The subclass's counters that ``state``'s signal position implies (empty: none)."""
        return {}

    def _check_final(self, x: Tensor, final: bool) -> None:
        """Raise before any state changes if this block cannot end the signal."""

    def _allocate(self, x: Tensor) -> None:
        """Size the state buffers for a signal whose first block is ``x`` (``[B, C, T]``)."""

    def _step(self, x: Tensor, final: bool) -> Optional[Tensor]:
        raise NotImplementedError

    def _reset_state(self) -> None:
        """Reset the counters of a subclass."""


def fit_buffer(buffer: Tensor, like: Tensor, channels: int, length: int) -> Tensor:
    """``buffer`` if it is already ``[B, channels, length]`` with ``like``'s dtype and device,
    else a new zero buffer of that shape (state is resized only when a signal starts)."""
    batch = like.shape[0]
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact test)
        if buffer.is_inference() and not torch.is_inference_mode_enabled():
            buffer = buffer.new_empty(0)  # made under torch.inference_mode(): not writable now
    if (
        buffer.dim() == 3
        and buffer.shape[0] == batch
        and buffer.shape[1] == channels
        and buffer.shape[2] == length
        and buffer.dtype == like.dtype
        and buffer.device == like.device
    ):
        return buffer
    return torch.zeros(batch, channels, length, dtype=like.dtype, device=like.device)


def check_signal_state(
    label: str,
    state: dict[str, Tensor],
    in_channels: int,
    lengths: dict[str, int],
    widths: Optional[dict[str, int]] = None,
) -> None:
    """Raise :class:`StreamError` unless the counters ``_rank``, ``_batch`` and ``_channels``
    of ``state`` are consistent and each buffer named in ``lengths`` has the shape the stream
    allocates: ``[_batch, _channels, length]`` mid-signal, and between signals either none
    (an empty 1-d tensor) or ``[any batch, channels, length]``.

    ``in_channels`` is -1 when the stream takes any number of channels. A length of -1 means
    any length (a buffer that grows).
    """
    rank, batch, channels = (state_int(state, n) for n in ("_rank", "_batch", "_channels"))

    def refuse(found: str) -> StreamError:
        return StreamError(
            f"The state does not fit {label}: {found}; restore a state that get_state() "
            "returned for a stream of the same model."
        )

    if rank not in (0, 2, 3):
        raise refuse(f"'_rank' is {rank} but must be 0 (no signal), 2 or 3 (the dims of blocks)")
    if rank == 0 and (batch != -1 or channels != -1):
        raise refuse(
            f"no signal is in progress ('_rank' is 0) but '_batch' is {batch} and '_channels' "
            f"is {channels} instead of -1"
        )
    if rank == 2 and batch != 1:
        raise refuse(f"'_batch' is {batch} but a signal of [C, T] blocks has batch 1")
    if rank == 3 and batch < 0:
        raise refuse(f"'_batch' is {batch} but a batch size is at least 0")
    if rank != 0 and (channels < 0 or 0 <= in_channels != channels):
        wanted = f"{in_channels}" if in_channels >= 0 else "at least 0"
        raise refuse(f"'_channels' is {channels} but must be {wanted}")
    for name, length in lengths.items():
        shape = list(state[name].shape)
        width = (widths or {}).get(name, channels)
        if rank != 0:
            if len(shape) != 3 or shape[:2] != [batch, width] or length not in (-1, shape[2]):
                wanted = f"[{batch}, {width}, {'L' if length < 0 else length}]"
                raise refuse(
                    f"'{name}' is shaped {shape} but a signal with batch {batch} and "
                    f"{channels} channels keeps it shaped {wanted}"
                )
            continue
        width = (widths or {}).get(name, in_channels)
        if shape != [0] and (
            len(shape) != 3 or length not in (-1, shape[2]) or (width >= 0 and shape[1] != width)
        ):
            channels_text = str(width) if width >= 0 else "C"
            wanted = f"[0] or [B, {channels_text}, {'L' if length < 0 else length}]"
            raise refuse(f"'{name}' is shaped {shape} but must be shaped {wanted}")


def check_counters(label: str, state: dict[str, Tensor], expected: dict[str, int]) -> None:
    """Raise :class:`StreamError` unless each counter of ``state`` equals its ``expected`` value
    (what the stream's position in the signal implies)."""
    for name, value in expected.items():
        found = state_int(state, name)
        if found != value:
            raise StreamError(
                f"The state does not fit {label}: '{name}' is {found} but a stream at this point "
                f"of a signal ({_position(state)}) has {value}; restore a state that get_state() "
                "returned for a stream of the same model."
            )


def _position(state: dict[str, Tensor]) -> str:
    if state_int(state, "_rank") == 0:
        return "no signal in progress"
    if "_seen" in state:
        return f"{state_int(state, '_seen')} samples seen"
    return "mid-signal"
