"""The frame engine behind `stream()`: lagging windows, joins that wait, state, batches."""

from __future__ import annotations

import copy
import functools
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, fewer, run_stream, split_lengths
from torchstreamer.examples import EXAMPLES, load_example
from torchstreamer.examples import models as examples


class ValidStack(nn.Module):
    """Windows without padding (the seed's semantics), strided and dilated, with a gate."""

    def __init__(self, kernels: list[int], strides: list[int], dilations: list[int]) -> None:
        super().__init__()
        channels = [2, 3, 4, 3]
        self.convs = nn.ModuleList(
            nn.Conv1d(channels[i], channels[i + 1], k, stride=s, dilation=d)
            for i, (k, s, d) in enumerate(zip(kernels, strides, dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            y = conv(x)
            x = torch.tanh(y) * torch.sigmoid(y.mean(1, keepdim=True) + 1)
        return x


class CentredSkip(nn.Module):
    """A valid window joined with its input cropped on both sides: the input is one sample
    ahead of the window, so the join delays it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3)
        self.up = nn.ConvTranspose1d(2, 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv(x)) + x[..., 1:-1]
        return self.up(y)


class PaddedAfterValid(nn.Module):
    """Zero padding after a valid window: the padding's zeros fall where the lagging frames
    hold values from before the signal, so the first outputs come from the start entry; the
    last, from the right padding, from the end entry."""

    def __init__(self) -> None:
        super().__init__()
        self.valid = nn.Conv1d(1, 2, 3)
        self.same = nn.Conv1d(2, 2, 3, padding=1)
        self.reflect = nn.Conv1d(2, 1, 5, padding=2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reflect(torch.relu(self.same(torch.relu(self.valid(x)))))


class RecurrentAfterValid(nn.Module):
    """A recurrent layer and a running sum after windows without padding: the frames' first
    values are from before the signal, which the layer and the sum must not count."""

    def __init__(self, kind: type[nn.RNNBase] = nn.GRU, batch_first: bool = True) -> None:
        super().__init__()
        self.valid = nn.Conv1d(1, 2, 3)
        self.pool = nn.MaxPool1d(2)
        self.rnn = kind(2, 3, num_layers=2, batch_first=batch_first)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.valid(x))
        if self.batch_first:
            y = self.rnn(h.transpose(1, 2))[0].transpose(1, 2)
        else:
            y = self.rnn(h.permute(2, 0, 1))[0].permute(1, 2, 0)
        return y + F.avg_pool1d(self.valid(x), 2).sum(1, keepdim=True).cumsum(-1)


class EncodecShaped(nn.Module):
    """Same-padded convolutions, a strided one, an LSTM with a skip (time-major, as EnCodec's
    ``SLSTM``), a transposed convolution: the last outputs depend on the right padding after
    the LSTM, so the end entry carries the LSTM's state on. With reflect padding first, the
    frames get the LSTM's first inputs wrong: the stream seeds its state offline."""

    def __init__(self, kind: type[nn.RNNBase] = nn.LSTM, mode: str = "zeros") -> None:
        super().__init__()
        self.first = nn.Conv1d(1, 4, 7, padding=3, padding_mode=mode)
        self.down = nn.Conv1d(4, 6, 4, stride=2, padding=1)
        self.rnn = kind(6, 6, num_layers=2)
        self.up = nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1)
        self.last = nn.Conv1d(4, 1, 7, padding=3, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.down(F.elu(self.first(x)))).permute(2, 0, 1)
        h = (self.rnn(h)[0] + h).permute(1, 2, 0)
        return self.last(F.elu(self.up(h)))


class SumBeforeSame(nn.Module):
    """A running sum before a window padded on both sides (after a lagging one): the last
    outputs depend on the right padding after a sum over the whole signal, which the end
    entry carries on from the frames' total. A sum over channels is not one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.valid = nn.Conv1d(1, 2, 3)
        self.same = nn.Conv1d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cumsum(torch.tanh(self.valid(x)), dim=-1).cumsum(1)
        return self.same(h)


class TwoAlignments(nn.Module):
    """Two outputs whose values complete on different samples of a two-sample frame (a
    stride-2 pool's on odd counts, a per-step op's on every one): any frame phase holds one
    of them back."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool1d(3, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool(x), torch.tanh(x)


def exact_on_the_engine(
    model: nn.Module, stream: nn.Module, x: torch.Tensor, lengths: list[int]
) -> None:
    """``stream`` runs on the frame engine and streams ``x`` in blocks of ``lengths`` as
    ``model`` computes it offline."""
    assert stream.engine.startswith("frames of"), stream.engine
    with torch.no_grad():
        assert_matches(run_stream(stream, x, lengths), model(x))


def returns_what_the_plan_completes(
    stream: pts.GraphStream, x: torch.Tensor, lengths: list[int]
) -> None:
    """Each call returns the outputs that the plan says its samples complete: never later."""
    ends = torch.tensor(lengths).cumsum(0).tolist()
    expected = [stream.timing.count_at(stream._outputs[0].name, end) for end in ends]
    with torch.no_grad():
        assert returned_counts(stream, x, lengths) == expected


def returned_counts(stream: pts.GraphStream, x: torch.Tensor, lengths: list[int]) -> list[int]:
    counts, total, start = [], 0, 0
    for length in lengths:
        y = stream(x[..., start : start + length])
        start += length
        total += 0 if y is None else y.shape[-1]
        counts.append(total)
    stream.reset()
    return counts


@fewer(25)
@given(
    layers=st.lists(
        st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=3
    ),
    sizes=block_sizes(),
    batch=st.integers(1, 3),
    length=st.integers(0, 90),
)
def test_valid_windows_run_on_the_engine_exactly(
    layers: list[tuple[int, int, int]], sizes: list[int], batch: int, length: int
) -> None:
    kernels, strides, dilations = (list(v) for v in zip(*layers))
    model = ValidStack(kernels, strides, dilations).eval()
    stream = pts.stream(model, torch.randn(2, 2, 600))  # long enough for 3 strides of 3
    assert stream.engine.startswith("frames of"), stream.engine
    x = torch.randn(batch, 2, length)
    with torch.no_grad():
        expected = model(x) if length >= _span(kernels, strides, dilations) else None
        y = run_stream(stream, x, split_lengths(length, sizes))
    if expected is None:
        assert y is None
    else:
        assert_matches(y, expected)


def _span(kernels: list[int], strides: list[int], dilations: list[int]) -> int:
    """The shortest input that gives the stack one output."""
    need = 1
    for k, s, d in reversed(list(zip(kernels, strides, dilations))):
        need = (need - 1) * s + d * (k - 1) + 1
    return need


@pytest.mark.parametrize(
    ("make", "channels"),
    [(CentredSkip, 2), (examples.seed_residual, 1), (examples.seed_sequential, 1)],
)
@fewer(15)
@given(data=st.data())
def test_joins_and_rate_changes_return_each_output_when_it_is_complete(
    make, channels: int, data: st.DataObject
) -> None:
    """Exact, and every call returns what the plan says its samples complete: never later."""
    model = make().eval()
    stream = pts.stream(model, torch.randn(1, channels, 64))
    assert stream.engine.startswith("frames of"), stream.engine
    lengths = data.draw(
        st.lists(st.integers(0, 9), min_size=1, max_size=30).filter(lambda n: sum(n) >= 8)
    )
    x = torch.randn(1, channels, sum(lengths))
    counts = stream.timing.counts[stream._outputs[0].name]
    expected = [int(counts[end - 1]) if end else 0 for end in torch.tensor(lengths).cumsum(0)]
    with torch.no_grad():
        assert returned_counts(stream, x, lengths) == expected
        assert_matches(run_stream(stream, x, lengths), model(x))


_PADDED_POOLS = {
    "max, padding": lambda: nn.MaxPool1d(3, stride=2, padding=1),
    "max, padding, dilation": lambda: nn.MaxPool1d(2, stride=1, padding=1, dilation=2),
    "average, padding counted": lambda: nn.AvgPool1d(3, stride=2, padding=1),
    "average, padding not counted": lambda: nn.AvgPool1d(
        5, stride=2, padding=2, count_include_pad=False
    ),
    "average, ceil_mode": lambda: nn.AvgPool1d(2, ceil_mode=True),
    "max, ceil_mode and padding": lambda: nn.MaxPool1d(4, stride=3, padding=2, ceil_mode=True),
    # (torch.export fixes this pool's length for one residue of the signal's length: a leaf)
    "average, ceil_mode and padding": lambda: nn.AvgPool1d(4, 3, 2, ceil_mode=True),
    "average, ceil_mode and padding not counted": lambda: nn.AvgPool1d(
        4, 3, 2, ceil_mode=True, count_include_pad=False
    ),
}


@functools.cache
def _padded_pool(name: str, causal: bool) -> tuple[nn.Module, pts.GraphStream]:
    # after a causal convolution the pool's input starts with the signal; after a centred one
    # it lags (its first frame positions hold values from before the signal)
    before = (
        [nn.ConstantPad1d((2, 0), 0.0), nn.Conv1d(1, 3, 3)]
        if causal
        else [nn.Conv1d(1, 3, 3, padding=1)]
    )
    model = nn.Sequential(*before, _PADDED_POOLS[name](), nn.Tanh()).eval()
    return model, pts.stream(model, torch.randn(1, 1, 64))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "centred"])
@pytest.mark.parametrize("name", sorted(_PADDED_POOLS))
@fewer(10)
@given(sizes=block_sizes(), length=st.integers(1, 60))  # (the model needs a sample)
def test_pools_with_padding_inside_or_ceil_mode_run_on_the_engine(
    name: str, causal: bool, sizes: list[int], length: int
) -> None:
    # the windows that read the left padding come from the start entry (zeros stand in for the
    # padding in the frames); the last, partial windows from the end entry
    model, stream = _padded_pool(name, causal)
    exact_on_the_engine(model, stream, torch.randn(2, 1, length), split_lengths(length, sizes))


class Interpolated(nn.Module):
    """Linear upsampling between windows: after a lagging (valid) or a centred convolution,
    before a strided one, with a skip that lines up with it."""

    def __init__(self, factor: int, before: str) -> None:
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv1d(2, 3, 3, padding=1 if before == "centred" else 0)
        self.head = nn.Conv1d(3, 1, factor + 1, stride=factor, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x))
        up = F.interpolate(h, scale_factor=self.factor, mode="linear")
        return self.head(up + h.repeat_interleave(self.factor, -1))


@functools.cache
def _interpolated(factor: int, before: str) -> tuple[nn.Module, pts.GraphStream]:
    model = Interpolated(factor, before).eval()
    return model, pts.stream(model, torch.randn(1, 2, 64))


@pytest.mark.parametrize("before", ["valid", "centred"])
@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@fewer(10)
@given(sizes=block_sizes(), batch=st.integers(1, 2), length=st.integers(3, 60))
def test_linear_upsampling_runs_on_the_engine_never_later_than_the_plan(
    factor: int, before: str, sizes: list[int], batch: int, length: int
) -> None:
    # the frames interpolate between each input and the one before it; the first outputs
    # clamp to the first input as PyTorch does, the last (clamped to the last input) come
    # from the end entry
    model, stream = _interpolated(factor, before)
    x = torch.randn(batch, 2, length)
    lengths = split_lengths(length, sizes)
    returns_what_the_plan_completes(stream, x, lengths)
    exact_on_the_engine(model, stream, x, lengths)


def test_linear_upsampling_on_the_engine_rounds_as_pytorch_on_long_signals() -> None:
    # the source positions are computed where the outputs sit in the signal, in PyTorch's
    # float32 arithmetic: far into a signal they are not periodic
    model = nn.Sequential(nn.Conv1d(1, 2, 1), nn.Upsample(scale_factor=3, mode="linear")).eval()
    stream = pts.stream(model, torch.randn(1, 1, 64))
    assert stream.engine.startswith("frames of"), stream.engine
    x = torch.randn(1, 1, 300_000)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, [200_000, 1, 0, 37, 90_000]), model(x))


_LEADING = {
    "reflection after a centred window": lambda: [
        nn.Conv1d(1, 2, 3, padding=1), nn.ReflectionPad1d(2)
    ],
    "replication after a strided window": lambda: [
        nn.Conv1d(1, 2, 3, stride=2, padding=1), nn.ReplicationPad1d((3, 1))
    ],
    "zeros wider than the window": lambda: [nn.Conv1d(1, 2, 3), nn.Conv1d(2, 2, 1, padding=2)],
    "a constant before a 1x1 window": lambda: [nn.ConstantPad1d((2, 0), 0.5), nn.Conv1d(1, 2, 1)],
}  # fmt: skip


@pytest.mark.parametrize("face", ["graph", "module"])
@pytest.mark.parametrize("name", sorted(_LEADING))
@fewer(10)
@given(sizes=block_sizes(), length=st.integers(3, 50))
def test_left_padding_that_reaches_the_output_comes_from_the_start_entry(
    name: str, face: str, sizes: list[int], length: int
) -> None:
    # the model's first values lie before the signal (padding the model returns): the frames
    # start after them, the start entry gives them as soon as the samples they copy are in
    model, stream = _leading(name, face)
    x = torch.randn(2, 1, length)
    lengths = split_lengths(length, sizes)
    if face == "graph":
        returns_what_the_plan_completes(stream, x, lengths)
    exact_on_the_engine(model, stream, x, lengths)


@functools.cache
def _leading(name: str, face: str) -> tuple[nn.Module, nn.Module]:
    model = nn.Sequential(*_LEADING[name]()).eval()
    if face == "module":
        return model, pts.Sequential1dStream(model, "model")
    return model, pts.stream(model, torch.randn(1, 1, 64))


@pytest.mark.parametrize("face", ["graph", "module"])
def test_a_signal_too_short_for_the_model_ends_with_an_error_and_the_next_one_is_exact(
    face: str,
) -> None:
    # the pool's length formula counts one output for 0 samples, where the model raises
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.MaxPool1d(4, 3, 2, ceil_mode=True))
    model = model.eval()
    if face == "graph":
        stream: nn.Module = pts.stream(model, torch.randn(1, 1, 64))
    else:
        stream = pts.Sequential1dStream(model, padding="model")
    assert stream.engine.startswith("frames of"), stream.engine
    with pytest.raises(pts.StreamError, match="cannot end this signal"):
        stream(torch.randn(2, 1, 0), final=True)
    x = torch.randn(3, 1, 30)  # another batch size: a new signal
    with torch.no_grad():
        assert_matches(run_stream(stream, x, [7, 0, 1, 12]), model(x))


@pytest.mark.parametrize("make", [PaddedAfterValid, examples.vocoder])
@fewer(10)
@given(sizes=block_sizes(), length=st.integers(20, 120))
def test_padding_at_both_ends_comes_from_the_start_and_end_entries(
    make, sizes: list[int], length: int
) -> None:
    model = make().eval()
    channels = next(model.parameters()).shape[1]
    stream = pts.stream(model, torch.randn(1, channels, 64))
    x = torch.randn(2, channels, length)
    exact_on_the_engine(model, stream, x, split_lengths(length, sizes))


@pytest.mark.parametrize(
    ("kind", "batch_first"), [(nn.GRU, True), (nn.LSTM, True), (nn.RNN, False)]
)
@fewer(10)
@given(sizes=block_sizes(), batch=st.integers(1, 2), length=st.integers(0, 60))
def test_recurrent_layers_and_running_sums_after_lagging_windows_start_with_the_signal(
    kind: type[nn.RNNBase], batch_first: bool, sizes: list[int], batch: int, length: int
) -> None:
    model, stream = _recurrent_after_valid(kind, batch_first)
    assert stream.engine.startswith("frames of"), stream.engine
    x = torch.randn(batch, 1, length)
    with torch.no_grad():
        y = run_stream(stream, x, split_lengths(length, sizes))
        if length < 4:
            assert y is None or y.shape[-1] == 0
        else:
            assert_matches(y, model(x))


@functools.cache
def _recurrent_after_valid(
    kind: type[nn.RNNBase], batch_first: bool
) -> tuple[nn.Module, pts.GraphStream]:
    model = RecurrentAfterValid(kind, batch_first).eval()
    return model, pts.stream(model, torch.randn(1, 1, 32))


@pytest.mark.parametrize(
    ("kind", "mode"), [(nn.LSTM, "zeros"), (nn.GRU, "zeros"), (nn.LSTM, "reflect")]
)
@fewer(10)
@given(sizes=block_sizes(), batch=st.integers(1, 2), length=st.integers(8, 90))
def test_the_end_entry_carries_a_recurrent_layers_state_on(
    kind: type[nn.RNNBase], mode: str, sizes: list[int], batch: int, length: int
) -> None:
    """Right padding after a recurrent layer: exact, the layer running from its state (seeded
    offline where the frames get its first inputs wrong)."""
    model, stream = _encodec_shaped(kind, mode)
    exact_on_the_engine(model, stream, torch.randn(batch, 1, length), split_lengths(length, sizes))


@pytest.mark.parametrize("length", [8, 40, 90])
def test_a_whole_signal_with_final_seeds_and_carries_the_recurrent_state(length: int) -> None:
    model, stream = _encodec_shaped(nn.LSTM, "reflect")
    x = torch.randn(1, 1, length)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, []), model(x))  # one call, final=True


@functools.cache
def _encodec_shaped(kind: type[nn.RNNBase], mode: str) -> tuple[nn.Module, pts.GraphStream]:
    model = EncodecShaped(kind, mode).eval()
    return model, pts.stream(model, torch.randn(1, 1, 32))


@fewer(10)
@given(sizes=block_sizes(), batch=st.integers(1, 2), length=st.integers(3, 60))
def test_running_sums_before_right_padding_sum_on_in_the_end_entry(
    sizes: list[int], batch: int, length: int
) -> None:
    model, stream = _sum_before_same()
    exact_on_the_engine(model, stream, torch.randn(batch, 1, length), split_lengths(length, sizes))


@functools.cache
def _sum_before_same() -> tuple[nn.Module, pts.GraphStream]:
    model = SumBeforeSame().eval()
    return model, pts.stream(model, torch.randn(1, 1, 32))


def test_a_model_the_frames_cannot_run_streams_on_the_interpreter_and_says_why() -> None:
    model = TwoAlignments().eval()
    stream = pts.stream(model, torch.randn(1, 1, 32))
    assert stream.engine.startswith("interpreter:")
    assert "hold outputs back" in stream.engine
    x = torch.randn(1, 1, 50)
    with torch.no_grad():
        pieces = [stream(x[..., :1]), stream(x[..., 1:1]), stream(x[..., 1:8])]
        pieces.append(stream(x[..., 8:], final=True))
        for k, offline in enumerate(model(x)):
            assert_matches(torch.cat([p[k] for p in pieces if p is not None], -1), offline)


@pytest.mark.parametrize(
    ("make", "split"), [(CentredSkip, 9), (PaddedAfterValid, 2), (PaddedAfterValid, 40)]
)
def test_the_engine_state_continues_in_a_copy_a_twin_and_a_pickle(make, split: int) -> None:
    """Mid-signal, also while the first outputs come from the start entry (split 2)."""
    model = make().eval()
    channels = next(model.parameters()).shape[1]
    x = torch.randn(2, channels, 61)
    stream = pts.stream(model, x)
    with torch.no_grad():
        expected = model(x)
        head = stream(x[..., :split])
        if head is None:
            head = x.new_zeros(2, expected.shape[1], 0)
        state = stream.get_state()
        assert int(state["_batch"]) == 2
        assert "engine.frames._dropping" in state
        twin = pts.stream(model, torch.randn(1, channels, 32))  # built for another batch size
        twin.set_state(state)
        copied = copy.deepcopy(stream)
        loaded = pickle.loads(pickle.dumps(stream))
        for other in (stream, twin, copied, loaded):
            tail = other(x[..., split:], final=True)
            assert_matches(torch.cat([head, tail], -1), expected)


def test_a_state_that_does_not_fit_the_engine_changes_nothing() -> None:
    model = CentredSkip().eval()
    x = torch.randn(1, 2, 40)
    stream = pts.stream(model, x)
    with torch.no_grad():
        head = stream(x[..., :5])
    state = stream.get_state()
    broken = [
        {**state, "engine.frames._dropping": torch.tensor([7])},
        {**state, "engine._emitted": torch.tensor([-1])},
        {**state, "engine._seen": torch.tensor(-3)},
        {**state, "_rows": torch.tensor(0)},
        {**state, "_batch": torch.tensor(3)},
        {k: v for k, v in state.items() if k != "engine.frames._filled"},
    ]
    for bad in broken:
        with pytest.raises(pts.StreamError):
            stream.set_state(bad)
        after = stream.get_state()
        assert after.keys() == state.keys()
        assert all(torch.equal(after[k], v) for k, v in state.items())
    with torch.no_grad():
        assert_matches(torch.cat([head, stream(x[..., 5:], final=True)], -1), model(x))


def test_each_signal_may_have_its_own_batch_size() -> None:
    model = examples.seed_residual().eval()
    stream = pts.stream(model, torch.randn(1, 1, 64))
    with torch.no_grad():
        for batch in (3, 1, 2):
            x = torch.randn(batch, 1, 40)
            assert_matches(run_stream(stream, x, [1, 5, 0, 2]), model(x))
            assert stream.engine.startswith("frames of")


def _short_prefix_models() -> list[nn.Module]:
    """Models whose first outputs are determined by fewer samples than the model runs on: a
    reflect padding wider than the first values before it, a window longer than them (found by
    a random search over layer stacks)."""
    reflect = nn.Sequential(
        nn.ConvTranspose1d(2, 3, 4, stride=2, padding=1),
        nn.Conv1d(3, 4, 2, dilation=3),
        nn.Conv1d(4, 4, 5, padding=4, padding_mode="reflect"),
        nn.Conv1d(4, 3, 1, stride=2, padding=1),
    )
    window = nn.Sequential(
        nn.Conv1d(2, 4, 3),
        nn.ConvTranspose1d(4, 3, 3, padding=1),
        nn.ConvTranspose1d(3, 2, 2),
        nn.Conv1d(2, 1, 1, stride=2, padding=1, dilation=3),
    )
    return [reflect.eval(), window.eval()]


@pytest.mark.parametrize("index", [0, 1])
def test_the_start_entry_runs_the_model_on_a_length_it_accepts(index: int) -> None:
    model = _short_prefix_models()[index]
    stream = pts.stream(model, torch.randn(1, 2, 64))
    assert stream.engine.startswith("frames of"), stream.engine
    for length, sizes in ((24, [2, 16, 3, 33, 5, 1]), (112, [1, 33, 1, 16, 16, 1]), (30, [1])):
        x = torch.randn(1, 2, length)
        with torch.no_grad():
            assert_matches(run_stream(stream, x, split_lengths(length, sizes)[:-1]), model(x))


def test_the_build_check_compares_calls_with_the_model_on_the_signal_so_far(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a second guard behind speculates(): with it off, the frames of this network return, at
    # some calls, a value that differs if the signal ends there (a window over the gaps of
    # the transposed convolutions), though every whole signal streams exactly
    from torchstreamer.step import engine, frames

    monkeypatch.setattr(frames._FrameBuilder, "speculates", lambda self: False)
    torch.manual_seed(12)
    net = nn.Sequential(
        nn.Conv1d(1, 2, 1), nn.ConvTranspose1d(2, 2, 1, stride=2),
        nn.ConvTranspose1d(2, 2, 1, stride=2), nn.MaxPool1d(4, 1, padding=2, ceil_mode=True),
        nn.Conv1d(2, 2, 2, stride=2),
    ).eval()  # fmt: skip
    assert pts.Sequential1dStream(net, "model").engine == "layers"
    monkeypatch.setattr(engine, "_SO_FAR_CHECKS", 0)  # (the whole signals alone pass)
    assert pts.Sequential1dStream(net, "model").engine.startswith("frames of")


def test_the_build_check_ends_signals_of_other_lengths_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # frame code whose end is wrong only for lengths of one residue modulo the frame (as a
    # pool's last partial window was): streaming the example's length alone would pass it
    from torchstreamer.step import engine as engine_module

    model = nn.Sequential(nn.Conv1d(1, 2, 4, stride=4), nn.Tanh()).eval()
    example = torch.randn(1, 1, 64)
    source = pts.stream(model, example)
    assert source.engine.startswith("frames of 4")
    honest = engine_module.FrameEngine.run
    ended: list[int] = []  # the residues of the lengths the check ended

    def run(self, x, final, source):  # type: ignore[no-untyped-def]
        total = self._seen + x.shape[-1]
        y = honest(self, x, final, source)
        if final:
            ended.append(total % 4)
            if total % 4 == 3 and y is not None:
                y = y + 1
        return y

    monkeypatch.setattr(engine_module.FrameEngine, "run", run)
    built, reason = engine_module.frame_engine(source, example)
    assert 3 in ended
    assert built is None
    assert "did not reproduce" in reason


def test_a_transposed_convolution_after_a_lagging_window_needs_no_start_entry() -> None:
    """A centred window lags its input, so the frames give a transposed convolution values
    from before the signal, which reach its first outputs. Zeroed, they add nothing, as inputs
    that do not exist add nothing offline: the frames are exact from the first output on and
    the stream never runs the model offline at the start (DAC's decoder has this shape)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 3, 7, padding=3), nn.ELU(), nn.ConvTranspose1d(3, 2, 8, stride=4, padding=2),
        nn.Conv1d(2, 1, 7, padding=3),
    ).eval()  # fmt: skip
    stream = pts.stream(model, torch.randn(1, 2, 32))
    assert stream.engine.startswith("frames of"), stream.engine
    assert stream._engine._dirty == [0]
    for length, sizes in ((40, [1, 0, 3, 1, 7]), (23, [5, 1, 0, 16])):
        x = torch.randn(1, 2, length)
        with torch.no_grad():
            assert_matches(run_stream(stream, x, split_lengths(length, sizes)), model(x))


class _TwoRates(nn.Module):
    """Two outputs, one cropped at both ends."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)[..., 1:-1]


class _CroppedUpsampler(nn.Module):
    """A transposed convolution's output, cropped at both ends by fixed amounts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.up = nn.ConvTranspose1d(3, 2, 4, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))[..., 1:-2]


class _CropThenPad(nn.Module):
    """A crop at the end before a padded window: the window's last output reads the sample
    that the crop removes, or padding if the signal ends there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[..., :-1])


def _gaps_before_a_pool_leaf() -> nn.Module:
    """The gap after a transposed convolution's last input (its bias) is in the last window
    of a pool captured as a leaf (``ceil_mode``); if the signal ends there, the pool averages
    padding instead."""
    up = nn.ConvTranspose1d(2, 2, 1, stride=2)
    with torch.no_grad():
        up.bias.fill_(5.0)
    return nn.Sequential(nn.Conv1d(2, 2, 1), up, nn.AvgPool1d(3, 1, padding=1, ceil_mode=True))


_END_CROPS = {
    "crop_then_pad": _CropThenPad,
    "gaps_before_a_pool_leaf": _gaps_before_a_pool_leaf,
    "two_outputs": _TwoRates,
    "cropped_upsampler": _CroppedUpsampler,
    "gaps": lambda: nn.Sequential(nn.Conv1d(2, 2, 1), nn.ConvTranspose1d(2, 2, 1, stride=2)),
    # the second layer's last output exists either way, but a gap after the end reaches it
    "gaps_before_an_overlap": lambda: nn.Sequential(
        nn.ConvTranspose1d(2, 2, 1, stride=3), nn.ConvTranspose1d(2, 2, 3, stride=2)
    ),
    # the window's last output reads the gap after the last input, or the right padding if the
    # signal ends there: the frames compute it with the gap, before the plan says it is complete
    "gaps_before_a_padded_window": lambda: nn.Sequential(
        nn.ConvTranspose1d(2, 2, 1, stride=2), nn.Conv1d(2, 2, 2, padding=1)
    ),
}


@pytest.mark.parametrize("name", sorted(_END_CROPS))
@fewer(25)
@given(lengths=st.lists(st.integers(0, 5), min_size=1, max_size=25))
def test_values_that_exist_only_if_the_signal_goes_on_wait_on_the_engine(
    name: str, lengths: list[int]
) -> None:
    """A crop at the end (or a transposed convolution's gap) makes the frames compute values
    that the model returns only if more input comes: the engine runs such models, returns
    each of those values as soon as more input guarantees it, and never one that may not
    exist; exact for blocks of every size, 0 and 1 included."""
    torch.manual_seed(0)
    model = _END_CROPS[name]().eval()
    stream = pts.stream(model, torch.randn(1, 2, 32))
    assert stream.engine.startswith("frames of"), stream.engine
    x = torch.randn(1, 2, sum(lengths) + 6)
    lengths = [*lengths, 6]
    with torch.no_grad():
        expected = model(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        outputs: list[list[torch.Tensor]] = [[] for _ in expected]
        seen = 0
        for index, length in enumerate(lengths):
            final = index == len(lengths) - 1
            y = stream(x[..., seen : seen + length], final=final)
            seen += length
            for parts, value in zip(outputs, y if isinstance(y, tuple) else (y,)):
                if value is not None and value.shape[-1]:
                    parts.append(value)
            if final:
                break
            ending = model(x[..., :seen]) if seen >= 4 else None  # the signal ending here
            short = ending if isinstance(ending, tuple) else (ending,)
            for k, (parts, output) in enumerate(zip(outputs, stream._outputs)):
                returned = sum(p.shape[-1] for p in parts)
                if ending is not None:  # never a value that a signal ending here lacks
                    assert returned <= short[k].shape[-1]  # or has with another value
                    if parts:
                        assert_matches(torch.cat(parts, -1), short[k][..., :returned])
                assert returned >= stream.timing.count_at(output.name, seen)  # never late
        for parts, offline in zip(outputs, expected):
            assert_matches(torch.cat(parts, -1), offline)


def test_an_exported_program_that_guards_a_minimum_length_runs_on_the_engine() -> None:
    """``torch.export``'s module asserts the length range it was exported for (T >= 8 here):
    the end entry keeps enough samples to run it, so the frames stream it, exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 3, padding=2), nn.Tanh()).eval()
    example = torch.randn(1, 1, 64)
    program = torch.export.export(
        model, (example,), dynamic_shapes=({2: torch.export.Dim("T", min=8)},)
    )
    stream = pts.stream(program.module(), example)
    assert stream.engine.startswith("frames of"), stream.engine
    x = torch.randn(1, 1, 30)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, split_lengths(30, [1, 0, 5, 2])), model(x))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_built_in_example_runs_on_the_engine(name: str) -> None:
    """The benchmark's workloads (and the CLI's examples) stream on the frame engine, as a graph
    stream and, for the networks, as a Sequential1dStream: a change that sends one to the
    interpreter (exact, and slow) fails here instead of in the benchmark's figures."""
    example = load_example(name)
    x = example.input(2048 if name == "filterbank" else 64)  # (its windows span 320)
    assert pts.stream(example.model, x).engine.startswith("frames of")
    if isinstance(example.model, nn.Sequential):
        stream = pts.Sequential1dStream(example.model, padding="model")
        assert stream.engine.startswith("frames of"), stream.engine


def _tensors_with_history(stream: nn.Module) -> list[str]:
    """The state tensors of ``stream`` (its state, its buffers and every tensor attribute of
    its modules, parameters aside) that require grad or carry autograd history."""
    found = [(f"state {k}", v) for k, v in stream.get_state().items()]  # type: ignore[operator]
    found += [(f"buffer {k}", v) for k, v in stream.named_buffers()]
    for path, module in stream.named_modules():
        found += [
            (f"attribute {path}.{k}", v)
            for k, v in vars(module).items()
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)
        ]
    return [name for name, v in found if v.requires_grad or v.grad_fn is not None]


@pytest.mark.parametrize("face", ["module", "graph"])
@pytest.mark.parametrize("kind", ["strided", "residual", "padded"])
def test_blocks_that_require_grad_leave_no_autograd_history_in_the_state(
    face: str, kind: str
) -> None:
    """The samples the engine keeps (its history, the frames' pending samples, the frame
    outputs that wait) are written detached: blocks that require grad leave no graph in the
    state, and the outputs stay exact (and, as before, carry no grad on the engine)."""
    torch.manual_seed(0)
    if kind == "strided":
        model = nn.Sequential(
            nn.Conv1d(1, 4, 3, stride=2), nn.ReLU(), nn.Conv1d(4, 2, 3, stride=2, padding=1)
        )
    elif kind == "residual":
        model = nn.Sequential(
            nn.Conv1d(1, 4, 3, padding=1),
            pts.Residual1d(nn.Sequential(nn.Conv1d(4, 4, 3, padding=2, dilation=2), nn.Tanh())),
            nn.Conv1d(4, 1, 3, stride=2),
        )
    else:
        model = nn.Sequential(*PaddedAfterValid().children())
    model.eval()
    x = torch.randn(1, 1, 61)
    if face == "module":
        stream: nn.Module = pts.Sequential1dStream(model, padding="model")
    else:
        stream = pts.stream(model, x[..., :32])
    assert stream.engine.startswith("frames of"), stream.engine  # type: ignore[union-attr]
    signal = x.clone().requires_grad_(True)
    parts, start = [], 0
    for length in split_lengths(55, [1, 0, 5, 2, 7, 3]):
        y = stream(signal[..., start : start + length])
        start += length
        if y is not None:
            assert not y.requires_grad
            assert y.grad_fn is None
            parts.append(y)
        assert _tensors_with_history(stream) == []
    state = stream.get_state()  # type: ignore[operator]
    stream.set_state(  # type: ignore[operator]  # (a state restored from tensors that need grad)
        {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in state.items()}
    )
    assert _tensors_with_history(stream) == []
    y = stream(signal[..., start:], final=True)
    parts += [y] if y is not None else []
    assert _tensors_with_history(stream) == []
    with torch.no_grad():
        assert_matches(torch.cat(parts, -1), model(x))
