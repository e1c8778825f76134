"""streaming_transform: the i-th step returns the i-th offline output, for random causal models."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import ATOL, RTOL, built_at_once, fewer


def run_steps(step: pts.StepModel, x: torch.Tensor, axis: int, output_axis: int) -> torch.Tensor:
    return torch.stack([step(x.select(axis, t)) for t in range(x.shape[axis])], output_axis)


def offline(model: nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(x)


# -- the seed's example -------------------------------------------------------------------


class SeedCNN(nn.Module):
    """The Vollo example's CNN with torchstreamer.PaddedConv1d."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size=3):
        super().__init__()
        self.conv1 = pts.PaddedConv1d(in_channels, hidden_channels, kernel_size)
        self.conv2 = pts.PaddedConv1d(hidden_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return x


def test_the_seed_example_passes_with_a_tolerance_of_1e_5() -> None:
    in_channels, out_channels, hidden_channels = 32, 1, 128
    model = SeedCNN(in_channels, out_channels, hidden_channels)
    batch_size, sequence_length = 1, 5
    input = torch.randn(batch_size, in_channels, sequence_length)
    expected_output = offline(model, input)
    step, output_axis = pts.streaming_transform(model, input, 2)
    outputs = []
    for i in range(5):
        outputs.append(step(input[:, :, i]))
    torch.testing.assert_close(
        expected_output, torch.stack(outputs, axis=output_axis), atol=1e-5, rtol=1e-5
    )
    assert output_axis == 2


# -- random causal models -----------------------------------------------------------------


class Block(nn.Module):
    """One random causal block on ``channels`` channels (see ``blocks``)."""

    def __init__(self, kind: str, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.kind = kind
        c = channels
        if kind == "conv":
            self.conv = pts.PaddedConv1d(c, c, kernel, dilation)
        elif kind == "grouped":
            self.conv = pts.PaddedConv1d(c, c, kernel, dilation, groups=c)
        elif kind == "residual":
            self.conv = pts.PaddedConv1d(c, c, kernel, dilation)
        elif kind == "gate":
            self.conv = pts.PaddedConv1d(c, 2 * c, kernel, dilation)
        elif kind == "cat":
            self.conv = pts.PaddedConv1d(c, c, kernel, dilation)
            self.mix = nn.Conv1d(2 * c, c, 1)
        elif kind in ("lstm", "gru"):
            layer = nn.LSTM if kind == "lstm" else nn.GRU
            self.rnn = layer(c, c, num_layers=1 + dilation % 2, batch_first=True)
        elif kind == "norm":
            # eps 1e-3: over 1-5 channels that nearly agree, the default 1e-5 amplifies float32
            # rounding past the 1e-5 tolerance (a flaky failure: 1 value in 500 at 2e-5)
            self.norm = nn.LayerNorm(c, eps=1e-3)
            self.proj = nn.Linear(c, c)
        elif kind == "avg":
            self.kernel = kernel
        elif kind == "max":
            self.kernel, self.dilation = kernel, dilation
            self.pool = nn.MaxPool1d(kernel, 1, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.kind
        if kind in ("conv", "grouped"):
            return torch.tanh(self.conv(x))
        if kind == "residual":
            return x + F.gelu(self.conv(x))
        if kind == "gate":
            a, b = self.conv(x).chunk(2, dim=1)
            return torch.tanh(a) * torch.sigmoid(b)
        if kind == "cat":
            return self.mix(torch.cat([x, F.relu(self.conv(x))], dim=1))
        if kind in ("lstm", "gru"):
            return self.rnn(x.transpose(1, 2))[0].transpose(1, 2)
        if kind == "norm":
            return x + self.proj(self.norm(x.transpose(1, 2))).transpose(1, 2)
        if kind == "avg":
            return F.avg_pool1d(F.pad(x, (self.kernel - 1, 0)), self.kernel, 1)
        return self.pool(F.pad(x, (self.dilation * (self.kernel - 1), 0)))


KINDS = ["conv", "grouped", "residual", "gate", "cat", "lstm", "gru", "norm", "avg", "max"]


@st.composite
def causal_models(draw: st.DrawFn) -> nn.Module:
    channels = draw(st.integers(1, 5))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=4))
    blocks = [
        Block(kind, channels, draw(st.integers(1, 4)), draw(st.integers(1, 3))) for kind in kinds
    ]
    return nn.Sequential(pts.PaddedConv1d(2, channels, 2), *blocks).eval()


@fewer(15)
@given(model=causal_models(), batch=st.integers(1, 3), length=st.integers(100, 300))
def test_random_causal_models_step_exactly(model: nn.Module, batch: int, length: int) -> None:
    x = torch.randn(batch, 2, length)
    step, axis = pts.streaming_transform(model, x[..., :32], 2)
    assert axis == 2
    torch.testing.assert_close(run_steps(step, x, 2, axis), offline(model, x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_every_block_kind_steps_exactly(kind: str) -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 3, 2), Block(kind, 3, 3, 2)).eval()
    x = torch.randn(2, 2, 120)
    step, axis = pts.streaming_transform(model, x[..., :20], -1)
    torch.testing.assert_close(run_steps(step, x, 2, axis), offline(model, x), rtol=RTOL, atol=ATOL)


class Assorted(nn.Module):
    """Left padding deeper than the window, constants that broadcast over time, a running sum,
    a time-major LSTM and two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, bias=False)
        self.scale = nn.Parameter(torch.randn(4, 1))
        self.lstm = nn.LSTM(4, 2)
        self.back = nn.ConvTranspose1d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(F.pad(x, (5, 0), value=0.5))[..., 3:] * self.scale + 1.0
        r = self.lstm(h.permute(2, 0, 1))[0].permute(1, 2, 0)
        t = self.back(F.pad(h, (0, 0)))[..., :-2]
        return torch.cumsum(h, -1).softmax(1), r + t


def test_padding_constants_cumsum_time_major_lstm_and_two_outputs() -> None:
    model = Assorted().eval()
    x = torch.randn(2, 3, 150)
    step, axes = pts.streaming_transform(model, x[..., :40], 2)
    assert axes == (2, 2)
    outputs = [step(x[..., t]) for t in range(150)]
    expected = offline(model, x)
    for i in range(2):
        streamed = torch.stack([o[i] for o in outputs], 2)
        torch.testing.assert_close(streamed, expected[i], rtol=RTOL, atol=ATOL)


def test_unbatched_input_and_time_first_axis() -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 3, 3, dilation=2), nn.ReLU()).eval()
    x = torch.randn(2, 50)  # [C, T]
    step, axis = pts.streaming_transform(model, x, 1)
    assert step(x[:, 0]).shape == (3,)
    step.reset()
    torch.testing.assert_close(run_steps(step, x, 1, axis), offline(model, x), rtol=RTOL, atol=ATOL)

    class TimeFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    rnn = TimeFirst().eval()
    x = torch.randn(60, 2, 3)  # [T, B, F]
    step, axis = pts.streaming_transform(rnn, x, 0)
    assert axis == 0
    torch.testing.assert_close(run_steps(step, x, 0, axis), offline(rnn, x), rtol=RTOL, atol=ATOL)


# -- state ----------------------------------------------------------------------------------


def test_reset_starts_a_new_signal() -> None:
    model = SeedCNN(4, 2, 8).eval()
    x = torch.randn(3, 4, 40)
    step, axis = pts.streaming_transform(model, x, 2)
    first = run_steps(step, x, 2, axis)
    step.reset()
    assert torch.equal(run_steps(step, x, 2, axis), first)


@fewer(10)
@given(model=causal_models(), cut=st.integers(1, 99))
def test_a_snapshot_continues_bit_identically_elsewhere(model: nn.Module, cut: int) -> None:
    x = torch.randn(2, 2, 100)
    step, _ = pts.streaming_transform(model, x, 2)
    elsewhere, _ = pts.streaming_transform(copy.deepcopy(model), x, 2)
    for t in range(cut):
        step(x[..., t])
    saved = step.snapshot()
    rest = [step(x[..., t]) for t in range(cut, 100)]
    elsewhere.restore(saved)
    again = [elsewhere(x[..., t]) for t in range(cut, 100)]
    assert all(torch.equal(a, b) for a, b in zip(rest, again))
    step.restore(saved)  # and back in time on the same step model
    assert torch.equal(step(x[..., cut]), rest[0])


def test_state_is_fixed_buffers_written_in_place() -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 3, 4)).eval()
    step, _ = pts.streaming_transform(model, torch.randn(1, 2, 16), 2)
    buffers = {n: (b.data_ptr(), b.shape) for n, b in step.step_function.named_buffers()}
    for _ in range(1000):
        step(torch.randn(1, 2))
    assert buffers == {n: (b.data_ptr(), b.shape) for n, b in step.step_function.named_buffers()}
    assert step.state_names == ("state_00_0_window",)


def test_restore_refuses_a_snapshot_of_another_model() -> None:
    step, _ = pts.streaming_transform(SeedCNN(2, 1, 4), torch.randn(1, 2, 8), 2)
    other, _ = pts.streaming_transform(SeedCNN(2, 1, 5), torch.randn(1, 2, 8), 2)
    with pytest.raises(pts.StreamError, match="must be"):
        step.restore(other.snapshot())
    with pytest.raises(pts.StreamError, match="missing"):
        step.restore({})


def test_bad_input_is_refused_and_leaves_the_state_alone() -> None:
    model = SeedCNN(2, 1, 4).eval()
    x = torch.randn(1, 2, 30)
    step, axis = pts.streaming_transform(model, x, 2)
    for t in range(10):
        step(x[..., t])
    with pytest.raises(pts.StreamInputError, match=r"shaped \[1, 2\]"):
        step(torch.randn(1, 3))
    with pytest.raises(pts.StreamInputError, match="float64"):
        step(x[..., 10].double())
    rest = torch.stack([step(x[..., t]) for t in range(10, 30)], axis)
    torch.testing.assert_close(rest, offline(model, x)[..., 10:], rtol=RTOL, atol=ATOL)


def test_gradients_do_not_leak_into_the_state() -> None:
    step, _ = pts.streaming_transform(SeedCNN(2, 1, 4), torch.randn(1, 2, 8), 2)
    y = step(torch.randn(1, 2, requires_grad=True))
    assert not y.requires_grad
    assert all(not b.requires_grad for b in step.step_function.buffers())


def test_double_precision_after_to() -> None:
    model = SeedCNN(2, 1, 4).eval()
    x = torch.randn(1, 2, 30, dtype=torch.float64)
    step, axis = pts.streaming_transform(model, x.float(), 2)
    step.to(torch.float64)
    torch.testing.assert_close(
        run_steps(step, x, 2, axis), offline(model.double(), x), rtol=1e-10, atol=1e-10
    )


# -- refusals -------------------------------------------------------------------------------


def test_a_lookahead_model_is_refused_pointing_to_stream() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU())
    with pytest.raises(
        pts.NotStreamableError, match=r"lookahead of 1 sample:.*torchstreamer.stream"
    ):
        pts.streaming_transform(model, torch.randn(1, 2, 32), 2)


def test_a_strided_model_is_refused_pointing_to_stream() -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 3, 3), nn.Conv1d(3, 3, 2, stride=2))
    with pytest.raises(
        pts.NotStreamableError, match=r"layer '1'.*sampling rate.*torchstreamer.stream"
    ):
        pts.streaming_transform(model, torch.randn(1, 2, 32), 2)


def test_a_valid_convolution_is_refused_pointing_to_padded_conv() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 3))
    with pytest.raises(pts.NotStreamableError, match=r"lookahead of 2 samples.*PaddedConv1d"):
        pts.streaming_transform(model, torch.randn(1, 2, 32), 2)


def test_replicate_padding_is_refused() -> None:
    class Replicate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool1d(F.pad(x, (2, 0), mode="replicate"), 3, 1)

    with pytest.raises(pts.NotStreamableError, match="replicate or reflect"):
        pts.streaming_transform(Replicate(), torch.randn(1, 2, 32), 2)


def test_misaligned_branches_are_refused() -> None:
    class Shifted(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.pad(x, (1, 0))[..., :-1] + x

    with pytest.raises(pts.NotStreamableError, match="shifted in time"):
        pts.streaming_transform(Shifted(), torch.randn(1, 2, 32), 2)


@pytest.mark.parametrize(
    "rnn",
    [
        nn.LSTM(3, 5, num_layers=2, proj_size=2, batch_first=True),
        nn.RNN(3, 4, num_layers=2, nonlinearity="relu", batch_first=True),
        nn.GRU(3, 4, num_layers=3, bias=False, batch_first=True),
    ],
    ids=["lstm-projection", "rnn-relu", "gru-no-bias"],
)
@pytest.mark.parametrize("batched", [True, False])
def test_recurrent_layer_variants(rnn: nn.RNNBase, batched: bool) -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    model = Recurrent().eval()
    x = torch.randn(2, 80, 3) if batched else torch.randn(80, 3)
    axis = 1 if batched else 0
    step, output_axis = pts.streaming_transform(model, x, axis)
    expected = offline(model, x)
    streamed = run_steps(step, x, axis, output_axis)
    torch.testing.assert_close(streamed, expected, rtol=RTOL, atol=ATOL)


def test_time_in_the_middle_with_per_step_linear_and_a_stateless_model() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4)).eval()
    x = torch.randn(2, 40, 3)  # [B, T, C]
    step, axis = pts.streaming_transform(model, x, 1)
    assert axis == 1
    assert step.state_names == ()
    torch.testing.assert_close(run_steps(step, x, 1, axis), offline(model, x), rtol=RTOL, atol=ATOL)


def test_centred_padding_is_lookahead() -> None:
    class Centred(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool1d(F.pad(x, (1, 1)), 3, 1)

    with pytest.raises(pts.NotStreamableError, match=r"up to t \+ 1 \(a lookahead of 1 sample"):
        pts.streaming_transform(Centred(), torch.randn(1, 2, 32), 2)


def test_copies_and_saved_step_models_run_on_their_own_state(tmp_path: Path) -> None:
    model = SeedCNN(2, 1, 4).eval()
    x = torch.randn(1, 2, 30)
    step, axis = pts.streaming_transform(model, x, 2)
    for t in range(10):
        step(x[..., t])
    fork = copy.deepcopy(step)
    torch.save(step, tmp_path / "step.pt")
    loaded = torch.load(tmp_path / "step.pt", weights_only=False)
    rest = [step(x[..., t]) for t in range(10, 30)]  # the original goes on first
    assert all(torch.equal(a, fork(x[..., t])) for a, t in zip(rest, range(10, 30)))
    assert all(torch.equal(a, loaded(x[..., t])) for a, t in zip(rest, range(10, 30)))
    torch.testing.assert_close(
        torch.stack(rest, axis), offline(model, x)[..., 10:], rtol=RTOL, atol=ATOL
    )


def test_a_model_in_training_mode_is_transformed_in_eval_mode_and_left_untouched() -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    model[1].running_mean.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 2, 40)
    step, axis = pts.streaming_transform(model, x, 2)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(
        run_steps(step, x, 2, axis), offline(model.eval(), x), rtol=RTOL, atol=ATOL
    )


def test_constants_broadcast_over_time_in_binary_ops() -> None:
    class Binary(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = pts.PaddedConv1d(2, 3, 2)
            self.exponent = nn.Parameter(torch.rand(3, 1) + 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x).abs() + 0.1
            return (
                torch.pow(h, self.exponent)
                + torch.atan2(h, self.exponent)
                + torch.hypot(h, self.exponent)
                + torch.fmod(h, self.exponent)
            )

    model = Binary().eval()
    x = torch.randn(3, 2, 30)
    step, axis = pts.streaming_transform(model, x, 2)
    torch.testing.assert_close(run_steps(step, x, 2, axis), offline(model, x), rtol=RTOL, atol=ATOL)


class ConvGru(nn.Module):
    """A causal convolution before a GRU (batch first)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = pts.PaddedConv1d(2, 4, 3)
        self.rnn = nn.GRU(4, 3, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(torch.relu(self.conv(x)).transpose(1, 2))
        return y.transpose(1, 2)


@pytest.mark.parametrize("shared", [True, False])
def test_step_streams_built_from_several_threads_at_once_are_exact(shared: bool) -> None:
    """Transforms run one at a time (the capture and the checks that run the model): three
    threads that transform a model at once, the same one or one each, get step streams that
    stream it exactly."""
    example, x = torch.randn(1, 2, 32), torch.randn(1, 2, 40)
    kept = [ConvGru().eval() for _ in range(1 if shared else 3)]

    def build(index: int) -> pts.StepStream:
        step, _ = pts.streaming_transform(kept[index % len(kept)], example, 2)
        return pts.StepStream(step)

    for i, stream in enumerate(built_at_once(build, 3)):
        assert isinstance(stream, pts.StepStream), repr(stream)
        parts = [stream(x[..., t : t + 5]) for t in range(0, 40, 5)]
        torch.testing.assert_close(
            torch.cat(parts, -1), offline(kept[i % len(kept)], x), rtol=RTOL, atol=ATOL
        )
