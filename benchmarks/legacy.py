"""torch-streamer 0.0.2, the released package this project grew from, timed as a baseline.

0.0.2 has the same import name (``torchstreamer``) as this project, so it lives in a virtual
environment of its own, ``benchmarks/.legacy-venv``, created on demand with the interpreter that
runs the benchmark and cached (a stamp file marks a finished install)::

    python -m venv benchmarks/.legacy-venv
    benchmarks/.legacy-venv/bin/pip install torch==2.13.0              # the CPU wheel, pinned
    benchmarks/.legacy-venv/bin/pip install --no-deps torch-streamer==0.0.2

and is timed in a subprocess of that environment: :func:`time_legacy` writes the workload model
(plain torch layers, which the legacy interpreter unpickles as they are), the signals and the
offline model's outputs to a temporary folder, and the worker (the ``_worker`` function of this
file, run as a script by the legacy interpreter) checks 0.0.2's ``Sequential1dStream`` against
the offline output, then times it on one thread: a fresh stream per run (0.0.2 has no
``reset``), one call per block with ``final=True`` on the last, median of the repeats.

0.0.2 streams unbatched ``[C, T]`` blocks and pads nothing, so only the seed's sequential
network (input ``[1, T]``, no padding) is timed; other workloads are reported unsupported.

    python benchmarks/legacy.py --blocks 1,16       # set up (first time) and time seed_sequential
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

RUNNER = "torchstreamer_0.0.2"
VERSION = "0.0.2"
TORCH_SPEC = "torch==2.13.0"  # the CPU wheel; an unpinned torch can pull a multi-GB CUDA build
VENV = Path(__file__).resolve().parent / ".legacy-venv"
WORKLOADS = ("seed_sequential",)  # what 0.0.2 can express exactly (see the module's doc)
_STAMP = f".installed-torch-streamer-{VERSION}"


class LegacyUnavailable(Exception):  # noqa: N818 - reads as a status
    """The 0.0.2 environment could not be made or run (the message says why)."""


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def ready(venv: Path = VENV) -> bool:
    """Whether the environment is installed (nothing is created)."""
    return (venv / _STAMP).exists() and venv_python(venv).exists()


def ensure_venv(venv: Path = VENV, python: str = sys.executable, log: Any = None) -> Path:
    """The legacy environment's interpreter, creating the environment first if needed.

    Raises:
        LegacyUnavailable: a step of the set-up failed (its output ends the message).
    """
    if ready(venv):
        return venv_python(venv)
    steps = [
        [python, "-m", "venv", "--clear", str(venv)],
        [str(venv_python(venv)), "-m", "pip", "install", "--quiet", TORCH_SPEC],
        [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--no-deps",
         f"torch-streamer=={VERSION}"],
    ]  # fmt: skip
    if log is not None:
        print(f"  setting up {venv} (torch-streamer {VERSION}, {TORCH_SPEC}) ...", file=log,
              flush=True)  # fmt: skip
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, env=_clean_env())
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise LegacyUnavailable(f"`{' '.join(step[-3:])}` failed: {' / '.join(tail)}")
    # keep the environment out of git whatever .gitignore says (as `python -m venv` does on 3.13)
    (venv / ".gitignore").write_text("*\n")
    (venv / _STAMP).write_text(f"{TORCH_SPEC}\ntorch-streamer=={VERSION}\n")
    return venv_python(venv)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def time_legacy(
    workload: str,
    model: Any,
    signals: dict[int, Any],
    repeats: int = 5,
    threads: int = 1,
    tolerance: float = 1e-4,
    venv: Path = VENV,
    log: Any = None,
) -> dict[int, dict[str, Any]]:
    """Time 0.0.2's ``Sequential1dStream`` of ``model`` on each ``signals[block]`` (``[C, T]``)
    in blocks of ``block``.

    Returns, per block, a :class:`torchstreamer.measure.Measurement`-shaped dict (``runner``,
    ``status``, ``us_per_sample``, ``max_error``, ``latency_median_us``, ``latency_p99_us``,
    ``runs_us``; state fields ``None``). A block where 0.0.2 fails or disagrees has a status
    other than ``"ok"`` and no time.

    Raises:
        LegacyUnavailable: the workload is not one 0.0.2 can express, or its environment could
            not be made, or the worker died.
    """
    import torch

    if workload not in WORKLOADS:
        raise LegacyUnavailable(f"torch-streamer {VERSION} cannot express {workload}")
    python = ensure_venv(venv, log=log)
    with tempfile.TemporaryDirectory(prefix="legacy-bench-") as folder, torch.inference_mode():
        payload = Path(folder) / "payload.pt"
        torch.save(
            {
                "workload": workload,
                # torch's own layers only: the legacy interpreter unpickles the model itself
                "model": model,
                "signals": {b: x.detach().clone() for b, x in signals.items()},
                "expected": {b: _first(model(x)).detach().clone() for b, x in signals.items()},
                "repeats": repeats,
                "threads": threads,
                "tolerance": tolerance,
            },
            payload,
        )
        out = Path(folder) / "result.json"
        env = _clean_env()
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        done = subprocess.run(
            [str(python), str(Path(__file__).resolve()), "--worker", str(payload), str(out)],
            capture_output=True, text=True, env=env, cwd=folder,
        )  # fmt: skip
        if done.returncode != 0 or not out.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise LegacyUnavailable(f"worker failed: {' / '.join(tail)}")
        found = json.loads(out.read_text())
    return {int(b): m for b, m in found.items()}


def _first(y: Any) -> Any:
    return y[0] if isinstance(y, tuple) else y


# ---- the worker: runs under the legacy interpreter, imports 0.0.2's ``torchstreamer`` ----------


def _worker(payload_path: str, out_path: str) -> None:  # pragma: no cover - legacy interpreter
    import importlib.metadata
    import statistics
    import time

    import torch

    import torchstreamer as legacy  # 0.0.2: the benchmark's own package is not on this path

    found = importlib.metadata.version("torch-streamer")
    if found != VERSION:
        raise SystemExit(f"expected torch-streamer {VERSION}, found {found} ({legacy.__file__})")
    payload = torch.load(payload_path, weights_only=False)  # our own file, written just now
    torch.set_num_threads(int(payload["threads"]))
    model = payload["model"].eval()

    def run(
        stream: Any, x: torch.Tensor, block: int, calls: Optional[list[float]] = None
    ) -> torch.Tensor:
        outputs = []
        length = x.shape[-1]
        for start in range(0, length, block):
            piece = x[..., start : start + block]
            final = start + block >= length
            begin = time.perf_counter()
            y = stream(piece, final=final)
            if calls is not None:
                calls.append(time.perf_counter() - begin)
            if y is not None:
                outputs.append(y)
        return torch.cat(outputs, -1)

    results: dict[int, dict[str, Any]] = {}
    with torch.inference_mode():
        for block, x in payload["signals"].items():
            expected = payload["expected"][block]
            entry: dict[str, Any] = {
                "runner": RUNNER, "status": "ok", "us_per_sample": None, "max_error": None,
                "latency_median_us": None, "latency_p99_us": None, "state_bytes": None,
                "state_bounded": None, "runs_us": [],
            }  # fmt: skip
            results[block] = entry
            # 0.0.2 has no reset: a new stream for every run, made before its clock starts
            try:
                y = run(legacy.Sequential1dStream(model), x, block)
            except Exception as error:
                entry["status"] = f"unsupported: {str(error).splitlines()[0][:120]}"
                continue
            if y.shape != expected.shape:
                entry["status"] = f"disagrees: shape {list(y.shape)}"
                continue
            entry["max_error"] = float((y - expected).abs().max())
            if entry["max_error"] > payload["tolerance"] * max(1.0, float(expected.abs().max())):
                entry["status"] = "disagrees"
                continue
            for _ in range(int(payload["repeats"])):
                stream = legacy.Sequential1dStream(model)
                begin = time.perf_counter()
                run(stream, x, block)
                entry["runs_us"].append((time.perf_counter() - begin) * 1e6)
            entry["us_per_sample"] = statistics.median(entry["runs_us"]) / x.shape[-1]
            if block == 1:
                calls: list[float] = []
                run(legacy.Sequential1dStream(model), x, block, calls)
                ordered = sorted(calls)
                entry["latency_median_us"] = statistics.median(calls) * 1e6
                entry["latency_p99_us"] = ordered[round(0.99 * (len(ordered) - 1))] * 1e6
    Path(out_path).write_text(json.dumps(results))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="time torch-streamer 0.0.2 (seed_sequential)")
    parser.add_argument("--worker", nargs=2, metavar=("PAYLOAD", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=lambda s: [int(b) for b in s.split(",")], default=[1, 16])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.workloads import workloads

    workload = next(w for w in workloads() if w.name == "seed_sequential")
    signals = {b: workload.signal(max(2 * b, args.length // b * b), seed=b) for b in args.blocks}
    for block, m in time_legacy(workload.name, workload.model, signals, args.repeats,
                                log=sys.stderr).items():  # fmt: skip
        time_ = f"{m['us_per_sample']:.2f} us/sample" if m["us_per_sample"] else "-"
        print(f"{RUNNER} seed_sequential block {block}: {m['status']} {time_}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
