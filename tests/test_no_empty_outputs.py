"""A call returns ``None`` when it has no output, never a tensor with 0 time samples (issue 12),
in eager mode and under ``torch.jit.script``."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches


def seed_network() -> nn.Sequential:
    """The network of torch-streamer 0.0.2's ``test_sequential1d``."""
    return nn.Sequential(
        nn.ConvTranspose1d(2, 2, kernel_size=3, stride=2),
        nn.ConvTranspose1d(2, 2, kernel_size=1),
        nn.Conv1d(2, 2, kernel_size=1),
        nn.Conv1d(2, 4, kernel_size=3, dilation=2),
        nn.Conv1d(4, 2, kernel_size=2),
        nn.Conv1d(2, 2, kernel_size=1, stride=2),
        nn.AvgPool1d(kernel_size=3, stride=2),
        nn.MaxPool1d(kernel_size=3, stride=2),
        nn.ReLU(),
    )


def stream_blocks(stream: nn.Module, x: torch.Tensor, block: int) -> list[Optional[torch.Tensor]]:
    """Every call's result, the last block with final=True (as 0.0.2's tests stream)."""
    return [
        stream(x[..., i : i + block], final=i + block >= x.shape[-1])
        for i in range(0, x.shape[-1], block)
    ]


@pytest.mark.parametrize("script", [False, True], ids=["eager", "scripted"])
@pytest.mark.parametrize("length", [10, 11, 14])
def test_the_seed_network_returns_none_rather_than_empty_blocks(script: bool, length: int) -> None:
    net = seed_network()
    stream = pts.Sequential1dStream(net)
    if script:
        stream = torch.jit.script(stream)
    x = torch.randn(2, length)
    with torch.no_grad():
        results = stream_blocks(stream, x, 1)
        shapes = [None if y is None else list(y.shape) for y in results]
        assert all(y is None or y.shape[-1] > 0 for y in results), shapes
        assert_matches(torch.cat([y for y in results if y is not None], -1), net(x))


def layers() -> dict[str, nn.Module]:
    return {
        "conv": nn.Conv1d(2, 2, 3),
        "conv-transpose": nn.ConvTranspose1d(2, 2, 3, stride=2, padding=2),
        "pool": nn.MaxPool1d(2),
        "pad": nn.ReplicationPad1d(2),
        "relu": nn.ReLU(),
        "residual": pts.Residual1d(nn.Conv1d(2, 2, 3)),
        "sequential": nn.Sequential(nn.Conv1d(2, 2, 3), nn.ReLU()),
        "empty-sequential": nn.Sequential(),
    }


@pytest.mark.parametrize("script", [False, True], ids=["eager", "scripted"])
@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
@pytest.mark.parametrize("name", list(layers()))
def test_empty_blocks_give_none_in_every_module_stream(
    name: str, batched: bool, script: bool
) -> None:
    stream = pts.create_stream(layers()[name], "model", in_channels=2)
    if script:
        stream = torch.jit.script(stream)
    shape = [3, 2] if batched else [2]
    with torch.no_grad():
        assert stream(torch.randn([*shape, 0])) is None
        stream(torch.randn([*shape, 4]))
        assert stream(torch.randn([*shape, 0])) is None
        stream(torch.randn([*shape, 5]), final=True)  # ends the signal
        assert stream(torch.randn([*shape, 0]), final=True) is None  # an empty signal


class Empty(pts.BaseStream):
    """A registered-style stream that returns empty blocks instead of None."""

    def forward(self, x: torch.Tensor, final: bool = False) -> Optional[torch.Tensor]:
        return x[..., :0]

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        return 0


@pytest.mark.parametrize("script", [False, True], ids=["eager", "scripted"])
def test_containers_turn_empty_blocks_of_their_stages_into_none(script: bool) -> None:
    # the layer form (engine=False): a stage swapped after the build, as a registered one
    net = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Identity())
    sequential = pts.Sequential1dStream(net, engine=False)
    sequential.streams[1] = Empty()
    residual = pts.Residual1dStream(pts.Residual1d(nn.Conv1d(2, 2, 1)))
    residual.stream = Empty()
    for stream in (sequential, residual):
        module = torch.jit.script(stream) if script else stream
        with torch.no_grad():
            assert module(torch.randn(2, 5)) is None
            assert module(torch.randn(2, 5), final=True) is None
