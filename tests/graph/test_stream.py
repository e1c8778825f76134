"""Graph streams equal model(x) for real model shapes, and refuse what they cannot stream."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, built_at_once, split_lengths
from tests.graph import models


def run(stream: pts.GraphStream, x: torch.Tensor, lengths: list[int]):
    """Stream ``x`` in blocks of ``lengths``, then the rest with final=True."""
    outputs = []
    start = 0
    blocks = [*lengths, x.shape[-1] - sum(lengths)]
    for index, length in enumerate(blocks):
        y = stream(x[..., start : start + length], final=index == len(blocks) - 1)
        start += length
        if y is not None:
            outputs.append(y)
    if outputs and isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts, -1) for parts in zip(*outputs))
    return torch.cat(outputs, -1) if outputs else None


ZOO = {
    "wavenet": (models.GatedWaveNet, [1, 1, 96]),
    "hifigan": (models.HifiGanShaped, [2, 2, 80]),
    "unet": (models.WaveUNet, [1, 1, 96]),
    "tcn": (models.TcnWithLayerNorm, [2, 6, 70]),
    "seed_sequential": (models.seed_sequential, [1, 1, 64]),
    "seed_residual": (models.seed_residual, [1, 1, 64]),
    "conv_gru": (models.ConvRecurrent, [2, 2, 64]),
    "conv_lstm": (lambda: models.ConvRecurrent(nn.LSTM), [1, 2, 64]),
    "time_major_lstm": (models.TimeMajorLstm, [2, 3, 40]),
    "upsample_cumsum": (models.UpsampleCumsum, [2, 2, 40]),
    "pad_to_multiple": (models.PadToMultiple, [1, 1, 64]),
    "cropped_skip": (models.CroppedSkip, [2, 1, 64]),
    "interleaved": (models.Interleaved, [2, 2, 64]),
    "extra_padded_1": (lambda: models.ExtraPadded(1), [1, 2, 64]),
    "extra_padded_4": (lambda: models.ExtraPadded(4), [1, 2, 64]),
    "extra_padded_centred": (lambda: models.ExtraPadded(2, causal=False), [2, 2, 64]),
    "dead_state_update": (models.DeadStateUpdate, [2, 2, 64]),
    "trimmed_upsampler": (models.TrimmedUpsampler, [1, 4, 16]),
}


class _Built(dict):  # type: ignore[type-arg]
    """The zoo's models and streams, with a short repr for hypothesis's failure reports."""

    def __repr__(self) -> str:
        return f"<zoo of {len(self)} streams>"


@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[nn.Module, pts.GraphStream]]:
    built = _Built()
    for name, (make, shape) in ZOO.items():
        model = make().eval()
        built[name] = (model, pts.stream(model, torch.randn(shape)))
    return built


@pytest.mark.parametrize("name", sorted(ZOO))
@settings(max_examples=15)
@given(sizes=block_sizes())
def test_zoo_model_streams_exactly(zoo, name: str, sizes: list[int]) -> None:
    model, stream = zoo[name]
    shape = list(ZOO[name][1])
    shape[-1] = 128
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
        lengths = split_lengths(x.shape[-1], sizes)[:-1]
        assert_matches(run(stream, x, lengths), expected)


@settings(max_examples=10)
@given(sizes=block_sizes())
def test_per_step_algebra_and_linear_upsampling(sizes: list[int]) -> None:
    model = models.PerStepAlgebra()
    stream = pts.stream(model, torch.randn(1, 4, 64))
    x = torch.randn(2, 4, 301)
    with torch.no_grad():
        outputs = run(stream, x, split_lengths(301, sizes)[:-1])
        for got, expected in zip(outputs, model(x)):
            assert_matches(got, expected)


def test_linear_upsampling_matches_pytorch_rounding_on_long_signals() -> None:
    model = Wrap(nn.Upsample(scale_factor=3, mode="linear"))
    stream = pts.stream(model, torch.randn(1, 2, 64))
    x = torch.randn(1, 2, 20000)
    with torch.no_grad():
        assert_matches(run(stream, x, [7000, 1, 0, 9000]), model(x))


def test_several_outputs_come_as_a_tuple() -> None:
    model = models.TwoOutputs()
    stream = pts.stream(model, torch.randn(1, 2, 40))
    x = torch.randn(1, 2, 50)
    with torch.no_grad():
        a, b = run(stream, x, [3, 0, 1, 20])
        assert_matches(a, model(x)[0])
        assert_matches(b, model(x)[1])


class MeanOverTime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return h - h.mean(dim=-1, keepdim=True)


class Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


REFUSALS = [
    (
        Wrap(MeanOverTime()),
        r"layer 'inner' \(MeanOverTime\), op aten\.mean\.dim.*test_stream\.py:\d+.*time axis",
    ),
    (Wrap(nn.Softmax(dim=-1)), r"layer 'inner' \(Softmax\), op aten\._?softmax"),
    (Wrap(nn.GroupNorm(1, 2)), r"layer 'inner' \(GroupNorm\).*normalises over time"),
    (Wrap(nn.InstanceNorm1d(2)), r"layer 'inner' \(InstanceNorm1d\).*normalises over time"),
    (
        Wrap(nn.Conv1d(2, 2, 3, padding=1, padding_mode="circular")),
        r"layer 'inner' \(Conv1d\).*circular",
    ),
    (Wrap(nn.AdaptiveAvgPool1d(1)), r"layer 'inner' \(AdaptiveAvgPool1d\)"),
    (
        Wrap(nn.Upsample(scale_factor=1.5, mode="nearest")),
        r"layer 'inner' \(Upsample\).*not a whole number",
    ),
    # a Linear or a LayerNorm over time fixes the length: the capture fails, and a run on a
    # longer input names the layer that raises on it
    (
        Wrap(nn.Linear(32, 32)),
        r"layer 'inner' \(Linear\): it acts on the last axis, which is time.*on 64 samples "
        r"instead of the example's 32, it raises RuntimeError.*1x1 Conv1d",
    ),
    (
        Wrap(nn.LayerNorm(32)),
        r"layer 'inner' \(LayerNorm\): it normalises over time.*normalise over channels.*"
        r"register_streamer\(LayerNorm, factory\)",
    ),
]


@pytest.mark.parametrize(
    ("model", "message"), REFUSALS, ids=[type(m.inner).__name__ for m, _ in REFUSALS]
)
def test_refusal_names_the_layer_and_op(model: nn.Module, message: str) -> None:
    with pytest.raises(pts.NotStreamableError, match=message):
        pts.stream(model.eval(), torch.randn(1, 2, 32))


class Flip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


class MatmulOverTime(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.ones(x.shape[-1], 3)


class ReshapeMixingTime(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], -1, 2).sum(-1)


class FixedLength(nn.Module):
    """A block whose own forward needs the example's length (a matrix over time)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) @ torch.ones(32, 32)


def test_a_layer_that_fixes_the_length_is_named_by_its_path() -> None:
    # the capture of a model with a layer that only runs on the example's length failed with
    # torch.export's constraint error, which named neither the layer nor what to do
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.LayerNorm(62)).eval()
    with pytest.raises(pts.NotStreamableError, match=r"^Cannot stream layer '2' \(LayerNorm\)"):
        pts.stream(model, torch.randn(1, 1, 64))
    with pytest.raises(
        pts.NotStreamableError,
        match=r"layer 'inner' \(FixedLength\): it only runs on one length of the time axis.*"
        r"register_streamer\(FixedLength, factory\)",
    ):
        pts.stream(Wrap(FixedLength()), torch.randn(1, 2, 32))
    # an op of the model's own forward: no layer to name, the capture's message
    with pytest.raises(pts.NotStreamableError, match="could not capture FixedLength with a dyn"):
        pts.stream(FixedLength(), torch.randn(1, 2, 32))


def test_flip_is_refused() -> None:
    with pytest.raises(pts.NotStreamableError, match=r"layer 'inner' \(Flip\), op aten\.flip"):
        pts.stream(Wrap(Flip()), torch.randn(1, 2, 32))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            MatmulOverTime(),
            r"could not capture|sums over the time axis|does not come from the input",
        ),
        (ReshapeMixingTime(), r"mixes the time axis with other axes|2 axes that depend on time"),
    ],
    ids=["matmul-over-time", "reshape-mixing-time"],
)
def test_per_step_ops_applied_across_time_are_refused(model: nn.Module, message: str) -> None:
    with pytest.raises(pts.NotStreamableError, match=message):
        pts.stream(Wrap(model), torch.randn(1, 2, 32))


def test_reshape_over_time_is_refused_with_its_source_line() -> None:
    class Flatten(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], -1)[:, :8].unsqueeze(1)

    with pytest.raises(pts.NotStreamableError, match=r"aten\.reshape\.default, at test_stream\.py"):
        pts.stream(Flatten(), torch.randn(1, 2, 32))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda x: x[:, :0], r"built for blocks shaped \[B, 2, T\] but got shape \[1, 0, 5\]"),
        (lambda x: x[0], r"but got shape \[2, 5\]"),
        (lambda x: x.double(), "computes in torch.float32 on cpu but the block is torch.float64"),
        (lambda x: x.long(), "expects a floating-point block"),
        (lambda x: x.repeat(2, 1, 1), "in the middle of a signal with batch size 1"),
    ],
    ids=["channels", "rank", "dtype", "integer", "batch"],
)
def test_bad_block_is_refused_and_the_signal_goes_on(bad, message: str) -> None:
    model = models.HifiGanShaped().eval()
    stream = pts.stream(model, torch.randn(1, 2, 64))
    x = torch.randn(1, 2, 40)
    with torch.no_grad():
        head = stream(x[..., :15])
        with pytest.raises(pts.StreamInputError, match=message):
            stream(bad(x[..., 15:20]))
        tail = stream(x[..., 15:], final=True)
        assert_matches(torch.cat([t for t in (head, tail) if t is not None], -1), model(x))


def test_final_hidden_state_is_refused() -> None:
    class UsesHidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(2, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, h = self.rnn(x.transpose(1, 2))
            return y.transpose(1, 2) + h[-1].unsqueeze(-1)

    with pytest.raises(pts.NotStreamableError, match="final hidden state"):
        pts.stream(UsesHidden(), torch.randn(1, 2, 32))


def test_bidirectional_recurrent_layer_is_refused() -> None:
    class Bidirectional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(2, 2, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x.transpose(1, 2))[0].transpose(1, 2)

    with pytest.raises(pts.NotStreamableError, match=r"layer 'rnn' \(LSTM\): it is bidirectional"):
        pts.stream(Bidirectional(), torch.randn(1, 2, 32))


def test_leaves_are_restored_after_capture() -> None:
    model = models.ConvRecurrent()
    pts.stream(model, torch.randn(1, 2, 64))
    assert isinstance(model.rnn, nn.GRU)
    assert isinstance(model.pool, nn.MaxPool1d)


class Chain(nn.Module):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# (model, rate, latency, receptive field), each worked out by hand in the comment
TIMING = {
    # output j reads x[j..j+2]: it sits at x[j] and needs 2 samples more
    "valid_conv": (lambda: Chain(nn.Conv1d(1, 1, 3)), Fraction(1), 2, 3),
    # 'same' padding centres the window: x[j-1..j+1]
    "same_conv": (lambda: Chain(nn.Conv1d(1, 1, 3, padding=1)), Fraction(1), 1, 3),
    # left padding only: x[j-2..j], nothing ahead
    "causal_conv": (
        lambda: Chain(nn.ConstantPad1d((2, 0), 0.0), nn.Conv1d(1, 1, 3)),
        Fraction(1),
        0,
        3,
    ),
    # output j reads x[2j..2j+1] and sits at x[2j]
    "strided_conv": (lambda: Chain(nn.Conv1d(1, 1, 2, stride=2)), Fraction(1, 2), 1, 2),
    # output j reads x[ceil((j-2)/2)..floor((j+1)/2)]: two inputs, one ahead for odd j
    "upsampler": (
        lambda: Chain(nn.ConvTranspose1d(1, 1, 4, stride=2, padding=1)),
        Fraction(2),
        1,
        2,
    ),
    # causal dilations 1, 2, 4 with kernel 2: 1 + 1 + 2 + 4 samples
    "wavenet": (models.GatedWaveNet, Fraction(1), 0, 8),
}


@pytest.mark.parametrize("name", sorted(TIMING))
def test_rate_latency_and_receptive_field(name: str) -> None:
    make, rate, latency, field = TIMING[name]
    stream = pts.stream(make().eval(), torch.randn(1, 1, 64))
    assert stream.rate == rate
    assert stream.latency == latency
    assert stream.receptive_field == field
    summary = stream.summary()
    assert f"rate {rate}, latency {latency} samples, receptive field {field} samples" in summary


def test_latency_measurement_leaves_the_stream_as_it_was() -> None:
    model = models.GatedWaveNet().eval()
    stream = pts.stream(model, torch.randn(1, 1, 64))
    x = torch.randn(1, 1, 50)
    with torch.no_grad():
        head = stream(x[..., :20])
        assert stream.latency == 0
        tail = stream(x[..., 20:], final=True)
        assert_matches(torch.cat([head, tail], -1), model(x))


class Smooth(nn.Module):
    """A moving average written with unfold, which graph streams do not know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unfold(-1, 4, 1).mean(-1)


class SmoothStream(pts.BaseStream):
    def __init__(self, module: Smooth) -> None:
        super().__init__()
        conv = nn.Conv1d(1, 1, 4, bias=False)
        conv.weight.data.fill_(0.25)
        self.inner = pts.Conv1dStream(conv)

    def forward(self, x: torch.Tensor, final: bool = False):
        y = self.inner(x.reshape(x.shape[0] * x.shape[1], 1, x.shape[-1]), final)
        return None if y is None else y.reshape(x.shape[0], -1, y.shape[-1])

    def reset(self) -> None:
        self.inner.reset()

    def output_length(self, n: int) -> int:
        return self.inner.output_length(n)


class Smoothed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.smooth = Smooth()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.smooth(self.conv(x)))


def test_registered_streamer_wins_inside_a_graph() -> None:
    model = Smoothed().eval()
    with pytest.raises(pts.NotStreamableError, match=r"layer 'smooth' \(Smooth\), op aten\.unfold"):
        pts.stream(model, torch.randn(1, 2, 64))
    pts.register_streamer(Smooth, SmoothStream)
    try:
        stream = pts.stream(model, torch.randn(1, 2, 64))
        x = torch.randn(2, 2, 90)
        with torch.no_grad():
            assert_matches(run(stream, x, [13, 0, 1, 36]), model(x))
    finally:
        pts.unregister_streamer(Smooth)


class Sort(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sort(dim=-1).values


class Spectrum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x, dim=-1).abs()[..., : x.shape[-1] // 2]


class Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.transpose(1, 2)
        return torch.softmax(q @ q.transpose(1, 2), dim=-1).matmul(q).transpose(1, 2)


class Gather(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., x[0, 0].argsort()]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Sort(), r"aten\.sort"),
        (Spectrum(), r"aten\.(_fft_r2c|fft_rfft)"),
        (Attention(), r"aten\.(matmul|bmm|transpose)|its inputs have different lengths|time axis"),
        (Gather(), r"aten\.(argsort|sort|index)"),
    ],
    ids=["sort", "fft", "attention", "data-dependent-index"],
)
def test_ops_that_mix_all_time_steps_are_refused(model: nn.Module, message: str) -> None:
    with pytest.raises(
        pts.NotStreamableError, match=rf"layer 'inner' \({type(model).__name__}\).*(?:{message})"
    ):
        pts.stream(Wrap(model), torch.randn(1, 2, 32))


@pytest.mark.parametrize(
    "name", ["wavenet", "conv_gru", "conv_lstm", "upsample_cumsum", "seed_residual"]
)
def test_snapshot_and_restore_continue_bit_identically(zoo, name: str) -> None:
    model, stream = zoo[name]
    shape = list(ZOO[name][1])
    shape[-1] = 96
    x = torch.randn(shape)
    with torch.no_grad():
        stream.reset()
        head = stream(x[..., :37])
        snapshot = stream.get_state()
        rest = stream(x[..., 37:], final=True)
        stream.set_state(snapshot)
        again = stream(x[..., 37:], final=True)
    assert torch.equal(rest, again)
    assert_matches(torch.cat([t for t in (head, rest) if t is not None], -1), model(x))


def test_graph_state_stays_bounded(zoo) -> None:
    _, stream = zoo["wavenet"]
    with torch.no_grad():
        stream.reset()
        stream(torch.randn(1, 1, 64))
        sizes = {k: v.numel() for k, v in stream.get_state().items()}
        for i in range(2000):
            stream(torch.randn(1, 1, i % 5))
        assert all(v.numel() <= max(sizes[k], 64) for k, v in stream.get_state().items())
        stream.reset()


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(3, 2, 1), (2, 3, 0), (4, 3, 2), (3, 1, 1)]
)
def test_max_pool_with_ceil_mode_and_padding(kernel: int, stride: int, padding: int) -> None:
    model = Chain(
        nn.Conv1d(2, 2, 3, padding=1), nn.MaxPool1d(kernel, stride, padding, ceil_mode=True)
    )
    stream = pts.stream(model, torch.randn(1, 2, 64))
    with torch.no_grad():
        for length in (40, 41, 42, 43):
            x = torch.randn(1, 2, length)
            assert_matches(run(stream, x, [7, 0, 1]), model(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_stream_on_cuda() -> None:
    model = models.HifiGanShaped().eval().cuda()
    stream = pts.stream(model, torch.randn(1, 2, 64, device="cuda"))
    x = torch.randn(2, 2, 300, device="cuda")
    with torch.no_grad():
        y = run(stream, x, [1, 0, 17, 64])
        torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-4)


def test_layers_report_rate_receptive_field_latency_and_state() -> None:
    model = nn.Sequential(
        nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Conv1d(2, 2, 3, dilation=2, padding=2),
        nn.Conv1d(2, 1, 2, stride=2),
    ).eval()  # fmt: skip
    rows = {r["layer"]: r for r in pts.stream(model, torch.randn(1, 1, 64)).layers()}
    assert [rows[k]["receptive_field"] for k in ("0", "2", "3")] == [3, 7, 8]
    assert [rows[k]["window"] for k in ("0", "2", "3")] == [3, 5, 2]
    assert [str(rows[k]["rate"]) for k in ("0", "2", "3")] == ["1", "1", "1/2"]
    assert [rows[k]["latency"] for k in ("0", "2", "3")] == [2, 4, 5]
    assert rows["0"]["state_bytes"] == 2 * 4  # the last 2 samples of 1 channel, float32


def test_receptive_fields_of_a_one_dimensional_signal() -> None:
    class Mono(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = pts.PaddedConv1d(1, 1, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.unsqueeze(0)).squeeze(0)

    stream = pts.stream(Mono().eval(), torch.randn(64))  # [T]
    assert stream.receptive_field == 5
    assert max(r["receptive_field"] for r in stream.layers()) == 5


def test_layers_name_leaves_and_mark_what_follows_a_recurrent_layer_unbounded() -> None:
    rows = pts.stream(models.ConvRecurrent().eval(), torch.randn(1, 2, 64)).layers()
    by_op = {r["op"]: r for r in rows}
    assert by_op["MaxPool1d (leaf)"]["window"] == 2
    assert by_op["MaxPool1d (leaf)"]["receptive_field"] == 4
    assert by_op["GRU (leaf)"]["window"] is None
    assert rows[-1]["receptive_field"] is None  # the head conv after the GRU


def test_the_frame_engine_runs_every_zoo_model(zoo) -> None:
    # (a running sum before right padding too: the end entry sums on from the frames' total)
    for name, (_, stream) in zoo.items():
        assert stream.engine.startswith("frames of"), (name, stream.engine)


@pytest.mark.parametrize("length", [22, 23, 24])
def test_a_ceil_mode_pool_whose_last_window_depends_on_the_length_is_exact(length: int) -> None:
    # found when Sequential1dStream moved onto the engine: the frame code ran the pool as if
    # ceil_mode were False (a last, partial window was missing or out of range)
    torch.manual_seed(0)
    for after in (nn.ConvTranspose1d(1, 1, 1, padding=1), nn.Conv1d(1, 1, 1, padding="same")):
        net = nn.Sequential(nn.AvgPool1d(2, stride=3, ceil_mode=True), after).eval()
        stream = pts.stream(net, torch.randn(1, 1, 64))
        x = torch.randn(2, 1, length)
        with torch.no_grad():
            pieces = [stream(x[..., i : i + 1]) for i in range(length)]
            pieces.append(stream(x[..., :0], final=True))
        assert_matches(torch.cat([p for p in pieces if p is not None], -1), net(x))


@pytest.mark.parametrize(("shared", "count"), [(True, 4), (False, 2)])
def test_streams_built_from_several_threads_at_once_are_exact(shared: bool, count: int) -> None:
    """Builds run one at a time (torch.export patches process-wide state while it traces, and
    swaps leaves into the model it captures): streams of a recurrent model built from several
    threads at once, of one model or of one each, run on the engine as one built alone, and
    stream exactly."""
    torch.manual_seed(0)
    example, x = torch.randn(2, 2, 64), torch.randn(2, 2, 90)
    kept = [models.ConvRecurrent().eval() for _ in range(1 if shared else count)]
    alone = pts.stream(kept[0], example).engine
    streams = built_at_once(lambda i: pts.stream(kept[i % len(kept)], example), count)
    for i, stream in enumerate(streams):
        assert isinstance(stream, pts.GraphStream), repr(stream)
        assert stream.engine == alone
        with torch.no_grad():
            assert_matches(run(stream, x, split_lengths(60, [1, 0, 7, 3])), kept[i % len(kept)](x))
