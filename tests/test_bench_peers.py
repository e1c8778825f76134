"""The peer adapters of benchmarks/peers.py stream the workloads like the offline models."""

from __future__ import annotations

import functools

import pytest
import torch
from benchmarks.peers import PEERS, PeerRunner, PeerUnsupported, build_peer, installed
from benchmarks.workloads import WORKLOADS, Workload, workloads

_MODULES = {"cached_conv": "cached_conv", "continual_inference": "continual"}

# What each peer can express (the others raise PeerUnsupported).
SUPPORTED = {
    "cached_conv": {"seed_sequential", "seed_residual", "vollo_cnn", "vocoder", "tcn"},
    "continual_inference": {"seed_residual", "vollo_cnn", "tcn"},
}


@functools.cache
def _workload(name: str) -> Workload:
    return next(w for w in workloads() if w.name == name)


@functools.cache
def _case(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    workload = _workload(name)
    x = workload.signal(32 if name == "vocoder" else 256)
    with torch.no_grad():
        return x, workload.model(x)


def _runner(peer: str, name: str) -> PeerRunner:
    pytest.importorskip(_MODULES[peer])
    try:
        return build_peer(peer, _workload(name))
    except PeerUnsupported as error:
        assert name not in SUPPORTED[peer]
        pytest.skip(f"{peer} cannot express {name}: {error}")


@pytest.mark.parametrize("name", WORKLOADS)
@pytest.mark.parametrize("peer", PEERS)
def test_peer_matches_offline(peer: str, name: str) -> None:
    runner = _runner(peer, name)
    assert name in SUPPORTED[peer]
    x, expected = _case(name)
    m = runner.block_multiple
    for block in sorted({m, 5 * m, x.shape[-1]}):
        y = runner.run(x, block)
        assert y.shape == expected.shape, (block, runner)
        if runner.exact:
            torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
        else:
            # Start-up state and the zero flush differ from the offline padding: only the
            # middle matches, within the peer's delay of the ends.
            d = runner.delay
            middle = (..., slice(d, -d))
            torch.testing.assert_close(y[middle], expected[middle], rtol=1e-4, atol=1e-4)
            assert not torch.allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("peer", PEERS)
def test_peer_reset_between_signals(peer: str) -> None:
    runner = _runner(peer, "tcn")
    x, expected = _case("tcn")
    runner.run(torch.randn_like(x), 16)
    torch.testing.assert_close(runner.run(x, 16), expected, rtol=1e-4, atol=1e-4)


def test_cached_conv_needs_stride_multiples() -> None:
    runner = _runner("cached_conv", "seed_sequential")
    assert runner.block_multiple == 8
    x, _ = _case("seed_sequential")
    with pytest.raises(PeerUnsupported, match="multiples of 8"):
        runner.run(x, 12)


def test_installed_and_unknown_peer() -> None:
    for peer in PEERS:
        assert isinstance(installed(peer), bool)
    with pytest.raises(ValueError, match="unknown peer"):
        installed("nope")
    with pytest.raises(ValueError, match="unknown peer"):
        build_peer("nope", _workload("tcn"))
