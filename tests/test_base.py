"""Bad blocks raise a clear StreamInputError and leave the stream's state as it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches

NETWORKS: dict[str, Callable[[], tuple[nn.Module, pts.BaseStream]]] = {
    "conv": lambda: (c := nn.Conv1d(3, 2, 4, stride=2, padding=2), pts.Conv1dStream(c, "model")),
    "conv_transpose": lambda: (
        c := nn.ConvTranspose1d(3, 2, 4, stride=2, padding=1),
        pts.ConvTranspose1dStream(c, "model"),
    ),
    "pool": lambda: (p := nn.AvgPool1d(3, 2, 1, ceil_mode=True), pts.Pool1dStream(p, "model")),
    "pad": lambda: (p := nn.ReflectionPad1d(2), pts.Pad1dStream(p, "model")),
    "sequential": lambda: (
        n := nn.Sequential(nn.Conv1d(3, 4, 3), nn.GELU(), pts.Residual1d(nn.Conv1d(4, 4, 3))),
        pts.Sequential1dStream(n),
    ),
    "residual": lambda: (r := pts.Residual1d(nn.Conv1d(3, 3, 3)), pts.Residual1dStream(r)),
}

BAD_BLOCKS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "rank": (
        lambda x: x[0, 0],
        r"expects a block shaped \[C, T\] or \[B, C, T\] but got shape \[5\]",
    ),
    "rank4": (lambda x: x[None], r"but got shape \[1, 2, 3, 5\]"),
    "channels": (lambda x: x[:, :2], r"expects 3 channels \(dim -2\) but the block has 2"),
    "dtype": (lambda x: x.double(), r"computes in torch.float32 but the block is torch.float64"),
    "integer": (lambda x: x.long(), "expects a floating-point block but got dtype torch.int64"),
    "device": (lambda x: x.to("meta"), "is on cpu but the block is on meta"),
    "batch": (
        lambda x: x[:1],
        "in the middle of a signal with batch size 2 but got a block with batch size 1",
    ),
    "unbatched": (lambda x: x[0], "in the middle of a signal of 3-d blocks but got a 2-d block"),
}


@pytest.mark.parametrize("bad", sorted(BAD_BLOCKS))
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_bad_block_raises_and_leaves_state_untouched(network: str, bad: str) -> None:
    module, stream = NETWORKS[network]()
    make_bad, message = BAD_BLOCKS[bad]
    x = torch.randn(2, 3, 40)
    with torch.no_grad():
        expected = module(x)
        outputs = [stream(x[..., :7])]
        if bad == "dtype" and network in ("pool", "pad"):
            message = "computes in torch.float32 but the block is torch.float64"
        with pytest.raises(pts.StreamInputError, match=message):
            stream(make_bad(x[..., 7:12]))
        with pytest.raises(pts.StreamInputError):
            stream(make_bad(x[..., 7:12]), final=True)
        outputs.append(stream(x[..., 7:], final=True))
    assert_matches(torch.cat([y for y in outputs if y is not None], -1), expected)


def test_channels_are_checked_even_when_the_first_layer_does_not_know_them() -> None:
    net = nn.Sequential(nn.Mish(), nn.Conv1d(4, 2, 3))
    stream = pts.Sequential1dStream(net)
    with pytest.raises(pts.StreamInputError, match="expects 4 channels"):
        stream(torch.randn(1, 3, 5))
    x = torch.randn(4, 20)  # unbatched, after a refused batched block
    with torch.no_grad():
        assert_matches(torch.cat([stream(x[:, :7]), stream(x[:, 7:], final=True)], -1), net(x))


def test_signal_too_short_for_an_inner_reflection_leaves_every_layer_untouched() -> None:
    net = nn.Sequential(nn.Conv1d(1, 1, 3), nn.ReflectionPad1d(3))
    stream = pts.Sequential1dStream(net, "model")
    x = torch.randn(1, 12)
    with torch.no_grad():
        assert stream(x[:, :4]) is None
        with pytest.raises(pts.StreamInputError, match=r"layer '1' \(ReflectionPad1d\)"):
            stream(x[:, 4:5], final=True)  # the conv would give 3 samples: too few to reflect 3
        assert_matches(stream(x[:, 4:], final=True), net(x))


def test_bad_block_message_names_the_layer_path() -> None:
    stream = pts.Sequential1dStream(nn.Sequential(nn.ReLU(), nn.Sequential(nn.Conv1d(2, 2, 1))))
    with pytest.raises(pts.StreamInputError, match=r"layer '1.0' \(Conv1d\) expects 2 channels"):
        stream.streams[1].streams[0](torch.randn(3, 4))  # type: ignore[index,operator]


def test_scripted_stream_raises_on_bad_block_and_continues() -> None:
    conv = nn.Conv1d(2, 2, 3)
    stream = torch.jit.script(pts.Conv1dStream(conv))
    x = torch.randn(2, 10)
    first = stream(x[:, :4])
    with pytest.raises(torch.jit.Error, match="expects 2 channels"):
        stream(torch.randn(3, 4))
    with torch.no_grad():
        assert_matches(torch.cat([first, stream(x[:, 4:], final=True)], -1), conv(x))


def test_nan_is_data_not_an_error() -> None:
    conv = nn.Conv1d(1, 1, 2)
    x = torch.tensor([[1.0, float("nan"), 2.0, 3.0, 4.0]])
    y = pts.Conv1dStream(conv)(x, final=True)
    torch.testing.assert_close(y, conv(x), equal_nan=True)


def test_unbatched_signal_then_batched_signal() -> None:
    conv = nn.Conv1d(2, 2, 3)
    stream = pts.Conv1dStream(conv)
    with torch.no_grad():
        for x in (torch.randn(2, 9), torch.randn(4, 2, 9), torch.randn(1, 2, 9)):
            assert_matches(
                torch.cat([stream(x[..., :5]), stream(x[..., 5:], final=True)], -1), conv(x)
            )
