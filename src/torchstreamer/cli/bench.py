"""``torchstreamer bench MODEL``: the benchmark of ``benchmarks/run.py`` for one model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from torchstreamer.cli.show import message, progress, table
from torchstreamer.cli.spec import LoadedModel
from torchstreamer.measure import plot_costs, runners_for, time_runners

__all__ = ["bench_model"]


def bench_model(
    loaded: LoadedModel,
    blocks: list[int],
    repeats: int = 3,
    threads: int = 1,
    json_path: Optional[Path] = None,
    plot_path: Optional[Path] = None,
    length: int = 4096,
) -> int:
    """Time every path at every block size; print the table, write JSON and a plot if asked."""
    torch.set_num_threads(threads)
    runners = runners_for(loaded.model, loaded.example, loaded.module_padding)
    results: list[dict[str, Any]] = []
    for block in progress(blocks, "benchmarking"):
        x = loaded.signal(max(2 * block, length // block * block), seed=block)
        rows = time_runners(runners, loaded.model, x, block, repeats)
        floor = rows["chunks"].us_per_sample
        for measurement in rows.values():
            entry = {"block": block, "samples": x.shape[-1], **measurement.as_dict()}
            entry["ratio_to_floor"] = (
                measurement.us_per_sample / floor
                if measurement.us_per_sample is not None and floor
                else None
            )
            results.append(entry)
    table(
        f"{loaded.name}: microseconds per input sample ({threads} thread{'s' * (threads > 1)}, "
        f"median of {repeats})",
        ["block", "path", "us/sample", "x chunk floor", "call median us", "call p99 us",
         "state bytes", "status"],
        [
            [r["block"], r["runner"], r["us_per_sample"], r["ratio_to_floor"],
             r["latency_median_us"], r["latency_p99_us"], r["state_bytes"], r["status"]]
            for r in results
        ],
    )  # fmt: skip
    if json_path is not None:
        json_path.write_text(json.dumps({"model": loaded.name, "results": results}, indent=1))
        message(f"json: {json_path}")
    if plot_path is not None:
        problem = plot_costs({loaded.name: results}, plot_path, "us per input sample")
        message(problem or f"plot: {plot_path}")
    return 0
