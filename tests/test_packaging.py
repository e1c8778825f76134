"""The package as pip sees it: type information, the license, the extras' bounds and the pins,
and what each Makefile target installs."""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "requirements" / "pins.txt"


def test_py_typed_is_in_the_installed_package() -> None:
    assert importlib.resources.files("torchstreamer").joinpath("py.typed").is_file()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A wheel built from a copy of the source tree (the checkout itself stays untouched)."""
    pytest.importorskip("setuptools", minversion="77")
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for license_file in ROOT.glob("LICEN[CS]E*"):
        shutil.copy(license_file, tree / license_file.name)
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    build = "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"
    built = subprocess.run(
        [sys.executable, "-c", build], cwd=tree, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "License classifiers are deprecated" not in built.stderr
    assert "project.license` as a TOML table is deprecated" not in built.stderr
    name = built.stdout.strip().splitlines()[-1]
    return zipfile.ZipFile(tree / "dist" / name)


def _metadata(wheel: zipfile.ZipFile) -> str:
    path = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return wheel.read(path).decode()


def test_the_wheel_ships_py_typed(wheel: zipfile.ZipFile) -> None:
    assert "torchstreamer/py.typed" in wheel.namelist()


def test_the_license_is_an_spdx_expression(wheel: zipfile.ZipFile) -> None:
    metadata = _metadata(wheel)
    assert re.search(r"^License-Expression: MIT$", metadata, re.M)
    assert not re.search(r"^Classifier: License ::", metadata, re.M)


def test_the_wheel_pins_nothing(wheel: zipfile.ZipFile) -> None:
    requires = re.findall(r"^Requires-Dist: (.*)$", _metadata(wheel), re.M)
    assert requires, "no Requires-Dist in the wheel's metadata"
    pinned = [r for r in requires if "==" in r.split(";")[0]]  # `extra == "dev"` is a marker
    assert not pinned, pinned


def _extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["optional-dependencies"])


def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in PINS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{PINS.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_extras_have_lower_bounds_and_every_pin_meets_them() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _pins()
    assert "torch" not in pins, "torch comes from the Makefile's TORCH_SPEC, not the pins"
    bounded = set()
    for extra, requirements in _extras().items():
        for text in requirements:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            operators = {spec.operator for spec in requirement.specifier}
            assert operators & {">=", "~="}, f"[{extra}] {text}: give it a lower bound"
            assert not operators & {"==", "==="}, f"[{extra}] {text}: pin it in {PINS.name}"
            assert name in pins, f"[{extra}] {text}: pin it in {PINS.name}"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{PINS.name} pins {name}=={pins[name]}, outside [{extra}] {text}"
            )
            bounded.add(name)
    assert not set(pins) - bounded, f"pins of no extra: {sorted(set(pins) - bounded)}"


def _make_dry_run(target: str, tmp_path: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"  # absent: every install step is due
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_SPEC", "PYTHON")  # a `make test` above us
    env = {k: v for k, v in os.environ.items() if k not in outer}
    ran = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line for line in ran.stdout.splitlines() if "pip" in line]


def _installs(lines: list[str]) -> list[str]:
    return [line for line in lines if " install " in line and "--upgrade pip" not in line]


def test_make_demo_installs_only_what_the_demo_needs(tmp_path: Path) -> None:
    installs = _installs(_make_dry_run("demo", tmp_path))
    assert len(installs) == 2, installs
    assert '"torch==2.13.0"' in installs[0]  # torch first: the CPU wheel
    assert '-c requirements/pins.txt -e ".[demo]"' in installs[1]
    assert not any("download" in line for line in _make_dry_run("demo", tmp_path))


def test_make_test_installs_the_test_extras_at_the_pins_and_the_0_0_2_sdist(
    tmp_path: Path,
) -> None:
    lines = _make_dry_run("test", tmp_path)
    installs = _installs(lines)
    assert '"torch==2.13.0"' in installs[0]
    assert '-c requirements/pins.txt -e ".[dev,onnx,serve,cli,audio,demo,bench]"' in installs[1]
    assert any(
        "pip download" in line and "--no-binary :all: torch-streamer==0.0.2" in line
        for line in lines
    ), lines


def test_the_readme_quickstart_and_makefile_name_every_extra() -> None:
    extras = set(_extras())
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"any of the extras\n?(.*?)\)", readme, re.S)
    assert listed is not None
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == extras
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    named = re.search(r"# from a clone; extras: ([\w, ]+)", quickstart)
    assert named is not None
    assert {e.strip() for e in named.group(1).split(",")} == extras
    makefile = (ROOT / "Makefile").read_text()
    tested = re.search(r'-e "\.\[([\w,]+)\]"\n\t\$\(PIP\) --no-deps -r \$\(REAL\)', makefile)
    assert tested is not None
    assert set(tested.group(1).split(",")) == extras - {"docs"}  # make docs installs that one
