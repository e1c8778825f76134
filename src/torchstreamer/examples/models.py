"""The built-in example models: the seeds' networks, a vocoder, a causal TCN and a filter bank.

All are ``nn.Module`` factories with seeded random weights, except :func:`filterbank`, whose
fixed band-pass kernels make its output meaningful without training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchstreamer.step.padded import PaddedConv1d
from torchstreamer.streams.containers import Residual1d

__all__ = [
    "FilterBank",
    "VolloCNN",
    "filterbank",
    "seed_residual",
    "seed_sequential",
    "tcn",
    "vocoder",
    "vollo_cnn",
]


def seed_sequential(channels: int = 128) -> nn.Sequential:
    """The sequential network of the torch-streamer overview: 1x1 conv, strided convs, average
    pooling, transposed convs (input ``[1, T]``, output ``[1, T/2]``)."""
    return nn.Sequential(
        nn.Conv1d(1, channels, 1), nn.GELU(),
        nn.Conv1d(channels, channels, 2, stride=2), nn.GELU(),
        nn.Conv1d(channels, channels, 2, stride=2), nn.AvgPool1d(2),
        nn.ConvTranspose1d(channels, channels, 2, stride=2), nn.GELU(),
        nn.ConvTranspose1d(channels, channels, 2, stride=2), nn.GELU(),
        nn.Conv1d(channels, 1, 1),
    ).eval()  # fmt: skip


def seed_residual(channels: int = 128) -> nn.Sequential:
    """The residual network of the overview: three blocks whose skip is cropped to the output
    of their valid convolutions (:class:`torchstreamer.Residual1d`)."""
    return nn.Sequential(
        nn.Conv1d(1, channels, 1),
        *[
            Residual1d(
                nn.Sequential(
                    nn.GELU(), nn.Conv1d(channels, 2 * channels, 3), nn.GELU(),
                    nn.Conv1d(2 * channels, channels, 1),
                )
            )
            for _ in range(3)
        ],
        nn.Conv1d(channels, 1, 1),
    ).eval()  # fmt: skip


class VolloCNN(nn.Module):
    """The Vollo example's CNN with :class:`torchstreamer.PaddedConv1d`: two causal convolutions
    and ReLUs (32 -> 128 -> 1 channels, kernel 3)."""

    def __init__(self, in_channels: int = 32, hidden: int = 128, out_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = PaddedConv1d(in_channels, hidden, 3)
        self.conv2 = PaddedConv1d(hidden, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


def vollo_cnn() -> nn.Sequential:
    """The same network as :class:`VolloCNN`, as an ``nn.Sequential`` so that the module streams
    (and TorchScript) apply too."""
    return nn.Sequential(
        PaddedConv1d(32, 128, 3), nn.ReLU(), PaddedConv1d(128, 1, 3), nn.ReLU()
    ).eval()


def vocoder(mels: int = 80, channels: int = 128) -> nn.Sequential:
    """HiFi-GAN-shaped: a wide input conv, two x8 transposed-conv upsamplers each followed by
    three residual blocks of dilated 'same' convolutions, an output conv and tanh (64 output
    samples per input frame)."""

    def residual_stack(width: int) -> list[nn.Module]:
        return [
            Residual1d(
                nn.Sequential(
                    nn.LeakyReLU(0.1), nn.Conv1d(width, width, 3, dilation=d, padding=d),
                    nn.LeakyReLU(0.1), nn.Conv1d(width, width, 3, padding=1),
                )
            )
            for d in (1, 3, 5)
        ]  # fmt: skip

    half, quarter = channels // 2, channels // 4
    return nn.Sequential(
        nn.Conv1d(mels, channels, 7, padding=3),
        nn.LeakyReLU(0.1), nn.ConvTranspose1d(channels, half, 16, stride=8, padding=4),
        *residual_stack(half),
        nn.LeakyReLU(0.1), nn.ConvTranspose1d(half, quarter, 16, stride=8, padding=4),
        *residual_stack(quarter),
        nn.LeakyReLU(0.1), nn.Conv1d(quarter, 1, 7, padding=3), nn.Tanh(),
    ).eval()  # fmt: skip


def tcn(
    in_channels: int = 16, channels: int = 64, dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
) -> nn.Sequential:
    """A dilated causal TCN: residual blocks of a causal dilated conv, ReLU and a 1x1 conv."""
    return nn.Sequential(
        nn.Conv1d(in_channels, channels, 1),
        *[
            Residual1d(
                nn.Sequential(
                    PaddedConv1d(channels, channels, 3, dilation=d), nn.ReLU(),
                    nn.Conv1d(channels, channels, 1),
                )
            )
            for d in dilations
        ],
        nn.Conv1d(channels, 1, 1),
    ).eval()  # fmt: skip


class FilterBank(nn.Module):
    """Band energies in decibels: causal band-pass FIR filters, squared, smoothed over a window
    and decimated to a frame rate, then ``10 log10``.

    The filters are windowed-sinc band-passes between log-spaced edges, fixed at construction
    (no training needed), so the output is a small spectrogram of the input. Input ``[B, 1, T]``,
    output ``[B, bands, T // hop - 1]``.

    Example:
        >>> import torch
        >>> bank = FilterBank(sample_rate=16000, bands=8)
        >>> tone = torch.sin(2 * torch.pi * 1000 * torch.arange(16000) / 16000).view(1, 1, -1)
        >>> energies = bank(tone)
        >>> energies.shape
        torch.Size([1, 8, 99])
        >>> int(energies[0, :, 50].argmax()) == int(bank.centres.sub(1000).abs().argmin())
        True
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        bands: int = 24,
        taps: int = 255,
        hop: int = 160,
        low: float = 80.0,
        high: float = 7000.0,
    ) -> None:
        super().__init__()
        self.sample_rate, self.hop = sample_rate, hop
        edges = torch.logspace(math.log10(low), math.log10(high), bands + 1, dtype=torch.float64)
        self.register_buffer("centres", (edges[:-1] * edges[1:]).sqrt().float())
        t = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
        window = torch.hann_window(taps, periodic=False, dtype=torch.float64)

        def lowpass(cutoff: torch.Tensor) -> torch.Tensor:  # windowed sinc, unit gain at DC
            f = (cutoff / sample_rate).unsqueeze(1)
            return 2 * f * torch.sinc(2 * f * t) * window

        kernels = lowpass(edges[1:]) - lowpass(edges[:-1])
        self.filters = PaddedConv1d(1, bands, taps, bias=False)
        self.filters.weight.data.copy_(kernels.unsqueeze(1).float())
        self.filters.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        power = self.filters(x).square()
        energy = F.avg_pool1d(power, 2 * self.hop, self.hop)
        return 10 * torch.log10(energy + 1e-10)


def filterbank() -> FilterBank:
    """:class:`FilterBank` at 16 kHz: 24 bands from 80 Hz to 7 kHz, 10 ms frames."""
    return FilterBank().eval()
