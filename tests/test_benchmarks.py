"""benchmarks/run.py works end to end (a quick run): table, JSON, plot and the target checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks import run


def test_a_quick_benchmark_writes_the_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--quick", "--workloads", "vollo_cnn,seed_sequential", "--blocks", "1,16"]
    arguments += ["--threads", "1", "--no-peers", "--json", str(tmp_path / "b.json")]
    arguments += ["--markdown", str(tmp_path / "b.md"), "--plot", str(tmp_path / "b.png")]
    assert run.main(arguments) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    rows = {(r["workload"], r["block"], r["runner"]): r for r in report["results"]}
    assert rows[("vollo_cnn", 1, "step")]["status"] == "ok"
    assert rows[("seed_sequential", 16, "script")]["status"] == "ok"
    assert rows[("seed_sequential", 1, "chunks")]["status"].startswith("unsupported")
    assert all(r["max_error"] is None or r["max_error"] < 1e-4 for r in report["results"])
    targets = {t["target"] for t in report["targets"]}
    assert "vollo_cnn step model: <= 25 us per step" in targets
    assert "| workload | block |" in (tmp_path / "b.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "b.png").stat().st_size > 1000
