"""The command line of issue 12: options before or after the positional arguments, counts that
must be positive, a factory or module that raises, the channel count of a factory without an
example, --plot without matplotlib, the help text on running code."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli import write_wav
from torchstreamer.cli import main

MODELS = """
import torch
from torch import nn
import torchstreamer as pts

raise_on_import = False


def causal():
    torch.manual_seed(0)
    return nn.Sequential(nn.ReLU(), pts.PaddedConv1d(2, 3, 3), pts.PaddedConv1d(3, 2, 2))


def mono():
    torch.manual_seed(0)
    return pts.PaddedConv1d(1, 1, 5).eval(), torch.randn(1, 1, 64)


def broken():
    raise ValueError("no weights in\\n/tmp/nowhere")
"""


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "option_models.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "raising_models.py").write_text("raise RuntimeError('cannot start here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield "option_models"
    for name in ("option_models", "raising_models"):
        sys.modules.pop(name, None)


def test_a_factory_that_raises_exits_2_with_one_line(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", f"{models}:broken"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"torchstreamer inspect: the factory {models}:broken raised ValueError: no weights in\n"
    )


def test_a_module_that_raises_on_import_exits_2_with_one_line(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "raising_models:make"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "torchstreamer verify: importing raising_models for raising_models:make raised "
        "RuntimeError: cannot start here\n"
    )


def test_the_channel_count_comes_from_the_first_layer(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", f"{models}:causal", "--signals", "1"]) == 0  # 2 channels, inferred
    assert "causal: exact" in capsys.readouterr().out
    assert main(["verify", f"{models}:causal", "--channels", "1"]) == 2
    err = capsys.readouterr().err
    assert "the model takes 2 channels (its first layer '1' (PaddedConv1d)" in err
    assert err.strip().endswith("pass --channels 2.")


@pytest.mark.parametrize(
    "arguments",
    [
        ["verify", "--example", "tcn", "--signals", "0"],
        ["verify", "--example", "tcn", "--signals", "-3"],
        ["bench", "--example", "tcn", "--repeats", "0"],
        ["bench", "--example", "tcn", "--length", "0"],
        ["bench", "--example", "tcn", "--threads", "0"],
        ["run", "--example", "filterbank", "in.wav", "out.wav", "--block", "0"],
        ["inspect", "--example", "tcn", "--sample-rate", "0"],
        ["inspect", "option_models:causal", "--channels", "0"],
    ],
)
def test_counts_below_1_are_refused(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert "must be at least 1, not" in capsys.readouterr().err


def test_a_negative_tolerance_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", "--example", "tcn", "--tolerance", "-1"])
    assert exit_info.value.code == 2
    assert "must be at least 0, not -1" in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchstreamer.cli as cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before --plot was checked")

    monkeypatch.setattr(cli, "load_model", no_work)
    assert main(["bench", "--example", "tcn", "--plot", "costs.png"]) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err
    assert "pip install 'torch-streamer[bench]'" in err


@pytest.mark.parametrize(
    "order",
    [
        ["MODEL", "IN", "OUT", "--block", "100"],
        ["--block", "100", "MODEL", "IN", "OUT"],
        ["MODEL", "--block", "100", "IN", "OUT"],
        ["MODEL", "IN", "--block", "100", "OUT"],
    ],
)
def test_run_takes_options_before_between_and_after_the_files(
    models: str, tmp_path: Path, order: list[str]
) -> None:
    write_wav(tmp_path / "in.wav", frames=1000)
    values = {"MODEL": f"{models}:mono", "IN": "in.wav", "OUT": "out.wav"}
    assert main(["run", *(values.get(a, a) for a in order)]) == 0
    import soundfile

    assert soundfile.info(str(tmp_path / "out.wav")).frames == 1000


@pytest.mark.parametrize(
    "arguments",
    [
        ["run", "--example", "filterbank", "in.wav", "out.wav", "--block", "160"],
        ["run", "in.wav", "--block", "160", "out.wav", "--example", "filterbank"],
    ],
)
def test_run_with_an_example_takes_options_anywhere(
    models: str, tmp_path: Path, arguments: list[str]
) -> None:
    write_wav(tmp_path / "in.wav", frames=1600)
    assert main(arguments) == 0
    assert (tmp_path / "out.wav").exists()


@pytest.mark.parametrize(
    "arguments",
    [
        ["verify", "MODEL", "--signals", "1", "--seed", "3"],
        ["verify", "--signals", "1", "MODEL", "--seed", "3"],
        ["verify", "--signals", "1", "--seed", "3", "MODEL"],
        ["inspect", "MODEL", "--sample-rate", "8000"],
        ["inspect", "--sample-rate", "8000", "MODEL"],
    ],
)
def test_inspect_and_verify_take_options_anywhere(
    models: str, arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([a.replace("MODEL", f"{models}:mono") for a in arguments]) == 0
    out = capsys.readouterr().out
    assert "mono: exact" in out or "latency: 0 samples (0.00 ms)" in out


def test_options_before_the_command_are_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--signals", "1", "verify", "--example", "tcn"])
    assert exit_info.value.code == 2


def test_the_help_says_what_runs_code(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["inspect"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "package.module:factory imports the module and calls the factory" in out
        assert "refused unless you pass --trust-file" in out


def test_a_forward_that_raises_is_reported_once_as_the_model_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 12, item 12: not blamed on time, nor on the channel count
    (tmp_path / "raising_model.py").write_text(
        "import torch\n"
        "class Bad(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv1d(1, 1, 3)\n"
        "    def forward(self, x):\n"
        "        raise ValueError('the input must be normalised')\n"
        "def make():\n"
        "    return Bad()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", "raising_model:make"]) == 2
    err = capsys.readouterr().err
    assert "the model raised ValueError: the input must be normalised" in err
    assert err.count("the input must be normalised") == 1
    assert "--channels" not in err
