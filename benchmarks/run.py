"""The benchmark suite: every torch-streamer path next to the offline model and the peers.

    python benchmarks/run.py                      # everything; also `make bench`
    python benchmarks/run.py --quick              # tiny signals, one repeat (a smoke test)
    python benchmarks/run.py --workloads vollo_cnn --blocks 1,16 --threads 1

Prints markdown tables (cost per input sample and its ratio to the stateless chunk floor;
per-call latency and state size; the targets of the benchmark issue), and writes JSON and a
log-log PNG (cost per sample against block size) under ``benchmarks/results/`` unless told
otherwise. Each implementation's output is checked against the offline model before it is timed;
runs are interleaved and the figure is the median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/run.py`

from benchmarks.workloads import Workload, workloads

from torchstreamer.measure import Measurement, Runner, plot_costs, runners_for, time_runners

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = {1: 512, 16: 4096, 256: 16384, 4096: 32768}  # input samples per block size
ORDER = [
    "module", "script", "graph", "step", "offline", "chunks", "cached_conv", "continual_inference",
]  # fmt: skip


class PeerAdapter(Runner):
    """A peer library's runner from ``benchmarks.peers``, seen as a :class:`Runner`."""

    def __init__(self, name: str, peer: Any) -> None:
        super().__init__()
        self.name, self.peer = name, peer

    def reset(self) -> None:
        self.peer.reset()

    def run(self, x: torch.Tensor, block: int) -> torch.Tensor:
        return self.peer.run(x, block)  # type: ignore[no-any-return]


def peer_runners(workload: Workload) -> tuple[list[Runner], dict[str, str]]:
    """The peers that can express ``workload``, and why the others cannot."""
    try:
        from benchmarks import peers
    except ImportError as error:
        return [], {"peers": f"benchmarks/peers.py not importable ({error})"}
    found: list[Runner] = []
    notes: dict[str, str] = {}
    for name in peers.PEERS:
        if not peers.installed(name):
            notes[name] = "not installed (pip install 'torch-streamer[bench]')"
            continue
        try:
            found.append(PeerAdapter(name, peers.build_peer(name, workload)))
        except peers.PeerUnsupported as reason:
            notes[name] = f"unsupported: {reason}"
    return found, notes


def signal_length(workload: Workload, block: int, quick: bool) -> int:
    if quick:
        return max(2 * block, 64)
    length = int(LENGTHS.get(block, 16 * block) * workload.length_scale)
    return max(2 * block, length // block * block)


def run(args: argparse.Namespace) -> dict[str, Any]:
    chosen = [w for w in workloads() if not args.workloads or w.name in args.workloads]
    all_threads = os.cpu_count() or 1
    thread_counts = [all_threads if t == "all" else int(t) for t in args.threads]
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": all_threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": {"blocks": args.blocks, "threads": thread_counts, "repeats": args.repeats},
        "workloads": {w.name: w.description for w in chosen},
        "peer_notes": {},
        "results": [],
    }
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for workload in chosen:
            example = workload.signal(64)
            runners = runners_for(workload.model, example, workload.module_padding)
            peers, notes = peer_runners(workload) if args.peers else ([], {})
            report["peer_notes"][workload.name] = notes
            for block in args.blocks:
                x = workload.signal(signal_length(workload, block, args.quick), seed=block)
                rows = time_runners(runners + peers, workload.model, x, block, args.repeats)
                floor = rows["chunks"].us_per_sample
                for _name, measurement in rows.items():
                    entry = {
                        "workload": workload.name, "threads": threads, "block": block,
                        "samples": x.shape[-1], **measurement.as_dict(),
                        "ratio_to_floor": _ratio(measurement, floor),
                    }  # fmt: skip
                    report["results"].append(entry)
                print(f"  {workload.name:16s} threads={threads} block={block:5d} done", flush=True)
    report["targets"] = targets(report["results"])
    return report


def _ratio(measurement: Measurement, floor: Optional[float]) -> Optional[float]:
    if measurement.us_per_sample is None or not floor:
        return None
    return measurement.us_per_sample / floor


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The benchmark issue's targets on one thread, checked against the figures."""
    one = [r for r in results if r["threads"] == 1 and r["us_per_sample"] is not None]
    checks: list[dict[str, Any]] = []

    def best_stream(workload: str, block: int) -> Optional[dict[str, Any]]:
        streams = ("module", "script", "graph", "step")
        rows = [
            r for r in one
            if (r["workload"], r["block"]) == (workload, block) and r["runner"] in streams
        ]  # fmt: skip
        return min(rows, key=lambda r: r["us_per_sample"]) if rows else None

    for workload in sorted({r["workload"] for r in one}):
        for block, limit in ((256, 1.10), (4096, 1.10), (16, 2.0)):
            row = best_stream(workload, block)
            if row is None or row["ratio_to_floor"] is None:
                continue
            checks.append({
                "target": f"{workload}, block {block}: streaming <= {limit:.2f} x chunk floor",
                "measured": f"{row['ratio_to_floor']:.2f} x ({row['runner']})",
                "holds": row["ratio_to_floor"] <= limit,
            })  # fmt: skip
    row = best_stream("seed_sequential", 1)
    if row is not None:
        checks.append({
            "target": "seed_sequential, block 1: <= 25 us per input sample",
            "measured": f"{row['us_per_sample']:.1f} us ({row['runner']})",
            "holds": row["us_per_sample"] <= 25,
        })  # fmt: skip
    steps = [r for r in one if r["workload"] == "vollo_cnn" and r["runner"] == "step"]
    if steps:
        value = min(r["us_per_sample"] for r in steps)
        checks.append({
            "target": "vollo_cnn step model: <= 25 us per step",
            "measured": f"{value:.1f} us",
            "holds": value <= 25,
        })  # fmt: skip
    bounded = [r for r in results if r["state_bounded"] is not None]
    if bounded:
        growing = sorted(
            {f"{r['workload']}/{r['runner']}" for r in bounded if not r["state_bounded"]}
        )
        checks.append({
            "target": "no path's state grows with the length of the stream",
            "measured": "grows: " + ", ".join(growing) if growing else f"{len(bounded)} checked",
            "holds": not growing,
        })  # fmt: skip
    return checks


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    machine = report["machine"]
    lines = [
        f"Machine: {machine['processor']}, {machine['cpus']} CPUs, {machine['platform']}, "
        f"torch {machine['torch']}. Microseconds per input sample (median of "
        f"{report['settings']['repeats']} runs); in brackets the ratio to the stateless chunk "
        "floor; `-` where a path does not apply, `x` where it disagrees with the offline model.",
    ]
    runners = [n for n in ORDER if any(r["runner"] == n for r in results)]
    for threads in report["settings"]["threads"]:
        lines += ["", f"**{threads} thread{'s' if threads > 1 else ''}**", ""]
        lines.append("| workload | block | " + " | ".join(runners) + " |")
        lines.append("|---|---:|" + "---:|" * len(runners))
        keys = sorted(
            {(r["workload"], r["block"]) for r in results if r["threads"] == threads},
            key=lambda k: (list(report["workloads"]).index(k[0]), k[1]),
        )
        for workload, block in keys:
            cells = []
            for name in runners:
                row = next(
                    (r for r in results if (r["workload"], r["block"], r["runner"], r["threads"])
                     == (workload, block, name, threads)), None,
                )  # fmt: skip
                cells.append(_cell(row))
            lines.append(f"| {workload} | {block} | " + " | ".join(cells) + " |")
    lines += ["", "**Per-call latency (block 1 and step model, 1 thread) and state**", ""]
    lines.append("| workload | path | median us | p99 us | state bytes | bounded |")
    lines.append("|---|---|---:|---:|---:|---|")
    for r in results:
        if r["threads"] != min(report["settings"]["threads"]) or r["latency_median_us"] is None:
            continue
        if r["block"] != 1:
            continue
        lines.append(
            f"| {r['workload']} | {r['runner']} | {r['latency_median_us']:.1f} | "
            f"{r['latency_p99_us']:.1f} | {r['state_bytes']} | {r['state_bounded']} |"
        )
    lines += ["", "**Targets (one thread)**", "", "| target | measured | holds |", "|---|---|---|"]
    for check in report["targets"]:
        lines.append(f"| {check['target']} | {check['measured']} | {check['holds']} |")
    notes = {w: n for w, n in report["peer_notes"].items() if n}
    if notes:
        lines += ["", "Peers not timed:"]
        for workload, entries in notes.items():
            for peer, why in entries.items():
                lines.append(f"- {workload} / {peer}: {why}")
    return "\n".join(lines)


def _cell(row: Optional[dict[str, Any]]) -> str:
    if row is None or row["status"].startswith("unsupported"):
        return "-"
    if row["status"] != "ok":
        return "x"
    ratio = f" ({row['ratio_to_floor']:.2f})" if row["ratio_to_floor"] is not None else ""
    return f"{row['us_per_sample']:.2f}{ratio}"


def plot(report: dict[str, Any], path: Path) -> Optional[str]:
    """Log-log cost per sample against block size, one panel per workload (fewest threads)."""
    threads = min(report["settings"]["threads"])
    results = [r for r in report["results"] if r["threads"] == threads]
    panels = {
        workload: sorted(
            (r for r in results if r["workload"] == workload),
            key=lambda r: ORDER.index(r["runner"]) if r["runner"] in ORDER else len(ORDER),
        )
        for workload in report["workloads"]
    }
    return plot_costs(panels, path, f"us per input sample ({threads} thread)")


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=None)
    parser.add_argument("--blocks", type=lambda s: [int(b) for b in s.split(",")],
                        default=[1, 16, 256, 4096])  # fmt: skip
    parser.add_argument("--threads", type=lambda s: s.split(","), default=["1", "all"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny signals and one repeat")
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--json", type=Path, default=RESULTS / "bench.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "bench.md")
    parser.add_argument("--plot", type=Path, default=RESULTS / "bench.png")
    parser.add_argument("--no-plot", dest="plot", action="store_const", const=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    report = run(args)
    table = markdown(report)
    print(table)
    for path in (args.json, args.markdown, args.plot):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    args.markdown.write_text(table + "\n")
    if args.plot is not None:
        problem = plot(report, args.plot)
        print(problem or f"plot: {args.plot}")
    print(f"json: {args.json}\nmarkdown: {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
