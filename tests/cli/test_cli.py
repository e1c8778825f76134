"""The torchstreamer command as a user runs it: every subcommand, built-in examples, a user's
package.module:factory, a torch.export file, and every error path with its exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import torchstreamer as pts
from torchstreamer.cli import main

USER_MODULE = '''
import torch
from torch import nn
import torchstreamer as pts


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


class WrongStream(pts.BaseStream):
    """A deliberately wrong streamer: triples instead of doubling."""

    def forward(self, x, final=False):
        return 3 * x

    def output_length(self, n):
        return n


def causal():
    torch.manual_seed(0)
    return nn.Sequential(pts.PaddedConv1d(2, 3, 3), nn.ReLU(), pts.PaddedConv1d(3, 2, 2))


def causal_with_example():
    return causal(), torch.randn(1, 2, 256)


def pooled():
    return nn.Sequential(nn.Conv1d(1, 2, 3), nn.AdaptiveAvgPool1d(1))


def wrong():
    pts.register_streamer(Doubler, lambda module: WrongStream())
    return nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), Doubler(), nn.Conv1d(2, 1, 1))


def normalised():
    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.LayerNorm(62)), torch.randn(1, 1, 64)


def two_outputs():
    torch.manual_seed(0)
    return pts.PaddedConv1d(1, 2, 3).eval(), torch.randn(1, 1, 64)


def not_a_module():
    return 42
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "user_models.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield "user_models"
    sys.modules.pop("user_models", None)


def test_inspect_a_built_in_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--example", "vollo_cnn", "--sample-rate", "16000"]) == 0
    out = capsys.readouterr().out
    assert "conv1d" in out
    assert "receptive field" in out
    assert "latency: 0 samples (0.00 ms)" in out
    assert "receptive field: 5 samples" in out
    assert "step model: yes" in out


def test_inspect_shows_rates_and_latency_in_milliseconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["inspect", "--example", "filterbank"]) == 0
    out = capsys.readouterr().out
    assert "1/160" in out
    assert "latency: 319 samples (19.94 ms)" in out
    assert "step model: no" in out
    assert "sampling rate" in out


def test_inspect_a_model_that_cannot_stream(
    user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", f"{user_module}:pooled"]) == 1
    assert "cannot stream" in capsys.readouterr().err


def test_verify_a_user_factory_with_and_without_an_example(
    user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", f"{user_module}:causal", "--channels", "2", "--signals", "2"]) == 0
    assert main(["verify", f"{user_module}:causal_with_example", "--signals", "2"]) == 0
    assert capsys.readouterr().out.count("exact.") == 2


def test_verify_names_the_first_diverging_layer(
    user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        assert main(["verify", f"{user_module}:wrong", "--signals", "1"]) == 1
    finally:
        pts.unregister_streamer(sys.modules[user_module].Doubler)
    out = capsys.readouterr().out
    assert "MISMATCH" in out
    assert "first layer whose streamed output diverges: layer '1' (Doubler)" in out


def test_verify_names_the_layer_that_normalises_over_time(
    user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # torch.export's constraint error named neither the layer nor what to do
    assert main(["verify", f"{user_module}:normalised", "--signals", "1"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "Cannot stream layer '2' (LayerNorm): it normalises over time" in err
    assert "To stream this model, normalise over channels per time step" in err


def test_verify_a_torch_export_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = torch.nn.Sequential(pts.PaddedConv1d(2, 3, 3), torch.nn.Tanh()).eval()
    dim = torch.export.Dim("T", min=8)
    program = torch.export.export(model, (torch.randn(1, 2, 64),), dynamic_shapes=({2: dim},))
    torch.export.save(program, tmp_path / "model.pt2")
    assert main(["verify", str(tmp_path / "model.pt2"), "--signals", "1"]) == 0
    assert "model: exact" in capsys.readouterr().out


def test_bench_writes_json_and_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["bench", "--example", "vollo_cnn", "--blocks", "1,16", "--repeats", "1"]
    arguments += ["--length", "64", "--json", str(tmp_path / "b.json")]
    arguments += ["--plot", str(tmp_path / "b.png")]
    assert main(arguments) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    runners = {(r["block"], r["runner"]): r for r in report["results"]}
    assert runners[(1, "step")]["status"] == "ok"
    assert runners[(16, "graph")]["us_per_sample"] > 0
    assert runners[(1, "step")]["latency_p99_us"] >= runners[(1, "step")]["latency_median_us"]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "b.png").stat().st_size > 1000


def write_wav(path: Path, channels: int = 1, rate: int = 16000, frames: int = 4000) -> None:
    """A WAV/FLAC file of sines (``channels`` of them) for the run command's tests."""
    soundfile = pytest.importorskip("soundfile")
    t = np.arange(frames) / rate
    data = np.stack([0.3 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)], 1)
    soundfile.write(str(path), data, rate)


def test_run_streams_a_stereo_file_channel_by_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wav(tmp_path / "in.wav", channels=2)
    arguments = ["run", "--example", "filterbank", str(tmp_path / "in.wav")]
    assert main([*arguments, str(tmp_path / "out.wav"), "--block", "100"]) == 0
    import soundfile

    data, rate = soundfile.read(str(tmp_path / "out.wav"), always_2d=True)
    assert rate == 100
    assert data.shape == (4000 // 160 - 1, 2 * 24)
    assert "real-time factor" in capsys.readouterr().out


def test_run_writes_the_outputs_of_each_file_channel_together(
    user_module: str, tmp_path: Path
) -> None:
    # a one-channel model with 2 output channels on a stereo file: 4 channels, those of the
    # file's first channel first (the order the help and docs/cli.md give)
    write_wav(tmp_path / "in.wav", channels=2)
    arguments = ["run", f"{user_module}:two_outputs", str(tmp_path / "in.wav")]
    assert main([*arguments, str(tmp_path / "out.wav"), "--block", "333"]) == 0
    import soundfile

    data, _ = soundfile.read(str(tmp_path / "out.wav"), always_2d=True)
    x = torch.from_numpy(soundfile.read(str(tmp_path / "in.wav"), dtype="float32")[0].T.copy())
    model = sys.modules[user_module].two_outputs()[0]
    with torch.no_grad():
        expected = torch.cat([model(x[c].reshape(1, 1, -1))[0] for c in range(2)], 0)
    np.testing.assert_allclose(data, expected.numpy().T, atol=1e-4)  # WAV output is 16-bit


def test_run_help_gives_the_order_of_the_output_channels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "a one-channel model streams each channel of the file on its own" in out
    assert "those of the file's first channel, then those of its second, and so on" in out


def test_run_feeds_all_channels_to_a_multichannel_model(user_module: str, tmp_path: Path) -> None:
    write_wav(tmp_path / "in.flac", channels=2)
    arguments = ["run", f"{user_module}:causal_with_example", str(tmp_path / "in.flac")]
    assert main([*arguments, str(tmp_path / "out.wav"), "--block", "333"]) == 0
    import soundfile

    data, rate = soundfile.read(str(tmp_path / "out.wav"), always_2d=True)
    assert rate == 16000
    assert data.shape == (4000, 2)
    x = torch.from_numpy(soundfile.read(str(tmp_path / "in.flac"), dtype="float32")[0].T.copy())
    model = sys.modules[user_module].causal_with_example()[0]
    expected = model(x.unsqueeze(0))[0].detach().numpy().T
    np.testing.assert_allclose(data, expected, atol=1e-6)  # WAV output is 32-bit float


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["inspect", "not_a_spec"], "neither a file nor package.module:factory"),
        (["inspect", "no_such_package.models:make"], "Cannot import 'no_such_package.models'"),
        (["inspect", "user_models:missing"], "has no callable 'missing'"),
        (["inspect", "user_models:not_a_module"], "returned int, not an nn.Module"),
        (["inspect", "missing.pt2"], "No such file: missing.pt2"),
        (["inspect", "--example", "nope"], "No built-in example 'nope'"),
        (["inspect", "user_models:causal", "--example", "tcn"], "either MODEL or --example"),
        (["verify"], "No model given"),
        (["run", "--example", "filterbank", "missing.wav", "out.wav"], "No such file"),
    ],
)
def test_errors_exit_with_2_and_say_what_is_wrong(
    user_module: str, arguments: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(arguments) == 2
    assert expected in capsys.readouterr().err


def test_a_wrong_sample_rate_or_channel_count_exits_with_2(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wav(tmp_path / "in.wav", channels=3, rate=8000)
    out = str(tmp_path / "out.wav")
    assert main(["run", "--example", "filterbank", str(tmp_path / "in.wav"), out]) == 2
    assert "sampled at 8000 Hz but filterbank expects 16000 Hz" in capsys.readouterr().err
    arguments = ["run", f"{user_module}:causal_with_example", str(tmp_path / "in.wav"), out]
    assert main(arguments) == 2
    assert "takes 2 channels but" in capsys.readouterr().err


def test_bad_block_sizes_are_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--example", "tcn", "--blocks", "1,x"])
    assert exit_info.value.code == 2


def test_python_dash_m_runs_the_command() -> None:
    command = [
        sys.executable,
        "-m",
        "torchstreamer",
        "verify",
        "--example",
        "tcn",
        "--signals",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "tcn: exact" in done.stdout


def test_run_with_a_batched_example_and_bad_output_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = tmp_path / "batched_models.py"
    module.write_text(
        "import torch\nimport torchstreamer as pts\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return pts.PaddedConv1d(1, 1, 5).eval(), torch.randn(2, 1, 64)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    write_wav(tmp_path / "in.wav", channels=1, frames=1001)
    source = str(tmp_path / "in.wav")
    assert main(["run", "batched_models:make", source, str(tmp_path / "out.wav")]) == 0
    import soundfile

    data, _ = soundfile.read(str(tmp_path / "out.wav"), always_2d=True)
    assert data.shape == (1001, 1)  # one signal, not the file cut into the example's batch
    assert main(["run", "batched_models:make", source, str(tmp_path / "out.xyz")]) == 2
    assert "use an audio file name" in capsys.readouterr().err
    assert main(["run", "batched_models:make", source, str(tmp_path / "no" / "o.wav")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_run_writes_values_outside_minus_one_to_one_as_float(tmp_path: Path) -> None:
    soundfile = pytest.importorskip("soundfile")
    write_wav(tmp_path / "speech.wav")  # the README's example: energies in dB
    arguments = ["run", "--example", "filterbank", str(tmp_path / "speech.wav")]
    assert main([*arguments, str(tmp_path / "energies.wav"), "--block", "160"]) == 0
    assert soundfile.info(str(tmp_path / "energies.wav")).subtype == "FLOAT"
    data, _ = soundfile.read(str(tmp_path / "energies.wav"), dtype="float32", always_2d=True)
    from torchstreamer.examples import load_example

    x = torch.from_numpy(soundfile.read(str(tmp_path / "speech.wav"), dtype="float32")[0])
    with torch.no_grad():
        expected = load_example("filterbank").model(x.reshape(1, 1, -1))[0].numpy().T
    assert data.min() < -20  # not clipped to -1
    np.testing.assert_allclose(data, expected[: len(data)], rtol=1e-5, atol=1e-4)


LEVELS_MODULE = """
import torch
from torch import nn


def levels():  # ten channels in [-0.3, 0.3]
    model = nn.Conv1d(1, 10, 1, bias=False)
    model.weight.data = torch.linspace(0, 1, 10).reshape(10, 1, 1)
    return model.eval(), torch.randn(1, 1, 64)
"""


def test_run_refuses_output_that_its_format_would_clip_or_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    soundfile = pytest.importorskip("soundfile")
    (tmp_path / "levels_models.py").write_text(LEVELS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    write_wav(tmp_path / "in.wav")
    source = str(tmp_path / "in.wav")
    filterbank = ["run", "--example", "filterbank", source, "--block", "160"]
    assert main([*filterbank, str(tmp_path / "out.flac")]) == 1  # FLAC has no float
    err = capsys.readouterr().err
    assert "outside the [-1, 1] that PCM_16 in" in err
    assert "nothing was written. To keep the values, name the output .wav instead" in err
    assert main([*filterbank, str(tmp_path / "out.wav"), "--subtype", "PCM_16"]) == 1
    assert "leave out --subtype" in capsys.readouterr().err
    assert not (tmp_path / "out.flac").exists()
    assert not (tmp_path / "out.wav").exists()
    arguments = ["run", "levels_models:levels", source]
    assert main([*arguments, str(tmp_path / "levels.wav"), "--subtype", "pcm_24"]) == 0
    assert soundfile.info(str(tmp_path / "levels.wav")).subtype == "PCM_24"
    assert main([*arguments, str(tmp_path / "levels.flac")]) == 2  # FLAC holds 8 channels
    assert "Cannot write 10 channels at 16000 Hz to" in capsys.readouterr().err
    assert not (tmp_path / "levels.flac").exists()
    sys.modules.pop("levels_models", None)


@pytest.mark.parametrize(
    ("output", "options", "expected"),
    [
        ("out.xyz", [], "the extensions soundfile writes are .aiff, .au,"),
        ("out", [], "use an audio file name such as out.wav or out.flac"),
        ("out.flac", ["--subtype", "FLOAT"], "A .flac file has no subtype FLOAT; pass --subtype"),
    ],
)
def test_run_checks_the_output_name_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    output: str,
    options: list[str],
    expected: str,
) -> None:
    import torchstreamer.cli

    write_wav(tmp_path / "in.wav")

    def load_model(*args: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(torchstreamer.cli, "load_model", load_model)
    arguments = ["run", "--example", "filterbank", str(tmp_path / "in.wav")]
    assert main([*arguments, str(tmp_path / output), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert expected in err
    assert not (tmp_path / output).exists()


def test_run_checks_that_the_format_holds_the_output_rate_before_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchstreamer.cli import run

    write_wav(tmp_path / "in.wav")
    monkeypatch.setattr(run, "progress", lambda *args: pytest.fail("it streamed"))
    arguments = ["run", "--example", "filterbank", str(tmp_path / "in.wav")]
    assert main([*arguments, str(tmp_path / "out.mp3")]) == 2  # 100 Hz
    err = capsys.readouterr().err
    assert "Cannot write audio at 100 Hz to" in err
    assert "only supports sample rates of 8000" in err
    assert not (tmp_path / "out.mp3").exists()


def test_inspect_and_bench_a_torch_export_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = torch.nn.Sequential(pts.PaddedConv1d(1, 2, 3), torch.nn.ReLU()).eval()
    dim = torch.export.Dim("T", min=8)
    program = torch.export.export(model, (torch.randn(1, 1, 64),), dynamic_shapes=({2: dim},))
    torch.export.save(program, tmp_path / "m.pt2")
    assert main(["inspect", str(tmp_path / "m.pt2")]) == 0
    assert "step model: yes" in capsys.readouterr().out
    arguments = ["bench", str(tmp_path / "m.pt2"), "--blocks", "4", "--repeats", "1"]
    assert main([*arguments, "--length", "32"]) == 0


def test_inspect_says_that_a_model_with_strides_runs_in_frames(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["inspect", "--example", "seed_sequential"]) == 0
    out = capsys.readouterr().out
    assert "step model: yes, in frames of 8 input samples" in out
    assert "StepStream streams it" in out


def test_export_triton_writes_a_repository_and_refuses_a_model_with_lookahead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "repository"
    code = main(["export-triton", "--example", "vollo_cnn", str(repository), "--no-onnx",
                 "--block", "16", "--max-batch-size", "4"])  # fmt: skip
    assert code == 0
    config = (repository / "vollo_cnn" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in config
    assert "sequence_batching" in config
    assert str(repository / "vollo_cnn" / "1" / "sequence.pt2") in capsys.readouterr().out
    code = main(["export-triton", "--example", "seed_residual", str(tmp_path / "other")])
    assert code == 1
    err = capsys.readouterr().err
    assert "lookahead" in err
    # not torchstreamer.stream, which has no Triton form
    assert "serve it with torchstreamer.StreamPool" in err
    assert "torchstreamer.stream(" not in err
