"""`make demo`: stream a built-in network and print its exactness and speed.

Streams the original overview's sequential network (``Conv1d``/``GELU``/strided convolutions,
average pooling, transposed convolutions; 128 channels) over a random signal in blocks of
several sizes, checks every result against the offline forward and prints a table of the
maximum error and the cost per input sample, streamed and offline, on one CPU thread.

Example:
    >>> from torchstreamer.demo import measure, seed_network
    >>> row = measure(seed_network(channels=8), length=256, block=16, repeats=1)
    >>> row["max_error"] < 1e-5
    True
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from torchstreamer.streams.containers import Sequential1dStream

__all__ = ["main", "measure", "seed_network"]


def seed_network(channels: int = 128) -> nn.Sequential:
    """The sequential network of the original torch-streamer overview."""
    net = nn.Sequential(
        nn.Conv1d(1, channels, 1), nn.GELU(),
        nn.Conv1d(channels, channels, 2, stride=2), nn.GELU(),
        nn.Conv1d(channels, channels, 2, stride=2), nn.AvgPool1d(2),
        nn.ConvTranspose1d(channels, channels, 2, stride=2), nn.GELU(),
        nn.ConvTranspose1d(channels, channels, 2, stride=2), nn.GELU(),
        nn.Conv1d(channels, 1, 1),
    )  # fmt: skip
    net.eval()
    return net


def _stream_all(stream: Sequential1dStream, x: torch.Tensor, block: int) -> torch.Tensor:
    outputs = [stream(x[:, i : i + block]) for i in range(0, x.shape[-1], block)]
    outputs.append(stream(x[:, :0], final=True))
    return torch.cat([y for y in outputs if y is not None], -1)


def measure(net: nn.Sequential, length: int, block: int, repeats: int = 5) -> dict[str, float]:
    """Stream a random ``[1, length]`` signal in blocks of ``block``; return error and timings.

    Times are medians over ``repeats`` runs, in microseconds per input sample.
    """
    stream = Sequential1dStream(net)
    x = torch.randn(1, length)
    stream_times, offline_times = [], []
    with torch.no_grad():
        expected = net(x)
        for _ in range(repeats):
            start = time.perf_counter()
            y = _stream_all(stream, x, block)
            stream_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            net(x)
            offline_times.append(time.perf_counter() - start)
    error = float((y - expected).abs().max()) if y.shape == expected.shape else float("inf")
    stream_us = statistics.median(stream_times) / length * 1e6
    offline_us = statistics.median(offline_times) / length * 1e6
    return {
        "block": block,
        "max_error": error,
        "stream_us": stream_us,
        "offline_us": offline_us,
        "ratio": stream_us / offline_us,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return a process exit code (1 when a stream is not exact)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=16_384, help="signal length in samples")
    parser.add_argument("--blocks", default="1,16,256,4096", help="block sizes, comma separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per block size")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = seed_network()
    print("Streaming the overview's sequential network (128 channels), one CPU thread,")
    print(f"a random signal of {args.length} samples; times are medians of {args.repeats} runs.\n")
    print("| block | max error vs offline | stream us/sample | offline us/sample | ratio |")
    print("|---:|---:|---:|---:|---:|")
    exact = True
    for block in (int(b) for b in args.blocks.split(",")):
        length = min(args.length, 2048) if block == 1 else args.length
        row = measure(net, length, block, args.repeats)
        exact &= row["max_error"] <= 1e-5
        print(
            f"| {block} | {row['max_error']:.1e} | {row['stream_us']:.2f} | "
            f"{row['offline_us']:.2f} | {row['ratio']:.1f} |"
        )
    print("\nexact: every stream equals the offline forward" if exact else "\nMISMATCH")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
