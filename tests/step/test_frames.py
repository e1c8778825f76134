"""Frame step models (`streaming_transform(..., frame=...)`) and `StepStream`: models that change
the sampling rate, frame by frame and block by block, against the offline model and against the
block stream's latency."""

from __future__ import annotations

import copy
from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, event, given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, fewer, run_stream, split_lengths
from torchstreamer.examples.models import seed_sequential


def offline(model: nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(x)


class Causal(nn.Module):
    """A strided convolution padded on the left so that output j ends at input j*s + s - 1."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, dilation: int, groups: int = 1
    ) -> None:
        super().__init__()
        span = dilation * (kernel - 1) + 1
        self.left = max(0, span - stride)
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.left, 0)))


class Skip(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.inner(x))


class Recurrent(nn.Module):
    """An LSTM or GRU over time on ``[B, C, T]`` or ``[C, T]`` values."""

    def __init__(self, channels: int, kind: type, layers: int) -> None:
        super().__init__()
        self.rnn = kind(channels, channels, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # [C, T]: the layer's unbatched input is [T, C]
            return self.rnn(x.transpose(0, 1))[0].transpose(0, 1)
        return self.rnn(x.permute(2, 0, 1))[0].permute(1, 2, 0)


class Upsample(nn.Module):
    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # interpolate wants a batch
            return F.interpolate(x[None], scale_factor=self.factor, mode="nearest")[0]
        return F.interpolate(x, scale_factor=self.factor, mode="nearest")


@st.composite
def rate_models(draw: st.DrawFn) -> tuple[nn.Module, int]:
    """A random model of strided convolutions and pools, transposed convolutions (with and
    without overlap), nearest upsampling, recurrent layers, residual blocks and activations;
    and its channels."""
    channels = draw(st.integers(1, 4))
    layers: list[nn.Module] = []
    c = channels
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["conv", "pool", "transposed", "overlap", "up", "skip", "recurrent"])
        )
        out = draw(st.integers(1, 5))
        stride = draw(st.integers(1, 3))
        if kind == "conv":
            kernel = draw(st.integers(1, 4))
            dilation = draw(st.integers(1, 2))
            groups = c if draw(st.booleans()) else 1  # depthwise or dense
            out = out * c if groups > 1 else out
            layers += [Causal(c, out, kernel, stride, dilation, groups), nn.GELU()]
            c = out
        elif kind == "pool":
            pool = draw(st.sampled_from([nn.AvgPool1d, nn.MaxPool1d]))
            layers.append(pool(stride))
        elif kind == "transposed":
            layers.append(nn.ConvTranspose1d(c, out, stride, stride=stride))
            c = out
        elif kind == "overlap":  # kernel > stride: the frame's outputs need earlier inputs
            layers.append(nn.ConvTranspose1d(c, out, stride + draw(st.integers(1, 3)), stride))
            c = out
        elif kind == "up":
            layers.append(Upsample(stride))
        elif kind == "recurrent":
            rnn = draw(st.sampled_from([nn.LSTM, nn.GRU]))
            layers.append(Recurrent(c, rnn, draw(st.integers(1, 2))))
        else:
            kernel = draw(st.integers(1, 3))
            layers.append(Skip(nn.Sequential(pts.PaddedConv1d(c, c, kernel), nn.ReLU())))
    return nn.Sequential(*layers).eval(), channels


def blocks_of(stream: Any, x: torch.Tensor, lengths: list[int]) -> list[int]:
    """Output samples returned by each call (the last: an empty final call)."""
    counts, start = [], 0
    for index, length in enumerate([*lengths, 0]):
        y = stream(x[..., start : start + length], final=index == len(lengths))
        start += length
        counts.append(0 if y is None else y.shape[-1])
    return counts


@given(rate_models(), block_sizes(), st.integers(0, 2), st.integers(0, 2))
@fewer(40)
def test_random_rate_models_stream_exactly_and_never_hold_an_output_back(
    spec: tuple[nn.Module, int], sizes: list[int], batch: int, extra_frames: int
) -> None:
    model, channels = spec
    shape = [channels] if batch == 0 else [batch, channels]
    example = torch.randn(*shape, 48)
    try:  # an example shorter than the model's total stride is refused as such (test_build)
        assume(offline(model, example).shape[-1] >= 2)
    except RuntimeError:
        assume(False)
    refusal = ""
    try:
        step, axis = pts.streaming_transform(model, example, -1, frame="auto")
    except pts.NotStreamableError as error:
        refusal = str(error)
    if refusal:
        # a transposed convolution with overlap returns samples when the signal ends, which
        # frames never compute; nothing else may be refused
        assert "more than" in refusal or "depends on inputs up to" in refusal, refusal
        event("refused")
        return
    frame = step.frame
    assert frame is not None
    assert axis == len(shape)
    x = torch.randn(*shape, 5 * frame + 3)
    expected = offline(model, x)
    # frame by frame, and larger frames (a multiple of the smallest)
    big, _ = pts.streaming_transform(model, example, -1, frame=frame * (extra_frames + 1))
    for s in (step, big):
        assert s.frame is not None
        count = x.shape[-1] // s.frame
        ys = [s(x[..., f * s.frame : (f + 1) * s.frame]) for f in range(count)]
        y = torch.cat(ys, -1)
        assert_matches(y, expected[..., : y.shape[-1]])
        s.reset()
    if step.held_back or not step.drops_partial_frames:
        with pytest.raises(pts.NotStreamableError):
            pts.StepStream(step)
        event("frames only")
        return
    lengths = split_lengths(x.shape[-1], sizes)
    stream = pts.StepStream(step)
    reference = pts.stream(model, example)
    assert blocks_of(stream, x, lengths) == blocks_of(reference, x, lengths)  # same latency
    assert_matches(run_stream(stream, x, lengths), expected)
    event(f"streamed, frame {'> 1' if frame > 1 else '1'}")


def test_the_seed_sequential_network_runs_in_frames_of_8() -> None:
    model = seed_sequential(16)
    x = torch.randn(1, 203)
    with pytest.raises(pts.NotStreamableError, match="frame='auto' to take 8 input samples"):
        pts.streaming_transform(model, x, -1)
    step, axis = pts.streaming_transform(model, x, -1, frame="auto")
    assert (step.frame, axis, step.held_back, step.drops_partial_frames) == (8, 1, 0, True)
    assert step(x[:, :8]).shape == (1, 4)
    step.reset()
    stream = pts.StepStream(step)
    ys = [stream(x[:, t : t + 1]) for t in range(203)]
    assert all((y is None) == (t % 8 != 7) for t, y in enumerate(ys))  # every 8th call
    assert stream(x[:, :0], final=True) is None  # the offline model drops the last 3 samples
    assert_matches(torch.cat([y for y in ys if y is not None], -1), offline(model, x))


def test_a_frame_that_does_not_fit_the_rates_is_refused() -> None:
    model = seed_sequential(4)
    with pytest.raises(pts.NotStreamableError, match="multiple of 8"):
        pts.streaming_transform(model, torch.randn(1, 64), -1, frame=12)
    with pytest.raises(pts.StreamError, match="positive number"):
        pts.streaming_transform(model, torch.randn(1, 64), -1, frame=0)


def test_frames_larger_than_needed_hold_outputs_back_and_a_stream_refuses_them() -> None:
    conv = nn.Sequential(pts.PaddedConv1d(2, 3, 3), nn.ReLU()).eval()
    x = torch.randn(1, 2, 40)
    step, _ = pts.streaming_transform(conv, x, -1, frame=4)
    assert step.held_back == 3
    y = torch.cat([step(x[..., f * 4 : f * 4 + 4]) for f in range(10)], -1)
    assert_matches(y, offline(conv, x))
    with pytest.raises(pts.NotStreamableError, match="hold outputs back by up to 3"):
        pts.StepStream(step)


def test_a_model_that_closes_a_window_at_the_end_of_the_signal_is_refused_by_step_streams() -> None:
    # stride-2 conv with one sample of padding on each side: the signal's end adds an output
    model = nn.Conv1d(1, 2, 3, stride=2, padding=1).eval()
    x = torch.randn(1, 1, 32)
    step, _ = pts.streaming_transform(model, x, -1, frame="auto")
    assert not step.drops_partial_frames
    with pytest.raises(pts.NotStreamableError, match="after its last whole frame"):
        pts.StepStream(step)


def test_step_stream_refuses_bad_blocks_and_keeps_its_state() -> None:
    model = seed_sequential(8)
    x = torch.randn(1, 64)
    step, _ = pts.streaming_transform(model, x, -1, frame="auto")
    stream = pts.StepStream(step)
    first = stream(x[:, :5])
    assert first is None
    for bad, message in [
        (torch.randn(2, 3), "shaped \\[1, T\\]"),
        (torch.randn(1, 3).double(), "float64"),
        (torch.randn(3), "shaped"),
    ]:
        with pytest.raises(pts.StreamInputError, match=message):
            stream(bad)
    saved = stream.get_state()
    rest = stream(x[:, 5:], final=True)
    assert_matches(rest, offline(model, x))
    other = pts.StepStream(copy.deepcopy(step))
    other.set_state(saved)
    assert torch.equal(other(x[:, 5:], final=True), rest)
    with pytest.raises(pts.StreamError, match="missing"):
        other.set_state({})


def test_frame_step_models_refuse_lookahead_and_report_the_layer() -> None:
    model = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.AvgPool1d(2)).eval()
    with pytest.raises(pts.NotStreamableError, match=r"layer '0'.*up to t \+ 1"):
        pts.streaming_transform(model, torch.randn(1, 1, 32), -1, frame="auto")


def test_one_sample_step_models_stream_blocks_too() -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 3, 3), nn.ReLU()).eval()
    x = torch.randn(2, 2, 50)
    step, _ = pts.streaming_transform(model, x, -1)
    stream = pts.StepStream(step)
    outputs: list[Optional[torch.Tensor]] = [
        stream(x[..., a:b]) for a, b in [(0, 0), (0, 1), (1, 9), (9, 50)]
    ]
    assert outputs[0] is None
    assert_matches(torch.cat([o for o in outputs if o is not None], -1), offline(model, x))


def test_frame_step_models_export_and_compile() -> None:
    model = seed_sequential(8)
    x = torch.randn(1, 64)
    step, _ = pts.streaming_transform(model, x, -1, frame="auto")
    frame = x[:, :8]
    expected = step(frame)
    step.reset()
    exported = pts.export_step(step)
    y, *_ = exported.module()(frame, *step.initial_state())
    torch.testing.assert_close(y, expected)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(frame), expected)


class Codec(nn.Module):
    """Strided encoder with window state, a GRU at the low rate, a decoder with overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Sequential(Causal(2, 6, 4, 2, 1), nn.ELU(), Causal(6, 6, 3, 2, 2))
        self.rnn = Recurrent(6, nn.GRU, 1)
        self.decode = nn.ConvTranspose1d(6, 2, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.rnn(self.encode(x)))


@pytest.mark.parametrize("name", ["seed", "codec"])
def test_onnxruntime_runs_an_exported_frame_step_model(name: str, tmp_path: Any) -> None:
    ort = pytest.importorskip("onnxruntime")
    model: nn.Module = seed_sequential(8) if name == "seed" else Codec().eval()
    x = torch.randn(1, 64) if name == "seed" else torch.randn(2, 2, 64)
    step, _ = pts.streaming_transform(model, x, -1, frame="auto")
    path = pts.export_onnx(step, tmp_path / "frames.onnx")
    metadata = pts.read_onnx_state(path)
    assert metadata["frame"] == step.frame
    session = ort.InferenceSession(str(path))
    state = {s["input"]: s["initial"] for s in metadata["states"]}
    frame = step.frame
    assert frame is not None
    for f in range(x.shape[-1] // frame):
        block = x[..., f * frame : (f + 1) * frame]
        results = session.run(None, {metadata["input"]["name"]: block.numpy(), **state})
        for spec, value in zip(metadata["states"], results[1:]):
            state[spec["input"]] = value
        torch.testing.assert_close(torch.from_numpy(results[0]), step(block), rtol=1e-5, atol=1e-5)


@given(
    keep=st.integers(1, 6),
    counts=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    channel_major=st.booleans(),
)
def test_a_delay_state_gives_the_values_before_each_frame(
    keep: int, counts: list[int], channel_major: bool
) -> None:
    """``held_delay``/``held_tail`` (a join's delayed branch): frame after frame, the values
    ``keep`` positions earlier, whatever the frame length and the values' layout."""
    from torchstreamer.step.frames import held_delay, held_tail

    signal = torch.randn(2, sum(counts), 3)  # time-major [batch, time, channels]
    expected = torch.cat([torch.zeros(2, keep, 3), signal], 1)[:, : signal.shape[1]]
    held, start, got = torch.zeros(2, keep, 3), 0, []
    for count in counts:
        rows = signal[:, start : start + count]
        if channel_major:  # the same values, stored channel by channel
            rows = rows.transpose(1, 2).contiguous().transpose(1, 2)
        got.append(held_delay(held, rows))
        held.copy_(held_tail(held, rows))  # the state is written before the values are read
        start += count
    torch.testing.assert_close(torch.cat(got, 1), expected, rtol=0, atol=0)
