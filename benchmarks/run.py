"""The benchmark suite: every torch-streamer path next to the offline model and the peers.

    python benchmarks/run.py                      # everything; also `make bench`
    python benchmarks/run.py --quick              # tiny signals, one repeat (a smoke test)
    python benchmarks/run.py --workloads vollo_cnn --blocks 1,16 --threads 1
    python benchmarks/run.py --no-legacy --no-tooling   # without 0.0.2 and the tooling probes
    python benchmarks/run.py --real               # only the real codec models, one thread
    python benchmarks/run.py --no-real            # without them

Prints markdown tables (cost per input sample and its ratio to the stateless chunk floor;
per-call latency and state size; build and tooling times; the targets of the benchmark issue),
and writes JSON and a log-log PNG (cost per sample against block size) under
``benchmarks/results/`` unless told otherwise. Each implementation's output is checked against
the offline model before it is timed; runs are interleaved and the figure is the median of the
repeats.

Besides the library's faces (module, script, graph, step), the offline model, the stateless
chunks and the peers (``benchmarks/peers.py``), two baselines are timed:

* ``ring_buffer`` (``benchmarks/baselines.py``): a hand-written eager one-sample step for the
  causal CNNs (vollo_cnn, tcn);
* ``torchstreamer_0.0.2`` (``benchmarks/legacy.py``): the released torch-streamer 0.0.2 on the
  seed's sequential network, in a virtual environment of its own (``benchmarks/.legacy-venv``,
  made on first use: a pinned CPU torch and the package, about 30 s and 900 MB) and a
  subprocess, since it has the same import name.

The real codec models of issue 13 (Mimi, EnCodec and DAC encoders and decoders as shipped, with
moshi's own streaming as a peer: ``benchmarks/real.py``) are a section of their own, with their
own blocks (the hop and 8 hops) and targets; the full run includes them when their packages
import (else the report says why not), ``--real`` runs them alone (by default on one thread,
writing ``benchmarks/results/real.{json,md}``).
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

from benchmarks import legacy, real
from benchmarks.baselines import RingBufferUnsupported, ring_buffer_runner
from benchmarks.tooling import LIMITS, RUN_BLOCK, RUN_SECONDS, measure_tooling
from benchmarks.workloads import Workload, workloads

from torchstreamer.measure import Measurement, Runner, plot_costs, runners_for, time_runners

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = {1: 512, 16: 4096, 256: 16384, 4096: 32768}  # input samples per block size
ORDER = [
    "module", "script", "graph", "step", "step_1", "ring_buffer", "offline", "chunks",
    legacy.RUNNER,
    "cached_conv", "continual_inference",
]  # fmt: skip
FACES = ("module", "script", "graph", "step")  # the library's ways to stream a model


class PeerAdapter(Runner):
    """A peer library's runner from ``benchmarks.peers``, seen as a :class:`Runner`."""

    def __init__(self, name: str, peer: Any) -> None:
        super().__init__()
        self.name, self.peer = name, peer

    def reset(self) -> None:
        self.peer.reset()

    def run(self, x: torch.Tensor, block: int) -> torch.Tensor:
        return self.peer.run(x, block)


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


def baseline_runners(workload: Workload) -> tuple[list[Runner], dict[str, str]]:
    """The hand-written baselines that apply to ``workload`` (the ring-buffer step of a causal
    CNN), and why a causal workload has none."""
    if not workload.causal:
        return [], {}
    try:
        return [ring_buffer_runner(workload)], {}
    except RingBufferUnsupported as reason:
        return [], {"ring_buffer": f"unsupported: {reason}"}


def legacy_rows(
    workload: Workload, signals: dict[int, torch.Tensor], repeats: int, threads: int
) -> tuple[dict[int, Measurement], dict[str, str]]:
    """torch-streamer 0.0.2 timed on ``signals[block]`` (a subprocess of its own environment),
    or why not."""
    if workload.name not in legacy.WORKLOADS:
        return {}, {}
    try:
        found = legacy.time_legacy(
            workload.name, workload.model, signals, repeats, threads, log=sys.stdout
        )
    except legacy.LegacyUnavailable as reason:
        return {}, {legacy.RUNNER: str(reason)}
    return {block: Measurement(**entry) for block, entry in found.items()}, {}


def signal_length(workload: Workload, block: int, quick: bool) -> int:
    if quick:
        return max(2 * block, 64)
    length = int(LENGTHS.get(block, 16 * block) * workload.length_scale)
    return max(2 * block, length // block * block)


def run(args: argparse.Namespace) -> dict[str, Any]:
    chosen = [] if args.real else workloads()  # --real: the real codec models alone
    chosen = [w for w in chosen if not args.workloads or w.name in args.workloads]
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
        "settings": {
            "blocks": args.blocks, "threads": thread_counts, "repeats": args.repeats,
            "legacy": args.legacy, "tooling": args.tooling, "real": args.real_included,
        },
        "workloads": {w.name: w.description for w in chosen},
        "peer_notes": {},
        "results": [],
        "tooling": [],
    }  # fmt: skip
    if args.tooling:  # first, in fresh interpreters: nothing below warms their caches
        print("  build and tooling times ...", flush=True)
        report["tooling"] = measure_tooling()
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for workload in chosen:
            example = workload.signal(64)
            runners = runners_for(workload.model, example, workload.module_padding)
            baselines, notes = baseline_runners(workload)
            peers, peer_notes = peer_runners(workload) if args.peers else ([], {})
            notes.update(peer_notes)
            signals = {
                block: workload.signal(signal_length(workload, block, args.quick), seed=block)
                for block in args.blocks
            }
            old: dict[int, Measurement] = {}
            if args.legacy:
                old, legacy_notes = legacy_rows(workload, signals, args.repeats, threads)
                notes.update(legacy_notes)
            report["peer_notes"][workload.name] = notes
            for block in args.blocks:
                x = signals[block]
                rows = time_runners(
                    runners + baselines + peers, workload.model, x, block, args.repeats
                )
                if block in old:
                    rows[legacy.RUNNER] = old[block]
                floor = rows["chunks"].us_per_sample
                for _name, measurement in rows.items():
                    entry = {
                        "workload": workload.name, "threads": threads, "block": block,
                        "samples": x.shape[-1], **measurement.as_dict(),
                        "ratio_to_floor": _ratio(measurement, floor),
                    }  # fmt: skip
                    report["results"].append(entry)
                print(f"  {workload.name:16s} threads={threads} block={block:5d} done", flush=True)
    report["targets"] = targets(report["results"], report["tooling"])
    real_names = [n for n in real.REAL_WORKLOADS if not args.workloads or n in args.workloads]
    if args.real_included and real_names:
        print("  real codec models ...", flush=True)
        report["real"] = real.run_real(
            real_names,
            tuple(thread_counts),
            args.repeats,
            args.quick,
            sys.stdout,
            args.real_frames,
        )
        report["targets"] += report["real"]["targets"]
    return report


def _ratio(measurement: Measurement, floor: Optional[float]) -> Optional[float]:
    if measurement.us_per_sample is None or not floor:
        return None
    return measurement.us_per_sample / floor


def targets(
    results: list[dict[str, Any]], tooling: Optional[list[dict[str, Any]]] = None
) -> list[dict[str, Any]]:
    """The benchmark issue's targets on one thread, checked against the figures.

    ``results`` are the rows of the report (``workload``, ``threads``, ``block``, ``runner``,
    ``status``, ``us_per_sample``, ``ratio_to_floor``, ``state_bounded``); ``tooling`` the rows
    of :func:`benchmarks.tooling.measure_tooling`. A target whose figures are missing (a
    workload, block or runner that was not run) is left out. Returns rows of ``target``,
    ``measured`` and ``holds``.
    """
    single = [r for r in results if r["threads"] == 1]
    one = [r for r in single if r["us_per_sample"] is not None]
    checks: list[dict[str, Any]] = []

    def row(workload: str, block: int, runner: str) -> Optional[dict[str, Any]]:
        key = (workload, block, runner)
        return next((r for r in one if (r["workload"], r["block"], r["runner"]) == key), None)

    def best_stream(workload: str, block: int) -> Optional[dict[str, Any]]:
        rows = [r for r in one if (r["workload"], r["block"]) == (workload, block)
                and r["runner"] in FACES]  # fmt: skip
        return min(rows, key=lambda r: r["us_per_sample"]) if rows else None

    def faces(workload: str, block: int, names: tuple[str, ...] = FACES) -> list[dict[str, Any]]:
        """The faces that apply at (workload, block): timed, or disagreeing / failing."""
        return [
            r for r in single
            if (r["workload"], r["block"]) == (workload, block) and r["runner"] in names
            and not r["status"].startswith("unsupported")
        ]  # fmt: skip

    def broken(rows: list[dict[str, Any]]) -> str:
        bad = [f"{r['runner']} {r['status'].split(':')[0]}" for r in rows if r["status"] != "ok"]
        return "; ".join(bad)

    workloads_ = sorted({r["workload"] for r in single})
    # torch-streamer 0.0.2 against the module stream, on the seed's sequential network
    for block, factor in ((1, 10.0), (16, 5.0)):
        mine = row("seed_sequential", block, "module")
        old = row("seed_sequential", block, legacy.RUNNER)
        if mine is None or old is None:
            continue
        speedup = old["us_per_sample"] / mine["us_per_sample"]
        checks.append({
            "target": f"seed_sequential, block {block}: module >= {factor:g} x faster than "
            f"torch-streamer 0.0.2",
            "measured": f"{speedup:.2f} x (module {mine['us_per_sample']:.1f}, 0.0.2 "
            f"{old['us_per_sample']:.1f} us per sample)",
            "holds": speedup >= factor,
        })  # fmt: skip
    # every face against the stateless chunk floor
    blocks = sorted({r["block"] for r in single})
    for workload in workloads_:
        for block in [b for b in blocks if b >= 256] + [b for b in blocks if b == 16]:
            limit = 1.10 if block >= 256 else 1.5
            floor = row(workload, block, "chunks")
            rows = faces(workload, block)
            timed = [r for r in rows if r["status"] == "ok" and r["ratio_to_floor"] is not None]
            if floor is None or not rows:
                continue
            measured = []
            if timed:
                worst = max(timed, key=lambda r: r["ratio_to_floor"])
                best = min(timed, key=lambda r: r["ratio_to_floor"])
                measured.append(f"worst {worst['ratio_to_floor']:.2f} x ({worst['runner']})")
                if best is not worst:
                    measured.append(f"best {best['ratio_to_floor']:.2f} x ({best['runner']})")
            if broken(rows):
                measured.append(broken(rows))
            checks.append({
                "target": f"{workload}, block {block}: every face <= {limit:.2f} x chunk floor",
                "measured": "; ".join(measured),
                "holds": not broken(rows) and all(r["ratio_to_floor"] <= limit for r in timed),
            })  # fmt: skip
    # block 1: the module and graph streams against the step model, where there is one
    for workload in workloads_:
        step = row(workload, 1, "step")
        rows = faces(workload, 1, ("module", "graph"))
        if step is None or not rows:
            continue
        timed = [r for r in rows if r["status"] == "ok"]
        ratios = {r["runner"]: r["us_per_sample"] / step["us_per_sample"] for r in timed}
        ordered = sorted(ratios.items(), key=lambda kv: -kv[1])
        measured = [f"{name} {ratio:.2f} x" for name, ratio in ordered]
        if broken(rows):
            measured.append(broken(rows))
        checks.append({
            "target": f"{workload}, block 1: module and graph streams <= 1.20 x step",
            "measured": ", ".join(measured) + f" (step {step['us_per_sample']:.1f} us)",
            "holds": not broken(rows) and all(v <= 1.2 for v in ratios.values()),
        })  # fmt: skip
    # the Vollo CNN's one-sample step against a hand-written eager ring buffer (one call per
    # sample each; the best of the blocks at which they were timed)
    vollo = [r for r in one if r["workload"] == "vollo_cnn"]
    steps = [r["us_per_sample"] for r in vollo if r["runner"] == "step_1"]
    rings = [r["us_per_sample"] for r in vollo if r["runner"] == "ring_buffer"]
    if steps and rings:
        ratio = min(steps) / min(rings)
        checks.append({
            "target": "vollo_cnn step model: <= 1.00 x a hand-written eager ring-buffer step",
            "measured": f"{ratio:.2f} x ({min(steps):.1f} us, ring buffer {min(rings):.1f} us)",
            "holds": ratio <= 1.0,
        })  # fmt: skip
    checks += _tooling_targets(tooling or [])
    # the earlier targets
    fastest = best_stream("seed_sequential", 1)
    if fastest is not None:
        checks.append({
            "target": "seed_sequential, block 1: <= 25 us per input sample",
            "measured": f"{fastest['us_per_sample']:.1f} us ({fastest['runner']})",
            "holds": fastest["us_per_sample"] <= 25,
        })  # fmt: skip
    if steps:
        checks.append({
            "target": "vollo_cnn step model: <= 25 us per step",
            "measured": f"{min(steps):.1f} us",
            "holds": min(steps) <= 25,
        })  # fmt: skip
    checks += real.bounded_state_target(results)
    return checks


TOOLING_TARGETS = {
    "build": f"`torchstreamer.stream(vocoder, example)` builds in < {LIMITS['build']:g} s",
    "inspect": f"`torchstreamer inspect --example vollo_cnn`: < {LIMITS['inspect']:g} s",
    "run": f"`torchstreamer run` (filterbank, {RUN_SECONDS:g} s WAV, block {RUN_BLOCK}): "
    f"< {100 * LIMITS['run']:g} % of its wall time outside streaming and file I/O",
}


def _tooling_targets(tooling: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for probe in tooling:
        name = probe["probe"]
        if name not in TOOLING_TARGETS:
            continue
        check: dict[str, Any] = {"target": TOOLING_TARGETS[name]}
        if probe["status"] != "ok":
            check.update(measured=probe["status"], holds=False)
        elif name == "run":
            share = probe["outside_share"]
            check.update(
                measured=f"{100 * share:.0f} % ({probe['wall_s']:.2f} s wall, "
                f"{probe['stream_s']:.2f} s streaming, {probe['io_s']:.3f} s file I/O)",
                holds=share < LIMITS["run"],
            )
        else:
            check.update(
                measured=f"{probe['seconds']:.2f} s", holds=probe["seconds"] < LIMITS[name]
            )
        checks.append(check)
    return checks


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    machine = report["machine"]
    lines = [
        f"Machine: {machine['processor']}, {machine['cpus']} CPUs, {machine['platform']}, "
        f"torch {machine['torch']}."
    ]
    if results:
        lines[0] += (
            f" Microseconds per input sample (median of {report['settings']['repeats']} runs); "
            "in brackets the ratio to the stateless chunk floor; `-` where a path does not "
            "apply, `x` where it disagrees with the offline model, `!` where it failed to "
            "set up (listed below the table)."
        )
    runners = [n for n in ORDER if any(r["runner"] == n for r in results)]
    for threads in report["settings"]["threads"] if results else []:
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
                cells.append(real.cost_cell(row))
            lines.append(f"| {workload} | {block} | " + " | ".join(cells) + " |")
    failures = sorted({(r["workload"], r["runner"], r["status"]) for r in results
                       if r["status"].startswith("failed")})  # fmt: skip
    if failures:
        lines += ["", "Paths that failed to set up (`!`):"]
        lines += [f"- {workload} / {runner}: {status}" for workload, runner, status in failures]
    if results:
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
    if report.get("tooling"):
        lines += ["", "**Build and tooling times (one thread, a fresh interpreter each, timed "
                  "after the imports)**", "", "| what | measured |", "|---|---|"]  # fmt: skip
        for probe in report["tooling"]:
            lines.append(f"| {_TOOLING_LABELS.get(probe['probe'], probe['probe'])} | "
                         f"{_tooling_cell(probe)} |")  # fmt: skip
    if report.get("real"):
        lines += real.markdown_lines(report["real"])
    lines += ["", "**Targets (one thread)**", "", "| target | measured | holds |", "|---|---|---|"]
    for check in report["targets"]:
        lines.append(f"| {check['target']} | {check['measured']} | {check['holds']} |")
    notes = {w: n for w, n in report["peer_notes"].items() if n}
    if notes:
        lines += ["", "Peers and baselines not timed:"]
        for workload, entries in notes.items():
            for peer, why in entries.items():
                lines.append(f"- {workload} / {peer}: {why}")
    return "\n".join(lines)


_TOOLING_LABELS = {
    "build": "`torchstreamer.stream(vocoder, example)` (build)",
    "inspect": "`torchstreamer inspect --example vollo_cnn`",
    "run": f"`torchstreamer run --example filterbank IN OUT --block {RUN_BLOCK}` "
    f"({RUN_SECONDS:g} s, 16 kHz WAV)",
}


def _tooling_cell(probe: dict[str, Any]) -> str:
    if probe["status"] != "ok":
        return probe["status"]
    if probe["probe"] == "run":
        return (
            f"{probe['wall_s']:.2f} s wall: {probe['stream_s']:.3f} s in stream calls, "
            f"{probe['io_s']:.3f} s file I/O, {probe['outside_s']:.2f} s "
            f"({100 * probe['outside_share']:.0f} %) outside"
        )
    return f"{probe['seconds']:.2f} s"


def plot(report: dict[str, Any], path: Path) -> Optional[str]:
    """Log-log cost per sample against block size, one panel per workload (fewest threads)."""
    threads = min(report["settings"]["threads"])
    results = [r for r in report["results"] if r["threads"] == threads]
    names, order = list(report["workloads"]), ORDER
    if not results and report.get("real"):  # --real: the real models' panels
        results = [r for r in report["real"]["results"] if r["threads"] == threads]
        names, order = list(report["real"]["workloads"]), real.ORDER
    if not results:
        return "nothing was timed: no plot"
    panels = {
        workload: sorted(
            (r for r in results if r["workload"] == workload),
            key=lambda r: order.index(r["runner"]) if r["runner"] in order else len(order),
        )
        for workload in names
    }
    return plot_costs(panels, path, f"us per input sample ({threads} thread)")


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=None)
    parser.add_argument("--blocks", type=lambda s: [int(b) for b in s.split(",")],
                        default=[1, 16, 256, 4096])  # fmt: skip
    parser.add_argument(
        "--threads",
        type=lambda s: s.split(","),
        default=None,
        help="thread counts, e.g. 1,all (default 1,all; 1 with --real)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny signals and one repeat")
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--no-legacy", dest="legacy", action="store_false",
                        help="skip torch-streamer 0.0.2 (benchmarks/.legacy-venv)")  # fmt: skip
    parser.add_argument("--no-tooling", dest="tooling", action="store_false",
                        help="skip the build and tooling times")  # fmt: skip
    parser.add_argument("--real", action="store_true",
                        help="only the real codec models (benchmarks/real.py)")  # fmt: skip
    parser.add_argument("--real-frames", type=int, default=None,
                        help=f"latent frames per real signal (default {real.HOPS})")  # fmt: skip
    parser.add_argument("--no-real", dest="real_included", action="store_false",
                        help="skip the real codec models")  # fmt: skip
    parser.add_argument(
        "--json", type=Path, default=None, help="default results/bench.json (real.json with --real)"
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, help="default results/bench.md (real.md with --real)"
    )
    parser.add_argument("--plot", type=Path, default=None,
                        help="default benchmarks/results/bench.png (none with --real)")  # fmt: skip
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    stem = "real" if args.real else "bench"
    args.json = args.json or RESULTS / f"{stem}.json"
    args.markdown = args.markdown or RESULTS / f"{stem}.md"
    if args.threads is None:
        args.threads = ["1"] if args.real else ["1", "all"]
    if args.plot is None and not args.real:
        args.plot = RESULTS / "bench.png"
    if args.no_plot:
        args.plot = None
    if args.real:  # the real models alone: no built-in workloads or tooling probes
        args.real_included, args.tooling, args.legacy = True, False, False
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
