"""Streams of modules that act on each time step alone (activations, eval-mode norms, ...).

Such a module needs no state: the stream applies it to each block. Which modules qualify is
decided by :func:`elementwise_verdict` (known types) or :func:`probe_elementwise` (unknown
types, tested on random input); the registry refuses everything else.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from torchstreamer.base import BaseStream, check_block
from torchstreamer.errors import NotStreamableError, StreamInputError
from torchstreamer.streams.leaf import layer_label

__all__ = ["Elementwise1dStream", "elementwise_verdict", "probe_elementwise"]

_STATELESS: tuple[type, ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.Softplus, nn.Softsign, nn.LogSigmoid,
    nn.Threshold, nn.ChannelShuffle,
)  # fmt: skip
_RANDOM_IN_TRAINING: tuple[type, ...] = (
    nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU,
)  # fmt: skip
_OVER_CHANNELS: tuple[type, ...] = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GLU)


def elementwise_verdict(module: nn.Module, path: str) -> Optional[bool]:
    """Whether a module of a known type acts on each time step alone.

    Returns ``True`` (stream it per block), ``None`` (unknown type: probe it) or raises
    :class:`NotStreamableError` when the module is known to mix time steps in its current mode.
    """
    label = layer_label(module, path)
    if isinstance(module, _STATELESS):
        return True
    if isinstance(module, _RANDOM_IN_TRAINING):
        if module.training:
            raise NotStreamableError(
                f"{label} is in training mode, where it draws random numbers on every call, so "
                "no stream can reproduce it; call model.eval() before building the stream."
            )
        return True
    if isinstance(module, nn.BatchNorm1d):
        if module.training or not module.track_running_stats or module.running_mean is None:
            raise NotStreamableError(
                f"{label} normalises with statistics of the whole batch and signal (training "
                "mode or track_running_stats=False); call model.eval() on a model with running "
                "statistics, so that it scales each time step alone."
            )
        return True
    if isinstance(module, _OVER_CHANNELS):
        dim = module.dim
        if dim is None or dim not in (1, -2):
            raise NotStreamableError(
                f"{label} acts over dim={dim}, which is time (or all dims) for [B, C, T] input, "
                "so every output depends on the whole signal. Use dim=-2 (channels) or "
                "register a streamer for it."
            )
        return True
    return None


def probe_elementwise(module: nn.Module, channels: int, path: str) -> int:
    """Test on random input that ``module`` acts on each time step alone; return its channels out.

    The probe checks that the output has the input's length, that changing one time step
    changes only that output step, and that a block alone gives the same outputs as inside a
    longer signal. It raises :class:`NotStreamableError` naming the layer otherwise.
    """
    label = layer_label(module, path)
    reference = next(iter(module.parameters()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = reference.device if reference is not None else torch.device("cpu")
    length, step = 16, 7
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, length, generator=generator).to(dtype=dtype, device=device)

    def refuse(reason: str) -> NotStreamableError:
        return NotStreamableError(
            f"{label} is not a known layer and does not act on each time step alone ({reason}), "
            f"so it cannot be streamed; register a streamer for it with "
            f"torchstreamer.register_streamer({type(module).__name__}, factory)."
        )

    try:
        with torch.no_grad():
            y = module(x)
            if (
                not isinstance(y, Tensor)
                or y.dim() != 3
                or y.shape[0] != 2
                or y.shape[-1] != length
            ):
                shape = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise refuse(f"[2, {channels}, {length}] input gave {shape}")
            if not torch.equal(module(x), y):
                raise refuse("two calls on the same input differ")
            changed = x.clone()
            changed[:, :, step] += 1.0
            diff = (module(changed) != y).any(dim=1).any(dim=0)
            others = torch.cat([diff[:step], diff[step + 1 :]])
            if bool(others.any()):
                raise refuse(f"changing time step {step} changed other output steps")
            block = module(x[:, :, 3:9])
            if block.shape != y[:, :, 3:9].shape or not torch.allclose(
                block, y[:, :, 3:9], rtol=1e-5, atol=1e-6
            ):
                raise refuse("a block alone gives other outputs than inside the signal")
    except NotStreamableError:
        raise
    except Exception as error:  # the module rejected the probe input
        raise refuse(f"it fails on a [2, {channels}, {length}] probe input: {error}") from error
    return int(y.shape[1])


class Elementwise1dStream(BaseStream):
    """Streams a module that acts on each time step alone, by applying it to each block.

    No state is kept. ``create_stream`` builds this stream only for modules known or probed to
    act per step; building it directly asserts that the module does.

    Args:
        module: the module, called on ``[B, C, T]`` blocks (``[C, T]`` blocks get a batch dim).
        path: the layer's path in a model, used in error messages.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> stream = pts.Elementwise1dStream(torch.nn.GELU())
        >>> x = torch.randn(3, 5)
        >>> torch.equal(stream(x), torch.nn.functional.gelu(x))
        True
    """

    def __init__(self, module: nn.Module, *, path: str = "", probe: bool = False) -> None:
        super().__init__()
        self.module = module
        self._path = path
        self._label = layer_label(module, path)
        # an unknown module whose input channels were unknown is probed on the first block
        self._unverified = probe
        # softmax-like modules with dim=1 act over time on an unbatched [C, T] signal
        self._batched_only = (
            isinstance(module, _OVER_CHANNELS) and getattr(module, "dim", None) == 1
        )

    def forward(self, x: Tensor, final: bool = False) -> Optional[Tensor]:
        check_block(self._label, x, -1, None, 0, -1)
        if self._unverified:
            if torch.jit.is_scripting():
                raise StreamInputError(
                    f"{self._label} was never probed; build the stream with in_channels."
                )
            else:
                probe_elementwise(self.module, x.shape[-2], self._path)
                self._unverified = False
        if self._batched_only and x.dim() == 2:
            raise StreamInputError(
                f"{self._label} acts over dim=1, which is time for an unbatched [C, T] block; "
                "stream [B, C, T] blocks or build the module with dim=-2."
            )
        if x.shape[-1] == 0:  # a call without outputs returns None, never an empty tensor
            return None
        if x.dim() == 3:
            return self.module(x)
        return self.module(x.unsqueeze(0)).squeeze(0)

    def __prepare_scriptable__(self) -> Elementwise1dStream:
        if self._unverified:
            raise NotStreamableError(
                f"{self._label} is not a known layer and has not been probed yet, so it cannot "
                "be scripted; pass in_channels when building the stream, or stream one block "
                "before scripting."
            )
        return self

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        return n

    @torch.jit.export
    def promise(self, n: int) -> int:
        return n
