"""What the analysis reads from a captured graph: the period of its length arithmetic."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from torchstreamer.graph.analysis import length_period
from torchstreamer.graph.capture import capture


class Arithmetic(nn.Module):
    """Pads to a multiple of ``multiple``, then floors by two strides of ``stride``."""

    def __init__(self, multiple: int, stride: int) -> None:
        super().__init__()
        self.multiple = multiple
        self.down = nn.Conv1d(1, 1, stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, (-x.shape[-1]) % self.multiple))
        return self.down(self.down(x))


@given(multiple=st.integers(1, 6), stride=st.integers(1, 3))
def test_the_period_makes_every_length_change_by_a_constant(multiple: int, stride: int) -> None:
    model = Arithmetic(multiple, stride)
    program, _ = capture(model, torch.randn(1, 1, 4 * multiple * stride**2 + 7), -1)
    period = length_period(program.graph)
    assert period is not None

    def lengths(n: int) -> list[int]:
        return [model(torch.randn(1, 1, n)).shape[-1], n + (-n) % multiple]

    for n in range(60, 60 + 2 * period):  # every length: shifted by one period, a constant
        assert [b - a for a, b in zip(lengths(n), lengths(n + period))] == [
            b - a for a, b in zip(lengths(60), lengths(60 + period))
        ]
    # and no smaller period of the floors is missed: the true period divides the one found
    true = next(
        p
        for p in range(1, period + 1)
        if all(
            [b - a for a, b in zip(lengths(n), lengths(n + p))]
            == [b - a for a, b in zip(lengths(60), lengths(60 + p))]
            for n in range(60, 60 + 2 * period)
        )
    )
    assert period % true == 0
