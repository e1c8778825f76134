"""`set_state` refuses states a stream cannot be in, before writing anything (issue 12).

A state that `get_state()` returned must always be accepted, by the stream itself and by a
fresh twin; a state with a wrong buffer length, batch size or counter must be refused with a
`StreamError` that names the layer, leaving the stream's state as it was.
"""

from __future__ import annotations

import pickle
import random
from typing import Callable

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches

Factory = Callable[[], nn.Module]

# streams of every stateful kind, with the geometries whose counters differ most
STREAMS: dict[str, tuple[Factory, int]] = {
    "conv-reflect-stride": (
        lambda: nn.Conv1d(2, 3, 5, stride=2, padding=3, padding_mode="reflect"),
        2,
    ),
    "conv-replicate-dilated": (
        lambda: nn.Conv1d(2, 2, 3, dilation=3, padding=2, padding_mode="replicate"),
        2,
    ),
    "conv-stride-above-span": (lambda: nn.Conv1d(2, 2, 2, stride=5), 2),
    "padded-conv": (lambda: pts.PaddedConv1d(2, 3, 4, dilation=2), 2),
    "conv-transpose-crop": (
        lambda: nn.ConvTranspose1d(2, 3, 5, stride=3, padding=2, output_padding=1),
        2,
    ),
    "conv-transpose-gaps": (lambda: nn.ConvTranspose1d(2, 2, 2, stride=4), 2),
    "max-pool-ceil": (lambda: nn.MaxPool1d(3, 2, 1, ceil_mode=True), 2),
    "avg-pool-pad": (lambda: nn.AvgPool1d(4, 3, 2, count_include_pad=False), 2),
    "reflection-pad": (lambda: nn.ReflectionPad1d((3, 2)), 2),
    "residual": (lambda: pts.Residual1d(nn.Conv1d(2, 2, 5), nn.Conv1d(2, 2, 3)), 2),
    "network": (
        lambda: nn.Sequential(
            nn.Conv1d(1, 2, 3, stride=2, padding=1, padding_mode="reflect"),
            nn.ConvTranspose1d(2, 2, 3, stride=2, padding=1),
            nn.GELU(),
            pts.Residual1d(nn.Conv1d(2, 2, 3, padding="same")),
            nn.MaxPool1d(2, ceil_mode=True),
        ),
        1,
    ),
}


def conv_stream(channels: int = 2) -> pts.Conv1dStream:
    """The stream of the issue: wrong buffer lengths gave silently wrong outputs."""
    return pts.Conv1dStream(pts.PaddedConv1d(channels, 3, 4), "model")


def assert_same_state(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert value.shape == after[key].shape, key
        assert torch.equal(value, after[key]), key


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
def test_every_state_a_stream_reaches_is_accepted_by_a_fresh_twin(name: str, batched: bool) -> None:
    make, channels = STREAMS[name]
    module = make().eval()
    rng = random.Random(name)
    shape = [3, channels, 60] if batched else [channels, 60]
    x = torch.randn(shape)
    with torch.no_grad():
        stream = pts.create_stream(module, "model")
        pts.create_stream(module, "model").set_state(stream.get_state())  # before any signal
        outputs = []
        start = 0
        while start < 60:
            length = min(rng.choice([0, 1, 1, 2, 3, 4, 7, 11]), 60 - start)
            y = stream(x[..., start : start + length])
            start += length
            if y is not None:
                outputs.append(y)
            snapshot = stream.get_state()
            stream.set_state(snapshot)  # its own state, mid-signal
            twin = pts.create_stream(module, "model")
            twin.set_state(snapshot)
            rest, again = stream(x[..., start:], final=True), twin(x[..., start:], final=True)
            assert (rest is None) == (again is None)
            assert rest is None or torch.equal(rest, again)
            stream.set_state(snapshot)  # back to where it was
        y = stream(x[..., 60:], final=True)
        if y is not None:
            outputs.append(y)
        offline = module(x) if batched else module(x.unsqueeze(0)).squeeze(0)
        assert_matches(torch.cat(outputs, -1), offline)
        pts.create_stream(module, "model").set_state(stream.get_state())  # after the signal


def refused(stream: pts.BaseStream, state: dict[str, torch.Tensor], match: str) -> None:
    before = stream.get_state()
    with pytest.raises(pts.StreamError, match=match):
        stream.set_state(state)
    assert_same_state(before, stream.get_state())


def test_a_buffer_of_the_wrong_length_is_refused() -> None:
    stream = conv_stream()
    x = torch.randn(2, 20)
    with torch.no_grad():
        stream(x[:, :7])
        state = stream.get_state()
        # the case: accepted and then silently wrong (max error 0.58)
        short = {**state, "_pending": state["_pending"][:, :, :1].clone()}
        refused(stream, short, r"Conv1d stream: '_pending' is shaped \[1, 2, 1\] .* \[1, 2, 3\]")
        twin = conv_stream()
        refused(twin, short, r"'_pending' is shaped \[1, 2, 1\]")
        longer = {**state, "_pending": torch.zeros(1, 2, 5)}
        refused(stream, longer, r"'_pending' is shaped \[1, 2, 5\]")
        # the stream still continues exactly
        assert stream(x[:, 7:], final=True).shape == (3, 13)


def test_a_buffer_of_another_batch_is_refused() -> None:
    stream = conv_stream()
    with torch.no_grad():
        stream(torch.randn(2, 2, 6))
        state = stream.get_state()
        refused(
            stream,
            {**state, "_pending": torch.zeros(3, 2, 3)},
            r"'_pending' is shaped \[3, 2, 3\] but a signal with batch 2",
        )
        refused(stream, {**state, "_batch": torch.tensor(3)}, r"'_pending' is shaped \[2, 2, 3\]")
        assert stream(torch.randn(2, 2, 4)).shape == (2, 3, 4)  # the next block still works


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("_rank", -5, r"'_rank' is -5 but must be 0 \(no signal\), 2 or 3"),
        ("_batch", 10**6, r"'_batch' is 1000000 but a signal of \[C, T\] blocks has batch 1"),
        ("_channels", 5, r"'_channels' is 5 but must be 2"),
        ("_fill", 4, r"'_fill' is 4 but a stream at this point of a signal \(7 samples seen\)"),
        ("_fill", 2, r"'_fill' is 2 but .* has 3"),
        ("_seen", 8, r"'_emitted' is 7 but .*\(8 samples seen\) has 8"),
        ("_seen", -1, r"'_seen' is -1 but a number of samples is at least 0"),
        ("_emitted", 0, r"'_emitted' is 0 but .* has 7"),
        ("_skip", 1, r"'_skip' is 1 but .* has 0"),
        ("_started", 0, r"'_started' is 0 but .* has 1"),
    ],
)
def test_counters_out_of_range_or_inconsistent_are_refused(
    name: str, value: int, match: str
) -> None:
    stream = conv_stream()
    with torch.no_grad():
        stream(torch.randn(2, 7))
        state = stream.get_state()
        refused(stream, {**state, name: torch.tensor(value)}, match)


def test_counters_of_a_stream_between_signals_must_be_reset() -> None:
    stream = conv_stream()
    state = stream.get_state()
    refused(stream, {**state, "_fill": torch.tensor(2)}, r"'_fill' is 2 but .*no signal in prog")
    refused(stream, {**state, "_batch": torch.tensor(10**6)}, r"'_rank' is 0\) but '_batch'")
    refused(
        stream,
        {**state, "_pending": torch.zeros(1, 3, 3)},
        r"'_pending' is shaped \[1, 3, 3\] but must be shaped \[0\] or \[B, 2, 3\]",
    )


def test_a_counter_must_be_an_int64_scalar() -> None:
    stream = conv_stream()
    with torch.no_grad():
        stream(torch.randn(2, 7))
        state = stream.get_state()
        refused(stream, {**state, "_fill": torch.tensor([3, 3])}, r"'_fill' is a counter .*\[\]")
        refused(stream, {**state, "_fill": torch.tensor(3.0)}, r"'_fill' is a counter")


def test_conv_transpose_counters_are_checked() -> None:
    stream = pts.ConvTranspose1dStream(nn.ConvTranspose1d(2, 2, 4, stride=2, padding=1), "model")
    with torch.no_grad():
        stream(torch.randn(2, 5))
        state = stream.get_state()
        refused(stream, {**state, "_emitted": torch.tensor(3)}, r"'_emitted' is 3 but .* has 10")
        refused(stream, {**state, "_carry": torch.zeros(1, 2, 9)}, r"'_carry' is shaped")


def test_residual_counters_are_checked() -> None:
    stream = pts.Residual1dStream(pts.Residual1d(nn.Conv1d(2, 2, 5)))
    with torch.no_grad():
        stream(torch.randn(2, 3))
        state = stream.get_state()
        refused(stream, {**state, "_drop": torch.tensor(7)}, r"'_drop' is 7 but must be between")
        refused(stream, {**state, "_fill": torch.tensor(50)}, r"'_fill' is 50 but must be between")
        refused(stream, {**state, "_batch": torch.tensor(4)}, r"'_batch' is 4 but a signal of \[C")
        refused(stream, {**state, "_skip": torch.zeros(2, 2, 4)}, r"'_skip' is shaped \[2, 2, 4\]")
        refused(
            stream,
            {**state, "stream._rank": torch.tensor(0)},
            r"'stream._rank' is 0 but '_rank' is 2",
        )


def test_sequential_stages_must_agree_with_the_signal() -> None:
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Conv1d(2, 1, 3))
    stream = pts.Sequential1dStream(net, engine=False)  # the layers' states
    with torch.no_grad():
        stream(torch.randn(1, 5))  # the first output: every stage has had a block
        state = stream.get_state()
        refused(
            stream,
            {**state, "streams.2._rank": torch.tensor(0)},
            r"'streams.2._rank' is 0 but must be 2 \(the stage has had blocks",
        )
        refused(
            stream,
            {**state, "_stage_channels": torch.tensor([1, 2])},
            r"'_stage_channels' is a counter .* shaped \[3\] but .* shaped \[2\]",
        )
        refused(
            stream,
            {**state, "_stage_channels": torch.tensor([1, -1, 2])},
            r"a stage has had blocks only if the one before it had",
        )
        refused(stream, {**state, "_seen": torch.tensor(4)}, r"first stage has seen 5 samples")
        refused(stream, {**state, "_rank": torch.tensor(3)}, r"'_batch' is -1 but a batch size")
        # a bad entry deep inside: nothing is written, not even the entries before it
        bad = {k: v.clone() for k, v in state.items()}
        bad["streams.0._pending"] = torch.zeros(1, 1, 1)
        refused(stream, bad, r"layer '0' \(Conv1d\): '_pending' is shaped \[1, 1, 1\]")


def test_a_batched_sequential_checks_the_batch_of_every_stage() -> None:
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Conv1d(2, 1, 3))
    stream = pts.Sequential1dStream(net, engine=False)
    with torch.no_grad():
        stream(torch.randn(2, 1, 9))
        state = stream.get_state()
        refused(stream, {**state, "_batch": torch.tensor(10**6)}, r"'streams.0._batch' is 2 but")


def test_a_sequential_on_the_engine_checks_its_counters_against_the_engine() -> None:
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Conv1d(2, 1, 3, stride=2))
    stream = pts.Sequential1dStream(net)
    assert stream.engine.startswith("frames")
    x = torch.randn(2, 1, 30)
    with torch.no_grad():
        head = stream(x[..., :9])
        state = stream.get_state()
        assert set(state) >= {"_rank", "_batch", "_seen"}
        refused(stream, {**state, "_batch": torch.tensor(10**6)}, r"'_engine._batch' rows")
        refused(stream, {**state, "_rank": torch.tensor(2)}, r"not the counters of a signal")
        refused(stream, {k: v for k, v in state.items() if k != "_seen"}, r"missing \['_seen'\]")
        tail = stream(x[..., 9:], final=True)  # the refusals changed nothing
        twin = pts.Sequential1dStream(net)
        twin(x[..., :4])
        twin.set_state(state)  # a fresh twin continues from the state
        assert_matches(torch.cat([head, twin(x[..., 9:], final=True)], -1), net(x))
    assert_matches(torch.cat([head, tail], -1), net(x))


def test_a_sequential_on_the_engine_checks_in_full_what_its_last_block_does_not_vouch_for() -> None:
    # mid-signal, a block like the last one is checked by one comparison; a move to another
    # dtype, a pickled copy and a restored state are checked in full again
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Conv1d(2, 1, 3, stride=2))
    stream = pts.Sequential1dStream(net)
    x = torch.randn(2, 1, 30)
    with torch.no_grad():
        expected = net(x)
        head = stream(x[..., :5])
        copied = pickle.loads(pickle.dumps(stream))
        tail = copied(x[..., 5:], final=True)
        assert_matches(torch.cat([head, tail], -1), expected)
        stream.double()  # (the network's own layers too: the stream shares them)
        with pytest.raises(pts.StreamInputError):
            stream(x[..., 5:6])  # float32 after the move: refused, nothing changed
        rest = stream(x[..., 5:].double(), final=True)
        assert_matches(torch.cat([head, rest.float()], -1), expected)
        stream.float()
        stream(x[..., :5])
        mid_signal = stream.get_state()
        stream.reset()
        stream(x[:1, :, :5])  # one row now
        stream.set_state(mid_signal)  # back to two rows, mid-signal
        assert_matches(torch.cat([head, stream(x[..., 5:], final=True)], -1), expected)


def test_a_mid_signal_state_fits_a_fresh_twin_and_continues_exactly() -> None:
    conv = pts.PaddedConv1d(2, 3, 4)
    stream = pts.Conv1dStream(conv, "model")
    x = torch.randn(2, 2, 30)
    with torch.no_grad():
        head = stream(x[..., :11])
        twin = pts.Conv1dStream(conv, "model")
        twin.set_state(stream.get_state())
        tail = twin(x[..., 11:], final=True)
        assert_matches(torch.cat([head, tail], -1), conv(x))


def test_step_stream_refuses_a_filled_counter_that_is_not_a_scalar() -> None:
    model = nn.Sequential(nn.Conv1d(1, 4, 4, stride=4), nn.GELU()).eval()
    x = torch.randn(1, 1, 40)
    step, _ = pts.streaming_transform(model, x, -1, frame="auto")
    stream = pts.StepStream(step)
    with torch.no_grad():
        stream(x[..., :2])
        state = stream.get_state()
        for bad in (torch.tensor([2, 2]), torch.tensor([[2]]), torch.tensor(2.0)):
            with pytest.raises(pts.StreamError, match=r"'_filled' must be a 0-d integer tensor"):
                stream.set_state({**state, "_filled": bad})
        with pytest.raises(pts.StreamError, match=r"'_filled' must be in \[0, 4\)"):
            stream.set_state({**state, "_filled": torch.tensor(4)})
        assert stream._filled == 2
        stream.set_state(state)
        assert_matches(stream(x[..., 2:], final=True), model(x))


def _streams_with_state() -> dict[str, tuple[pts.BaseStream, torch.Tensor]]:
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 4), nn.Tanh()).eval()
    step, _ = pts.streaming_transform(model, torch.randn(1, 1, 8), -1, frame="auto")
    return {
        "module": (pts.Conv1dStream(pts.PaddedConv1d(1, 2, 4), "model"), torch.randn(1, 1, 6)),
        "sequential": (
            pts.Sequential1dStream(nn.Sequential(nn.Conv1d(1, 2, 3, stride=2), nn.ReLU())),
            torch.randn(1, 1, 6),
        ),
        "graph": (pts.stream(model, torch.randn(1, 1, 16)), torch.randn(1, 1, 6)),
        "step": (pts.StepStream(step), torch.randn(1, 1, 6)),
    }


@pytest.mark.parametrize("face", ["module", "sequential", "graph", "step"])
def test_a_state_of_meta_tensors_or_non_tensors_is_refused_by_name(face: str) -> None:
    stream, x = _streams_with_state()[face]
    with torch.no_grad():
        stream(x)
        state = stream.get_state()
        key = next(k for k, v in state.items() if v.is_floating_point())
        with pytest.raises(pts.StreamError, match=rf"'{key}' is a tensor on the meta device"):
            stream.set_state({**state, key: state[key].to("meta")})
        with pytest.raises(pts.StreamError, match=rf"'{key}' must be a tensor, not a list"):
            stream.set_state({**state, key: state[key].tolist()})  # type: ignore[dict-item]
        with pytest.raises(pts.StreamError, match="dict of names to tensors"):
            stream.set_state([1, 2])  # type: ignore[arg-type]
        stream.set_state(state)


def test_restart_flags_on_the_meta_device_are_refused() -> None:
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 3)).eval()
    step, _ = pts.streaming_transform(model, torch.randn(2, 1, 8), -1)
    with pytest.raises(pts.StreamInputError, match="meta device"):
        step.restart_rows(torch.ones(2, dtype=torch.bool, device="meta"))
    with pytest.raises(pts.StreamError, match="meta device"):
        step.restore({k: v.to("meta") for k, v in step.snapshot().items()})
