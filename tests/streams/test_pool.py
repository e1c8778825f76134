"""Pool1dStream equals AvgPool1d/MaxPool1d for every chunking."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, run_stream, split_lengths
from torchstreamer.time import pool_output_length


@st.composite
def pool_cases(draw: st.DrawFn) -> tuple[nn.Module, str, torch.Tensor]:
    kernel = draw(st.integers(1, 6))
    stride = draw(st.one_of(st.none(), st.integers(1, 5)))
    padding = draw(st.integers(0, kernel // 2))
    ceil_mode = draw(st.booleans())
    if draw(st.booleans()):
        dilation = draw(st.integers(1, 3))
        assume(padding <= (dilation * (kernel - 1) + 1) // 2)
        pool: nn.Module = nn.MaxPool1d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    else:
        include = draw(st.booleans())
        pool = nn.AvgPool1d(kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=include)
    padding_choice = draw(st.sampled_from(["valid", "model"]))
    length = draw(st.integers(1, 60))
    batch = draw(st.sampled_from([None, 2]))
    channels = draw(st.integers(1, 3))
    shape = [channels, length] if batch is None else [batch, channels, length]
    return pool, padding_choice, torch.randn(shape)


def valid_copy(pool: nn.Module) -> nn.Module:
    """The pool "as if padding 0": what padding='valid' streams."""
    if isinstance(pool, nn.MaxPool1d):
        return nn.MaxPool1d(pool.kernel_size, pool.stride, 0, pool.dilation)
    return nn.AvgPool1d(pool.kernel_size, pool.stride, 0)


@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
@given(case=pool_cases(), sizes=block_sizes())
def test_pool1d_parity(
    script: bool, case: tuple[nn.Module, str, torch.Tensor], sizes: list[int]
) -> None:
    pool, padding, x = case
    stream = pts.Pool1dStream(pool, padding)  # type: ignore[arg-type]
    if script:
        stream = torch.jit.script(stream)
    try:
        expected = (pool if padding == "model" else valid_copy(pool))(x)
    except RuntimeError:  # PyTorch refuses a signal this short
        assume(False)
    assert_matches(run_stream(stream, x, split_lengths(x.shape[-1], sizes)), expected)


@given(
    n=st.integers(1, 80), kernel=st.integers(1, 6), stride=st.integers(1, 5),
    dilation=st.integers(1, 3), ceil_mode=st.booleans(), data=st.data(),
)  # fmt: skip
def test_pool_output_length_matches_pytorch(
    n: int, kernel: int, stride: int, dilation: int, ceil_mode: bool, data: st.DataObject
) -> None:
    padding = data.draw(st.integers(0, kernel // 2))
    expected = pool_output_length(n, kernel, stride, padding, dilation, ceil_mode)
    x = torch.randn(1, 1, n)
    try:
        y = nn.functional.max_pool1d(x, kernel, stride, padding, dilation, ceil_mode)
    except RuntimeError:  # PyTorch refuses: no output
        assert expected <= 0
    else:
        assert y.shape[-1] == expected


@pytest.mark.parametrize(
    "pool",
    [nn.MaxPool1d(4, stride=3, ceil_mode=True), nn.AvgPool1d(6, 3, padding=1, ceil_mode=True)],
    ids=["max", "avg"],
)
def test_ceil_mode_window_on_a_signal_shorter_than_the_kernel(pool: nn.Module) -> None:
    x = torch.randn(1, 2)
    assert_matches(pts.Pool1dStream(pool, "model")(x, final=True), pool(x))  # type: ignore[arg-type]


def test_max_pool_with_indices_is_refused() -> None:
    with pytest.raises(pts.NotStreamableError, match="returns indices"):
        pts.Pool1dStream(nn.MaxPool1d(2, return_indices=True))


def test_max_pool_propagates_nan_like_offline() -> None:
    pool = nn.MaxPool1d(3, 2, padding=1)
    x = torch.randn(2, 20)
    x[1, 7] = float("nan")
    y = run_stream(pts.Pool1dStream(pool, "model"), x, [3, 1, 0, 5])
    torch.testing.assert_close(y, pool(x), equal_nan=True)


@pytest.mark.parametrize(
    ("pool", "name"),
    [(nn.AvgPool1d(3, 2), "AvgPool1dStream"), (nn.MaxPool1d(3, 2), "MaxPool1dStream")],
)
def test_repr_names_the_pool_kind_as_torch_streamer_0_0_2(pool: nn.Module, name: str) -> None:
    stream = pts.Pool1dStream(pool)  # type: ignore[arg-type]
    assert repr(stream).startswith(f"{name}(")
    assert type(stream) is pts.Pool1dStream  # the class is the same; only its repr names the kind
    scripted = torch.jit.script(stream)
    x = torch.randn(2, 11)
    assert_matches(run_stream(scripted, x, [1, 4]), pool(x))
