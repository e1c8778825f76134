"""Real codec models (issue 13): the published packages' encoders and decoders, as shipped.

    python benchmarks/run.py --real                      # these workloads alone, one thread
    python benchmarks/run.py --real --quick              # tiny signals, one repeat (smoke test)
    python benchmarks/run.py --real --workloads mimi_decoder --repeats 7 \\
        --json /tmp/real_bench.json --markdown /tmp/real_bench.md
    python benchmarks/run.py --real --real-frames 256    # longer signals (default 64 frames)
    python benchmarks/real.py ...                        # the same as `run.py --real ...`
    python benchmarks/run.py                             # the full suite: these included when
                                                         # the packages import (--no-real: not)

Workloads (the constructors of ``tests/real/test_codecs.py``, random seeded weights):

* ``mimi_encoder``, ``mimi_decoder``: Kyutai's Mimi SEANet (moshi), at its real size
  (``moshi.models.loaders._seanet_kwargs``: 64 filters, a 512-channel latent, ratios 8, 6, 5, 4:
  960 samples per latent frame);
* ``encodec_encoder``, ``encodec_decoder``: EnCodec's SEANet (non-causal, weight norm, a 2-layer
  LSTM), at the CI width (4 filters, an 8-channel latent, ratios 4, 2: 8 samples a frame);
* ``dac_decoder``: DAC's decoder at the CI width (16-channel latent, rates 4, 2).

torchaudio, descript-audiotools and argbind are replaced by the import stubs of
``tests/real/stubs`` (appended to ``sys.path``: an installed package wins). A workload whose
package does not import is left out with the reason; the section is skipped when none does.

Paths: ``graph`` (``torchstreamer.stream``), ``step`` (``streaming_transform(..., frame="auto")``
fed by ``StepStream``; refused models are shown as ``-`` with the reason), ``offline`` (the model
on the whole signal), ``chunks`` (the model on each block alone, no state: the cost floor) and,
for Mimi, ``moshi``: moshi's own streaming, ``with model.streaming(batch):`` and one call per
block (on a copy of the model, so that the others never see its streaming state). Blocks: the
hop (one latent frame per call: the encoder's total stride, one frame for a decoder) and 8 hops.
Every path's output is checked against the offline model before it is timed (``x`` when it
disagrees); runs are interleaved and the figure is the median of the repeats. Costs are in
microseconds per input sample: per audio sample for an encoder, per latent frame for a decoder.

Targets (one thread): Mimi's faces at one frame per call <= 1.00 x moshi's streaming; every
workload's faces at its hop <= 1.20 x the chunk floor; ``torchstreamer.stream(model, example)``
builds each model in < 10 s (timed in the benchmark's process, after the imports and after a
warm-up build of a one-layer model that pays the library's one-time costs, reported apart).
"""

from __future__ import annotations

import copy
import importlib
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/real.py`
    sys.path.insert(0, str(ROOT))
STUBS = ROOT / "tests" / "real" / "stubs"

import torchstreamer as pts  # noqa: E402
from torchstreamer.measure import (  # noqa: E402
    ChunkRunner,
    Measurement,
    OfflineRunner,
    Runner,
    StreamRunner,
    time_runners,
)

__all__ = [
    "BUILD_LIMIT", "FACES", "FLOOR_LIMIT", "HOPS", "MOSHI_LIMIT", "ORDER", "REAL_WORKLOADS",
    "MoshiRunner", "RealWorkload", "available", "markdown_lines", "real_targets", "run_real",
]  # fmt: skip

REAL_WORKLOADS = ["mimi_encoder", "mimi_decoder", "encodec_encoder", "encodec_decoder",
                  "dac_decoder"]  # fmt: skip
ORDER = ["graph", "step", "offline", "chunks", "moshi"]
FACES = ("graph", "step")  # the library's ways to stream these models
HOPS = 64  # hops per signal (a full run); 8 with --quick
BLOCK_HOPS = (1, 8)  # blocks, in hops
MOSHI_LIMIT, FLOOR_LIMIT, BUILD_LIMIT = 1.0, 1.2, 10.0


@dataclass
class RealWorkload:
    """A published model to benchmark, and how its input looks."""

    name: str
    description: str
    package: str  # the module that must import for the workload to run
    make: Callable[[], nn.Module]
    example: tuple[int, ...]  # an input the model accepts (time last)
    hop: int  # input samples per latent frame (1 for a decoder)
    peer: Optional[str] = None  # "moshi": moshi's own streaming applies

    def signal(self, length: int, seed: int = 0) -> Tensor:
        shape = [*self.example[:-1], length]
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        return self.make().eval()


def _mimi(decoder: bool) -> nn.Module:
    from moshi.models.loaders import _seanet_kwargs
    from moshi.modules import SEANetDecoder, SEANetEncoder

    kind: Any = SEANetDecoder if decoder else SEANetEncoder
    kwargs: dict[str, Any] = dict(_seanet_kwargs)
    return kind(**kwargs)


def _encodec(decoder: bool) -> nn.Module:
    from encodec.modules import SEANetDecoder, SEANetEncoder

    kind = SEANetDecoder if decoder else SEANetEncoder
    return kind(channels=1, dimension=8, n_filters=4, ratios=[4, 2], norm="weight_norm",
                causal=False, lstm=2)  # fmt: skip


def _dac_decoder() -> nn.Module:
    from dac.model.dac import Decoder

    return Decoder(16, 16, [4, 2])


def _definitions() -> list[RealWorkload]:
    mimi = "Mimi SEANet {} (moshi, real size: 64 filters, 512-d latent, 960 samples a frame)"
    encodec = "EnCodec SEANet {} (non-causal, LSTM; CI width: 4 filters, 8-d latent, hop 8)"
    return [
        RealWorkload("mimi_encoder", mimi.format("encoder"), "moshi.modules",
                     lambda: _mimi(False), (1, 1, 1920), 960, "moshi"),
        RealWorkload("mimi_decoder", mimi.format("decoder"), "moshi.modules",
                     lambda: _mimi(True), (1, 512, 2), 1, "moshi"),
        RealWorkload("encodec_encoder", encodec.format("encoder"), "encodec.modules",
                     lambda: _encodec(False), (1, 1, 128), 8),
        RealWorkload("encodec_decoder", encodec.format("decoder"), "encodec.modules",
                     lambda: _encodec(True), (1, 8, 16), 1),
        RealWorkload("dac_decoder", "DAC decoder (CI width: 16-d latent, rates 4, 2; hop 8)",
                     "dac.model.dac", _dac_decoder, (1, 16, 16), 1),
    ]  # fmt: skip


def _use_stubs() -> None:
    if str(STUBS) not in sys.path:
        sys.path.append(str(STUBS))  # last: an installed package wins


def available(names: Optional[list[str]] = None) -> tuple[list[RealWorkload], dict[str, str]]:
    """The workloads (of ``names``, default all) whose packages import, and why the others
    do not."""
    _use_stubs()
    found, missing = [], {}
    for workload in _definitions():
        if names is not None and workload.name not in names:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(workload.package)
        except Exception as error:  # ImportError, or a package broken by its own imports
            missing[workload.name] = f"{workload.package} does not import ({error})"
            continue
        found.append(workload)
    return found, missing


class MoshiRunner(StreamRunner):
    """moshi's own streaming: ``with model.streaming(batch):``, then one call per block (the
    blocks must be multiples of the hop). It runs on a copy of the model: the other paths call
    the model itself, which must not be streaming then."""

    name = "moshi"

    def __init__(self, model: nn.Module) -> None:
        super().__init__("moshi", copy.deepcopy(model))

    def reset(self) -> None:
        """Nothing: each run enters a fresh ``streaming`` context (zero state)."""

    def run(self, x: Tensor, block: int) -> Tensor:
        model = self.stream
        outputs = []
        with model.streaming(x.shape[0]):
            for start in range(0, x.shape[-1], block):
                outputs.append(self._timed(model, x[..., start : start + block]))
        return torch.cat(outputs, -1)

    def state_bytes(self) -> Optional[int]:
        return None  # held by moshi's modules only while `run` is inside the context


def _reason(error: Exception) -> str:
    """The error's first line, without its advice (``To stream it, ...``)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.split(" To stream it")[0][:320]


def _runners(
    workload: RealWorkload, model: nn.Module, log: Any
) -> tuple[list[Runner], dict[str, Any], dict[str, str]]:
    """The paths that apply, the build times, and why a path does not apply."""
    example = workload.signal(workload.example[-1], seed=12345)
    notes: dict[str, str] = {}
    build: dict[str, Any] = {"workload": workload.name,
                             "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    runners: list[Runner] = []
    start = time.perf_counter()
    try:
        graph = pts.stream(model, example)
        build["stream_s"] = time.perf_counter() - start
        build["stream"] = "ok"
        runners.append(StreamRunner("graph", graph))
    except Exception as error:
        build["stream_s"] = time.perf_counter() - start
        build["stream"] = notes["graph"] = f"refused: {_reason(error)}"
    start = time.perf_counter()
    try:
        frames, _ = pts.streaming_transform(model, example, -1, frame="auto")
        build["step_s"] = time.perf_counter() - start
        build["step"] = "ok"
        runners.append(StreamRunner("step", pts.StepStream(frames)))
    except pts.StreamError as error:
        build["step_s"] = time.perf_counter() - start
        build["step"] = notes["step"] = f"refused: {_reason(error)}"
    runners += [OfflineRunner(model), ChunkRunner(model)]
    if workload.peer == "moshi":
        runners.append(MoshiRunner(model))
    step = build["step"].split(":")[0]
    print(f"  {workload.name:16s} built: stream {build['stream_s']:.2f} s, step "
          f"{build['step_s']:.2f} s ({step})", file=log, flush=True)  # fmt: skip
    return runners, build, notes


def _warm_up() -> float:
    """Build a one-layer model's stream: the library's one-time costs (lazy imports, tracing
    machinery), so that each model's build time is its own. Returns its seconds."""
    start = time.perf_counter()
    pts.stream(nn.Conv1d(1, 1, 3, padding=1).eval(), torch.randn(1, 1, 16))
    return time.perf_counter() - start


def run_real(
    names: Optional[list[str]] = None,
    threads: tuple[int, ...] = (1,),
    repeats: int = 5,
    quick: bool = False,
    log: Any = None,
    frames: Optional[int] = None,
) -> dict[str, Any]:
    """Time every path of the real workloads (of ``names``, default all) at their hop and at 8
    hops, on signals of ``frames`` hops (default :data:`HOPS`; 8 when ``quick``). Returns the
    report's ``real`` section: ``workloads``, ``settings``, ``builds``,
    ``notes``, ``results`` (rows as in ``benchmarks/run.py``, with ``hops`` and
    ``ratio_to_moshi``), ``targets`` and ``skipped`` (why nothing ran, or ``None``)."""
    log = log if log is not None else sys.stdout
    chosen, missing = available(names)
    hops = frames or (8 if quick else HOPS)
    section: dict[str, Any] = {
        "workloads": {w.name: w.description for w in chosen},
        "settings": {"hops_per_signal": hops, "block_hops": list(BLOCK_HOPS),
                     "threads": list(threads), "repeats": repeats},
        "builds": [], "notes": {}, "results": [], "targets": [],
        "skipped": None,
    }  # fmt: skip
    for name, why in missing.items():
        section["notes"][name] = {"workload": why}
    if not chosen:
        section["skipped"] = "; ".join(missing.values()) or "no real workload chosen"
        return section
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    built = []
    with warnings.catch_warnings():  # the packages' own deprecation and tracing warnings
        warnings.simplefilter("ignore")
        section["warmup_build_s"] = _warm_up()
        for workload in chosen:  # build on one thread, before anything is timed
            model = workload.build()
            runners, build, notes = _runners(workload, model, log)
            section["builds"].append(build)
            section["notes"][workload.name] = notes
            built.append((workload, model, runners))
        for count in threads:
            torch.set_num_threads(count)
            for workload, model, runners in built:
                _time_workload(section, workload, model, runners, count, hops, repeats, log)
    torch.set_num_threads(previous)
    section["targets"] = real_targets(section["results"], section["builds"])
    return section


def _time_workload(
    section: dict[str, Any],
    workload: RealWorkload,
    model: nn.Module,
    runners: list[Runner],
    threads: int,
    hops: int,
    repeats: int,
    log: Any,
) -> None:
    x = workload.signal(hops * workload.hop, seed=hops)
    for block_hops in BLOCK_HOPS:
        block = block_hops * workload.hop
        rows = time_runners(runners, model, x, block, repeats)
        step_note = section["notes"][workload.name].get("step")
        if step_note is not None:
            rows["step"] = Measurement("step", status=f"unsupported: {step_note}")
        floor = rows["chunks"].us_per_sample
        moshi = rows["moshi"].us_per_sample if "moshi" in rows else None
        for measurement in rows.values():
            us = measurement.us_per_sample
            section["results"].append({
                "workload": workload.name, "threads": threads, "block": block,
                "hops": block_hops, "samples": x.shape[-1], **measurement.as_dict(),
                "ratio_to_floor": us / floor if us is not None and floor else None,
                "ratio_to_moshi": us / moshi if us is not None and moshi else None,
            })  # fmt: skip
        print(f"  {workload.name:16s} threads={threads} block={block:5d} done", file=log,
              flush=True)  # fmt: skip


def real_targets(
    results: list[dict[str, Any]], builds: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Issue 13's targets on one thread. ``results``: rows of :func:`run_real`; ``builds``: its
    build times. A target whose figures are missing is left out. Rows of ``target``,
    ``measured`` and ``holds``."""
    single = [r for r in results if r["threads"] == 1]
    checks: list[dict[str, Any]] = []

    def at(workload: str, hops: int, runner: str) -> Optional[dict[str, Any]]:
        key = (workload, hops, runner)
        return next((r for r in single if (r["workload"], r["hops"], r["runner"]) == key), None)

    def faces(workload: str, hops: int) -> list[dict[str, Any]]:
        return [r for r in single if (r["workload"], r["hops"]) == (workload, hops)
                and r["runner"] in FACES and not r["status"].startswith("unsupported")]  # fmt: skip

    def check(target: str, rows: list[dict[str, Any]], key: str, limit: float) -> dict[str, Any]:
        timed = [r for r in rows if r["status"] == "ok" and r[key] is not None]
        measured = []
        if timed:
            worst = max(timed, key=lambda r: r[key])
            best = min(timed, key=lambda r: r[key])
            measured.append(f"worst {worst[key]:.2f} x ({worst['runner']})")
            if best is not worst:
                measured.append(f"best {best[key]:.2f} x ({best['runner']})")
        bad = [f"{r['runner']} {r['status'].split(':')[0]}" for r in rows if r["status"] != "ok"]
        measured += bad
        holds = not bad and bool(timed) and all(r[key] <= limit for r in timed)
        return {"target": target, "measured": "; ".join(measured), "holds": holds}

    workloads = list(dict.fromkeys(r["workload"] for r in single))
    for workload in workloads:  # Mimi: one frame per call against moshi's own streaming
        rows = faces(workload, 1)
        if at(workload, 1, "moshi") is None or not rows:
            continue
        moshi = at(workload, 1, "moshi")
        assert moshi is not None
        found = check(f"{workload}, one frame per call: every face <= {MOSHI_LIMIT:.2f} x "
                      "moshi's own streaming", rows, "ratio_to_moshi", MOSHI_LIMIT)  # fmt: skip
        found["measured"] += f" (moshi {moshi['us_per_sample']:.2f} us per sample)"
        checks.append(found)
    for workload in workloads:  # every workload at its hop against the chunk floor
        rows = faces(workload, 1)
        floor = at(workload, 1, "chunks")
        if floor is None or not rows:
            continue
        found = check(f"{workload}, one frame per call: every face <= {FLOOR_LIMIT:.2f} x "
                      "chunk floor", rows, "ratio_to_floor", FLOOR_LIMIT)  # fmt: skip
        found["measured"] += f" (floor {floor['us_per_sample']:.2f} us per sample)"
        checks.append(found)
    for build in builds:
        ok = build.get("stream") == "ok"
        checks.append({
            "target": f"`torchstreamer.stream({build['workload']}, example)` builds in < "
            f"{BUILD_LIMIT:g} s",
            "measured": f"{build['stream_s']:.2f} s" if ok else build.get("stream", "not run"),
            "holds": ok and build["stream_s"] < BUILD_LIMIT,
        })  # fmt: skip
    checks += bounded_state_target(single, "real models: ")
    return checks


def bounded_state_target(results: list[dict[str, Any]], label: str = "") -> list[dict[str, Any]]:
    """The target that no timed path's state grows with the stream (none without figures)."""
    bounded = [r for r in results if r["state_bounded"] is not None]
    if not bounded:
        return []
    growing = sorted({f"{r['workload']}/{r['runner']}" for r in bounded if not r["state_bounded"]})
    return [{
        "target": f"{label}no path's state grows with the length of the stream",
        "measured": "grows: " + ", ".join(growing) if growing else f"{len(bounded)} checked",
        "holds": not growing,
    }]  # fmt: skip


def cost_cell(row: Optional[dict[str, Any]]) -> str:
    """A table cell: us per sample and the ratio to the floor, ``-`` (does not apply), ``x``
    (disagrees with the offline model) or ``!`` (failed to set up: see the notes)."""
    if row is None or row["status"].startswith("unsupported"):
        return "-"
    if row["status"].startswith("failed"):
        return "!"
    if row["status"] != "ok":
        return "x"
    ratio = f" ({row['ratio_to_floor']:.2f})" if row["ratio_to_floor"] is not None else ""
    return f"{row['us_per_sample']:.2f}{ratio}"


def markdown_lines(section: dict[str, Any]) -> list[str]:
    """The section's tables: costs, build times, and why paths or workloads are missing (the
    targets go to the report's Targets table)."""
    lines = ["", "**Real codec models (benchmarks/real.py)**", ""]
    if section.get("skipped"):
        return [*lines, f"Skipped: {section['skipped']}"]
    results = section["results"]
    lines.append(
        f"Microseconds per input sample (an encoder: per audio sample; a decoder: per latent "
        f"frame), median of {section['settings']['repeats']} runs of "
        f"{section['settings']['hops_per_signal']} frames; in brackets the ratio to the "
        "stateless chunk floor; `-` where a path does not apply, `x` where it disagrees with "
        "the offline model. The last column: the faces against moshi's own streaming."
    )
    for threads in section["settings"]["threads"]:
        lines += ["", f"**{threads} thread{'s' if threads > 1 else ''}**", ""]
        lines.append("| workload | block (frames) | " + " | ".join(ORDER) + " | vs moshi |")
        lines.append("|---|---:|" + "---:|" * len(ORDER) + "---|")
        keys = sorted({(r["workload"], r["block"], r["hops"]) for r in results
                       if r["threads"] == threads},
                      key=lambda k: (list(section["workloads"]).index(k[0]), k[1]))  # fmt: skip
        for workload, block, hops in keys:
            here = (workload, block, threads)
            mine = {r["runner"]: r for r in results
                    if (r["workload"], r["block"], r["threads"]) == here}  # fmt: skip
            versus = ", ".join(f"{n} {mine[n]['ratio_to_moshi']:.2f} x" for n in FACES
                               if n in mine and mine[n]["ratio_to_moshi"] is not None)  # fmt: skip
            cells = " | ".join(cost_cell(mine.get(name)) for name in ORDER)
            lines.append(f"| {workload} | {block} ({hops}) | {cells} | {versus or '-'} |")
    lines += ["", "**Build times (one thread, in this process, after a warm-up build of "
              f"{section.get('warmup_build_s', 0.0):.2f} s)**", "",
              "| workload | parameters | `torchstreamer.stream` | `streaming_transform` |",
              "|---|---:|---:|---|"]  # fmt: skip
    for build in section["builds"]:
        graph = f"{build['stream_s']:.2f} s" if build["stream"] == "ok" else build["stream"]
        step = f"{build['step_s']:.2f} s" if build["step"] == "ok" else "refused"
        lines.append(f"| {build['workload']} | {build['parameters']:,} | {graph} | {step} |")
    notes = [(w, p, why) for w, n in section["notes"].items() for p, why in n.items()]
    if notes:
        lines += ["", "Not timed:"]
        lines += [f"- {workload} / {path}: {why}" for workload, path, why in notes]
    return lines


if __name__ == "__main__":
    from benchmarks import run

    sys.exit(run.main(["--real", *sys.argv[1:]]))
