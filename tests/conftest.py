"""Shared test helpers: hypothesis profiles, block splitting and the offline comparison."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
# tiny tensors: one thread avoids oversubscribing small CI machines
torch.set_num_threads(1)

RTOL = 1e-5
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    random.seed(0)


def split_lengths(total: int, sizes: Sequence[int]) -> list[int]:
    """Block lengths taken cyclically from ``sizes`` (0 allowed) until they cover ``total``."""
    lengths: list[int] = []
    covered = 0
    index = 0
    while covered < total:
        size = sizes[index % len(sizes)]
        lengths.append(min(size, total - covered))
        covered += lengths[-1]
        index += 1
        if index > 100 * (total + 1):
            raise ValueError("sizes must contain a positive length")
    return lengths


def run_stream(
    stream: torch.nn.Module, x: torch.Tensor, lengths: Sequence[int]
) -> Optional[torch.Tensor]:
    """Feed ``x`` in blocks of ``lengths`` and a final empty block; concatenate the outputs."""
    outputs = []
    start = 0
    for length in lengths:
        y = stream(x[..., start : start + length])
        start += length
        if y is not None:
            outputs.append(y)
    y = stream(x[..., start:], final=True)
    if y is not None:
        outputs.append(y)
    return torch.cat(outputs, -1) if outputs else None


def assert_matches(y: Optional[torch.Tensor], expected: torch.Tensor) -> None:
    """The streamed output equals the offline one (shape, and values within 1e-5 relative)."""
    if expected.shape[-1] == 0:
        assert y is None or y.shape[-1] == 0
        return
    assert y is not None, f"stream returned nothing, offline returned shape {list(expected.shape)}"
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=RTOL, atol=ATOL)


@st.composite
def block_sizes(draw: st.DrawFn) -> list[int]:
    """A cycle of block sizes that always includes 0 and 1 and some larger blocks."""
    extra = draw(st.lists(st.integers(0, 40), min_size=1, max_size=6))
    order = draw(st.permutations([0, 1, *extra]))
    if not any(order):
        order = [*order, 1]
    return list(order)


def fewer(examples: int) -> settings:
    """Fewer examples for a slow property in the default profile; all of them when thorough."""
    if os.environ.get("HYPOTHESIS_PROFILE", "default") == "default":
        return settings(max_examples=examples)
    return settings()


def built_at_once(build: Callable[[int], Any], count: int) -> list[Any]:
    """``build(i)`` for ``i < count``, from ``count`` threads started together; the builds
    must all end within 120 s (an exception comes back as the value)."""
    barrier = threading.Barrier(count)
    built: dict[int, Any] = {}

    def work(index: int) -> None:
        barrier.wait()
        try:
            built[index] = build(index)
        except Exception as error:  # (the test names it)
            built[index] = error

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a build still runs after 120 s"
    return [built[i] for i in range(count)]
