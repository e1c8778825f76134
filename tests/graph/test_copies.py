"""A graph stream forks with copy.deepcopy and travels with pickle, fresh or mid-signal."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import torchstreamer as pts
from tests.conftest import assert_matches
from tests.graph import models

FORKS = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda stream: pickle.loads(pickle.dumps(stream)),
}


@pytest.mark.parametrize("fork", sorted(FORKS))
def test_a_fork_mid_signal_continues_exactly_and_apart(fork: str) -> None:
    # issue 12, item 5: "Cannot access data pointer of Tensor (e.g. FakeTensor...)"
    model = models.ConvRecurrent().eval()
    x = torch.randn(2, 2, 120)
    stream = pts.stream(model, x[..., :64])
    with torch.no_grad():
        head = stream(x[..., :37])
        twin = FORKS[fork](stream)
        rest = stream(x[..., 37:], final=True)
        assert torch.equal(twin(x[..., 37:], final=True), rest)  # bit-identical continuation
        assert_matches(torch.cat([head, rest], -1), model(x))
        # the twin is a stream of its own: a new signal through it leaves the original alone
        assert_matches(twin(x, final=True), model(x))


@pytest.mark.parametrize("fork", sorted(FORKS))
def test_a_fresh_fork_streams_a_whole_signal(fork: str) -> None:
    model = models.seed_residual().eval()  # (PyTorch pickles no weight-normed model)
    x = torch.randn(1, 1, 50)
    twin = FORKS[fork](pts.stream(model, x))
    with torch.no_grad():
        assert_matches(torch.cat([twin(x[..., :9]), twin(x[..., 9:], final=True)], -1), model(x))


def test_every_state_a_graph_stream_reaches_fits_a_fresh_twin() -> None:
    model = models.seed_residual().eval()  # joins and crops: held samples to check
    x = torch.randn(1, 1, 90)
    stream = pts.stream(model, x[..., :64])
    start = 0
    with torch.no_grad():
        for length in [0, 1, 1, 2, 5, 1, 9, 3, 1, 1, 7]:
            stream(x[..., start : start + length])
            start += length
            twin = pts.stream(model, x[..., :64])
            twin.set_state(stream.get_state())
            state = stream.get_state()
            assert torch.equal(twin(x[..., start:], final=True), stream(x[..., start:], final=True))
            stream.set_state(state)


def test_a_graph_stream_refuses_held_samples_that_do_not_fit() -> None:
    # issue 12, item 3 for graph streams: wrong lengths gave silently wrong output
    model = models.seed_residual().eval()
    x = torch.randn(1, 1, 40)
    stream = pts.stream(model, x)
    stream._engine_on = False  # the interpreter's joins (the engine's state: tests/step)
    with torch.no_grad():
        stream(x[..., :13])
    state = stream.get_state()
    held = {k: v for k, v in state.items() if v.dim() == 3 and "_pending" in k and v.shape[-1]}
    assert held, "the residual joins hold samples mid-signal"
    for key, value in held.items():
        broken = {**state, key: value[..., 1:].clone()}
        with pytest.raises(pts.StreamError, match=r"keeps|holds|'_pending'"):
            stream.set_state(broken)
    with pytest.raises(pts.StreamError, match="'_filled'"):
        stream.set_state({**state, "_filled": torch.tensor(10**6)})
    with pytest.raises(pts.StreamError, match="'_filled'"):
        stream.set_state({**state, "_seen": torch.tensor(-5)})
    assert all(torch.equal(v, stream.get_state()[k]) for k, v in state.items())  # unchanged
