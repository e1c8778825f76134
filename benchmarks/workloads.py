"""The benchmark workloads: the built-in examples that the benchmark issue names, as
:class:`Workload` objects (model, input shape, which paths apply).

The models themselves live in :mod:`torchstreamer.examples` (one definition for the CLI, the
demo and the benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from torchstreamer.examples import load_example

__all__ = ["WORKLOADS", "Workload", "workloads"]

WORKLOADS = ["seed_sequential", "seed_residual", "vollo_cnn", "vocoder", "tcn"]
_LENGTH_SCALE = {"vocoder": 1 / 16}  # 64 output samples per input frame


@dataclass
class Workload:
    """A model to benchmark and how its input looks."""

    name: str
    description: str
    model: nn.Module
    input_shape: list[int]  # one block of length 1: the time axis is last
    module_padding: str  # the Sequential1dStream padding that equals the model ("valid"/"model")
    causal: bool  # latency 0 and rate 1: the step model applies
    length_scale: float = 1.0  # fraction of the standard signal length (slow models use less)

    def signal(self, length: int, seed: int = 0) -> torch.Tensor:
        shape = [*self.input_shape[:-1], length]
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def workloads() -> list[Workload]:
    """Fresh instances of every workload (seeded weights)."""
    found = []
    for name in WORKLOADS:
        example = load_example(name)
        found.append(
            Workload(
                name,
                example.description,
                example.model,
                [*example.channels, 1],
                example.module_padding,
                example.causal,
                _LENGTH_SCALE.get(name, 1.0),
            )
        )
    return found
