"""Pad1dStream equals the padding layers for every chunking."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, run_stream, split_lengths


@st.composite
def pad_cases(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    left, right = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    kind = draw(st.sampled_from(["constant", "zero", "reflect", "replicate"]))
    pad: nn.Module
    if kind == "constant":
        pad = nn.ConstantPad1d((left, right), draw(st.floats(-3, 3)))
    elif kind == "zero":
        pad = nn.ZeroPad1d((left, right))
    elif kind == "reflect":
        pad = nn.ReflectionPad1d((left, right))
    else:
        pad = nn.ReplicationPad1d((left, right))
    shortest = max(left, right) + 1 if kind == "reflect" else 1
    length = draw(st.integers(shortest, shortest + 30))
    shape = [2, length] if draw(st.booleans()) else [3, 2, length]
    return pad, torch.randn(shape)


@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
@given(case=pad_cases(), sizes=block_sizes())
def test_pad1d_parity(script: bool, case: tuple[nn.Module, torch.Tensor], sizes: list[int]) -> None:
    pad, x = case
    stream = pts.Pad1dStream(pad, "model")  # type: ignore[arg-type]
    if script:
        stream = torch.jit.script(stream)
    assert_matches(run_stream(stream, x, split_lengths(x.shape[-1], sizes)), pad(x))


def test_constant_padding_of_an_empty_signal_is_all_padding() -> None:
    pad = nn.ConstantPad1d((2, 3), 1.0)
    stream = pts.Pad1dStream(pad, "model")
    empty = torch.randn(1, 0)
    assert_matches(stream(empty, final=True), pad(empty))
    assert_matches(run_stream(stream, empty, [0, 0]), pad(empty))


def test_valid_padding_makes_a_pad_layer_an_identity() -> None:
    x = torch.randn(2, 9)
    y = run_stream(pts.Pad1dStream(nn.ReflectionPad1d(3)), x, [2, 0, 4])
    assert torch.equal(y, x)


def test_reflect_waits_only_for_the_samples_it_mirrors() -> None:
    stream = pts.Pad1dStream(nn.ReflectionPad1d((2, 0)), "model")
    x = torch.arange(6.0).view(1, 6)
    assert stream(x[:, :2]) is None  # the mirror of x[-2] is x[2]
    torch.testing.assert_close(stream(x[:, 2:3]), torch.tensor([[2.0, 1.0, 0.0, 1.0, 2.0]]))


def test_signal_too_short_for_reflection_is_refused_like_offline() -> None:
    stream = pts.Pad1dStream(nn.ReflectionPad1d(3), "model")
    x = torch.randn(1, 5)
    with pytest.raises(RuntimeError):
        nn.ReflectionPad1d(3)(x[:, :3])
    assert stream(x[:, :3]) is None
    with pytest.raises(pts.StreamInputError, match="needs more than 3 samples but it has 3"):
        stream(x[:, 3:3], final=True)
    # the failed call left the stream as it was: the signal can go on
    assert_matches(stream(x[:, 3:], final=True), nn.ReflectionPad1d(3)(x))


def test_negative_padding_is_refused() -> None:
    with pytest.raises(pts.NotStreamableError, match="negative padding"):
        pts.Pad1dStream(nn.ConstantPad1d((-1, 2), 0.0), "model")
