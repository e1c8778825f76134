"""State is explicit: bounded, resettable, copyable, and restorable mid-signal."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, run_stream


def seed_network() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(1, 8, 1), nn.GELU(), nn.Conv1d(8, 8, 2, stride=2), nn.GELU(),
        nn.Conv1d(8, 8, 2, stride=2), nn.AvgPool1d(2), nn.ConvTranspose1d(8, 8, 2, stride=2),
        nn.GELU(), nn.ConvTranspose1d(8, 8, 2, stride=2), nn.GELU(), nn.Conv1d(8, 1, 1),
        pts.Residual1d(nn.Conv1d(1, 1, 5, padding=2, padding_mode="reflect")),
        nn.MaxPool1d(3, 1, 1, ceil_mode=True),
    )  # fmt: skip


def state_shapes(stream: pts.BaseStream) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in stream.get_state().items()}


def small_network() -> nn.Sequential:
    """One layer of every stateful kind, small enough to stream 10^5 blocks quickly."""
    return nn.Sequential(
        nn.Conv1d(1, 2, 3, stride=2, padding=1, padding_mode="reflect"),
        nn.ConvTranspose1d(2, 2, 3, stride=2, padding=1),
        pts.Residual1d(nn.Conv1d(2, 2, 3, padding="same")),
        nn.MaxPool1d(2, ceil_mode=True),
    )


@pytest.mark.parametrize(
    ("make", "blocks"),
    [
        (lambda: nn.Conv1d(1, 2, 5, stride=2, padding=3, padding_mode="reflect"), 100_000),
        (small_network, 10_000),
    ],
    ids=["conv-1e5-blocks", "network-1e4-blocks"],
)
def test_state_size_stays_constant_over_many_random_blocks(make, blocks: int) -> None:
    stream = pts.create_stream(make(), "model")
    rng = random.Random(0)
    with torch.no_grad():
        stream(torch.randn(2, 1, 64))  # the first blocks give the state its size
        shapes = state_shapes(stream)
        buffers = {name: value.data_ptr() for name, value in stream.named_buffers()}
        for _ in range(blocks):
            stream(torch.randn(2, 1, rng.choice([0, 1, 1, 2, 3, 5, 17])))
        assert state_shapes(stream) == shapes
    # the buffers are written in place, never reallocated
    assert {name: value.data_ptr() for name, value in stream.named_buffers()} == buffers


def test_snapshot_and_restore_continue_bit_identically() -> None:
    net = seed_network()
    stream = pts.Sequential1dStream(net, "model")
    x = torch.randn(2, 1, 300)
    with torch.no_grad():
        head = stream(x[..., :131])
        snapshot = stream.get_state()
        rest = stream(x[..., 131:], final=True)
        twin = pts.Sequential1dStream(net, "model")
        twin.set_state(snapshot)
        again = twin(x[..., 131:], final=True)
        assert torch.equal(rest, again)
        assert_matches(torch.cat([head, rest], -1), net(x))


def test_deepcopy_forks_a_stream_mid_signal() -> None:
    conv = nn.Conv1d(2, 2, 5, stride=2, padding=2, padding_mode="replicate")
    stream = pts.Conv1dStream(conv, "model")
    x = torch.randn(2, 40)
    with torch.no_grad():
        head = stream(x[:, :13])
        fork = copy.deepcopy(stream)
        assert torch.equal(stream(x[:, 13:], final=True), fork(x[:, 13:], final=True))
        assert head is not None


def test_reset_drops_the_signal_in_progress() -> None:
    net = seed_network()
    stream = pts.Sequential1dStream(net, "model")
    x = torch.randn(1, 90)
    with torch.no_grad():
        stream(torch.randn(1, 37))
        stream.reset()
        assert_matches(run_stream(stream, x, [5, 0, 11]), net(x))


def test_scripted_reset() -> None:
    conv = nn.Conv1d(1, 1, 3)
    stream = torch.jit.script(pts.Conv1dStream(conv))
    x = torch.randn(1, 9)
    with torch.no_grad():
        stream(torch.randn(1, 2))
        stream.reset()
        assert_matches(stream(x, final=True), conv(x))


def test_state_can_roll_back_to_an_earlier_snapshot() -> None:
    net = nn.Sequential(nn.Conv1d(1, 2, 3), pts.Residual1d(nn.Conv1d(2, 2, 5)), nn.Conv1d(2, 1, 3))
    stream = pts.Sequential1dStream(net)
    x = torch.randn(1, 40)
    with torch.no_grad():
        head = stream(x[:, :1])  # later layers have seen nothing yet
        snapshot = stream.get_state()
        stream(x[:, 1:9])
        stream.set_state(snapshot)
        tail = stream(x[:, 1:], final=True)
        assert head is None
        assert_matches(tail, net(x))


def test_set_state_checks_names_shapes_and_dtypes() -> None:
    stream = pts.Conv1dStream(nn.Conv1d(2, 2, 3))
    stream(torch.randn(2, 5))
    state = stream.get_state()
    with pytest.raises(pts.StreamError, match=r"missing \['_fill'\]"):
        stream.set_state({k: v for k, v in state.items() if k != "_fill"})
    with pytest.raises(pts.StreamError, match="unexpected"):
        stream.set_state({**state, "other": torch.zeros(1)})
    with pytest.raises(pts.StreamError, match=r"must have 2 channels \(dim 1\)"):
        stream.set_state({**state, "_pending": torch.zeros(1, 3, 2)})
    with pytest.raises(pts.StreamError, match=r"torch\.float32"):
        stream.set_state({**state, "_pending": state["_pending"].double()})


def test_state_carries_no_autograd_history() -> None:
    # streaming without no_grad must not chain a graph through the state, call after call
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Conv1d(2, 1, 3))
    stream = pts.Sequential1dStream(net)
    for _ in range(50):
        stream(torch.randn(1, 1))
    for name, buffer in stream.named_buffers():
        assert buffer.grad_fn is None, name
        assert not buffer.requires_grad, name


def test_a_signal_streamed_in_inference_mode_does_not_block_the_next_one() -> None:
    conv = nn.Conv1d(1, 1, 3)
    stream = pts.Conv1dStream(conv)
    x = torch.randn(1, 9)
    with torch.inference_mode():
        stream(x, final=True)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, [4]), conv(x))
