"""Building a graph stream: from several threads, the model's own errors named as such, the
length of the signal refused as a value, reductions over channels accepted."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, fewer, run_stream, split_lengths
from tests.graph import models


def test_streams_build_from_several_threads_at_once() -> None:
    # issue 12, item 6: one of two concurrent builds failed, blamed on time
    results: list[object] = [None] * 4

    def build(index: int) -> None:
        try:
            model = models.GatedWaveNet().eval()
            stream = pts.stream(model, torch.randn(1, 1, 64))
            x = torch.randn(1, 1, 80)
            with torch.no_grad():
                y = torch.cat([stream(x[..., :30]), stream(x[..., 30:], final=True)], -1)
                results[index] = bool(torch.allclose(y, model(x), atol=1e-5))
        except Exception as error:  # reported below
            results[index] = error

    threads = [threading.Thread(target=build, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == [True] * len(results)


class Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("the input must be normalised")


def test_a_model_that_raises_is_reported_as_raising() -> None:
    # issue 12, item 12: not blamed on time
    with pytest.raises(pts.NotStreamableError) as caught:
        pts.stream(Raises(), torch.randn(1, 1, 64))
    message = str(caught.value)
    assert "raised ValueError: the input must be normalised" in message
    assert "length" not in message
    assert message.count("the input must be normalised") == 1


class UsesLength(nn.Module):
    def __init__(self, use: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.use = use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.use(x)


LENGTH_USES = {
    "mul": lambda x: x * x.shape[-1],
    "div": lambda x: x / x.shape[-1],
    "size": lambda x: x * x.size(-1),
    "sqrt": lambda x: x * math.sqrt(x.shape[-1]),
    "arange": lambda x: x + torch.arange(x.shape[-1]),
}


@pytest.mark.parametrize("frame", [None, "auto"])
@pytest.mark.parametrize("use", sorted(LENGTH_USES))
def test_the_length_used_as_a_value_is_refused_by_name(use: str, frame: object) -> None:
    # issue 12, item 18: refused with a sentence, never a TypeError
    model = UsesLength(LENGTH_USES[use])
    with pytest.raises(pts.NotStreamableError, match="length"):
        pts.stream(model, torch.randn(1, 2, 64))
    with pytest.raises(pts.NotStreamableError, match="length"):
        pts.streaming_transform(model, torch.randn(1, 2, 64), -1, frame=frame)  # type: ignore[arg-type]


class ChannelNorm(nn.Module):
    """asteroid's cLN: statistics over channels, per time step (aten.var, aten.std)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = torch.var(x, 1, keepdim=True, unbiased=False)
        return (x - mean) / (var + 1e-8).sqrt() + x.std(dim=1, keepdim=True)


class TimeVariance(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - torch.var(x, -1, keepdim=True)


def test_reductions_over_channels_stream_and_over_time_are_refused() -> None:
    x = torch.randn(2, 3, 50)
    stream = pts.stream(ChannelNorm(), x[..., :16])
    with torch.no_grad():
        assert_matches(
            torch.cat([stream(x[..., :7]), stream(x[..., 7:], final=True)], -1), ChannelNorm()(x)
        )
    step, axis = pts.streaming_transform(ChannelNorm(), x[..., :16], -1)
    assert_matches(torch.stack([step(x[..., t]) for t in range(50)], axis), ChannelNorm()(x))
    with pytest.raises(pts.NotStreamableError, match=r"aten\.var.*reduces over the time axis"):
        pts.stream(TimeVariance(), x)


def test_importing_without_numpy_prints_no_warning() -> None:
    # issue 12, item 17: torch itself warns on import when NumPy is missing
    code = "import sys; sys.modules['numpy'] = None; import torchstreamer"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


class FourDimensionalView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = pts.PaddedConv1d(2, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.view(y.shape[0], 2, 3, y.shape[-1])


class LstmWithState(nn.Module):
    def __init__(self, initial: bool) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 3, batch_first=True)
        self.initial = initial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = None
        if self.initial:
            zeros = x.new_zeros(1, x.shape[0], 3)
            state = (zeros, zeros)
        return self.rnn(x.transpose(1, 2), state)[0].transpose(1, 2)


@pytest.mark.parametrize("frame", ["stream", None, "auto"])
@pytest.mark.parametrize("make", [FourDimensionalView, lambda: LstmWithState(False)])
def test_views_of_outputs_and_recurrent_layers_called_with_none(make, frame: object) -> None:
    # issue 13, items 1 and 5: a bare AssertionError, and "Leaf.forward() takes 2 positional"
    model = make().eval()
    x = torch.randn(2, 2, 40)
    with torch.no_grad():
        expected = model(x)
        if frame == "stream":
            stream = pts.stream(model, x[..., :16])
            y = torch.cat([stream(x[..., :11]), stream(x[..., 11:], final=True)], -1)
        else:
            step, axis = pts.streaming_transform(model, x[..., :16], -1, frame=frame)  # type: ignore[arg-type]
            if frame is None:
                y = torch.stack([step(x[..., t]) for t in range(40)], axis)
            else:
                y = step(x)
    assert_matches(y, expected)


def test_a_recurrent_layer_given_an_initial_state_is_refused_by_name() -> None:
    with pytest.raises(pts.NotStreamableError, match=r"layer 'rnn' \(LSTM\).*initial state"):
        pts.stream(LstmWithState(True).eval(), torch.randn(1, 2, 32))


class CachedPrefix(nn.Module):
    """Mimi's offline StreamingConv1d path: a zeros prefix concatenated along time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 4, stride=2)
        self.register_buffer("previous", torch.zeros(1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.previous.expand(x.shape[0], -1, -1), x], -1))


class ConstantSuffix(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.ones(x.shape[0], x.shape[1], 3)], -1)


class TwoInTime(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], -1)


@pytest.mark.parametrize("make", [CachedPrefix, ConstantSuffix])
def test_a_concatenation_of_constants_along_time_is_padding(make) -> None:
    # issue 13, item 2: refused as "acts along the time axis"
    model = make().eval()
    x = torch.randn(2, 2, 64)
    stream = pts.stream(model, x[..., :32])
    with torch.no_grad():
        outputs = [stream(x[..., :5]), stream(x[..., 5:6]), stream(x[..., 6:], final=True)]
        assert_matches(torch.cat([y for y in outputs if y is not None], -1), model(x))
    if make is CachedPrefix:  # a prefix is padding before the signal: steps run it too
        step, _ = pts.streaming_transform(model, x[..., :32], -1, frame="auto")
        assert_matches(step(x), model(x))
        assert stream.latency == 1  # output j reads x[2j - 2 .. 2j + 1] and sits at x[2j]


def test_two_streams_one_after_the_other_in_time_are_refused() -> None:
    with pytest.raises(pts.NotStreamableError, match="one after the other along time"):
        pts.stream(TwoInTime(), torch.randn(1, 2, 32))


class RegroupingDecoder(nn.Module):
    """asteroid's decoder: [B, 2 * 8, T] viewed as [B, 2, 8, T], then [B * 2, 8, T]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(16, 16, 3, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)[..., : x.shape[-1]]
        y = y.view(y.shape[0], 2, 8, y.shape[-1])
        return y.reshape(-1, 8, y.shape[-1])


@pytest.mark.parametrize("batch", [1, 3])
def test_reshapes_that_regroup_the_dims_before_time_stream(batch: int) -> None:
    # issue 13, item 4: refused as "mixes the time axis"
    model = RegroupingDecoder().eval()
    stream = pts.stream(model, torch.randn(1, 16, 32))
    x = torch.randn(batch, 16, 50)
    with torch.no_grad():
        outputs = [stream(x[..., :7]), stream(x[..., 7:7]), stream(x[..., 7:], final=True)]
        assert_matches(torch.cat([y for y in outputs if y is not None], -1), model(x))
    # the frame code of each batch size regroups that batch (the capture fixed the example's)
    assert stream.engine.startswith("frames of"), stream.engine
    step, axis = pts.streaming_transform(model, torch.randn(1, 16, 32), -1)
    x = torch.randn(1, 16, 40)
    assert_matches(torch.stack([step(x[..., t]) for t in range(40)], axis), model(x))


def test_an_example_shorter_than_the_total_stride_is_refused_as_such() -> None:
    # an output that the capture fixed at one sample crashed streaming_transform (bare assert)
    class Strided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pools = nn.Sequential(*[nn.AvgPool1d(s) for s in (2, 3, 3)])
            self.conv = nn.Conv1d(1, 1, 1, stride=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(self.conv(F.pad(self.pools(x), (0, 0))))

    model = Strided().eval()
    with pytest.raises(pts.NotStreamableError, match=r"shape \[1, 48\]\) is too short"):
        pts.streaming_transform(model, torch.randn(1, 48), -1, frame="auto")
    with pytest.raises(pts.NotStreamableError, match="too short"):
        pts.stream(model, torch.randn(1, 48))
    pts.stream(model, torch.randn(1, 54 * 4))  # long enough


def test_an_example_that_the_capture_fixes_at_one_sample_is_refused_as_too_short() -> None:
    # the capture failed (the dynamic length's minimum, then a graph of the example's length
    # only), with torch.export's message instead of the one for too short an example
    with pytest.raises(
        pts.NotStreamableError,
        match=r"The example input \(shape \[1, 1, 3\]\) is too short for Conv1d: its output "
        r"\(shape \[1, 4, 1\]\) has too few samples.*Give a longer example",
    ):
        pts.stream(nn.Conv1d(1, 4, 3), torch.randn(1, 1, 3))
    model = nn.Sequential(nn.Conv1d(1, 1, 3), nn.ConvTranspose1d(1, 1, 3))
    with pytest.raises(
        pts.NotStreamableError,
        match=r"too short for Sequential: the output of layer '0' \(Conv1d\)",
    ):
        pts.stream(model, torch.randn(1, 1, 3))
    pts.stream(model, torch.randn(1, 1, 4))  # long enough


class ExtraPadding(nn.Module):
    """EnCodec's get_extra_padding_for_conv1d: a float ceil of the frame count."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 8, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride, total = 8, 4, 4
        frames = (x.shape[-1] - kernel + total) / stride + 1
        extra = (math.ceil(frames) - 1) * stride + (kernel - total) - x.shape[-1]
        return self.conv(F.pad(x, (total, extra)))


@pytest.mark.parametrize("make", [models.PadToMultiple, ExtraPadding, models.CroppedSkip])
@fewer(15)
@given(length=st.integers(40, 90), sizes=block_sizes())
def test_pads_and_crops_computed_from_the_length_stream(make, length: int, sizes) -> None:
    # issue 13, item 1: "int() argument ... not 'Node'", or refused
    model = make().eval()
    stream = pts.stream(model, torch.randn(1, 1, 64))
    x = torch.randn(1, 1, length)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, split_lengths(length, sizes)), model(x))


def test_a_left_padding_computed_from_the_length_is_refused() -> None:
    class LeftFromLength(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.pad(x, ((-x.shape[-1]) % 4, 0))

    with pytest.raises(pts.NotStreamableError, match="left padding depends on the length"):
        pts.stream(LeftFromLength(), torch.randn(1, 1, 64))


def test_a_view_that_interleaves_time_is_a_rate_change() -> None:
    # issue 13, item 1: torch.stack([a, b], -1).view(B, C, 2 * T) was "mixes the time axis"
    stream = pts.stream(models.Interleaved().eval(), torch.randn(1, 2, 64))
    # output 2t is conv a at t, which reads x[t + 1]; output 2t + 1 is conv b at t
    assert (stream.rate, stream.latency, stream.receptive_field) == (2, 1, 3)


class WritesInPlace(nn.Module):
    """An in-place write into a tensor that the output then reads: not dead code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        out = torch.zeros_like(h)
        out.copy_(h)
        out.mul_(2)
        unused = torch.tensor(x.shape)  # dead: reaches no output
        del unused
        return out + x


def test_pruning_keeps_in_place_writes_that_an_output_reads() -> None:
    from torchstreamer.graph.capture import capture, prune_unused

    model = WritesInPlace().eval()
    program, _ = capture(model, torch.randn(1, 2, 32), 2)
    targets = [str(n.target) for n in program.graph.nodes]
    prune_unused(program.graph)
    kept = [str(n.target) for n in program.graph.nodes]
    writes = [t for t in targets if "copy_" in t or "mul_" in t]
    assert writes
    assert writes == [t for t in kept if "copy_" in t or "mul_" in t]
    assert any("scalar_tensor" in t or "stack" in t for t in targets)  # torch.tensor(shape)
    assert not any("scalar_tensor" in t or "stack" in t for t in kept)
