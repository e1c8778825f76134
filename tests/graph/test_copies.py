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
