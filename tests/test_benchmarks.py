"""benchmarks/run.py works end to end (a quick run): table, JSON, plot and the target checks; the
targets are checked on synthetic figures; the baselines (ring buffer, torch-streamer 0.0.2)
match the offline models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from benchmarks import legacy, run
from benchmarks.baselines import RingBufferUnsupported, ring_buffer_runner
from benchmarks.workloads import Workload, workloads

from torchstreamer.measure import FailedRunner, runners_for, time_runners


def test_a_quick_benchmark_writes_the_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--quick", "--workloads", "vollo_cnn,seed_sequential", "--blocks", "1,16"]
    arguments += ["--threads", "1", "--no-peers", "--no-legacy", "--no-tooling"]
    arguments += ["--json", str(tmp_path / "b.json")]
    arguments += ["--markdown", str(tmp_path / "b.md"), "--plot", str(tmp_path / "b.png")]
    assert run.main(arguments) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    rows = {(r["workload"], r["block"], r["runner"]): r for r in report["results"]}
    assert rows[("vollo_cnn", 1, "step")]["status"] == "ok"  # StepStream over frames of 1
    assert rows[("vollo_cnn", 1, "step_1")]["status"] == "ok"  # the one-sample step
    assert rows[("vollo_cnn", 16, "step_1")]["status"].startswith("unsupported")
    assert rows[("vollo_cnn", 1, "ring_buffer")]["status"] == "ok"
    assert rows[("vollo_cnn", 16, "ring_buffer")]["status"].startswith("unsupported")
    assert rows[("vollo_cnn", 1, "ring_buffer")]["latency_median_us"] is not None
    assert ("seed_sequential", 1, "ring_buffer") not in rows  # not causal: no ring buffer
    assert ("seed_sequential", 1, legacy.RUNNER) not in rows  # --no-legacy
    assert rows[("seed_sequential", 16, "script")]["status"] == "ok"
    assert rows[("seed_sequential", 1, "chunks")]["status"].startswith("unsupported")
    assert all(r["max_error"] is None or r["max_error"] < 1e-4 for r in report["results"])
    assert report["tooling"] == []
    targets = {t["target"] for t in report["targets"]}
    assert "vollo_cnn step model: <= 25 us per step" in targets
    assert "vollo_cnn step model: <= 1.00 x a hand-written eager ring-buffer step" in targets
    assert "vollo_cnn, block 16: every face <= 1.50 x chunk floor" in targets
    assert "vollo_cnn, block 1: module and graph streams <= 1.20 x step" in targets
    table = (tmp_path / "b.md").read_text()
    assert "| workload | block |" in table
    assert "ring_buffer" in table
    assert "Build and tooling times" not in table
    pytest.importorskip("matplotlib")
    assert (tmp_path / "b.png").stat().st_size > 1000


# ---- targets() on synthetic figures -------------------------------------------------------------


def _row(
    workload: str,
    block: int,
    runner: str,
    us: Optional[float],
    floor: Optional[float] = None,
    status: str = "ok",
    threads: int = 1,
    bounded: Optional[bool] = None,
) -> dict[str, Any]:
    return {
        "workload": workload, "block": block, "runner": runner, "threads": threads,
        "status": status, "us_per_sample": us, "state_bounded": bounded,
        "ratio_to_floor": us / floor if us is not None and floor else None,
    }  # fmt: skip


def _faces(workload: str, block: int, floor: float, **us: Optional[float]) -> list[dict[str, Any]]:
    """The chunk floor and a row per face (``None``: the face disagrees)."""
    rows = [_row(workload, block, "chunks", floor, floor)]
    for name, value in us.items():
        status = "ok" if value is not None else "disagrees"
        rows.append(_row(workload, block, name, value, floor, status))
    return rows


def _checks(results: list[dict[str, Any]], tooling: Any = None) -> dict[str, dict[str, Any]]:
    return {c["target"]: c for c in run.targets(results, tooling)}


def test_every_face_must_be_near_the_floor_and_the_worst_is_named() -> None:
    results = _faces("tcn", 256, 10.0, module=10.5, script=9.0, graph=12.0, step=10.9)
    results += _faces("tcn", 4096, 10.0, module=10.5, script=9.0, graph=10.9)
    results += _faces("tcn", 16, 10.0, module=14.9, script=10.0, graph=11.0)
    checks = _checks(results)
    wide = checks["tcn, block 256: every face <= 1.10 x chunk floor"]
    assert not wide["holds"]
    assert wide["measured"] == "worst 1.20 x (graph); best 0.90 x (script)"
    assert checks["tcn, block 4096: every face <= 1.10 x chunk floor"]["holds"]
    assert checks["tcn, block 16: every face <= 1.50 x chunk floor"]["holds"]
    assert not any("block 1:" in name for name in checks)  # no step row at block 1


def test_a_face_that_disagrees_fails_and_one_that_does_not_apply_is_skipped() -> None:
    results = _faces("vocoder", 16, 10.0, module=11.0, graph=None)
    results.append(_row("vocoder", 16, "step", None, 10.0, "unsupported: no step form"))
    check = _checks(results)["vocoder, block 16: every face <= 1.50 x chunk floor"]
    assert not check["holds"]
    assert check["measured"] == "worst 1.10 x (module); graph disagrees"
    results = _faces("vocoder", 16, 10.0, module=11.0)
    results.append(_row("vocoder", 16, "step", None, 10.0, "unsupported: no step form"))
    assert _checks(results)["vocoder, block 16: every face <= 1.50 x chunk floor"]["holds"]


def test_a_face_that_fails_to_set_up_is_shown_listed_and_fails_its_targets() -> None:
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3))
    runners = [FailedRunner("script", "torch.jit.script raised RuntimeError('no')")]
    runners += [r for r in runners_for(model, torch.randn(1, 1, 16)) if r.name == "chunks"]
    measured = time_runners(runners, model, torch.randn(1, 1, 32), 16, repeats=1)
    assert measured["script"].status == "failed: torch.jit.script raised RuntimeError('no')"
    assert measured["script"].us_per_sample is None
    results = _faces("tcn", 16, 10.0, module=11.0)
    results.append(_row("tcn", 16, "script", None, 10.0, measured["script"].status))
    for row in results:
        row["latency_median_us"] = None
    check = _checks(results)["tcn, block 16: every face <= 1.50 x chunk floor"]
    assert not check["holds"]
    assert check["measured"] == "worst 1.10 x (module); script failed"
    report: dict[str, Any] = {
        "machine": {"processor": "x86_64", "cpus": 2, "platform": "Linux", "torch": "2"},
        "settings": {"repeats": 1, "threads": [1]}, "workloads": {"tcn": "tcn"},
        "peer_notes": {}, "results": results, "targets": [],
    }  # fmt: skip
    table = run.markdown(report)
    assert "| tcn | 16 | 11.00 (1.10) | ! |" in table
    assert "- tcn / script: failed: torch.jit.script raised RuntimeError('no')" in table


def test_block_one_streams_against_the_step_model() -> None:
    results = [
        _row("vollo_cnn", 1, "module", 23.0), _row("vollo_cnn", 1, "graph", 30.0),
        _row("vollo_cnn", 1, "script", 90.0), _row("vollo_cnn", 1, "step", 20.0),
        _row("seed_residual", 1, "module", 10.0),  # no step form: no target
    ]  # fmt: skip
    checks = _checks(results)
    check = checks["vollo_cnn, block 1: module and graph streams <= 1.20 x step"]
    assert not check["holds"]
    assert check["measured"].startswith("graph 1.50 x, module 1.15 x")
    assert "seed_residual, block 1: module and graph streams <= 1.20 x step" not in checks
    results[1] = _row("vollo_cnn", 1, "graph", 24.0)
    assert _checks(results)["vollo_cnn, block 1: module and graph streams <= 1.20 x step"]["holds"]


def test_the_module_stream_against_torch_streamer_0_0_2() -> None:
    seed = "seed_sequential"
    results = [
        _row(seed, 1, "module", 10.0), _row(seed, 1, legacy.RUNNER, 99.0),
        _row(seed, 16, "module", 2.0), _row(seed, 16, legacy.RUNNER, 10.0),
    ]  # fmt: skip
    checks = _checks(results)
    one = checks["seed_sequential, block 1: module >= 10 x faster than torch-streamer 0.0.2"]
    assert not one["holds"]
    assert one["measured"].startswith("9.90 x")
    assert checks["seed_sequential, block 16: module >= 5 x faster than torch-streamer 0.0.2"][
        "holds"
    ]
    # 0.0.2 not run (--no-legacy): no target
    checks = _checks([r for r in results if r["runner"] == "module"])
    assert not any("0.0.2" in name for name in checks)


def test_the_vollo_step_against_the_ring_buffer_and_the_earlier_targets() -> None:
    results = [
        _row("vollo_cnn", 1, "step_1", 20.0, bounded=True),
        _row("vollo_cnn", 16, "step", 2.0, bounded=True),  # frames: not the one-sample step
        _row("vollo_cnn", 1, "ring_buffer", 19.0, bounded=True),
        _row("vollo_cnn", 16, "ring_buffer", 25.0, bounded=False),
        _row("vollo_cnn", 1, "step_1", 1.0, threads=2),  # other thread counts do not count
    ]
    checks = _checks(results)
    ring = checks["vollo_cnn step model: <= 1.00 x a hand-written eager ring-buffer step"]
    assert not ring["holds"]
    assert ring["measured"] == "1.05 x (20.0 us, ring buffer 19.0 us)"
    assert checks["vollo_cnn step model: <= 25 us per step"]["holds"]
    state = checks["no path's state grows with the length of the stream"]
    assert not state["holds"]
    assert state["measured"] == "grows: vollo_cnn/ring_buffer"


def test_tooling_targets() -> None:
    tooling = [
        {"probe": "build", "status": "ok", "seconds": 2.5},
        {"probe": "inspect", "status": "ok", "seconds": 6.0},
        {"probe": "run", "status": "ok", "wall_s": 2.0, "stream_s": 0.5, "io_s": 0.01,
         "outside_s": 1.5, "outside_share": 0.75},
    ]  # fmt: skip
    checks = list(run.targets([], tooling))
    assert [c["holds"] for c in checks] == [True, False, False]
    assert checks[0]["target"] == "`torchstreamer.stream(vocoder, example)` builds in < 3 s"
    assert checks[1]["measured"] == "6.00 s"
    assert checks[2]["measured"].startswith("75 % (2.00 s wall, 0.50 s streaming")
    tooling[2] = {"probe": "run", "status": "ok", "wall_s": 1.0, "stream_s": 0.96,
                  "io_s": 0.01, "outside_s": 0.03, "outside_share": 0.03}  # fmt: skip
    tooling[1] = {"probe": "inspect", "status": "failed: exit 1"}
    checks = list(run.targets([], tooling))
    assert [c["holds"] for c in checks] == [True, False, True]
    assert checks[1]["measured"] == "failed: exit 1"
    assert run.targets([], None) == []


def test_markdown_shows_the_tooling_section() -> None:
    report: dict[str, Any] = {
        "machine": {"processor": "x86_64", "cpus": 2, "platform": "Linux", "torch": "2"},
        "settings": {"repeats": 1, "threads": [1]},
        "workloads": {"vollo_cnn": "cnn"},
        "peer_notes": {},
        "results": [],
        "tooling": [
            {"probe": "build", "status": "ok", "seconds": 1.25},
            {"probe": "inspect", "status": "failed: exit 1"},
            {"probe": "run", "status": "ok", "wall_s": 2.0, "stream_s": 0.5, "io_s": 0.01,
             "outside_s": 1.5, "outside_share": 0.75},
        ],
    }  # fmt: skip
    report["targets"] = run.targets(report["results"], report["tooling"])
    table = run.markdown(report)
    assert "**Build and tooling times" in table
    assert "| `torchstreamer.stream(vocoder, example)` (build) | 1.25 s |" in table
    assert "| `torchstreamer inspect --example vollo_cnn` | failed: exit 1 |" in table
    assert "1.50 s (75 %) outside" in table


# ---- the baselines ------------------------------------------------------------------------------


def _workload(name: str) -> Workload:
    return next(w for w in workloads() if w.name == name)


@pytest.mark.parametrize("name", ["vollo_cnn", "tcn"])
def test_ring_buffer_matches_offline_and_resets(name: str) -> None:
    workload = _workload(name)
    runner = ring_buffer_runner(workload)
    x = workload.signal(80, seed=3)
    with torch.inference_mode():
        expected = workload.model(x)
        runner.run(torch.randn_like(x), 1)
        runner.reset()
        torch.testing.assert_close(runner.run(x, 1), expected, rtol=1e-4, atol=1e-4)
        assert runner.state_bytes() == sum(
            (m.kernel_size[0] - 1) * m.dilation[0] * m.in_channels * 4
            for m in workload.model.modules()
            if isinstance(m, torch.nn.Conv1d) and m.kernel_size[0] > 1
        )


def test_ring_buffer_refuses_a_model_that_is_not_a_causal_cnn() -> None:
    with pytest.raises(RingBufferUnsupported, match="not causal"):
        ring_buffer_runner(_workload("seed_sequential"))
    workload = _workload("vollo_cnn")
    workload.model = torch.nn.Sequential(torch.nn.Conv1d(32, 4, 3, padding=1))
    with pytest.raises(RingBufferUnsupported, match="non-causal"):
        ring_buffer_runner(workload)


def test_legacy_refuses_other_workloads_without_making_its_environment(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    with pytest.raises(legacy.LegacyUnavailable, match="cannot express vollo_cnn"):
        legacy.time_legacy("vollo_cnn", torch.nn.Identity(), {}, venv=venv)
    assert not venv.exists()


@pytest.mark.skipif(not legacy.ready(), reason="benchmarks/.legacy-venv not set up")
def test_legacy_0_0_2_matches_offline_and_is_timed() -> None:
    workload = _workload("seed_sequential")
    signals = {1: workload.signal(24, seed=1), 8: workload.signal(64, seed=8)}
    found = legacy.time_legacy(workload.name, workload.model, signals, repeats=1)
    assert sorted(found) == [1, 8]
    for entry in found.values():
        assert entry["runner"] == legacy.RUNNER
        assert entry["status"] == "ok", entry
        assert entry["max_error"] < 1e-4
        assert entry["us_per_sample"] > 0
    assert found[1]["latency_median_us"] is not None
