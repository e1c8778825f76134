"""A zoo of model shapes that real streaming users run, small enough for tests."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import torchstreamer as pts

weight_norm = nn.utils.parametrizations.weight_norm


class GatedWaveNet(nn.Module):
    """Dilated causal convs, tanh*sigmoid over a channel split, residual and skip sums."""

    def __init__(self, channels: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, channels, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels, 2, dilation=2**i) for i in range(layers)
        )
        self.res = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(layers))
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        skip = torch.zeros_like(h)
        for i, (dilated, res) in enumerate(zip(self.dilated, self.res)):
            z = dilated(F.pad(h, (2**i, 0)))  # causal: pad on the left only
            a, b = z.chunk(2, dim=1)
            g = torch.tanh(a) * torch.sigmoid(b)
            h = h + res(g)
            skip = skip + g
        return self.out(F.relu(skip))


class HifiGanShaped(nn.Module):
    """Weight-normed convs, transposed-conv upsampling, dilated residual blocks ('same')."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.pre = weight_norm(nn.Conv1d(2, channels, 7, padding=3))
        self.up = weight_norm(nn.ConvTranspose1d(channels, channels // 2, 4, stride=2, padding=1))
        self.blocks = nn.ModuleList(
            weight_norm(nn.Conv1d(channels // 2, channels // 2, 3, dilation=d, padding="same"))
            for d in (1, 3)
        )
        self.post = weight_norm(nn.Conv1d(channels // 2, 1, 7, padding=3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(F.leaky_relu(self.pre(x), 0.1))
        for conv in self.blocks:
            x = conv(F.leaky_relu(x, 0.1)) + x
        return torch.tanh(self.post(F.leaky_relu(x)))


class WaveUNet(nn.Module):
    """Strided encoder, skip concatenations, transposed decoder, reflect padding."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.enc1 = nn.Conv1d(1, channels, 4, stride=2, padding=1)
        self.enc2 = nn.Conv1d(channels, channels, 4, stride=2, padding=1)
        self.dec2 = nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose1d(2 * channels, channels, 4, stride=2, padding=1)
        self.out = nn.Conv1d(channels + 1, 1, 5, padding=2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        d2 = F.relu(self.dec2(e2))
        d1 = F.relu(self.dec1(torch.cat([d2, e1], dim=1)))
        return self.out(torch.cat([d1, x], dim=1))


class TcnWithLayerNorm(nn.Module):
    """Causal TCN block with LayerNorm and Linear over channels via transposes."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, dilation=2)
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.pad(x, (4, 0)))
        h = self.proj(self.norm(h.transpose(1, 2))).transpose(1, 2)
        return x + F.gelu(h)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 3, 3)
        self.b = nn.Conv1d(2, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)[..., 1:-1]


def seed_sequential() -> nn.Sequential:
    """The original overview's sequential network, 16 channels."""
    return nn.Sequential(
        nn.Conv1d(1, 16, 1), nn.GELU(), nn.Conv1d(16, 16, 2, stride=2), nn.GELU(),
        nn.Conv1d(16, 16, 2, stride=2), nn.AvgPool1d(2), nn.ConvTranspose1d(16, 16, 2, stride=2),
        nn.GELU(), nn.ConvTranspose1d(16, 16, 2, stride=2), nn.GELU(), nn.Conv1d(16, 1, 1),
    )  # fmt: skip


def seed_residual() -> nn.Sequential:
    """The original overview's residual network, 16 channels."""
    return nn.Sequential(
        nn.Conv1d(1, 16, 1),
        *[
            pts.Residual1d(
                nn.Sequential(nn.GELU(), nn.Conv1d(16, 32, 3), nn.GELU(), nn.Conv1d(32, 16, 1))
            )
            for _ in range(3)
        ],
        nn.Conv1d(16, 1, 1),
    )


class ConvRecurrent(nn.Module):
    """Conv front end, max pool, a recurrent layer over time, conv head."""

    def __init__(self, kind: type[nn.RNNBase] = nn.GRU) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool1d(2)
        self.rnn = kind(4, 5, num_layers=2, batch_first=True)
        self.out = nn.Conv1d(5, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv(x)))
        y, _ = self.rnn(h.transpose(1, 2))
        return self.out(y.transpose(1, 2))


class TimeMajorLstm(nn.Module):
    """An LSTM fed [T, B, F] (batch_first=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x.permute(2, 0, 1))[0].permute(1, 2, 0)


class UpsampleCumsum(nn.Module):
    """Nearest upsampling over time, running sums over time and over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.conv(x), scale_factor=3, mode="nearest").cumsum(-1)
        return up + x.cumsum(1).repeat_interleave(3, -1)


class PerStepAlgebra(nn.Module):
    """matmul over channels, reshapes that keep time, linear upsampling, a ceil-mode max pool."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6))
        self.pool = nn.MaxPool1d(3, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = x.transpose(1, 2) @ self.weight
        r = h.reshape(h.shape[0], h.shape[1], 2, 3).sum(-1).transpose(1, 2)
        v = x.view(x.shape[0], 2, 2, x.shape[-1]).sum(1)
        u = F.interpolate(self.pool(x), scale_factor=3, mode="linear")
        return r + v, u, v


class PadToMultiple(nn.Module):
    """Right padding to a multiple of the stride, computed from the length."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, (-x.shape[-1]) % 4)))


class CroppedSkip(nn.Module):
    """A U-Net skip cropped to the length of the upsampled path (T - T % 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv1d(1, 2, 2, stride=2)
        self.up = nn.ConvTranspose1d(2, 1, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.down(x))
        return y + x[..., : y.shape[-1]]


class Interleaved(nn.Module):
    """A 2x upsampler that interleaves two branches in time: stack, then a view."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 3, 3, padding=1)
        self.b = nn.Conv1d(2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        return torch.stack([a, b], -1).view(x.shape[0], 3, 2 * x.shape[-1])


class ExtraPadded(nn.Module):
    """EnCodec's ``SConv1d``: reflect padding on the left, and on the right the padding that
    completes the last stride, computed from the length with ``math.ceil`` (always 0 for
    stride 1)."""

    def __init__(self, stride: int, causal: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 2 * stride, stride=stride)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = self.conv.kernel_size[0], self.conv.stride[0]
        total = kernel - stride
        frames = (x.shape[-1] - kernel + total) / stride + 1
        extra = (math.ceil(frames) - 1) * stride + (kernel - total) - x.shape[-1]
        if self.causal:
            return self.conv(F.pad(x, (total, extra), mode="reflect"))
        right = total // 2
        return self.conv(F.pad(x, (total - right, right + extra), mode="reflect"))


class DeadStateUpdate(nn.Module):
    """Moshi's ``StreamingConv1d`` run offline: it updates a local streaming state that no
    output reads, and ``torch.tensor(x.shape)`` feeds only a check."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = torch.tensor(x.shape)
        previous = torch.zeros(x.shape[0], x.shape[1], 2)
        joined = torch.cat([previous, x], -1)
        previous.copy_(joined[..., -2:])  # the state for the next call: dropped offline
        assert len(shape) == 3
        return self.conv(joined)


class TrimmedUpsampler(nn.Module):
    """EnCodec's causal decoder end: a transposed convolution trimmed on the right, then a
    reflect-padded convolution. The frames give outputs while the first ones still come from
    the offline start (reflect padding), so those wait for them."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv1d(4, 4, 7, padding=3, padding_mode="reflect")
        self.up = nn.ConvTranspose1d(4, 2, 8, stride=4)
        self.last = nn.Conv1d(2, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(F.elu(self.first(x)))[..., :-4]
        return self.last(F.pad(F.elu(h), (6, 0), mode="reflect"))
