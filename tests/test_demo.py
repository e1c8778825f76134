"""make demo's code path on a short signal: verified, latency reported, picture written."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchstreamer.demo import demo_signal, main, run_demo


def test_the_demo_verifies_the_filter_bank_and_draws_the_picture(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = run_demo(seconds=0.5, block=160, picture=tmp_path / "demo.png", echo=False)
    assert result.exact
    assert result.latency_samples == 319  # the 320-sample energy window, 160-sample hop
    assert result.receptive_field == 253 + 320 - 1  # the FIR (Hann: end taps 0), the window
    assert result.picture is not None
    assert result.picture.stat().st_size > 10_000


def test_the_demo_command_prints_the_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--seconds", "0.3", "--picture", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    assert "verified against offline" in out
    assert "(exact" in out
    assert "latency: 319 samples (19.9 ms)" in out


def test_the_demo_signal_is_deterministic() -> None:
    a, b = demo_signal(0.1), demo_signal(0.1)
    assert a.shape == (1, 1, 1600)
    assert bool((a == b).all())
