"""create_stream picks the right stream, registered streamers win, and refusals name the layer."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, run_stream


class Gain(nn.Module):
    """An unknown module that acts per time step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x + 1


class CenterOverTime(nn.Module):
    """An unknown module that mixes all time steps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True)


class ScaleByLength(nn.Module):
    """Local in each step, but depends on the block's length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.shape[-1]


class Shorten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 1:]


@pytest.fixture
def registry() -> Iterator[None]:
    yield
    for kind in (Gain, nn.Conv1d, CenterOverTime):
        pts.unregister_streamer(kind)


REFUSED = [
    (nn.GroupNorm(1, 2), "GroupNorm", "normalises over time"),
    (nn.InstanceNorm1d(2), "InstanceNorm1d", "normalises over time"),
    (nn.LayerNorm(8), "LayerNorm", "normalises over time"),
    (nn.AdaptiveAvgPool1d(1), "AdaptiveAvgPool1d", "length of the whole signal"),
    (nn.AdaptiveMaxPool1d(4), "AdaptiveMaxPool1d", "length of the whole signal"),
    (nn.Linear(8, 8), "Linear", "which is time for"),
    (nn.CircularPad1d(2), "CircularPad1d", "wraps the end"),
    (nn.LSTM(2, 2), "LSTM", "hidden state"),
    (nn.Softmax(dim=-1), "Softmax", "dim=-1, which is time"),
    (nn.Softmax(dim=2), "Softmax", "dim=2, which is time"),
    (nn.Upsample(scale_factor=2), "Upsample", "ConvTranspose1d"),
    (nn.Dropout(0.5).train(), "Dropout", "call model.eval()"),
    (nn.BatchNorm1d(2).train(), "BatchNorm1d", "call model.eval()"),
    (nn.BatchNorm1d(2, track_running_stats=False).eval(), "BatchNorm1d", "statistics of the whole"),
    (nn.Conv1d(2, 2, 3, padding=1, padding_mode="circular"), "Conv1d", "circular padding"),
    (CenterOverTime(), "CenterOverTime", "changing time step 7 changed other output steps"),
    (ScaleByLength(), "ScaleByLength", "a block alone gives other outputs"),
    (Shorten(), "Shorten", r"\[2, 2, 16\] input gave \[2, 2, 15\]"),
]


@pytest.mark.parametrize(
    ("module", "kind", "reason"), REFUSED, ids=[r[1] + "-" + r[2][:12] for r in REFUSED]
)
def test_refusal_names_the_layer_path_and_the_reason(
    module: nn.Module, kind: str, reason: str
) -> None:
    net = nn.Sequential(nn.Conv1d(1, 2, 1), nn.Sequential(nn.ReLU(), module))
    with pytest.raises(pts.NotStreamableError, match=rf"layer '1\.1' \({kind}\)") as error:
        pts.Sequential1dStream(net, "model")
    # the message also says why and what to do (once: Linear's said "register a streamer" twice)
    assert re.search(reason, str(error.value)), str(error.value)
    assert str(error.value).count("register a streamer") <= 1, str(error.value)
    assert (
        "register" in str(error.value)
        or "eval()" in str(error.value)
        or "padding" in str(error.value)
    )


def test_unknown_elementwise_module_is_probed_and_streamed() -> None:
    net = nn.Sequential(nn.Conv1d(2, 3, 3), Gain(), nn.Conv1d(3, 1, 2))
    x = torch.randn(2, 30)
    with torch.no_grad():
        assert_matches(run_stream(pts.Sequential1dStream(net), x, [0, 1, 4, 9]), net(x))


def test_unknown_module_with_unknown_channels_is_probed_on_the_first_block() -> None:
    stream = pts.create_stream(CenterOverTime())
    with pytest.raises(pts.NotStreamableError, match="CenterOverTime"):
        torch.jit.script(stream)
    with pytest.raises(pts.NotStreamableError, match="changed other output steps"):
        stream(torch.randn(2, 10))
    good = pts.create_stream(Gain())
    x = torch.randn(2, 10)
    assert_matches(good(x), Gain()(x))
    scripted = torch.jit.script(good)  # probed: now it can be scripted
    assert_matches(scripted(x), Gain()(x))


def test_registered_streamer_wins_over_builtin(registry: None) -> None:
    calls = []

    def factory(module: nn.Module) -> pts.BaseStream:
        calls.append(module)
        return pts.Conv1dStream(module)  # type: ignore[arg-type]

    pts.register_streamer(nn.Conv1d, factory)
    conv = nn.Conv1d(1, 1, 3, padding=1)
    pts.Sequential1dStream(nn.Sequential(conv), "model")
    assert calls == [conv]


def test_registered_streamer_for_a_refused_type(registry: None) -> None:
    pts.register_streamer(CenterOverTime, lambda module: pts.Elementwise1dStream(module))
    assert isinstance(pts.create_stream(CenterOverTime()), pts.Elementwise1dStream)


def test_factory_must_return_a_stream(registry: None) -> None:
    pts.register_streamer(Gain, lambda module: module)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"returned Gain, not a torchstreamer\.BaseStream"):
        pts.create_stream(Gain())


def test_register_streamer_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        pts.register_streamer(int, lambda m: m)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="callable factory"):
        pts.register_streamer(Gain, 3)  # type: ignore[arg-type]


def test_bad_padding_choice() -> None:
    with pytest.raises(ValueError, match="padding must be 'valid'"):
        pts.create_stream(nn.Conv1d(1, 1, 1), padding="same")


def test_lazy_module_is_refused_until_initialised() -> None:
    with pytest.raises(pts.NotStreamableError, match="uninitialised lazy parameters"):
        pts.create_stream(nn.LazyConv1d(2, 3))


def test_known_elementwise_modules_stream_exactly() -> None:
    modules = [
        nn.GELU(), nn.PReLU(3), nn.Softmax(dim=-2), nn.LogSoftmax(dim=1), nn.GLU(dim=-2),
        nn.Dropout(0.3).eval(), nn.Hardswish(), nn.ChannelShuffle(3),
    ]  # fmt: skip
    norm = nn.BatchNorm1d(3).eval()
    norm.running_mean.normal_()
    modules.append(norm)
    x = torch.randn(2, 6, 11)
    for module in modules:
        width = 6 if isinstance(module, (nn.GLU, nn.ChannelShuffle)) else 3
        xb = x[:, :width]
        stream = pts.create_stream(module)
        with torch.no_grad():
            assert_matches(run_stream(stream, xb, [0, 1, 3]), module(xb))


def test_softmax_over_dim_1_refuses_unbatched_blocks() -> None:
    stream = pts.Sequential1dStream(nn.Sequential(nn.Conv1d(2, 2, 1), nn.Softmax(dim=1)))
    with pytest.raises(pts.StreamInputError, match="dim=1, which is time for an unbatched"):
        stream(torch.randn(2, 5))
    x = torch.randn(3, 2, 5)
    assert stream(x) is not None
