"""The ``torchstreamer`` command (also ``python -m torchstreamer``).

    torchstreamer inspect MODEL            can it stream: per-layer rate, latency, state
    torchstreamer verify MODEL             stream random signals, compare with offline
    torchstreamer bench MODEL --blocks ... time every path at several block sizes
    torchstreamer run MODEL IN OUT --block N   stream an audio file through the model

MODEL is ``package.module:factory``, a file saved with ``torch.export.save``, or
``--example NAME`` for a built-in example. Exit codes: 0 success, 1 the model cannot stream or
does not match, 2 a bad command line or file.

Example:
    >>> from torchstreamer.cli import main
    >>> main(["verify", "--example", "vollo_cnn", "--signals", "1"])
    vollo_cnn: exact. 1 random signals in random blocks (0 and 1 included); max relative error ...
    0
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from torchstreamer.cli.show import message
from torchstreamer.cli.spec import USAGE, CliError, load_model
from torchstreamer.errors import StreamError

__all__ = ["main"]


def _blocks(text: str) -> list[int]:
    try:
        blocks = [int(b) for b in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"blocks must be integers like 1,16,256: {text!r}"
        ) from error
    if any(b < 1 for b in blocks):
        raise argparse.ArgumentTypeError("block sizes must be at least 1")
    return blocks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchstreamer", description="Exact streaming inference of PyTorch 1D models.",
        epilog=USAGE + ".",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, epilog=USAGE + ".")
        sub.add_argument(
            "model", nargs="?", metavar="MODEL", help="package.module:factory or a .pt2 file"
        )
        sub.add_argument("--example", metavar="NAME", help="a built-in example instead of MODEL")
        sub.add_argument(
            "--channels",
            type=int,
            default=1,
            help="input channels when a factory returns no example (default 1)",
        )
        return sub

    inspect = command("inspect", "per-layer rate, window, latency and state; can it stream?")
    inspect.add_argument("--sample-rate", type=int, help="Hz, to show times in milliseconds")
    verify = command("verify", "stream random signals in random blocks and compare with offline")
    verify.add_argument("--signals", type=int, default=5)
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--tolerance", type=float, default=1e-5, help="relative (default 1e-5)")
    bench = command("bench", "time every path at several block sizes")
    bench.add_argument("--blocks", type=_blocks, default=[1, 16, 256, 4096])
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--length", type=int, default=4096, help="input samples per run")
    bench.add_argument("--json", type=Path, metavar="FILE")
    bench.add_argument("--plot", type=Path, metavar="FILE.png")
    run = command("run", "stream an audio file (WAV/FLAC) through the model")
    run.add_argument("input", type=Path, metavar="IN")
    run.add_argument("output", type=Path, metavar="OUT")
    run.add_argument("--block", type=int, default=512, help="frames per call (default 512)")
    run.add_argument("--sample-rate", type=int, help="the rate the model expects, in Hz")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run" and args.model is None and args.example is None:
            raise CliError(f"No model given. {USAGE}.")
        loaded = load_model(args.model, args.example, args.channels)
        if args.command == "inspect":
            from torchstreamer.cli.inspect import inspect_model

            return inspect_model(loaded, args.sample_rate)
        if args.command == "verify":
            from torchstreamer.cli.verify import verify_model

            return verify_model(loaded, args.signals, args.seed, args.tolerance)
        if args.command == "bench":
            from torchstreamer.cli.bench import bench_model

            return bench_model(
                loaded, args.blocks, args.repeats, args.threads, args.json, args.plot, args.length
            )
        from torchstreamer.cli.run import run_file

        return run_file(loaded, args.input, args.output, args.block, args.sample_rate)
    except CliError as error:
        message(f"torchstreamer {args.command}: {error}", error=True)
        return error.code
    except StreamError as error:  # cannot stream, or a check of the library failed
        message(f"torchstreamer {args.command}: {error}", error=True)
        return 1
