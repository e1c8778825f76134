"""Load figures: how many concurrent real-time streams one CPU core serves.

    python benchmarks/serving.py                 # the stream pool (torchstreamer.StreamPool)
    .venv-serving/bin/python benchmarks/serving.py --triton   # also a real Triton server
    python benchmarks/serving.py --quick         # a smoke test

Each stream is a 16 kHz signal in 10 ms blocks (160 samples). Streams join and leave at random
ticks (a stream lasts 0.2 to 1 s, then its slot serves a new signal), so rows are never in
step. **Pool**: one thread; a tick feeds every open slot its block in one ``pool.feed`` call;
the pool keeps up with N streams when the median tick takes at most 10 ms. The figure is the
largest such N (doubling, then bisection). **Triton**: the repository of
``torchstreamer.export_triton`` on a local ``tritonserver`` (Python backend, one instance, one
torch thread); N client threads each send a block every 10 ms with sequence ids, start and end
flags; per-request latency p50 and p99 and whether the server kept up. Clients and server
share this machine's cores, so these figures are a floor.

Writes ``benchmarks/results/serving.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/serving.py`

import torchstreamer as pts
from torchstreamer.examples.models import seed_sequential, vollo_cnn

RESULTS = Path(__file__).resolve().parent / "results"
RATE, BLOCK = 16000, 160  # 10 ms blocks at 16 kHz
TICK = BLOCK / RATE
TARGETS = {"vollo_cnn": 100}  # streams per core through the pool (issue 14)

WORKLOADS: dict[str, Callable[[], tuple[torch.nn.Module, torch.Tensor]]] = {
    "vollo_cnn": lambda: (vollo_cnn().eval(), torch.randn(1, 32, 4 * BLOCK)),
    "seed_sequential": lambda: (seed_sequential().eval(), torch.randn(1, 1, 4096)),
}


def tick_seconds(model: torch.nn.Module, example: torch.Tensor, streams: int, ticks: int) -> float:
    """The median time of a pool tick with ``streams`` open slots that join and leave at
    random (one thread)."""
    pool = pts.StreamPool(model, example, slots=streams)
    rng = random.Random(streams)
    block = torch.randn(*example.shape[:-1], BLOCK)
    left = {pool.open(): rng.randint(1, 100) for _ in range(streams)}
    times = []
    with torch.no_grad():
        for _ in range(ticks):
            began = time.perf_counter()
            for slot in [s for s, n in left.items() if n == 0]:
                pool.close(slot)
                del left[slot]
                left[pool.open()] = rng.randint(20, 100)  # 0.2 to 1 s
            pool.feed(dict.fromkeys(left, block))
            left = {s: n - 1 for s, n in left.items()}
            times.append(time.perf_counter() - began)
    return statistics.median(times[2:])


def pool_capacity(name: str, quick: bool) -> dict[str, Any]:
    """The most real-time streams the pool serves on one thread."""
    model, example = WORKLOADS[name]()
    ticks = 6 if quick else 30
    measured: dict[int, float] = {}

    def keeps_up(n: int) -> bool:
        measured[n] = tick_seconds(model, example, n, ticks)
        return measured[n] <= TICK

    if quick:  # one small measurement: the report's shape, not a figure
        low = 2 if keeps_up(2) else 0
    else:  # double until a tick takes longer than real time, then bisect to 5 %
        low, high = 0, 8
        while keeps_up(high):
            low, high = high, high * 2
        while high - low > max(1, low // 20):
            middle = (low + high) // 2
            low, high = (middle, high) if keeps_up(middle) else (low, middle)
    return {
        "workload": name,
        "batched": pts.StreamPool(model, example, slots=2).batched,
        "streams": low,
        "tick_ms": {str(n): round(t * 1e3, 3) for n, t in sorted(measured.items())},
        "target": TARGETS.get(name),
    }


def triton_latency(streams_list: list[int], seconds: float) -> list[dict[str, Any]]:
    """p50/p99 request latency of ``streams`` real-time clients on a local Triton server."""
    import tritonclient.grpc as grpc

    from torchstreamer.serve.server import LocalTriton

    model, example = WORKLOADS["vollo_cnn"]()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        pts.export_triton(model, example, root, name="vollo", block=BLOCK, max_batch_size=64,
                          onnx=False)  # fmt: skip
        with LocalTriton(root) as server:
            for streams in streams_list:
                rows.append(_drive(grpc, server.grpc_url, streams, seconds))
                rows[-1]["server_ready_s"] = round(server.started_in, 2)
    return rows


def _drive(grpc: Any, url: str, streams: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    late = [0]
    lock = threading.Lock()
    blocks = int(seconds / TICK)
    data = torch.randn(1, 32, BLOCK).numpy()

    def client(index: int) -> None:
        connection = grpc.InferenceServerClient(url)
        time.sleep(random.Random(index).uniform(0, TICK))
        due = time.perf_counter()
        for b in range(blocks):
            tensor = grpc.InferInput("in_signal", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            began = time.perf_counter()
            connection.infer("vollo", [tensor], sequence_id=10_000 * streams + index + 1,
                             sequence_start=b == 0, sequence_end=b == blocks - 1)  # fmt: skip
            done = time.perf_counter()
            with lock:
                latencies.append(done - began)
            due += TICK
            if done > due:
                with lock:
                    late[0] += 1
            else:
                time.sleep(due - done)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {
        "streams": streams,
        "requests": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 2),
        "late_fraction": round(late[0] / max(1, len(latencies)), 3),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "## Serving load (16 kHz streams in 10 ms blocks, one CPU core)",
        "",
        "| workload | pool form | real-time streams | target | tick ms at N streams |",
        "|---|---|---:|---:|---|",
    ]
    for row in report["pool"]:
        ticks = ", ".join(f"{n}: {t}" for n, t in row["tick_ms"].items())
        target = f">= {row['target']}" if row["target"] else "-"
        form = "batched rows" if row["batched"] else "one stream per slot"
        lines.append(f"| {row['workload']} | {form} | {row['streams']} | {target} | {ticks} |")
    title = "### Triton (vollo_cnn, Python backend, local server, clients on the same machine)"
    lines += ["", title, ""]
    if isinstance(report["triton"], str):
        lines.append(f"Not measured: {report['triton']}.")
    else:
        lines += [
            "| streams | requests | p50 ms | p99 ms | late blocks |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in report["triton"]:
            lines.append(
                f"| {row['streams']} | {row['requests']} | {row['p50_ms']} | {row['p99_ms']} | "
                f"{row['late_fraction']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs: a smoke test")
    parser.add_argument("--triton", action="store_true", help="also a local Triton server")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "pool": [pool_capacity(name, args.quick) for name in WORKLOADS],
        "triton": "run with --triton from make test-serving's venv (.venv-serving)",
    }
    if args.triton:
        from torchstreamer.serve.server import serving_environment_problem

        problem = serving_environment_problem()
        if problem:
            report["triton"] = problem
        else:
            counts = [2] if args.quick else [25, 50, 100]
            report["triton"] = triton_latency(counts, 1.0 if args.quick else 4.0)
    text = markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(report, indent=2))
    (args.out / "serving.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
