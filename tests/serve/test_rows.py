"""Rows of a batched step model and its stream that restart on their own (`start=` flags):
each row's outputs since its last start equal the offline output of its samples since then."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, fewer
from tests.step.test_frames import Recurrent, offline, rate_models


@given(rate_models(), st.integers(2, 4), st.data())
@fewer(25)
def test_rows_that_restart_at_random_calls_each_stream_their_own_signal(
    spec: tuple[nn.Module, int], rows: int, data: Any
) -> None:
    model, channels = spec
    example = torch.randn(rows, channels, 48)
    try:
        assume(offline(model, example).shape[-1] >= 2)
        step, _ = pts.streaming_transform(model, example, -1, frame="auto")
        stream = pts.StepStream(step)
    except (RuntimeError, pts.StreamError):
        assume(False)
    frame = step.frame or 1
    starts = [0] * rows  # where each row's current signal starts in the fed samples
    fed: list[torch.Tensor] = []
    outputs: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    for _ in range(data.draw(st.integers(1, 10))):
        flags = data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
        x = torch.randn(rows, channels, frame * data.draw(st.integers(0, 4)))
        total = sum(b.shape[-1] for b in fed)
        for row, flag in enumerate(flags):
            if flag:
                check_row(model, fed, outputs[row], row, starts[row])
                starts[row], outputs[row] = total, []
        y = stream(x, start=torch.tensor(flags))
        fed.append(x)
        if y is not None:
            for row in range(rows):
                outputs[row].append(y[row : row + 1])
    for row in range(rows):
        check_row(model, fed, outputs[row], row, starts[row])


def check_row(
    model: nn.Module, fed: list[torch.Tensor], outputs: list[torch.Tensor], row: int, start: int
) -> None:
    signal = torch.cat(fed, -1)[row : row + 1, :, start:] if fed else None
    if signal is None or signal.shape[-1] == 0:
        assert not outputs or sum(o.shape[-1] for o in outputs) == 0
        return
    try:
        expected = offline(model, signal)
    except RuntimeError:  # shorter than the model's window: no output yet
        assert sum(o.shape[-1] for o in outputs) == 0
        return
    assert_matches(torch.cat(outputs, -1) if outputs else None, expected)


def test_an_lstm_row_restarts_while_the_other_goes_on() -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 3, 3), Recurrent(3, nn.LSTM, 2)).eval()
    step, axis = pts.streaming_transform(model, torch.randn(2, 2, 8), -1)
    assert step.row_layout().axes.count(1) == 2  # the LSTM's h and c hold rows on axis 1
    x = torch.randn(2, 2, 10)
    first = torch.stack([step(x[..., t]) for t in range(4)], axis)
    second = [step(x[..., 4], start=torch.tensor([True, False]))]
    second += [step(x[..., t]) for t in range(5, 10)]
    y = torch.stack(second, axis)
    assert_matches(y[:1], offline(model, x[:1, :, 4:]))
    assert_matches(torch.cat([first[1:], y[1:]], -1), offline(model, x[1:]))


def test_a_frame_stream_restarts_rows_only_between_whole_frames() -> None:
    model = nn.Sequential(nn.Conv1d(1, 2, 4, stride=4), nn.Tanh()).eval()
    step, _ = pts.streaming_transform(model, torch.randn(3, 1, 16), -1, frame="auto")
    stream = pts.StepStream(step)
    x = torch.randn(3, 1, 12)
    first = stream(x[..., :6])
    with pytest.raises(pts.StreamError, match="between whole frames of 4"):
        stream(x[..., 6:8], start=torch.tensor([True, False, False]))
    with pytest.raises(pts.StreamInputError, match=r"one flag per row.*\[3\]"):
        stream(x[..., 6:8], start=torch.tensor([True, False]))
    rest = stream(x[..., 6:])  # the refusals changed nothing
    assert_matches(torch.cat([first, rest], -1), offline(model, x))


@pytest.mark.parametrize(
    "bad",
    [
        torch.randn(2, 3, 4),  # channels
        torch.randn(3, 2, 4),  # batch
        torch.randn(2, 2, 4, dtype=torch.float64),
        torch.randn(2, 4),  # rank
    ],
    ids=["channels", "batch", "dtype", "rank"],
)
def test_a_block_that_does_not_fit_restarts_no_row(bad: torch.Tensor) -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 3, 5), Recurrent(3, nn.GRU, 1)).eval()
    step, _ = pts.streaming_transform(model, torch.randn(2, 2, 8), -1)
    stream = pts.StepStream(step)
    x = torch.randn(2, 2, 12)
    first = stream(x[..., :6])
    with pytest.raises(pts.StreamInputError, match=r"blocks shaped|computes in"):
        stream(bad, start=torch.tensor([True, False]))
    rest = stream(x[..., 6:])  # neither row restarted
    assert_matches(torch.cat([first, rest], -1), offline(model, x))
