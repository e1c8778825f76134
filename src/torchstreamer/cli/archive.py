"""Look inside a file saved with ``torch.export.save`` before ``torch.export.load`` runs on it.

``torch.export.load`` runs code from the file in several ways: it unpickles the example inputs
with ``weights_only=False`` when they do not load with ``weights_only=True``, unpickles weights
and constants marked ``use_pickle`` and opaque or custom-object constants, loads AOTInductor
shared libraries, falls back to an older format that unpickles everything, evaluates the
symbolic shape expressions of the graph with ``sympy.sympify`` (which calls ``eval``), and
resolves graph targets to any callable under ``torch``. :func:`check_archive` reads the zip
archive with :mod:`zipfile` and :mod:`json`, loads the example inputs with ``weights_only=True``,
and refuses an archive that needs any of that, unless the user trusts the file.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from torchstreamer.cli.archive import check_archive
    >>> program = torch.export.export(torch.nn.Tanh(), (torch.randn(1, 1, 8),))
    >>> path = Path(tempfile.mkdtemp()) / "tanh.pt2"
    >>> torch.export.save(program, path)
    >>> check_archive(path) is None
    True
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["NotAnArchiveError", "UnsafeArchiveError", "check_archive"]

# the layout of torch.export.save (torch/csrc/export/pt2_archive_constants.h, torch 2.13)
_VERSION_PATH = "archive_version"
_VERSION_VALUE = "0"
_AOTINDUCTOR_DIR = "data/aotinductor/"
_MODELS_DIR = "models/"
_WEIGHTS_CONFIG = "data/weights/{}_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/{}_constants_config.json"
_LEGACY_WEIGHTS = "data/weights/{}.pt"
_LEGACY_CONSTANTS = "data/constants/{}.pt"
_SAMPLE_INPUTS = "data/sample_inputs/{}.pt"
_TENSOR_CONSTANT_PREFIX = "tensor_"

_OPERATORS = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift",
    "rshift",
}  # fmt: skip
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


class UnsafeArchiveError(Exception):
    """The archive needs pickle, compiled code or ``eval`` to load (the message says which)."""


class NotAnArchiveError(Exception):
    """The file is not laid out as ``torch.export.save`` lays out files."""


def check_archive(path: Path) -> None:
    """Refuse an archive whose loading would run code from the file.

    Raises:
        NotAnArchiveError: not a zip archive in the layout of ``torch.export.save``.
        UnsafeArchiveError: loading it would unpickle, load compiled code or evaluate text.
    """
    if not zipfile.is_zipfile(path):
        raise NotAnArchiveError("it is not a zip archive")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or any("/" not in name for name in names):
            raise UnsafeArchiveError(
                "it is not in the layout of torch.export.save of this torch version (older "
                "layouts are loaded with pickle)"
            )
        root = roots.pop() + "/"
        files = {name[len(root) :]: name for name in names}

        def read(name: str) -> bytes:
            return archive.read(files[name])

        if _VERSION_PATH not in files or read(_VERSION_PATH).decode().strip() != _VERSION_VALUE:
            raise UnsafeArchiveError(
                "it has no archive version of this torch version (older layouts are loaded "
                "with pickle)"
            )
        if any(name.startswith(_AOTINDUCTOR_DIR) for name in files):
            raise UnsafeArchiveError("it holds AOTInductor compiled code, which loading runs")
        models = [
            name[len(_MODELS_DIR) : -len(".json")]
            for name in files
            if name.startswith(_MODELS_DIR) and name.endswith(".json")
        ]
        if not models:
            raise NotAnArchiveError("it holds no exported program")
        for model in models:
            for legacy in (_LEGACY_WEIGHTS, _LEGACY_CONSTANTS):
                if legacy.format(model) in files:
                    raise UnsafeArchiveError(
                        f"it stores {legacy.format(model)} in an older layout that is loaded "
                        "with pickle"
                    )
            weights = _json(read, files, _WEIGHTS_CONFIG.format(model))
            for fqn, meta in _config(weights):
                if meta.get("use_pickle"):
                    raise UnsafeArchiveError(f"its weight {fqn!r} is stored with pickle")
            constants = _json(read, files, _CONSTANTS_CONFIG.format(model))
            for fqn, meta in _config(constants):
                if meta.get("use_pickle"):
                    raise UnsafeArchiveError(f"its constant {fqn!r} is stored with pickle")
                if not str(meta.get("path_name", "")).startswith(_TENSOR_CONSTANT_PREFIX):
                    raise UnsafeArchiveError(
                        f"its constant {fqn!r} is an object that is loaded with pickle"
                    )
            inputs = _SAMPLE_INPUTS.format(model)
            if files.get(inputs):
                try:
                    torch.load(io.BytesIO(read(inputs)), weights_only=True)
                except Exception as error:  # the unpickler raises several types
                    raise UnsafeArchiveError(
                        "its example inputs do not load with torch.load(weights_only=True) "
                        f"({_unpickler_reason(error)}) and torch.export.load would unpickle them"
                    ) from error
            program = _json(read, files, f"{_MODELS_DIR}{model}.json")
            for key, value in _strings(program):
                if key == "target" and not _safe_target(value):
                    raise UnsafeArchiveError(
                        f"its graph calls {value[:80]!r}, which is not a torch operator"
                    )
                if key == "expr_str" and not _safe_expression(value):
                    raise UnsafeArchiveError(
                        f"its shape expression {value[:80]!r} is not a plain sympy expression "
                        "(loading it runs eval)"
                    )


def _unpickler_reason(error: Exception) -> str:
    """The one useful line of torch.load's refusal."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed|\n|$)", text)
    reason = found.group(1) if found else (text.strip().splitlines() or ["no reason given"])[0]
    return reason.strip().rstrip(".")[:160]


def _json(read: Any, files: dict[str, str], name: str) -> Any:
    if name not in files:
        raise NotAnArchiveError(f"it has no {name}")
    try:
        return json.loads(read(name))
    except ValueError as error:
        raise NotAnArchiveError(f"its {name} is not JSON") from error


def _config(payload: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    config = payload.get("config", {}) if isinstance(payload, dict) else None
    if not isinstance(config, dict):
        raise NotAnArchiveError("a payload configuration of it is malformed")
    for fqn, meta in config.items():
        if not isinstance(meta, dict):
            raise NotAnArchiveError("a payload configuration of it is malformed")
        yield fqn, meta


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a JSON document, with the key it is under."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)
    elif isinstance(value, str):
        yield key, value


def _safe_target(target: str) -> bool:
    """A torch operator (``torch.ops.*``: an op overload or a higher-order operator), a symbolic
    operation of torch.export, an arithmetic operator or a math function; not any callable."""
    parts = target.split(".")
    if any(not part.isidentifier() or part.startswith("__") for part in parts):
        return False
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in _OPERATORS
    if parts[0] == "math":
        return len(parts) == 2 and type(getattr(math, parts[1], None)).__name__ in (
            "builtin_function_or_method",
        )
    if parts[0] != "torch":
        return False
    if parts[:2] == ["torch", "ops"]:
        resolved: Any = torch.ops
        for part in parts[2:]:
            try:
                resolved = getattr(resolved, part)
            except Exception:  # an unknown namespace or operator
                return False
        return isinstance(
            resolved,
            (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator),
        )
    try:
        from torch._export.serde.serialize import _SYM_OPS
    except ImportError:  # another torch version: only operators
        return False
    resolved = torch
    for part in parts[1:]:
        resolved = getattr(resolved, part, None)
    return resolved is not None and any(resolved is op for op in _SYM_OPS)


def _sympy_names() -> set[str]:
    import sympy
    from torch.utils._sympy import functions

    names = set()
    for module in (sympy, functions):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, sympy.Basic):
                names.add(name)
    return names


_CALLABLE: set[str] = set()


def _safe_expression(text: str) -> bool:
    """Only sympy constructors applied to numbers, names, identifier strings and arithmetic:
    no attributes, subscripts, lambdas or other functions that ``eval`` could run."""
    if not _CALLABLE:
        _CALLABLE.update(_sympy_names())
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    allowed = (
        ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.operator,
        ast.unaryop, ast.cmpop, ast.boolop, ast.Load, ast.keyword,
    )  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _CALLABLE:
                return False
        elif isinstance(node, ast.Name):
            if node.id not in _CALLABLE and (
                not _NAME.match(node.id) or hasattr(builtins, node.id) or _in_sympy(node.id)
            ):
                return False
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and not _NAME.match(value):
                return False
            if not isinstance(value, (str, int, float, bool, type(None))):
                return False
        elif isinstance(node, ast.keyword):
            if node.arg is None or not _NAME.match(node.arg):
                return False
        elif not isinstance(node, allowed):
            return False
    return True


def _in_sympy(name: str) -> bool:
    """A sympy name other than a constant such as ``oo``."""
    import sympy

    return hasattr(sympy, name) and not isinstance(getattr(sympy, name), sympy.Basic)
