"""The README's Python blocks run, and the original overview's examples are in it verbatim and
build streams that equal the offline model for blocks of 1, 7, 64 and the whole signal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, run_stream, split_lengths

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
SEED = ROOT.parent / "shared" / "seeds" / "torch-streamer-overview.md"


def run_block(code: str) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


@pytest.fixture(autouse=True)
def _forget_registrations():
    yield
    for namespace_type in list(pts.streams.registry._REGISTRY):
        if namespace_type.__module__ == "readme":
            pts.unregister_streamer(namespace_type)


@pytest.mark.skipif(not SEED.exists(), reason="the seed overview is not beside the checkout")
def test_readme_holds_the_overview_examples_verbatim() -> None:
    seed_blocks = re.findall(r"```python\n(.*?)```", SEED.read_text(), re.S)
    assert len(seed_blocks) == 4
    for block in seed_blocks:
        assert block in BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that export files write them here
    run_block(BLOCKS[index])


def seed_block(words: str) -> str:
    return next(b for b in BLOCKS if words in b)


@pytest.mark.parametrize("lengths", [[1], [7], [64], [10**6]], ids=["1", "7", "64", "whole"])
def test_overview_basic_usage_streams_exactly(lengths: list[int]) -> None:
    ns = run_block(seed_block("BLOCK_SIZE = 100"))
    conv, x, stream = ns["conv"], ns["x"], ns["stream"]
    stream.reset()  # type: ignore[attr-defined]  # the example ends mid-signal (no final=True)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, split_lengths(x.shape[-1], lengths)), conv(x))  # type: ignore[operator,union-attr,arg-type]


@pytest.mark.parametrize("lengths", [[1], [7], [64], [10**6]], ids=["1", "7", "64", "whole"])
@pytest.mark.parametrize("words", ["nn.AvgPool1d(2)", "pts.Residual1d("])
def test_overview_networks_stream_exactly(words: str, lengths: list[int]) -> None:
    ns = run_block(seed_block(words))
    net, stream = ns["net"], ns["stream"]
    x = torch.randn(1, 203)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, split_lengths(203, lengths)), net(x))  # type: ignore[arg-type,operator]


def test_overview_custom_handler_equals_its_cropped_residual_on_the_whole_signal() -> None:
    # The overview's MyResBlockStream keeps no state, so it can only be exact when a block holds
    # the whole signal; and MyResBlock itself adds tensors of different lengths offline. What its
    # stream computes is the cropped residual that Residual1d defines: check against that.
    ns = run_block(seed_block("class MyResBlockStream"))
    net, stream = ns["net"], ns["stream"]
    reference = nn.Sequential(net[0], pts.Residual1d(net[1].inner), net[2])  # type: ignore[index]
    x = torch.randn(1, 50)
    with torch.no_grad():
        assert_matches(stream(x, final=True), reference(x))  # type: ignore[operator]
        exact = pts.Sequential1dStream(reference)
        for lengths in ([1], [7], [64]):
            assert_matches(run_stream(exact, x, split_lengths(50, lengths)), reference(x))
