"""`make demo`: stream a built-in example over a generated signal, verify it against the offline
model, print latency and speed, and draw the streamed output beside the offline one.

The default example is the filter bank (:class:`torchstreamer.examples.models.FilterBank`): a
chirp, tone bursts and noise go in 10 ms blocks through ``torchstreamer.stream``; the band
energies that come out must equal the offline model's.

Example:
    >>> from torchstreamer.demo import run_demo
    >>> result = run_demo(seconds=0.25, picture=None, echo=False)
    >>> result.max_error < 1e-3, result.latency_samples
    (True, 319)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from torchstreamer.examples import DEFAULT_EXAMPLE, load_example
from torchstreamer.graph.stream import stream

__all__ = ["DemoResult", "demo_signal", "main", "run_demo"]


@dataclass
class DemoResult:
    """What the demo measured."""

    example: str
    samples: int
    max_error: float
    tolerance: float
    latency_samples: int
    receptive_field: int
    real_time_factor: float
    call_median_us: float
    call_p99_us: float
    picture: Optional[Path]

    @property
    def exact(self) -> bool:
        return self.max_error <= self.tolerance


def demo_signal(seconds: float, sample_rate: int = 16000) -> Tensor:
    """A test signal ``[1, 1, T]``: a chirp from 100 Hz to 6 kHz, 1 kHz tone bursts every half
    second, and a little noise."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    duration = max(seconds, 1e-3)
    low, high = 100.0, 6000.0
    phase = 2 * math.pi * low * duration / math.log(high / low)
    chirp = torch.sin(phase * ((high / low) ** (t / duration) - 1))
    bursts = torch.sin(2 * math.pi * 1000 * t) * ((t % 0.5) < 0.1)
    noise = 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0), dtype=t.dtype)
    return (0.5 * chirp + 0.5 * bursts + noise).float().view(1, 1, -1)


def run_demo(
    example_name: str = DEFAULT_EXAMPLE,
    seconds: float = 3.0,
    block: int = 160,
    picture: Optional[Path] = Path("demo.png"),
    echo: bool = True,
) -> DemoResult:
    """Stream ``seconds`` of signal through the example in blocks of ``block`` samples."""
    torch.set_num_threads(1)
    example = load_example(example_name)
    model = example.model
    rate = example.sample_rate or 16000
    if example.channels == [1, 1]:
        x = demo_signal(seconds, rate)
    else:
        x = example.input(int(seconds * rate))
    s = stream(model, x[..., : min(x.shape[-1], 4096)])
    outputs, calls = [], []
    with torch.inference_mode():
        for start in range(0, x.shape[-1], block):
            begin = time.perf_counter()
            y = s(x[..., start : start + block])
            calls.append(time.perf_counter() - begin)
            if y is not None:
                outputs.append(y)
        last = s(x[..., :0], final=True)
        if last is not None:
            outputs.append(last)
        streamed = torch.cat(outputs, -1)
        offline = model(x)
    max_error = float((streamed - offline).abs().max())
    tolerance = 1e-5 * max(1.0, float(offline.abs().max()))
    duration = x.shape[-1] / rate
    result = DemoResult(
        example_name, x.shape[-1], max_error, tolerance, s.latency, s.receptive_field,
        sum(calls) / duration, statistics.median(calls) * 1e6,
        sorted(calls)[int(0.99 * (len(calls) - 1))] * 1e6, None,
    )  # fmt: skip
    if picture is not None:
        result.picture = _draw(x, streamed, offline, example_name, picture)
    if echo:
        _print(result, block, rate)
    return result


def _print(result: DemoResult, block: int, rate: int) -> None:
    ms = 1000 / rate
    verdict = "exact" if result.exact else "MISMATCH"
    print(f"torch-streamer demo: '{result.example}', {result.samples} samples in blocks of {block}")
    print(f"  verified against offline: max |streamed - offline| = {result.max_error:.2e} "
          f"({verdict}, tolerance {result.tolerance:.1e})")  # fmt: skip
    print(f"  latency: {result.latency_samples} samples ({result.latency_samples * ms:.1f} ms); "
          f"receptive field {result.receptive_field} samples "
          f"({result.receptive_field * ms:.1f} ms)")  # fmt: skip
    print(f"  speed: real-time factor {result.real_time_factor:.4f} on one thread "
          f"({1 / max(result.real_time_factor, 1e-12):.0f}x faster than real time); "
          f"per {block}-sample call median {result.call_median_us:.0f} us, "
          f"99th percentile {result.call_p99_us:.0f} us")  # fmt: skip
    print(f"  picture: {result.picture}" if result.picture else "  picture: not drawn")


def _draw(x: Tensor, streamed: Tensor, offline: Tensor, name: str, path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib is not installed: pip install 'torch-streamer[demo]' for the picture)")
        return None
    rows = [("input", x[0].reshape(-1, x.shape[-1]))]
    rows += [("offline model", offline[0]), ("streamed", streamed[0])]
    rows.append(("|streamed - offline|", (streamed[0] - offline[0]).abs()))
    figure, axes = plt.subplots(len(rows), 1, figsize=(9, 9))
    for axis, (title, value) in zip(axes, rows):
        value = value.detach().float()
        if value.shape[0] == 1:
            axis.plot(value[0].numpy(), linewidth=0.3)
            axis.set_xlim(0, value.shape[-1])
        else:
            image = axis.imshow(value.numpy(), aspect="auto", origin="lower", interpolation="none")
            figure.colorbar(image, ax=axis)
        axis.set_title(f"{name}: {title}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--example", default=DEFAULT_EXAMPLE)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--block", type=int, default=160)
    parser.add_argument("--picture", type=Path, default=Path("demo.png"))
    args = parser.parse_args(argv)
    result = run_demo(args.example, args.seconds, args.block, args.picture)
    return 0 if result.exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
