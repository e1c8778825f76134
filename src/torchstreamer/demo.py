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
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from torchstreamer.examples import DEFAULT_EXAMPLE, load_example
from torchstreamer.graph.stream import stream

__all__ = ["RELATIVE_TOLERANCE", "DemoResult", "demo_signal", "main", "run_demo"]

# float32 rounding, relative to the largest output: the README's tolerance. The stream adds
# the same products in another order (blocks instead of the whole signal), so its values
# differ from the offline ones by a few float32 roundings of the largest value, not of each.
RELATIVE_TOLERANCE = 1e-5


@dataclass
class DemoResult:
    """What the demo measured."""

    example: str
    samples: int
    max_error: float
    tolerance: float  # absolute: RELATIVE_TOLERANCE times the largest offline output (or 1)
    latency_samples: int
    receptive_field: Optional[int]  # None: unbounded (after a recurrent layer)
    real_time_factor: float
    call_median_us: float
    call_p99_us: float
    picture: Optional[Path]

    @property
    def exact(self) -> bool:
        return self.max_error <= self.tolerance

    @property
    def scale(self) -> float:
        """What the error is relative to: the largest offline output's magnitude (at least 1)."""
        return self.tolerance / RELATIVE_TOLERANCE

    @property
    def relative_error(self) -> float:
        return self.max_error / self.scale


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
    returned: list[tuple[int, int]] = []  # (input samples received, output samples returned)
    with torch.inference_mode():
        for start in range(0, x.shape[-1], block):
            begin = time.perf_counter()
            y = s(x[..., start : start + block])
            calls.append(time.perf_counter() - begin)
            if y is not None:
                outputs.append(y)
                returned.append((min(start + block, x.shape[-1]), y.shape[-1]))
        last = s(x[..., :0], final=True)
        if last is not None:
            outputs.append(last)
            returned.append((x.shape[-1], last.shape[-1]))
        streamed = torch.cat(outputs, -1)
        offline = model(x)
    max_error = float((streamed - offline).abs().max())
    tolerance = RELATIVE_TOLERANCE * max(1.0, float(offline.abs().max()))
    duration = x.shape[-1] / rate
    result = DemoResult(
        example_name, x.shape[-1], max_error, tolerance, s.latency, s.receptive_field,
        sum(calls) / duration, statistics.median(calls) * 1e6,
        sorted(calls)[int(0.99 * (len(calls) - 1))] * 1e6, None,
    )  # fmt: skip
    if picture is not None:
        timing = _Timing(rate, block, s.latency, s.rate, returned)
        bands = getattr(model, "centres", None)  # the filter bank's centre frequencies (Hz)
        result.picture = _draw(x, streamed, offline, example_name, picture, timing, bands)
    if echo:
        _print(result, block, rate)
    return result


def _print(result: DemoResult, block: int, rate: int) -> None:
    ms = 1000 / rate
    verdict = "exact" if result.exact else "MISMATCH"
    print(f"torch-streamer demo: '{result.example}', {result.samples} samples in blocks of {block}")
    print(f"  verified against offline: max |streamed - offline| = {result.max_error:.2e} on "
          f"outputs up to {result.scale:.3g} in magnitude, {result.relative_error:.1e} of it "
          f"({verdict}: the tolerance is {RELATIVE_TOLERANCE:g} of the largest output, "
          "float32 rounding)")  # fmt: skip
    field = result.receptive_field
    print(f"  latency: {result.latency_samples} samples ({result.latency_samples * ms:.1f} ms); "
          "receptive field " + ("unbounded" if field is None else
                                f"{field} samples ({field * ms:.1f} ms)"))  # fmt: skip
    print(f"  speed: real-time factor {result.real_time_factor:.4f} on one thread "
          f"({1 / max(result.real_time_factor, 1e-12):.0f}x faster than real time); "
          f"per {block}-sample call median {result.call_median_us:.0f} us, "
          f"99th percentile {result.call_p99_us:.0f} us")  # fmt: skip
    print(f"  picture: {result.picture}" if result.picture else "  picture: not drawn")


@dataclass
class _Timing:
    """When the streamed outputs came out: for the picture."""

    sample_rate: int
    block: int
    latency: int  # input samples between an output's time and the last input it reads
    rate: Fraction  # output samples per input sample
    returned: list[tuple[int, int]]  # per call: input samples received, outputs returned


def _draw(
    x: Tensor,
    streamed: Tensor,
    offline: Tensor,
    name: str,
    path: Path,
    timing: _Timing,
    bands: Optional[Tensor] = None,
) -> Optional[Path]:
    """The input, the offline and the streamed output and their difference on one time axis
    (seconds), then the first blocks in milliseconds: block boundaries, when each output was
    returned, and the latency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib is not installed: pip install 'torch-streamer[demo]' for the picture)")
        return None
    rate = timing.sample_rate
    seconds = x.shape[-1] / rate
    unit = "energy (dB)" if name == "filterbank" else "output value"
    figure, axes = plt.subplots(
        6, 1, figsize=(10, 15), layout="constrained",
        gridspec_kw={"height_ratios": [1, 1.2, 1.2, 1.2, 1.1, 1.3]},
    )  # fmt: skip
    signal = x[0].reshape(-1, x.shape[-1]).detach().float()
    _curve(axes[0], signal, seconds, "amplitude", figure)
    axes[0].set_title(f"{name}: input, {x.shape[-1]} samples at {rate} Hz", fontsize=10)
    error = (streamed[0] - offline[0]).abs()
    rows = [
        (axes[1], offline[0], "offline model: the whole signal at once", unit),
        (axes[2], streamed[0], f"streamed in blocks of {timing.block} samples "
         f"({1000 * timing.block / rate:g} ms): the same output", unit),
        (axes[3], error, "|streamed - offline|: " + (
            "0 everywhere, the streamed output equals the offline one" if float(error.max()) == 0
            else f"at most {float(error.max()):.1e}"), "absolute difference"),
    ]  # fmt: skip
    rows_name = "band centre (Hz)" if bands is not None else "channel"
    output_seconds = float(streamed.shape[-1] / timing.rate / rate) if timing.rate else seconds
    for axis, value, title, label in rows:
        _curve(axis, value.detach().float(), output_seconds, label, figure, channels=rows_name)
        axis.set_title(title, fontsize=10)
        if bands is not None:
            ticks = list(range(0, len(bands), max(1, len(bands) // 6)))
            axis.set_yticks(ticks, [f"{float(bands[k]):.0f}" for k in ticks])
    for axis in axes[:4]:
        axis.set_xlim(0, seconds)
        axis.set_xlabel("time (s)")
    _draw_blocks(axes[4], axes[5], signal[0], timing)
    if signal.shape[0] > 1:
        axes[4].set_ylabel("amplitude (channel 0)")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _curve(
    axis: Any, value: Tensor, seconds: float, label: str, figure: Any, channels: str = "channel"
) -> None:
    """A line for one channel, an image (channels by time) for several."""
    value = value.reshape(-1, value.shape[-1])
    if value.shape[0] == 1:
        times = torch.arange(value.shape[-1]) * (seconds / max(1, value.shape[-1]))
        axis.plot(times.numpy(), value[0].numpy(), linewidth=0.3)
        axis.set_ylabel(label)
    else:
        image = axis.imshow(
            value.numpy(), aspect="auto", origin="lower", interpolation="none",
            extent=(0, seconds, -0.5, value.shape[0] - 0.5),
        )  # fmt: skip
        axis.set_ylabel(channels)
        figure.colorbar(image, ax=axis, label=label)


def _draw_blocks(above: Any, below: Any, signal: Tensor, timing: _Timing) -> None:
    """The first blocks in milliseconds: the input with its block boundaries, and for the first
    outputs, the time each refers to, when its last input arrived (the latency) and when the
    call returned it (at the end of a block)."""
    ms = 1000 / timing.sample_rate
    blocks = max(4, min(12, -(-(timing.latency + 4 * timing.block) // timing.block)))
    end = min(signal.shape[-1], blocks * timing.block)
    times = torch.arange(end) * ms
    above.plot(times.numpy(), signal[:end].numpy(), linewidth=0.6, color="C0")
    for axis in (above, below):
        for start in range(0, end + 1, timing.block):
            axis.axvline(start * ms, color="0.6", linewidth=0.8, linestyle="--")
        axis.set_xlim(0, end * ms * 1.02)  # room for the dot of an output the last block returns
        axis.set_xlabel("time (ms)")
    for number, start in enumerate(range(0, end, timing.block)):
        above.text((start + timing.block / 2) * ms, 1.02, f"block {number + 1}", fontsize=8,
                   ha="center", va="bottom", transform=above.get_xaxis_transform())  # fmt: skip
    above.set_ylabel("amplitude")
    above.set_title(
        f"the first {end * ms:g} ms as the stream receives it: one call per block of "
        f"{timing.block} samples (dashed lines)",
        fontsize=10,
        pad=16,
    )
    # which output each call returned, in input samples received so far
    emitted: list[int] = []
    for received, count in timing.returned:
        emitted += [received] * count
    step = max(1, round(1 / timing.rate)) if timing.rate < 1 else 1
    shown = [k for k in range(len(emitted)) if emitted[k] <= end]
    shown = shown[:: max(1, -(-len(shown) // 16))]  # at most 16, spread over the blocks
    for row, k in enumerate(shown):
        at = float(k / timing.rate)
        ready = at + timing.latency + 1
        below.plot([at * ms, ready * ms], [row, row], color="C3", linewidth=2.5)
        below.plot([ready * ms, emitted[k] * ms], [row, row], color="C2", linewidth=1.2,
                   linestyle=":")  # fmt: skip
        below.plot([at * ms], [row], marker="|", color="C3", markersize=10)
        below.plot([emitted[k] * ms], [row], marker="o", color="C2", markersize=5)
    if shown:
        below.annotate(
            f"latency: {timing.latency} samples ({timing.latency * ms:.1f} ms)",
            xy=(float(shown[0] / timing.rate + timing.latency + 1) * ms, 0),
            xytext=(6, -4), textcoords="offset points", fontsize=9, color="C3", va="top",
        )  # fmt: skip
    below.set_ylim(len(shown) - 0.5, -0.8)
    below.set_yticks(range(len(shown)), [str(k) for k in shown])
    below.set_ylabel("output sample" if step == 1 else "output frame")
    frames = (
        ""
        if step == 1
        else f"; an output frame is one output time step, made every {step} input samples"
    )
    below.set_title(
        "each output: | the time it refers to, red bar: the latency until its last input, "
        f"o: the call that returned it (end of a block){frames}",
        fontsize=10,
        wrap=True,
    )


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
