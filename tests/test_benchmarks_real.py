"""benchmarks/real.py (issue 13's real codec models) works end to end: a quick ``run.py --real``
writes the table and JSON with every workload's rows, the moshi peer and the targets; the
targets are checked on synthetic figures. Skipped when none of the packages imports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest
from benchmarks import real, run


def _importable() -> list[str]:
    found, _ = real.available()
    return [w.name for w in found]


def test_a_quick_real_benchmark_writes_the_rows_targets_and_json(tmp_path: Path) -> None:
    names = _importable()
    if not names:
        pytest.skip("no real codec package imports (requirements/real-models.txt)")
    arguments = ["--real", "--quick", "--json", str(tmp_path / "r.json")]
    assert run.main([*arguments, "--markdown", str(tmp_path / "r.md")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["results"] == []  # --real: no built-in workload
    section = report["real"]
    assert section["skipped"] is None
    assert list(section["workloads"]) == names
    rows = {(r["workload"], r["hops"], r["runner"]): r for r in section["results"]}
    for name in names:
        for hops in real.BLOCK_HOPS:
            for runner in ("graph", "offline", "chunks"):
                assert rows[(name, hops, runner)]["status"] == "ok", (name, hops, runner)
            assert (name, hops, "step") in rows  # timed, or refused with the reason
    assert all(r["max_error"] is None or r["max_error"] < 1e-3 for r in section["results"])
    if "mimi_encoder" in names:
        assert rows[("mimi_encoder", 1, "moshi")]["status"] == "ok"
        assert rows[("mimi_encoder", 1, "step")]["status"] == "ok"
        assert rows[("mimi_encoder", 1, "graph")]["ratio_to_moshi"] is not None
    if "dac_decoder" in names:  # not causal: refused, and why
        assert "lookahead" in rows[("dac_decoder", 1, "step")]["status"]
        assert ("dac_decoder", 1, "moshi") not in rows
    builds = {b["workload"]: b for b in section["builds"]}
    assert sorted(builds) == sorted(names)
    assert all(b["stream"] == "ok" and b["stream_s"] > 0 for b in builds.values())
    targets = {t["target"] for t in report["targets"]}
    for name in names:
        assert f"{name}, one frame per call: every face <= 1.20 x chunk floor" in targets
        assert f"`torchstreamer.stream({name}, example)` builds in < 10 s" in targets
    if "mimi_decoder" in names:
        assert (
            "mimi_decoder, one frame per call: every face <= 1.00 x moshi's own streaming"
            in targets
        )
    table = (tmp_path / "r.md").read_text()
    assert "**Real codec models (benchmarks/real.py)**" in table
    assert "| workload | block (frames) | graph | step | offline | chunks | moshi |" in table
    assert "**Targets (one thread)**" in table
    assert "Build times" in table


# ---- real_targets() and the table on synthetic figures ------------------------------------------


def _row(
    workload: str, hops: int, runner: str, us: Optional[float], status: str = "ok", **ratios: Any
) -> dict[str, Any]:
    return {
        "workload": workload, "hops": hops, "block": hops, "runner": runner, "threads": 1,
        "status": status, "us_per_sample": us, "state_bounded": None, "max_error": 0.0,
        "ratio_to_floor": ratios.get("floor"), "ratio_to_moshi": ratios.get("moshi"),
    }  # fmt: skip


def test_real_targets_against_moshi_the_floor_and_the_build_time() -> None:
    results = [
        _row("mimi_decoder", 1, "chunks", 10.0, floor=1.0),
        _row("mimi_decoder", 1, "moshi", 9.0, floor=0.9, moshi=1.0),
        _row("mimi_decoder", 1, "graph", 9.9, floor=0.99, moshi=1.1),
        _row("mimi_decoder", 1, "step", 8.1, floor=0.81, moshi=0.9),
        _row("mimi_decoder", 8, "graph", 99.0, floor=9.9, moshi=9.9),  # not the hop: no target
        _row("dac_decoder", 1, "chunks", 10.0, floor=1.0),
        _row("dac_decoder", 1, "graph", None, status="disagrees"),
        _row("dac_decoder", 1, "step", None, status="unsupported: refused: lookahead"),
    ]
    builds = [
        {"workload": "mimi_decoder", "stream": "ok", "stream_s": 1.5},
        {"workload": "dac_decoder", "stream": "ok", "stream_s": 12.0},
    ]
    checks = {c["target"]: c for c in real.real_targets(results, builds)}
    moshi = checks["mimi_decoder, one frame per call: every face <= 1.00 x moshi's own streaming"]
    assert not moshi["holds"]
    assert moshi["measured"].startswith("worst 1.10 x (graph); best 0.90 x (step)")
    assert checks["mimi_decoder, one frame per call: every face <= 1.20 x chunk floor"]["holds"]
    dac = checks["dac_decoder, one frame per call: every face <= 1.20 x chunk floor"]
    assert not dac["holds"]
    assert dac["measured"].startswith("graph disagrees")
    assert not any(
        t.startswith("dac_decoder, one frame per call: every face <= 1.00") for t in checks
    )
    assert checks["`torchstreamer.stream(mimi_decoder, example)` builds in < 10 s"]["holds"]
    assert not checks["`torchstreamer.stream(dac_decoder, example)` builds in < 10 s"]["holds"]


def test_a_skipped_section_says_why() -> None:
    lines = real.markdown_lines({"skipped": "moshi.modules does not import (no module)"})
    assert lines[-1] == "Skipped: moshi.modules does not import (no module)"
