"""`LeafStream`: the call skeleton shared by the streams of single layers.

It validates a block before touching any state, lifts ``[C, T]`` blocks to ``[1, C, T]``,
allocates state when a signal starts, runs the subclass's ``_step`` and resets after
``final=True``. Subclasses implement ``_allocate``, ``_step`` and ``_reset_state``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from torchstreamer.base import BaseStream, check_block

__all__ = ["LeafStream", "layer_label", "materialize"]

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
        return y if batched else y.squeeze(0)

    @torch.jit.export
    def reset(self) -> None:
        """Drop the signal in progress; the next block starts a new signal."""
        self._rank = 0
        self._batch = -1
        self._channels = -1
        self._reset_state()

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
