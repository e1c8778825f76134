"""Build and tooling times: how long the library takes before and around streaming.

Three probes, each in a fresh interpreter of its own (so that none inherits another's warm
caches, and the figures are what a user's first call costs), on one thread, timed after the
imports:

* ``build``: ``torchstreamer.stream(vocoder, example)`` on the benchmark's vocoder workload
  (target: under 3 s).
* ``inspect``: ``torchstreamer.cli.main(["inspect", "--example", "vollo_cnn"])`` with its output
  captured (target: under 5 s).
* ``run``: ``torchstreamer.cli.main(["run", "--example", "filterbank", IN, OUT, "--block",
  "160"])`` on a 3 s, 16 kHz WAV of noise written with soundfile; then, in the same process, the
  time spent in stream calls alone (a stream built the same way, the same signal in the same
  blocks and the final flush) and in file I/O alone (reading IN, writing the output). The rest
  of the wall time is outside streaming and file I/O (target: under 5 % of the wall time).

    python benchmarks/tooling.py            # the three probes, as JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

__all__ = ["LIMITS", "PROBES", "measure_tooling"]

PROBES = ("build", "inspect", "run")
LIMITS = {"build": 3.0, "inspect": 5.0, "run": 0.05}  # seconds, seconds, share of wall time
RUN_SECONDS = 3.0
RUN_RATE = 16000
RUN_BLOCK = 160


def measure_tooling(timeout: float = 300.0) -> list[dict[str, Any]]:
    """Run every probe in its own interpreter; one dict per probe (``probe``, ``status`` and the
    figures, or why it failed)."""
    rows = []
    for probe in PROBES:
        try:
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--probe", probe],
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            rows.append({"probe": probe, "status": f"failed: over {timeout:.0f} s"})
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
            rows.append({"probe": probe, "status": f"failed: {tail[0][:160]}"})
            continue
        rows.append(json.loads(lines[-1]))
    return rows


# ---- the probes: each runs as `python benchmarks/tooling.py --probe NAME` ----------------------


def _probe(name: str) -> dict[str, Any]:  # pragma: no cover - runs in a subprocess
    import contextlib
    import io
    import tempfile
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    torch.set_num_threads(1)
    import torchstreamer
    from torchstreamer.cli import main

    def quiet() -> contextlib.ExitStack:  # the command's output, captured
        stack = contextlib.ExitStack()
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        return stack

    if name == "build":
        from benchmarks.workloads import workloads

        vocoder = next(w for w in workloads() if w.name == "vocoder")
        example = vocoder.signal(64)  # the example the benchmark streams it with
        start = time.perf_counter()
        torchstreamer.stream(vocoder.model, example)
        return {"probe": name, "status": "ok", "seconds": time.perf_counter() - start}
    if name == "inspect":
        start = time.perf_counter()
        with quiet():
            code = main(["inspect", "--example", "vollo_cnn"])
        seconds = time.perf_counter() - start
        return {"probe": name, "status": "ok" if code == 0 else f"failed: exit {code}",
                "seconds": seconds}  # fmt: skip
    if name != "run":
        raise SystemExit(f"unknown probe {name!r}")
    import numpy as np
    import soundfile

    from torchstreamer.cli.spec import load_model

    temporary = tempfile.TemporaryDirectory(prefix="tooling-bench-")
    folder = Path(temporary.name)
    source, target = folder / "in.wav", folder / "out.wav"
    noise = np.random.default_rng(0).standard_normal(int(RUN_SECONDS * RUN_RATE))
    soundfile.write(str(source), (0.1 * noise).astype(np.float32), RUN_RATE)
    start = time.perf_counter()
    with quiet():
        code = main(["run", "--example", "filterbank", str(source), str(target),
                     "--block", str(RUN_BLOCK)])  # fmt: skip
    wall = time.perf_counter() - start
    if code != 0:
        return {"probe": name, "status": f"failed: exit {code}", "wall_s": wall}
    # the same work, taken apart: file I/O alone, then stream calls alone
    start = time.perf_counter()
    data, rate = soundfile.read(str(source), dtype="float32", always_2d=True)
    io_s = time.perf_counter() - start
    loaded = load_model(None, "filterbank")
    stream = torchstreamer.stream(loaded.model, loaded.example)
    signal = torch.from_numpy(data.T.copy()).reshape(*loaded.example.shape[:-1], -1)
    outputs = []
    with torch.inference_mode():
        start = time.perf_counter()
        for begin in range(0, signal.shape[-1], RUN_BLOCK):
            y = stream(signal[..., begin : begin + RUN_BLOCK])
            if y is not None:
                outputs.append(y)
        y = stream(signal[..., :0], final=True)
        stream_s = time.perf_counter() - start
    if y is not None:
        outputs.append(y)
    result = torch.cat(outputs, -1)
    result = result.reshape(-1, result.shape[-1])
    written, _ = soundfile.read(str(target), always_2d=True)
    start = time.perf_counter()
    soundfile.write(str(folder / "again.wav"), result.T.numpy(), int(rate * stream.rate))
    io_s += time.perf_counter() - start
    temporary.cleanup()
    outside = max(0.0, wall - stream_s - io_s)
    return {
        "probe": name, "status": "ok", "wall_s": wall, "stream_s": stream_s, "io_s": io_s,
        "outside_s": outside, "outside_share": outside / wall,
        "frames": int(signal.shape[-1]), "output_frames": int(written.shape[0]),
    }  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--probe"] and len(args) == 2:
        print(json.dumps(_probe(args[1])))
        return 0
    print(json.dumps(measure_tooling(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
