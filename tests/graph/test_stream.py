"""Graph streams equal model(x) for real model shapes, and refuse what they cannot stream."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, split_lengths
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
}


@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[nn.Module, pts.GraphStream]]:
    built = {}
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
    (Wrap(nn.GroupNorm(1, 2)), r"layer 'inner' \(GroupNorm\).*not one that graph streams support"),
    (
        Wrap(nn.Conv1d(2, 2, 3, padding=1, padding_mode="circular")),
        r"layer 'inner' \(Conv1d\).*circular",
    ),
    (Wrap(nn.AdaptiveAvgPool1d(1)), r"layer 'inner' \(AdaptiveAvgPool1d\)"),
    # a Linear over time fixes the length: the capture itself fails (it does not name the layer)
    (Wrap(nn.Linear(32, 32)), r"could not capture Wrap with a dynamic length"),
]


@pytest.mark.parametrize(
    ("model", "message"), REFUSALS, ids=[type(m.inner).__name__ for m, _ in REFUSALS]
)
def test_refusal_names_the_layer_and_op(model: nn.Module, message: str) -> None:
    with pytest.raises(pts.NotStreamableError, match=message):
        pts.stream(model.eval(), torch.randn(1, 2, 32))


def test_flip_is_refused() -> None:
    class Flip(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flip(-1)

    with pytest.raises(pts.NotStreamableError, match=r"aten\.flip"):
        pts.stream(Flip(), torch.randn(1, 2, 32))


def test_reshape_over_time_is_refused_with_its_source_line() -> None:
    class Flatten(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], -1)[:, :8].unsqueeze(1)

    with pytest.raises(pts.NotStreamableError, match=r"aten\.reshape\.default, at test_stream\.py"):
        pts.stream(Flatten(), torch.randn(1, 2, 32))


def test_wrong_block_shape_is_refused() -> None:
    stream = pts.stream(models.GatedWaveNet().eval(), torch.randn(1, 1, 64))
    with pytest.raises(pts.StreamInputError, match=r"built for blocks shaped \[1, 1, T\]"):
        stream(torch.randn(1, 2, 5))


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
