"""Streams of containers: ``nn.Sequential`` and ``Residual1d``."""

from typing import Optional

import torch
from torch import Tensor, nn

from torchstreamer.base import BaseStream, check_block
from torchstreamer.errors import NotStreamableError, StreamInputError
from torchstreamer.streams.conv import check_padding_choice
from torchstreamer.streams.elementwise import Elementwise1dStream, elementwise_verdict
from torchstreamer.streams.leaf import fit_buffer, layer_label
from torchstreamer.time import residual_crop

__all__ = ["Residual1d", "Residual1dStream", "Sequential1dStream"]


class Residual1d(nn.Module):
    """A residual connection that works with unpadded layers: ``net(x) + crop(x)``.

    When ``net`` shortens the signal by ``trim`` samples (unpadded convolutions), the residual
    is cropped to the same length, centred: ``trim // 2`` samples on the left, the rest on the
    right (:func:`torchstreamer.time.residual_crop`). It is an ordinary module, usable offline;
    ``Residual1dStream`` streams it.

    Args:
        *modules: the inner network, one module or several (wrapped in ``nn.Sequential``).

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> block = pts.Residual1d(torch.nn.Conv1d(4, 4, 3))
        >>> block(torch.randn(1, 4, 10)).shape
        torch.Size([1, 4, 8])
    """

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        if not modules:
            raise TypeError("Residual1d needs at least one module.")
        self.net = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        left, right = residual_crop(x.shape[-1] - y.shape[-1])
        return y + x[..., left : x.shape[-1] - right]


def _input_channels(module: nn.Module) -> Optional[int]:
    """Channels a module takes, when its first channel-aware layer tells."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        return int(module.in_channels)
    if isinstance(module, nn.Sequential):
        for layer in module:
            channels = _input_channels(layer)
            if channels is not None:
                return channels
            if not _keeps_channels(layer):
                return None
        return None
    if isinstance(module, Residual1d):
        return _input_channels(module.net)
    return None


def _keeps_channels(module: nn.Module) -> bool:
    """Whether a module is known to give as many channels as it takes."""
    if isinstance(module, _CHANNEL_KEEPING):
        return True
    if isinstance(module, (nn.GLU, nn.BatchNorm1d, nn.PReLU)):
        return False  # GLU halves the channels; the others tell their own
    try:
        return bool(elementwise_verdict(module, ""))
    except NotStreamableError:
        return False


_CHANNEL_KEEPING: tuple[type, ...] = (
    nn.Identity, nn.AvgPool1d, nn.MaxPool1d, nn.ConstantPad1d, nn.ZeroPad1d, nn.ReflectionPad1d,
    nn.ReplicationPad1d, nn.BatchNorm1d, nn.Dropout, nn.ReLU, nn.GELU, nn.LeakyReLU, nn.Tanh,
    nn.Sigmoid, nn.SiLU, nn.ELU, nn.PReLU, Residual1d,
)  # fmt: skip


def _output_channels(module: nn.Module, channels: Optional[int]) -> Optional[int]:
    """Channels a module gives for ``channels`` input channels, or ``None`` if unknown."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        return int(module.out_channels)
    if isinstance(module, nn.Sequential):
        for layer in module:
            channels = _output_channels(layer, channels)
        return channels
    if channels is None:
        return None
    if _keeps_channels(module):
        return channels
    try:  # any other module: ask it
        reference = next(iter(module.parameters()), None)
        probe = torch.zeros(1, channels, 64)
        if reference is not None:
            probe = probe.to(dtype=reference.dtype, device=reference.device)
        with torch.no_grad():
            y = module(probe)
        return int(y.shape[1]) if isinstance(y, Tensor) and y.dim() == 3 else None
    except Exception:
        return None


class Sequential1dStream(BaseStream):
    """Streams an ``nn.Sequential`` layer by layer; each layer's outputs feed the next.

    Every layer gets its stream from :func:`torchstreamer.create_stream` (registered
    streamers first), with the same ``padding`` choice.

    Args:
        net: the network.
        padding: ``"valid"`` (default, as in the seed API) or ``"model"``; see
            :class:`Conv1dStream`.
        path: the network's path in a larger model, used in error messages.
        in_channels: channels of the input, when the first layers do not tell.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Conv1d(4, 1, 2, stride=2))
        >>> stream = pts.Sequential1dStream(net)
        >>> x = torch.randn(1, 50)
        >>> blocks = [stream(x[:, i : i + 8]) for i in range(0, 50, 8)]
        >>> y = torch.cat([b for b in blocks if b is not None], -1)
        >>> torch.allclose(y, net(x), atol=1e-6)
        True
    """

    _state_ints = ("_rank", "_batch", "_seen", "_stage_channels")

    def __init__(
        self,
        net: nn.Sequential,
        padding: str = "valid",
        *,
        path: str = "",
        in_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        from torchstreamer.streams.registry import create_stream

        if not isinstance(net, nn.Sequential):
            raise TypeError(
                f"Sequential1dStream streams an nn.Sequential, not {type(net).__name__}; use "
                "torchstreamer.create_stream for a single layer."
            )
        check_padding_choice(padding)
        self.padding = padding
        self._label = layer_label(net, path)
        channels = in_channels if in_channels is not None else _input_channels(net)
        self._in_channels = -1 if channels is None else channels
        streams: list[BaseStream] = []
        for name, layer in net.named_children():
            layer_path = f"{path}.{name}" if path else name
            streams.append(create_stream(layer, padding, in_channels=channels, path=layer_path))
            channels = _output_channels(layer, channels)
        self.streams = nn.ModuleList(streams)
        # an unbatched block would turn a softmax over dim=1 into one over time
        self._batched_only = any(
            isinstance(s, Elementwise1dStream) and s._batched_only for s in self.streams.modules()
        )
        self._rank = 0
        self._batch = -1
        self._seen = 0
        # input channels of each stage in this signal; -1 while the stage has had no block
        self._stage_channels = [-1] * len(streams)

    def forward(self, x: Tensor, final: bool = False) -> Optional[Tensor]:
        check_block(self._label, x, self._in_channels, self._reference(), self._rank, self._batch)
        if self._batched_only and x.dim() == 2:
            raise StreamInputError(
                f"{self._label} contains a softmax over dim=1, which is time for an unbatched "
                "[C, T] block; stream [B, C, T] blocks or use dim=-2."
            )
        if final and not torch.jit.is_scripting():
            self._check_end(self._seen + x.shape[-1])
        y: Optional[Tensor] = x
        # TorchScript unrolls this loop, so it cannot `break`: stages after one that gave
        # nothing are skipped, except that final=True still flushes those that saw blocks
        for i, stream in enumerate(self.streams):
            if y is not None:
                self._stage_channels[i] = y.shape[-2]
                y = stream(y, final)
            elif final and self._stage_channels[i] >= 0:
                channels = self._stage_channels[i]
                empty = (
                    x.new_zeros(x.shape[0], channels, 0)
                    if x.dim() == 3
                    else x.new_zeros(channels, 0)
                )
                y = stream(empty, final)
            elif final:  # this stage saw no block in this signal: nothing to flush
                stream.reset()  # type: ignore[operator]
        if final:
            self.reset()
        else:  # recorded only once every stage has taken the block
            self._rank = x.dim()
            self._batch = x.shape[0] if x.dim() == 3 else -1
            self._seen += x.shape[-1]
        return y

    @torch.jit.export
    def reset(self) -> None:
        """Drop the signal in progress in every layer."""
        self._rank = 0
        self._batch = -1
        self._seen = 0
        for i, stream in enumerate(self.streams):
            stream.reset()  # type: ignore[operator]
            self._stage_channels[i] = -1

    @torch.jit.export
    def _reference(self) -> Optional[Tensor]:
        for stream in self.streams:
            reference = stream._reference()  # type: ignore[operator]
            if reference is not None:
                return reference
        return None

    @torch.jit.unused
    def _check_end(self, total: int) -> None:
        """Ask every stage whether the signal can end, before any stage changes state."""
        for stream in self.streams:
            stream._check_end(total)  # type: ignore[operator]
            try:
                total = stream.output_length(total)  # type: ignore[operator]
            except NotImplementedError:  # a registered stream that does not tell
                return

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        for stream in self.streams:
            n = stream.output_length(n)  # type: ignore[operator]
        return n


class Residual1dStream(BaseStream):
    """Streams a :class:`Residual1d`: the inner stream plus a delayed copy of the input.

    Output ``j`` of the inner network lines up with input ``j + trim // 2``; the stream keeps
    the inputs whose inner outputs have not come yet (a bounded number) and adds them when they
    do. The inner network must shorten every signal by the same ``trim``, i.e. keep the rate.

    Args:
        residual: the residual module (or any module; it is then the inner network).
        padding: ``"valid"`` (default) or ``"model"``, passed to the inner stream.
        path: the module's path in a larger model, used in error messages.
        in_channels: channels of the input, when the inner layers do not tell.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> block = pts.Residual1d(torch.nn.Conv1d(2, 2, 5))
        >>> stream = pts.Residual1dStream(block)
        >>> x = torch.randn(2, 30)
        >>> y = torch.cat([stream(x[:, :11]), stream(x[:, 11:], final=True)], -1)
        >>> torch.allclose(y, block(x), atol=1e-6)
        True
    """

    _state_tensors = ("_skip",)
    _skip: Tensor
    _state_ints = ("_rank", "_batch", "_channels", "_fill", "_drop")

    def __init__(
        self,
        residual: nn.Module,
        padding: str = "valid",
        *,
        path: str = "",
        in_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        from torchstreamer.streams.registry import create_stream

        check_padding_choice(padding)
        inner = residual.net if isinstance(residual, Residual1d) else residual
        inner_path = f"{path}.net" if path else "net"
        self._label = layer_label(residual, path)
        channels = in_channels if in_channels is not None else _input_channels(inner)
        self._in_channels = -1 if channels is None else channels
        self.stream = create_stream(inner, padding, in_channels=channels, path=inner_path)
        try:
            trims = {n - self.stream.output_length(n) for n in range(256, 256 + 64)}
        except NotImplementedError as error:
            raise NotStreamableError(
                f"{self._label}: the stream of its inner network does not define "
                "output_length(), so the residual cannot be aligned; implement it in the "
                "registered streamer."
            ) from error
        if len(trims) != 1:
            raise NotStreamableError(
                f"{self._label}: its inner network changes the signal's length by an amount "
                "that depends on the length (it changes the rate), so the residual has no fixed "
                "alignment; keep the inner network's total stride at 1."
            )
        self._trim = trims.pop()
        if self._trim < 0:
            raise NotStreamableError(
                f"{self._label}: its inner network lengthens the signal by {-self._trim} "
                "samples, so the residual cannot be added to it; crop the inner output."
            )
        self._crop_left = residual_crop(self._trim)[0]
        self.register_buffer("_skip", torch.zeros(0), persistent=False)
        self._rank = 0
        self._batch = -1
        self._channels = -1
        self._fill = 0
        self._drop = self._crop_left

    def forward(self, x: Tensor, final: bool = False) -> Optional[Tensor]:
        channels = self._in_channels if self._in_channels >= 0 else self._channels
        check_block(self._label, x, channels, self._reference(), self._rank, self._batch)
        batched = x.dim() == 3
        xb = x if batched else x.unsqueeze(0)
        if self._rank == 0:
            self._skip = fit_buffer(
                self._skip, xb, xb.shape[1], self._skip.shape[-1] if self._skip.dim() == 3 else 0
            )
            self._rank = x.dim()
            self._batch = xb.shape[0]
            self._channels = xb.shape[1]
        y = self.stream(x, final)
        if self._drop > 0:
            dropped = min(self._drop, xb.shape[-1])
            xb = xb[:, :, dropped:]
            self._drop -= dropped
        skip = xb if self._fill == 0 else torch.cat([self._skip[:, :, : self._fill], xb], -1)
        out: Optional[Tensor] = None
        if y is not None:
            yb = y if batched else y.unsqueeze(0)
            used = yb.shape[-1]
            out = yb + skip[:, :, :used]
            skip = skip[:, :, used:]
            if not batched:
                out = out.squeeze(0)
        if final:
            self.reset()
        else:
            self._keep(skip)
        return out

    def _keep(self, skip: Tensor) -> None:
        """Keep the inputs still waiting for their inner outputs (grows only while warming up)."""
        if skip.shape[-1] > self._skip.shape[-1]:
            self._skip = torch.cat([self._skip, torch.zeros_like(skip).detach()], -1)
        self._skip[:, :, : skip.shape[-1]].copy_(skip.detach())
        self._fill = skip.shape[-1]

    @torch.jit.export
    def reset(self) -> None:
        """Drop the signal in progress."""
        self.stream.reset()
        self._rank = 0
        self._batch = -1
        self._channels = -1
        self._fill = 0
        self._drop = self._crop_left

    @torch.jit.export
    def _reference(self) -> Optional[Tensor]:
        reference = self.stream._reference()
        if reference is None and self._rank != 0:
            return self._skip
        return reference

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        return self.stream.output_length(n)

    @torch.jit.unused
    def _check_end(self, total: int) -> None:
        self.stream._check_end(total)
