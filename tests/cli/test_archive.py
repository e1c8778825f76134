"""A crafted .pt2 file must not run code when the CLI opens it: each archive below would run
a pickle, eval or a library function through torch.export.load; the CLI refuses it with exit 2
and one sentence, and loads it only with --trust-file."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

from torchstreamer.cli import main

HELPER = """
import pathlib


def touch(marker, value):
    pathlib.Path(marker).touch()
    return value
"""


class Payload:
    """Unpickles by calling ``evil_helper.touch(marker, value)``: a marker file appears."""

    def __init__(self, touch: Callable[..., Any], marker: Path, value: Any) -> None:
        self.touch, self.marker, self.value = touch, marker, value

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.touch, (str(self.marker), self.value))


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "evil_helper.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import evil_helper

    yield evil_helper
    sys.modules.pop("evil_helper", None)


EXAMPLE = torch.randn(1, 1, 64)


def saved(tmp_path: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3, padding=2), torch.nn.Tanh()).eval()
    dim = torch.export.Dim("T", min=8)
    program = torch.export.export(model, (EXAMPLE,), dynamic_shapes=({2: dim},))
    torch.export.save(program, tmp_path / "good.pt2")
    return tmp_path / "good.pt2"


def rewrite(
    source: Path, target: Path, change: Callable[[str, bytes], Optional[bytes]], add: bool = False
) -> Path:
    """Copy the archive, passing each entry (name without the root folder) through ``change``
    (``None`` drops it)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        names = old.namelist()
        for name in names:
            data = change(name.split("/", 1)[1], old.read(name))
            if data is not None:
                new.writestr(name, data)
        if add:
            root = names[0].split("/", 1)[0]
            new.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    return target


def pickled(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_pickled_example_inputs_are_refused_unless_trusted(
    tmp_path: Path, helper: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    evil = pickled(Payload(helper.touch, marker, ((EXAMPLE,), {})))
    path = rewrite(
        saved(tmp_path),
        tmp_path / "evil.pt2",
        lambda name, data: evil if name == "data/sample_inputs/model.pt" else data,
    )
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert err.count("\n") == 1
    assert "example inputs do not load with torch.load(weights_only=True)" in err
    assert "evil_helper.touch" in err
    assert "Pass --trust-file to load it anyway" in err
    # torch's warning about the fallback to weights_only=False has a bad format string, which
    # pytest's log capture would raise
    monkeypatch.setattr(logging, "raiseExceptions", False)
    assert main(["verify", str(path), "--trust-file", "--signals", "1"]) == 0
    assert marker.exists()  # trusted: torch.export.load unpickled it


def test_a_weight_stored_with_pickle_is_refused(
    tmp_path: Path, helper: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"

    def change(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            for meta in config["config"].values():
                meta["use_pickle"] = True
            return json.dumps(config).encode()
        if name.startswith("data/weights/weight_"):
            return pickled(Payload(helper.touch, marker, torch.zeros(2)))
        return data

    path = rewrite(saved(tmp_path), tmp_path / "evil.pt2", change)
    assert main(["verify", str(path)]) == 2
    assert not marker.exists()
    assert "is stored with pickle, so loading it would run code" in capsys.readouterr().err


def test_an_opaque_constant_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(name: str, data: bytes) -> bytes:
        if name == "data/constants/model_constants_config.json":
            config = {"config": {"thing": {"path_name": "opaque_obj_0", "is_param": False,
                                           "use_pickle": False, "tensor_meta": None}}}  # fmt: skip
            return json.dumps(config).encode()
        return data

    path = rewrite(saved(tmp_path), tmp_path / "evil.pt2", change)
    assert main(["inspect", str(path)]) == 2
    assert "constant 'thing' is an object that is loaded with pickle" in capsys.readouterr().err


def test_a_shape_expression_that_eval_would_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    attack = f"__import__('pathlib').Path({str(marker)!r}).touch() or "

    def change(name: str, data: bytes) -> bytes:
        if name != "models/model.json":
            return data
        text = data.decode()
        start = text.index('"expr_str": "') + len('"expr_str": "')
        return (text[:start] + attack.replace("'", "\\u0027") + text[start:]).encode()

    path = rewrite(saved(tmp_path), tmp_path / "evil.pt2", change)
    assert main(["inspect", str(path)]) == 2
    assert not marker.exists()
    assert "is not a plain sympy expression (loading it runs eval)" in capsys.readouterr().err


def test_a_graph_that_calls_something_other_than_an_operator_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(name: str, data: bytes) -> bytes:
        text = data.decode() if name == "models/model.json" else None
        if text is None:
            return data
        return text.replace('"torch.ops.aten.tanh.default"', '"torch.ops.load_library"').encode()

    path = rewrite(saved(tmp_path), tmp_path / "evil.pt2", change)
    assert main(["inspect", str(path)]) == 2
    assert "its graph calls 'torch.ops.load_library'" in capsys.readouterr().err


def test_compiled_code_and_other_layouts_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = saved(tmp_path)
    path = rewrite(good, tmp_path / "aoti.pt2", lambda name, data: data, add=True)
    assert main(["inspect", str(path)]) == 2
    assert "AOTInductor compiled code" in capsys.readouterr().err
    with zipfile.ZipFile(tmp_path / "old.pt2", "w") as old:
        old.writestr("version", "8.0")
        old.writestr("serialized_example_inputs.pt", b"")
    assert main(["inspect", str(tmp_path / "old.pt2")]) == 2
    assert "not in the layout of torch.export.save" in capsys.readouterr().err
    (tmp_path / "text.pt2").write_text("not a zip")
    assert main(["inspect", str(tmp_path / "text.pt2")]) == 2
    err = capsys.readouterr().err
    assert "is not a file saved with torch.export.save (it is not a zip archive)" in err


def test_a_normal_saved_program_loads_without_trust(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(saved(tmp_path)), "--signals", "1"]) == 0
    assert "good: exact" in capsys.readouterr().out


def spaces(size: int) -> Iterator[bytes]:
    """``size`` bytes of spaces, a mebibyte at a time."""
    chunk = b" " * (1 << 20)
    for start in range(0, size, len(chunk)):
        yield chunk[: size - start]


def test_a_version_field_with_200_mib_of_spaces_is_refused_before_it_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = saved(tmp_path)
    path = tmp_path / "bomb.pt2"  # "0" and 200 MiB of spaces, deflated to about 200 KB
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(path, "w") as new:
        for name in old.namelist():
            if not name.endswith("/archive_version"):
                new.writestr(name, old.read(name))
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with new.open(info, "w", force_zip64=True) as member:
                member.write(b"0")
                for chunk in spaces(200 << 20):
                    member.write(chunk)
    assert path.stat().st_size < 1 << 20
    began = time.perf_counter()
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - began < 5
    assert err.count("\n") == 1
    assert "its members unpack to 2097" in err
    assert "as a zip bomb does" in err
    # short of a zip bomb: each field is bounded, and must be what torch.export.save writes
    for version, expected in [
        (b"0" + b" " * 100, "its archive_version holds 101 bytes, more than the 16"),
        (b"0\n", "it has no archive version '0' of this torch version"),
        (b"\xff", "it has no archive version '0' of this torch version"),
    ]:
        rewrite(good, path, lambda name, data, v=version: v if name == "archive_version" else data)
        assert main(["inspect", str(path)]) == 2
        assert expected in capsys.readouterr().err
    rewrite(good, path, lambda name, data: b"6" * 20 if name == ".data/version" else data)
    assert main(["inspect", str(path)]) == 2
    assert "its .data/version holds 20 bytes, more than the 16" in capsys.readouterr().err


def test_documents_over_the_read_limit_are_refused_before_they_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchstreamer.cli import archive

    good = saved(tmp_path)
    size = zipfile.ZipFile(good).getinfo("good/models/model.json").file_size
    opened: list[str] = []
    open_member = zipfile.ZipFile.open

    def logged(self: zipfile.ZipFile, info: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(getattr(info, "filename", info))
        return open_member(self, info, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", logged)
    monkeypatch.setattr(archive, "READ_LIMIT", size - 1)
    assert main(["inspect", str(good)]) == 2
    err = capsys.readouterr().err
    assert f"its models/model.json holds {size} bytes, more than the {size - 1}" in err
    assert "--trust-file loads the file unchecked" in err
    assert opened
    assert not any(name.endswith("model.json") for name in opened)
    monkeypatch.setattr(archive, "READ_LIMIT", 1 << 20)
    deep = b"[" * 100_000  # json.loads raises RecursionError
    bad = rewrite(
        good, tmp_path / "deep.pt2", lambda n, data: deep if n.startswith("models/") else data
    )
    assert main(["inspect", str(bad)]) == 2
    assert "its models/model.json is not JSON" in capsys.readouterr().err
