"""make demo's code path on a short signal: verified, latency reported, picture written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from torchstreamer.demo import demo_signal, main, run_demo


def test_the_demo_verifies_the_filter_bank_and_draws_the_picture(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = run_demo(seconds=0.5, block=160, picture=tmp_path / "demo.png", echo=False)
    assert result.exact
    assert result.latency_samples == 319  # the 320-sample energy window, 160-sample hop
    # the 255-tap FIR, then the 320-sample window: read off the layers' windows, so the Hann
    # window's zero end taps count
    assert result.receptive_field == 255 + 320 - 1
    assert result.picture is not None
    assert result.picture.stat().st_size > 10_000


def test_the_demo_command_prints_the_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--seconds", "0.3", "--picture", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    assert "verified against offline" in out
    assert "(exact: the tolerance is 1e-05 of the largest output" in out
    assert "latency: 319 samples (19.9 ms)" in out


def test_the_demo_signal_is_deterministic() -> None:
    a, b = demo_signal(0.1), demo_signal(0.1)
    assert a.shape == (1, 1, 1600)
    assert bool((a == b).all())


def test_the_picture_explains_streaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    figures: list[Any] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    run_demo(seconds=0.3, block=160, picture=tmp_path / "demo.png", echo=False)
    (figure,) = figures
    panels = [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]
    for axis in panels:  # every panel says what its axes are, with units
        assert axis.get_xlabel() in ("time (s)", "time (ms)")
        assert axis.get_ylabel()
    colorbars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert any(axis.get_ylabel() == "energy (dB)" for axis in colorbars)
    zoom, timeline = panels[-2:]
    texts = [t.get_text() for t in zoom.texts]
    assert texts[:3] == ["block 1", "block 2", "block 3"]
    boundaries = [line for line in zoom.lines if line.get_linestyle() == "--"]
    assert [line.get_xdata()[0] for line in boundaries[:3]] == [0.0, 10.0, 20.0]  # ms
    assert any(t.get_text() == "latency: 319 samples (19.9 ms)" for t in timeline.texts)
    assert "an output frame is one output time step, made every 160 input samples" in (
        timeline.get_title()
    )
    dots = [line for line in timeline.lines if line.get_marker() == "o"]
    assert max(float(d.get_xdata()[0]) for d in dots) < timeline.get_xlim()[1]  # none clipped
    for axis in panels[1:4]:  # the bands are named by their centre frequency
        assert axis.get_ylabel() == "band centre (Hz)"
        labels = [int(t.get_text()) for t in axis.get_yticklabels()]
        assert labels == sorted(labels)
        assert 80 <= labels[0] < labels[-1] <= 7000
    close(figure)
