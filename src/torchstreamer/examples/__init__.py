"""Built-in examples: ready-made models with an example input, for the CLI, the demo and the
benchmarks.

Example:
    >>> from torchstreamer.examples import EXAMPLES, load_example
    >>> sorted(EXAMPLES)
    ['filterbank', 'seed_residual', 'seed_sequential', 'tcn', 'vocoder', 'vollo_cnn']
    >>> example = load_example("vollo_cnn")
    >>> list(example.input(100).shape), example.causal
    ([1, 32, 100], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from torchstreamer.examples import models

__all__ = ["DEFAULT_EXAMPLE", "EXAMPLES", "Example", "load_example"]


@dataclass
class Example:
    """A model, the shape of its input (time last) and what is known about it."""

    name: str
    description: str
    model: nn.Module
    channels: list[int]  # the input's shape without its time axis
    sample_rate: Optional[int] = None  # of the input, where it means something
    causal: bool = False  # latency 0 and rate 1: a step model applies
    module_padding: str = "model"  # the Sequential1dStream padding that equals the model

    def input(self, length: int, seed: int = 0) -> torch.Tensor:
        """A random input of ``length`` samples."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn([*self.channels, length], generator=generator)


_Factory = Callable[[], Example]


def _seeded(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return factory().eval()


EXAMPLES: dict[str, tuple[str, _Factory]] = {
    "filterbank": (
        "band energies: fixed band-pass FIRs, squared, smoothed, 10 ms frames (16 kHz in)",
        lambda: Example("filterbank", EXAMPLES["filterbank"][0], _seeded(models.filterbank),
                        [1, 1], 16000),
    ),
    "seed_sequential": (
        "overview's sequential net: 128 ch, strided convs, avg pool, transposed convs",
        lambda: Example("seed_sequential", EXAMPLES["seed_sequential"][0],
                        _seeded(models.seed_sequential), [1], module_padding="valid"),
    ),
    "seed_residual": (
        "overview's residual net: 128/256 ch, three cropped residual blocks",
        lambda: Example("seed_residual", EXAMPLES["seed_residual"][0],
                        _seeded(models.seed_residual), [1], module_padding="valid"),
    ),
    "vollo_cnn": (
        "Vollo example CNN: causal 32 -> 128 -> 1 channels, kernel 3",
        lambda: Example("vollo_cnn", EXAMPLES["vollo_cnn"][0], _seeded(models.vollo_cnn),
                        [1, 32], causal=True),
    ),
    "vocoder": (
        "HiFi-GAN-shaped vocoder: 80 mels -> 64 samples per frame, dilated residual blocks",
        lambda: Example("vocoder", EXAMPLES["vocoder"][0], _seeded(models.vocoder), [1, 80]),
    ),
    "tcn": (
        "causal TCN: 64 ch, dilations 1..32, residual adds",
        lambda: Example("tcn", EXAMPLES["tcn"][0], _seeded(models.tcn), [1, 16], causal=True),
    ),
}  # fmt: skip
DEFAULT_EXAMPLE = "filterbank"


def load_example(name: str) -> Example:
    """A fresh instance of a built-in example (seeded weights).

    Raises:
        KeyError: no example has that name (the message lists them).
    """
    if name not in EXAMPLES:
        raise KeyError(
            f"No built-in example {name!r}; choose one of {', '.join(sorted(EXAMPLES))}."
        )
    return EXAMPLES[name][1]()
