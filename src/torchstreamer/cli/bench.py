"""``torchstreamer bench MODEL``: the benchmark of ``benchmarks/run.py`` for one model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Optional

import torch

from torchstreamer.cli.show import count, message, progress, stage, table, width
from torchstreamer.cli.spec import LoadedModel
from torchstreamer.measure import plot_costs, runners_for, time_runners

__all__ = ["WIDE", "bench_model"]

WIDE = 120
"""Columns from which the table has long headers and statuses in place; below, short headers
and long statuses as numbered notes under the table (every line fits in 80 columns)."""


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
    with stage(f"preparing every path of {loaded.name}"):
        runners = runners_for(loaded.model, loaded.example, loaded.module_padding)
    results: list[dict[str, Any]] = []
    for block in progress(blocks, "benchmarking block sizes"):
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
    title = (
        f"{loaded.name}: microseconds per input sample ({count(threads, 'thread')}, "
        f"median of {repeats})"
    )
    if width() >= WIDE:
        table(
            title,
            ["block", "path", "us/sample", "x chunk floor", "call median us", "call p99 us",
             "state bytes", "status"],
            [
                [r["block"], r["runner"], r["us_per_sample"], r["ratio_to_floor"],
                 r["latency_median_us"], r["latency_p99_us"], r["state_bytes"], r["status"]]
                for r in results
            ],
        )  # fmt: skip
    else:
        _narrow_table(title, results)
    if json_path is not None:
        json_path.write_text(json.dumps({"model": loaded.name, "results": results}, indent=1))
        message(f"json: {json_path}")
    if plot_path is not None:
        problem = plot_costs({loaded.name: results}, plot_path, "us per input sample")
        message(problem or f"plot: {plot_path}")
    return 0


def _narrow_table(title: str, results: list[dict[str, Any]]) -> None:
    """The table in 80 columns: short headers, long statuses as notes below it."""
    notes: list[str] = []

    def status(text: str) -> str:
        if len(text) <= 8:
            return text
        if text not in notes:
            notes.append(text)
        return f"note {notes.index(text) + 1}"

    rows = [
        [r["block"], r["runner"], r["us_per_sample"], r["ratio_to_floor"],
         r["latency_median_us"], r["latency_p99_us"], r["state_bytes"], status(r["status"])]
        for r in results
    ]  # fmt: skip
    table(
        "\n".join(textwrap.wrap(title, 78)),
        ["block", "path", "us/smp", "x floor", "call us", "p99 us", "state B", "status"],
        rows,
        columns=min(width(), WIDE - 1),
    )
    legend = (
        "us/smp: microseconds per input sample; x floor: times the cost of the model on "
        "independent chunks; call us, p99 us: median and 99th percentile microseconds per call "
        "(block 1 and step); state B: bytes of stream state."
    )
    for line in textwrap.wrap(legend, 78):
        message(line)
    for number, text in enumerate(notes, 1):
        for i, line in enumerate(textwrap.wrap(f"note {number}: {text}", 78)):
            message(line if i == 0 else "  " + line)
