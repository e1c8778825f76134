"""What the commands print, piped: progress lines on stderr, a real-time factor that counts the
whole command, a bench table that fits 80 columns, a bench plot whose legend fits."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import write_wav
from torchstreamer.cli import main, show


@pytest.fixture
def slow_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "slow_models.py").write_text(
        textwrap.dedent(
            """
            import time
            import torch
            import torchstreamer as pts


            def make():
                time.sleep(0.6)  # a slow load: the command's time includes it
                torch.manual_seed(0)
                return pts.PaddedConv1d(1, 1, 5).eval(), torch.randn(1, 1, 64)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield "slow_models"
    sys.modules.pop("slow_models", None)


@pytest.mark.parametrize(
    "arguments",
    [
        ["inspect", "--example", "vollo_cnn"],
        ["verify", "--example", "tcn", "--signals", "2"],
        ["bench", "--example", "vollo_cnn", "--blocks", "16", "--repeats", "1", "--length", "64"],
        ["run", "slow_models:make", "in.wav", "out.wav", "--block", "50"],
    ],
)
def test_piped_stderr_gets_a_progress_line_every_few_seconds(
    slow_models: str,
    tmp_path: Path,
    arguments: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_wav(tmp_path / "in.wav", frames=16000)
    monkeypatch.setattr(show, "INTERVAL", 0.05)
    assert main(arguments) == 0
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if line.endswith(" s so far.")]
    assert progress, lines
    assert all(line.startswith(f"torchstreamer {arguments[0]}: ") for line in progress)


def test_short_work_prints_no_progress(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--example", "tcn", "--signals", "1"]) == 0  # INTERVAL is 5 s
    assert "so far" not in capsys.readouterr().err


def test_the_real_time_factor_counts_the_whole_command(
    slow_models: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wav(tmp_path / "in.wav", frames=8000)  # 0.5 s of audio
    began = time.perf_counter()
    assert main(["run", "slow_models:make", "in.wav", "out.wav", "--block", "400"]) == 0
    waited = time.perf_counter() - began
    out = capsys.readouterr().out
    found = re.search(r"real-time factor ([\d.]+): ([\d.]+) s of wall time from the start of "
                      r"the command to this line, for 0.50 s of audio \(loading", out)  # fmt: skip
    assert found, out
    factor, wall = float(found.group(1)), float(found.group(2))
    assert 0.6 <= wall <= waited + 0.01  # the factory's sleep is in it
    assert factor == pytest.approx(wall / 0.5, rel=0.02, abs=1e-3)
    assert "streaming alone took" in out


@pytest.mark.parametrize("plain", [True, False])
def test_the_bench_table_fits_80_columns(
    plain: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    if plain:  # without rich
        monkeypatch.setattr(show, "_console", lambda *args, **kwargs: None)
    arguments = ["bench", "--example", "vollo_cnn", "--blocks", "1,4096", "--repeats", "1"]
    assert main([*arguments, "--length", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 10
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert any("us/smp" in line for line in lines)


def test_the_bench_table_is_wide_on_a_wide_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    arguments = ["bench", "--example", "vollo_cnn", "--blocks", "16", "--repeats", "1"]
    assert main([*arguments, "--length", "64"]) == 0
    assert "call median us" in capsys.readouterr().out


def test_the_bench_plot_legend_fits_in_the_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from torchstreamer.measure import plot_costs

    figures: list[Any] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda figure: figures.append(figure))
    names = ["module", "script", "graph", "step", "offline", "chunks", "cached_conv"]
    rows = [
        {"runner": name, "block": block, "us_per_sample": (i + 1) / block}
        for i, name in enumerate(names)
        for block in (1, 16, 256)
    ]
    for panels in ({"one": rows}, {"one": rows, "two": rows, "three": rows}):
        assert plot_costs(panels, tmp_path / "costs.png", "us per input sample") is None
        figure = figures.pop()
        renderer = figure.canvas.get_renderer()
        box = figure.bbox
        (legend,) = figure.legends
        shown = legend.get_window_extent(renderer)
        assert box.x0 <= shown.x0, (shown, box)
        assert shown.x1 <= box.x1, (shown, box)
        assert box.y0 <= shown.y0, (shown, box)
        assert shown.y1 <= box.y1, (shown, box)
        for axis in figure.axes:  # not over a panel or its labels
            assert not shown.overlaps(axis.get_tightbbox(renderer))
        close(figure)


def test_the_command_times_itself_from_the_start_of_its_process(
    slow_models: str, tmp_path: Path
) -> None:
    write_wav(tmp_path / "in.wav", frames=8000)
    script = (
        "import sys, time\n"
        "time.sleep(1.0)  # as if Python and torch took a second to start\n"
        "sys.argv = ['torchstreamer', 'run', 'slow_models:make', 'in.wav', 'out.wav']\n"
        "from torchstreamer.cli import main\n"
        "raise SystemExit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = re.search(r"([\d.]+) s of wall time from the start of the command", done.stdout)
    assert found, done.stdout
    assert float(found.group(1)) >= 1.6  # the sleep before main() and the factory's sleep


def test_rich_spinners_and_bars_do_not_collide_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rich_console = pytest.importorskip("rich.console")
    screen = io.StringIO()
    terminal = rich_console.Console(file=screen, force_terminal=True, width=80)
    monkeypatch.setattr(show, "_rich_terminal", lambda: terminal)
    monkeypatch.setattr(show, "INTERVAL", 0.01)
    arguments = ["bench", "--example", "vollo_cnn", "--blocks", "1,16", "--repeats", "1"]
    assert main([*arguments, "--length", "64"]) == 0
    assert main(["verify", "--example", "tcn", "--signals", "2"]) == 0
    assert "so far" not in capsys.readouterr().err  # rich draws, no progress lines
    assert "benchmarking block sizes" in screen.getvalue()


def test_counts_read_as_words_one_sample_many_samples() -> None:
    assert show.count(1, "output sample") == "1 output sample"
    assert [show.count(n, "byte") for n in (0, 2)] == ["0 bytes", "2 bytes"]


def test_inspect_says_counts_and_the_frame_engine_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # inspect printed "1 output samples", and the engine read "frames of 2 samples, from 1
    # before the signal"
    (tmp_path / "phase_models.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv1d(1, 2, 1, stride=2)), torch.randn(1, 1, 64)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", "--example", "vollo_cnn"]) == 0
    out = capsys.readouterr().out
    assert "rate: 1 output sample per input sample" in out
    assert "receptive field: 5 samples" in out
    assert "stream engine: frames of 1 sample\n" in out
    assert main(["inspect", "phase_models:make"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "rate: 1 output sample per 2 input samples" in out
    assert "receptive field: 1 sample" in out
    assert (
        "stream engine: frames of 2 samples; the first frame starts with 1 zero sample before "
        "the signal, so that frames end where outputs complete"
    ) in out
    assert "frames hold outputs back by up to 1 sample" in out  # (the step model's verdict)
    assert not re.search(r"\b1 (output |input )?samples", out), out
    assert main(["verify", "--example", "tcn", "--signals", "1"]) == 0
    assert "exact. 1 random signal in random blocks" in capsys.readouterr().out
