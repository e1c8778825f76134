"""The ``torchstreamer`` command (also ``python -m torchstreamer``).

    torchstreamer inspect MODEL            can it stream: per-layer rate, latency, state
    torchstreamer verify MODEL             stream random signals, compare with offline
    torchstreamer bench MODEL --blocks ... time every path at several block sizes
    torchstreamer run MODEL IN OUT --block N   stream an audio file through the model
    torchstreamer export-triton MODEL DIR  write a Triton model repository (docs/serving.md)

MODEL is ``package.module:factory``, a file saved with ``torch.export.save``, or
``--example NAME`` for a built-in example. Options go before or after MODEL, IN and OUT. Exit
codes: 0 success, 1 the model cannot stream or does not match, 2 a bad command line or file.

``package.module:factory`` imports and runs that code; a ``.pt2`` file that would run code
when loaded (pickle, compiled code, eval) is refused unless ``--trust-file`` is given.

Example:
    >>> from torchstreamer.cli import main
    >>> main(["verify", "--example", "vollo_cnn", "--signals", "1"])
    vollo_cnn: exact. 1 random signal in random blocks (0 and 1 included); max relative error ...
    0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from torchstreamer.cli.show import message, reporting, stage
from torchstreamer.cli.spec import SAFETY, USAGE, CliError, LoadedModel, load_model
from torchstreamer.errors import StreamError

__all__ = ["main"]

COMMANDS = {
    "inspect": "per-layer rate, window, latency and state; can it stream?",
    "verify": "stream random signals in random blocks and compare with offline",
    "bench": "time every path at several block sizes",
    "run": "stream an audio file (WAV/FLAC) through the model",
    "export-triton": "write a Triton Inference Server model repository for the step form",
}


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


def _at_least(minimum: int, kind: type = int, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` (int or float) that is at least ``minimum``
    (``strict``: more than ``minimum``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as error:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from error
        if not value >= minimum or (strict and not value > minimum):
            least = f"more than {minimum}" if strict else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {least}, not {text}")
        return value

    return parse


_positive = _at_least(1)
_non_negative = _at_least(0, float)
_non_negative_int = _at_least(0)
_positive_number = _at_least(0, float, strict=True)


def _epilog() -> str:
    return f"{USAGE}. Options go before or after MODEL (and IN OUT). {SAFETY}."


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and one parser per command (parsed with intermixed options)."""
    parser = argparse.ArgumentParser(
        prog="torchstreamer", description="Exact streaming inference of PyTorch 1D models.",
        epilog=_epilog(),
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs = {}
    for name, summary in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary, epilog=_epilog())
        sub.add_argument(
            "model", nargs="?", metavar="MODEL", help="package.module:factory or a .pt2 file"
        )
        sub.add_argument("--example", metavar="NAME", help="a built-in example instead of MODEL")
        sub.add_argument(
            "--channels",
            type=_positive,
            help="input channels when a factory returns no example (default: the input "
            "channels of the model's first convolution or linear layer, else 1)",
        )
        sub.add_argument(
            "--trust-file",
            action="store_true",
            help="load a .pt2 file even if loading it runs code from it (pickle, compiled "
            "code, eval); only for files you trust",
        )
        subs[name] = sub
    inspect, verify, bench, run, triton = (subs[name] for name in COMMANDS)
    inspect.add_argument("--sample-rate", type=_positive, help="Hz, to show times in milliseconds")
    verify.add_argument("--signals", type=_positive, default=5, help="how many (default 5)")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument(
        "--tolerance", type=_non_negative, default=1e-5, help="relative (default 1e-5)"
    )
    bench.add_argument("--blocks", type=_blocks, default=[1, 16, 256, 4096])
    bench.add_argument("--repeats", type=_positive, default=3)
    bench.add_argument("--threads", type=_positive, default=1)
    bench.add_argument("--length", type=_positive, default=4096, help="input samples per run")
    bench.add_argument("--json", type=Path, metavar="FILE")
    bench.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="needs matplotlib (the bench extra)"
    )
    run.add_argument(
        "input", type=Path, metavar="IN",
        help="the audio file: a model that takes as many channels gets them all; a one-channel "
        "model streams each channel of the file on its own",
    )  # fmt: skip
    run.add_argument(
        "output", type=Path, metavar="OUT",
        help="the audio file written: the model's output channels; for a one-channel model, "
        "those of the file's first channel, then those of its second, and so on",
    )  # fmt: skip
    run.add_argument("--block", type=_positive, default=512, help="frames per call (default 512)")
    run.add_argument("--sample-rate", type=_positive, help="the rate the model expects, in Hz")
    run.add_argument(
        "--subtype", metavar="NAME",
        help="the output's sample format, such as PCM_16 (default: FLOAT where the format has "
        "it); one that holds only [-1, 1] refuses output outside it",
    )  # fmt: skip
    triton.add_argument("directory", type=Path, metavar="DIR", help="the model repository")
    triton.add_argument("--name", help="the model's name in the repository (default: MODEL's)")
    triton.add_argument(
        "--block", type=_non_negative_int, default=0,
        help="input samples per step call, a multiple of the frame (default: one frame)",
    )  # fmt: skip
    triton.add_argument("--max-batch-size", type=_positive, default=8)
    triton.add_argument("--instances", type=_positive, default=1)
    triton.add_argument(
        "--idle-seconds", type=_positive_number, default=10.0,
        help="Triton ends a sequence idle this long (default 10)",
    )  # fmt: skip
    triton.add_argument("--no-onnx", action="store_true", help="only the Python-backend model")
    return parser, subs


def _parse(argv: list[str]) -> argparse.Namespace:
    """Options anywhere after the command, before or after the positional arguments."""
    parser, subs = _parsers()
    index = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if index != 0 or argv[index] not in subs:
        return parser.parse_args(argv)  # help, or a usage error: no command, or options before it
    args = subs[argv[index]].parse_intermixed_args(argv[index + 1 :])
    args.command = argv[index]
    return args


def _process_age() -> Optional[float]:
    """Seconds since this process started (Linux), to time the whole command."""
    try:
        with open("/proc/self/stat") as stat:
            started = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            now = float(uptime.read().split()[0])
        return max(0.0, now - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    began = time.perf_counter()
    if argv is None:
        if Path(sys.argv[0]).stem in ("torchstreamer", "__main__"):  # the command's process
            began -= _process_age() or 0.0  # time it from the start of the process
        argv = sys.argv[1:]
    args = _parse(list(argv))
    prefix = f"torchstreamer {args.command}"
    try:
        if args.command == "run":
            if args.model is None and args.example is None:
                raise CliError(f"No model given. {USAGE}.")
            from torchstreamer.cli.run import output_format

            output_format(args.output, args.subtype)  # a bad OUT fails before any work
        if args.command == "bench" and args.plot is not None:
            _check_matplotlib()
        with reporting(prefix):
            with stage("loading the model"):
                loaded = load_model(args.model, args.example, args.channels, 4096, args.trust_file)
            return _dispatch(args, loaded, began)
    except CliError as error:
        message(f"{prefix}: {error}", error=True)
        return error.code
    except StreamError as error:  # cannot stream, or a check of the library failed
        message(f"{prefix}: {error}", error=True)
        return 1


def _dispatch(args: argparse.Namespace, loaded: LoadedModel, began: float) -> int:
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
    if args.command == "export-triton":
        return _export_triton(args, loaded)
    from torchstreamer.cli.run import run_file

    return run_file(
        loaded, args.input, args.output, args.block, args.sample_rate, began, args.subtype
    )


def _export_triton(args: argparse.Namespace, loaded: LoadedModel) -> int:
    from torchstreamer.serve.triton import export_triton

    name = args.name or "".join(c if c.isalnum() else "_" for c in loaded.name).strip("_")
    try:
        with stage("exporting the sequence step"):
            written = export_triton(
                loaded.model, loaded.example, args.directory, name=name or "stream",
                block=args.block, max_batch_size=args.max_batch_size, instances=args.instances,
                idle_seconds=args.idle_seconds, onnx=not args.no_onnx,
            )  # fmt: skip
    except ImportError as error:
        raise CliError(f"{error} (or pass --no-onnx)") from error
    for path in written:
        message(str(path))
    return 0


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise CliError(
            "--plot needs matplotlib, which is not installed: pip install "
            "'torch-streamer[bench]' (or leave out --plot)."
        ) from error
