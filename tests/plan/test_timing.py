"""The plan's time figures: exact rates, latencies and receptive fields, read off the layers'
time rules, and the plan's count of returned samples equal to what the stream returns."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import fewer
from tests.graph import models
from tests.graph.test_stream import ZOO, Chain


def test_a_stride_of_512_has_a_rate_of_1_over_512() -> None:
    # issue 11: probes reported 175957/90090000
    model = Chain(nn.Conv1d(1, 1, 1024, stride=512), nn.Conv1d(1, 1, 3, stride=2)).eval()
    stream = pts.stream(model, torch.randn(1, 1, 4096))
    assert stream.rate == Fraction(1, 1024)
    # output j reads x[1024 j .. 1024 j + 2047]; it sits at x[1024 j]
    assert stream.latency == 2047
    assert stream.receptive_field == 2048


@pytest.mark.parametrize(
    ("layers", "rate", "latency", "field"),
    [
        # dilation 3, kernel 4, stride 2, 'valid': output j reads x[2j .. 2j + 9]
        ([nn.Conv1d(1, 1, 4, stride=2, dilation=3)], Fraction(1, 2), 9, 10),
        # depth: h[i] reads x[2i .. 2i + 1], y[j] reads h[2j .. 2j + 2], so x[4j .. 4j + 5]
        ([nn.Conv1d(1, 1, 2, stride=2), nn.Conv1d(1, 1, 3, stride=2)], Fraction(1, 4), 5, 6),
        # a transposed conv after a strided one: back to rate 1
        (
            [nn.Conv1d(1, 1, 4, stride=4), nn.ConvTranspose1d(1, 1, 4, stride=4)],
            Fraction(1),
            3,
            4,
        ),
        # reflect padding reads ahead at the start: output 0 copies x[3]
        ([nn.ReflectionPad1d((3, 0))], Fraction(1), 3, 1),
        # causal dilated stack: 1 + 2 + 4 + 8 taps of kernel 2
        (
            [nn.ConstantPad1d((15, 0), 0.0)]
            + [nn.Conv1d(1, 1, 2, dilation=d) for d in (1, 2, 4, 8)],
            Fraction(1),
            0,
            16,
        ),
    ],
    ids=["dilated-strided", "two-strides", "down-up", "reflect-start", "causal-dilated"],
)
def test_figures_worked_out_by_hand(layers, rate: Fraction, latency: int, field: int) -> None:
    stream = pts.stream(Chain(*layers).eval(), torch.randn(1, 1, 256))
    assert (stream.rate, stream.latency, stream.receptive_field) == (rate, latency, field)


def test_recurrent_layers_make_the_receptive_field_unbounded() -> None:
    stream = pts.stream(models.ConvRecurrent().eval(), torch.randn(1, 2, 64))
    assert stream.receptive_field is None
    assert stream.rate == Fraction(1, 2)


def test_every_layer_row_has_a_receptive_field_up_to_the_total() -> None:
    # issue 12, item 20: the last row (a relu) showed 0 while the total said 5
    model = Chain(nn.Conv1d(1, 2, 3), nn.Conv1d(2, 1, 3), nn.ReLU()).eval()
    stream = pts.stream(model, torch.randn(1, 1, 64))
    rows = stream.layers()
    assert [r["receptive_field"] for r in rows] == [3, 5, 5]
    assert rows[-1]["receptive_field"] == stream.receptive_field == 5


def test_figures_come_without_streaming() -> None:
    # issue 11: probes took minutes on deep strided models; the plan takes milliseconds
    layers = [nn.Conv1d(1, 4, 7, padding=3)]
    for _ in range(6):
        layers += [nn.Conv1d(4, 4, 4, stride=2, padding=1), nn.ELU()]
    stream = pts.stream(Chain(*layers).eval(), torch.randn(1, 1, 2048))
    start = time.perf_counter()
    assert stream.rate == Fraction(1, 64)
    stream.latency, stream.receptive_field, stream.layers()
    assert time.perf_counter() - start < 5  # generous: a shared CI machine


def returned_counts(stream: pts.GraphStream, x: torch.Tensor, lengths: list[int]) -> list[int]:
    """The samples of the first output that the stream has returned after each block."""
    counts, total = [], 0
    start = 0
    with torch.no_grad():
        for length in lengths:
            y = stream(x[..., start : start + length])
            start += length
            if y is not None:
                total += (y[0] if isinstance(y, tuple) else y).shape[-1]
            counts.append(total)
    stream.reset()
    return counts


@pytest.mark.parametrize("name", sorted(ZOO))
@fewer(10)
@given(data=st.data())
def test_the_plan_counts_what_the_stream_returns(name: str, data: st.DataObject) -> None:
    """When the plan says an output leaves is when the stream returns it, block after block."""
    make, shape = ZOO[name]
    stream = pts.stream(make().eval(), torch.randn(shape))
    stream._engine_on = False  # the interpreter: the frame engine has its own tests
    stream._gated = False  # every call runs every layer: the plan must not lean on itself
    lengths = data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=40))
    x = torch.randn([*shape[:-1], sum(lengths)])
    counts = stream.timing.counts[stream._outputs[0].name]
    ends = torch.tensor(lengths).cumsum(0).tolist()
    expected = [int(counts[end - 1]) if end else 0 for end in ends]
    assert returned_counts(stream, x, lengths) == expected


@pytest.mark.parametrize("name", sorted(ZOO))
@fewer(10)
@given(data=st.data())
def test_the_schedule_holds_back_no_output(name: str, data: st.DataObject) -> None:
    """A call that the schedule lets run no layer is one that would have returned nothing."""
    make, shape = ZOO[name]
    model = make().eval()
    gated = pts.stream(model, torch.randn(shape))
    every = pts.stream(model, torch.randn(shape))
    every._gated = False
    gated._engine_on = every._engine_on = False  # the schedule gates the interpreter
    lengths = data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=40))
    x = torch.randn([*shape[:-1], sum(lengths)])
    assert returned_counts(gated, x, lengths) == returned_counts(every, x, lengths)
