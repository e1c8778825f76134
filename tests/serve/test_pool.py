"""`StreamPool`: slots that open, pause, close and reopen at random calls, each slot's outputs
against its own signal's offline output."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
from hypothesis import assume, event, given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, fewer
from tests.step.test_frames import offline, rate_models
from torchstreamer.examples.models import vollo_cnn


class Client:
    """One signal fed to a slot in random blocks."""

    def __init__(self, slot: int, signal: torch.Tensor) -> None:
        self.slot, self.signal, self.fed, self.outputs = slot, signal, 0, []

    def take(self, y: Optional[torch.Tensor]) -> None:
        if y is not None:
            self.outputs.append(y)

    def check(self, model: nn.Module) -> None:
        y = torch.cat(self.outputs, -1) if self.outputs else None
        assert_matches(y, offline(model, self.signal))


def _accepts(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        offline(model, x)
    except RuntimeError:
        return False
    return True


def serve(pool: pts.StreamPool, model: nn.Module, channels: int, data: Any, calls: int) -> int:
    """Drive ``pool`` for ``calls`` calls: at each, every slot idles, joins, feeds or leaves
    at random; each finished signal is checked. Returns how many signals were checked."""
    clients: dict[int, Client] = {}
    checked = 0
    for _ in range(calls):
        blocks: dict[int, torch.Tensor] = {}
        for slot in range(pool.slots):
            action = data.draw(st.sampled_from(["idle", "feed", "feed", "close"]))
            client = clients.get(slot)
            if client is None:
                if action == "feed" and pool.free:
                    signal = torch.randn(1, channels, data.draw(st.integers(0, 50)))
                    if not _accepts(model, signal):  # too short for the model
                        signal = torch.randn(1, channels, 48)
                    new = Client(pool.open(), signal)
                    clients[new.slot] = new
            elif action == "feed":
                size = data.draw(st.sampled_from([0, 1, 2, 3, 7, 16]))
                blocks[slot] = client.signal[..., client.fed : client.fed + size]
                client.fed += blocks[slot].shape[-1]
            elif action == "close" or client.fed == client.signal.shape[-1]:
                rest = client.signal[..., client.fed :]
                if rest.shape[-1]:  # the end of the signal first, in one block
                    client.take(pool.feed({slot: rest})[slot])
                client.take(pool.close(slot))
                client.check(model)
                checked += 1
                del clients[slot]
        for slot, y in pool.feed(blocks).items():
            clients[slot].take(y)
    return checked


@given(rate_models(), st.integers(1, 4), st.data())
@fewer(25)
def test_slots_that_join_pause_and_leave_at_random_each_stream_their_own_signal_exactly(
    spec: tuple[nn.Module, int], slots: int, data: Any
) -> None:
    model, channels = spec
    example = torch.randn(1, channels, 48)
    try:
        assume(offline(model, example).shape[-1] >= 2)
    except RuntimeError:
        assume(False)
    pool = pts.StreamPool(model, example, slots=slots)
    event("batched" if pool.batched else "one stream per slot")
    event(f"signals checked: {min(serve(pool, model, channels, data, calls=12), 3)}+")


@given(st.data())
@fewer(10)
def test_a_pool_of_the_vollo_cnn_is_batched_and_exact(data: Any) -> None:
    model = vollo_cnn().eval()
    pool = pts.StreamPool(model, torch.randn(1, 32, 64), slots=5)
    assert pool.batched, pool.reason
    serve(pool, model, 32, data, calls=20)


def test_a_model_with_lookahead_gets_a_pool_of_one_stream_per_slot() -> None:
    model = nn.Conv1d(1, 2, 5, padding=2).eval()
    pool = pts.StreamPool(model, torch.randn(1, 1, 32), slots=2)
    assert not pool.batched
    assert "lookahead" in pool.reason.lower()
    x = torch.randn(1, 1, 20)
    slot = pool.open()
    y = [pool.feed({slot: x[..., :7]})[slot], pool.feed({slot: x[..., 7:]})[slot], pool.close(slot)]
    assert_matches(torch.cat([t for t in y if t is not None], -1), model(x).detach())


def test_bad_blocks_and_slots_raise_before_any_slot_changes() -> None:
    model = nn.Sequential(pts.PaddedConv1d(2, 3, 4), nn.ReLU()).eval()
    pool = pts.StreamPool(model, torch.randn(1, 2, 16), slots=2)
    a = pool.open()
    x = torch.randn(1, 2, 12)
    first = pool.feed({a: x[..., :5]})[a]
    with pytest.raises(pts.StreamInputError, match="not open"):
        pool.feed({a: x[..., 5:6], 1: x[..., :3]})
    with pytest.raises(pts.StreamInputError, match=r"shaped \[1, 2, T\]"):
        pool.feed({a: torch.randn(1, 3, 4)})
    with pytest.raises(pts.StreamInputError, match="float64"):
        pool.feed({a: x[..., 5:].double()})
    rest = pool.feed({a: x[..., 5:]})[a]
    assert_matches(torch.cat([first, rest], -1), model(x).detach())
    pool.open()
    with pytest.raises(pts.StreamError, match="All 2 slots"):
        pool.open()


def test_a_model_that_mixes_rows_is_served_one_stream_per_slot() -> None:
    class MixRows(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - x.mean(0, keepdim=True)

    pool = pts.StreamPool(MixRows(), torch.randn(1, 1, 16), slots=3)
    assert not pool.batched
    assert "mixes the rows" in pool.reason


def test_a_pool_moves_to_another_dtype_with_its_open_slots() -> None:
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 3), nn.Tanh()).eval()
    for slots_model in (model, nn.Conv1d(1, 2, 3, padding=1).eval()):  # batched, one per slot
        pool = pts.StreamPool(slots_model, torch.randn(1, 1, 16), slots=2)
        a = pool.open()
        x = torch.randn(1, 1, 12, dtype=torch.float64)
        first = pool.feed({a: x[..., :5].float()})[a]
        pool.double()
        with pytest.raises(pts.StreamInputError, match="float64"):
            pool.feed({a: x[..., 5:].float()})
        second = pool.feed({a: x[..., 5:]})[a]
        last = pool.close(a)
        parts = [t.double() for t in (first, second, last) if t is not None]
        expected = slots_model.double()(x).detach()
        slots_model.float()
        assert_matches(torch.cat(parts, -1), expected)


class TwoRates(nn.Module):
    """Two outputs, one at the input rate and one at half of it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = pts.PaddedConv1d(2, 3, 3)
        self.b = nn.Conv1d(3, 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.a(x))
        return h, self.b(h)


class TimeMajor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def test_pools_of_two_outputs_and_of_time_major_signals() -> None:
    two = TwoRates().eval()
    pool = pts.StreamPool(two, torch.randn(1, 2, 32), slots=2)
    assert not pool.batched  # frames of 2 would hold the rate-1 output back
    assert "hold outputs back" in pool.reason
    slot, x = pool.open(), torch.randn(1, 2, 21)
    parts = [pool.feed({slot: x[..., i : i + 5]})[slot] for i in range(0, 21, 5)]
    for j, expected in enumerate(two(x)):
        got = torch.cat([p[j] for p in parts if p is not None], -1)
        assert_matches(got, expected.detach())
    time_major = TimeMajor().eval()
    pool = pts.StreamPool(time_major, torch.randn(1, 20, 3), slots=2, axis=1)
    assert pool.batched
    a, b = pool.open(), pool.open()
    x, z = torch.randn(1, 9, 3), torch.randn(1, 5, 3)
    first = pool.feed({a: x[:, :4], b: z})
    y = torch.cat([first[a], pool.feed({a: x[:, 4:]})[a]], 1)
    torch.testing.assert_close(y, time_major(x).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first[b], time_major(z).detach(), rtol=1e-5, atol=1e-5)


def test_slot_numbers_of_any_integer_type_and_bad_slot_counts() -> None:
    np = pytest.importorskip("numpy")
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 3)).eval()
    for slots in (2.5, 0, True, "2"):
        with pytest.raises(pts.StreamError, match="whole number of slots"):
            pts.StreamPool(model, torch.randn(1, 1, 16), slots=slots)  # type: ignore[arg-type]
    pool = pts.StreamPool(model, torch.randn(1, 1, 16), slots=np.int64(2))
    a = pool.open()
    x = torch.randn(1, 1, 9)
    first = pool.feed({np.int64(a): x[..., :4]})[a]
    with pytest.raises(pts.StreamInputError, match=r"whole number that open\(\) returned"):
        pool.feed({1.0: x[..., 4:]})  # type: ignore[dict-item]
    rest = pool.feed({torch.tensor(a): x[..., 4:]})[a]
    assert_matches(torch.cat([first, rest], -1), model(x).detach())
    pool.close(np.int32(a))
    assert pool.free == 2
