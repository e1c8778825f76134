"""`benchmarks/serving.py` in its quick form: the pool's load figures and the report."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import serving


def test_the_serving_benchmark_reports_pool_streams_per_core(tmp_path: Path) -> None:
    assert serving.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "serving.json").read_text())
    rows = {row["workload"]: row for row in report["pool"]}
    assert set(rows) == {"vollo_cnn", "seed_sequential"}
    assert rows["vollo_cnn"]["batched"]
    assert rows["vollo_cnn"]["target"] == 100
    assert all(float(t) > 0 for row in rows.values() for t in row["tick_ms"].values())
    assert "real-time streams" in (tmp_path / "serving.md").read_text()
