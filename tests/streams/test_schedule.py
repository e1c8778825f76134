"""Sequential1dStream's schedule and promises: one stream per layer returns each output with
the call the plan says (a call that runs no layer is one that would have returned nothing), as
the frame engine does, for random networks, both padding modes and random blocks (0 and 1
included)."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, fewer


@st.composite
def networks(draw: st.DrawFn) -> nn.Sequential:
    """Convolutions, pools, padding, transposed convolutions and residual blocks."""
    layers: list[nn.Module] = [nn.Conv1d(1, 2, 1)]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "pool", "pad", "transposed", "residual", "act"]))
        kernel, stride = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        if kind == "conv":
            dilation = draw(st.integers(1, 2))
            padding = draw(st.integers(0, (kernel - 1) * dilation))
            mode = draw(st.sampled_from(["zeros", "reflect", "replicate"]))
            layers.append(nn.Conv1d(2, 2, kernel, stride, padding, dilation, padding_mode=mode))
        elif kind == "pool":
            padding = draw(st.integers(0, kernel // 2))
            pool = draw(st.sampled_from([nn.AvgPool1d, nn.MaxPool1d]))
            layers.append(pool(kernel, stride, padding, ceil_mode=draw(st.booleans())))
        elif kind == "pad":
            layers.append(nn.ReflectionPad1d((draw(st.integers(0, 2)), draw(st.integers(0, 2)))))
        elif kind == "transposed":
            padding = draw(st.integers(0, kernel - 1))
            layers.append(nn.ConvTranspose1d(2, 2, kernel, stride, padding))
        elif kind == "residual":
            layers.append(pts.Residual1d(nn.Conv1d(2, 2, kernel)))
        else:
            layers.append(nn.GELU())
    return nn.Sequential(*layers).eval()


def per_call(stream: pts.Sequential1dStream, x: torch.Tensor, lengths: list[int]):
    counts, outputs, start = [], [], 0
    with torch.no_grad():
        for index, length in enumerate(lengths):
            y = stream(x[..., start : start + length], final=index == len(lengths) - 1)
            start += length
            counts.append(0 if y is None else y.shape[-1])
            if y is not None:
                outputs.append(y)
    return counts, (torch.cat(outputs, -1) if outputs else None)


def plan_counts(stream: pts.Sequential1dStream, lengths: list[int]) -> list[int]:
    """What the plan says each call returns (the last call ends the signal: not compared)."""
    from torchstreamer.plan.rules import stream_rule
    from torchstreamer.plan.timing import chain_timing

    timing = chain_timing([stream_rule(s) for s in stream.streams])
    last, seen, before, counts = timing.nodes[-1], 0, 0, []
    for length in lengths[:-1]:
        seen += length
        now = timing.count_at(last, seen)
        counts.append(now - before)
        before = now
    return counts


@fewer(60)
@given(
    net=networks(),
    padding=st.sampled_from(["valid", "model"]),
    lengths=st.lists(st.integers(0, 7), min_size=2, max_size=30),
)
def test_the_layers_return_every_output_with_the_call_that_guarantees_it(
    net: nn.Sequential, padding: str, lengths: list[int]
) -> None:
    """One stream per layer returns each output with the same call as the plan says, with and
    without the schedule (a call that runs no layer is one that would have returned nothing),
    and as the frame engine does: a transposed convolution's gaps and the outputs its padding crops
    come as soon as an earlier layer guarantees more input (promise), not a call later."""
    x = torch.randn(1, 1, sum(lengths) + 24)
    lengths = [*lengths, 24]
    try:
        with torch.no_grad():
            expected = net(x) if padding == "model" else None
        layers = pts.Sequential1dStream(net, padding, engine=False)
        engine = pts.Sequential1dStream(net, padding)
    except (RuntimeError, pts.NotStreamableError):
        return
    every = pts.Sequential1dStream(net, padding, engine=False)
    every._gate_period = 0  # every call runs every layer: what the layers return by themselves
    try:
        counts, y = per_call(layers, x, lengths)
    except pts.StreamInputError:
        return
    assert counts[:-1] == plan_counts(layers, lengths)
    assert counts == per_call(every, x, lengths)[0]
    if engine.engine != "layers":
        on_engine = per_call(engine, x, lengths)[0]
        if padding == "valid" or not any(_reflects(m) for m in net.modules()):
            assert counts == on_engine
        else:  # a reflection needs more samples than it pads, so a valid signal is longer than
            # some layers' lengths say: the engine, which knows the model's length, may return
            # what that guarantees sooner (a gap before a reflection), never later
            assert all(
                a <= b
                for a, b in zip(itertools.accumulate(counts), itertools.accumulate(on_engine))
            )
    if expected is not None:
        assert_matches(y, expected)


def _reflects(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.ReflectionPad1d) or getattr(module, "padding_mode", "") == "reflect"
    )


def test_scripted_layers_return_gaps_and_cropped_outputs_as_soon_as_they_are_guaranteed() -> None:
    """A convolution with right padding guarantees a transposed convolution more input: its
    gaps and the outputs its padding would crop at the end come with the sample that completes
    them, eager, scripted and on the engine alike (hand-checked counts)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(1, 2, 3, padding=2), nn.ConvTranspose1d(2, 2, 2, stride=2, padding=1),
        nn.ReLU(), nn.ConvTranspose1d(2, 1, 1, stride=4),
    ).eval()  # fmt: skip
    x = torch.randn(1, 1, 12)
    lengths = [1] * 12
    # n samples: the conv has 1 + (n - 1) values and guarantees n + 2; the first transposed
    # conv has completed 2n - 1 outputs of 2(n + 1) guaranteed, of which the crop takes the
    # first; the second turns each into a value and 3 gaps: 4 outputs after the first sample
    # (none without the promise, and every gap then waits for the next value), 8 more per
    # sample, and at the end 101 in all (the layers' lengths: 14, 26, 101)
    expected_counts = [4] + [8] * 10 + [17]
    for stream in (
        pts.Sequential1dStream(net, "model", engine=False),
        torch.jit.script(pts.Sequential1dStream(net, "model", engine=False)),
        pts.Sequential1dStream(net, "model"),
    ):
        counts, y = per_call(stream, x, lengths)  # type: ignore[arg-type]
        assert counts == expected_counts
        assert_matches(y, net(x))
