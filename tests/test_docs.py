"""The documentation: every Python block of docs/ runs, and every public name has a docstring."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import torchstreamer as pts

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))  # not docs/design: notes with fragments
BLOCKS = [
    (page.name, index, code)
    for page in PAGES
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]


@pytest.mark.parametrize(("page", "index", "code"), BLOCKS, ids=[f"{p}-{i}" for p, i, _ in BLOCKS])
def test_docs_block_runs(
    page: str, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "onnxruntime" in code:
        pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict[str, object] = {"__name__": f"docs_{page}_{index}"}
    try:
        exec(compile(code, page, "exec"), namespace)
    finally:
        for kind in list(pts.streams.registry._REGISTRY):
            if kind.__module__ == namespace["__name__"]:
                pts.unregister_streamer(kind)


def public_objects() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = [(name, getattr(pts, name)) for name in pts.__all__]
    for module in pkgutil.walk_packages(pts.__path__, "torchstreamer."):
        if module.name.endswith("__main__"):
            continue
        found.append((module.name, importlib.import_module(module.name)))
    for name, value in list(found):
        if inspect.isclass(value):
            for member, attribute in vars(value).items():
                if not member.startswith("_") and (
                    inspect.isfunction(attribute) or isinstance(attribute, property)
                ):
                    found.append((f"{name}.{member}", attribute))
    return found


def test_every_public_name_has_a_docstring() -> None:
    missing = [
        name for name, value in public_objects() if not (inspect.getdoc(value) or "").strip()
    ]
    assert not missing, f"public names without a docstring: {missing}"


def test_the_api_reference_has_every_public_name() -> None:
    reference = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^::: torchstreamer\.(\w+)$", reference, re.M))
    assert set(pts.__all__) - documented == set()
