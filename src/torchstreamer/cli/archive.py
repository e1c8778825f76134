"""Look inside a file saved with ``torch.export.save`` before ``torch.export.load`` runs on it.

``torch.export.load`` runs code from the file in several ways: it unpickles the example inputs
with ``weights_only=False`` when they do not load with ``weights_only=True``, unpickles weights
and constants marked ``use_pickle`` and opaque or custom-object constants, loads AOTInductor
shared libraries, falls back to an older format that unpickles everything, evaluates the
symbolic shape expressions of the graph with ``sympy.sympify`` (which calls ``eval``), and
resolves graph targets to any callable under ``torch``. :func:`check_archive` reads the zip
archive with :mod:`zipfile` and :mod:`json`, loads the example inputs with ``weights_only=True``,
and refuses an archive that needs any of that, unless the user trusts the file. It reads a
member only when the zip directory gives it a size under a bound (:data:`FIELD_LIMIT` for the
format and version fields, which must be exactly what ``torch.export.save`` writes;
:data:`READ_LIMIT` for the JSON documents and the example inputs), and refuses an archive whose
members unpack to more than :data:`UNPACK_RATIO` times its size on disk (a zip bomb).

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
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["NotAnArchiveError", "UnsafeArchiveError", "check_archive"]

# the layout of torch.export.save (torch/csrc/export/pt2_archive_constants.h, torch 2.13)
_FORMAT_PATH = "archive_format"
_FORMAT_VALUE = "pt2"
_VERSION_PATH = "archive_version"
_VERSION_VALUE = "0"
_ZIP_VERSION_PATH = ".data/version"
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

# bounds on what the check reads (sizes from the zip directory, checked before reading)
FIELD_LIMIT = 16  # bytes of archive_format, archive_version or .data/version
READ_LIMIT = 64 << 20  # bytes of a JSON document or of the example inputs
UNPACK_RATIO = 100  # the members' declared sizes over the size on disk (a zip bomb's is ~1000)
UNPACK_SLACK = 1 << 20  # bytes that a small archive may unpack to beyond that ratio


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
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise NotAnArchiveError(f"it is a damaged zip archive ({error})") from error
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or any("/" not in name for name in names):
            raise UnsafeArchiveError(
                "it is not in the layout of torch.export.save of this torch version (older "
                "layouts are loaded with pickle)"
            )
        _check_unpacked_size(infos, path.stat().st_size)
        root = roots.pop() + "/"
        files = {info.filename[len(root) :]: info for info in infos}

        def read(name: str) -> bytes:
            return _read(archive, files[name], name, READ_LIMIT)

        def field(name: str) -> Optional[bytes]:
            return _read(archive, files[name], name, FIELD_LIMIT) if name in files else None

        if field(_FORMAT_PATH) != _FORMAT_VALUE.encode():
            raise NotAnArchiveError(f"its {_FORMAT_PATH} is not {_FORMAT_VALUE!r}")
        zip_version = field(_ZIP_VERSION_PATH)
        if zip_version is not None and not re.fullmatch(rb"[0-9]{1,8}\n?", zip_version):
            raise NotAnArchiveError(f"its {_ZIP_VERSION_PATH} is not a version number")
        if field(_VERSION_PATH) != _VERSION_VALUE.encode():
            raise UnsafeArchiveError(
                f"it has no archive version {_VERSION_VALUE!r} of this torch version (older "
                "layouts are loaded with pickle)"
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


def _check_unpacked_size(infos: list[zipfile.ZipInfo], packed: int) -> None:
    """Refuse a zip bomb: members that declare far more bytes than the file holds."""
    unpacked = sum(info.file_size for info in infos)
    if unpacked > UNPACK_RATIO * packed + UNPACK_SLACK:
        raise NotAnArchiveError(
            f"its members unpack to {unpacked} bytes from {packed} bytes on disk, more than "
            f"{UNPACK_RATIO} to 1, as a zip bomb does"
        )


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limit: int) -> bytes:
    """A member's bytes, refused before reading when the zip directory gives it more than
    ``limit`` bytes (and never more than that read)."""
    if info.file_size > limit:
        raise NotAnArchiveError(
            f"its {name} holds {info.file_size} bytes, more than the {limit} that this check "
            "reads (--trust-file loads the file unchecked)"
        )
    try:
        with archive.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
        raise NotAnArchiveError(f"its {name} does not unpack ({error})") from error
    if len(data) > limit:  # zipfile stops at the declared size: only a bug of it gets here
        raise NotAnArchiveError(f"its {name} holds more than the {limit} bytes it declares")
    return data


def _unpickler_reason(error: Exception) -> str:
    """The one useful line of torch.load's refusal."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed|\n|$)", text)
    reason = found.group(1) if found else (text.strip().splitlines() or ["no reason given"])[0]
    return reason.strip().rstrip(".")[:160]


def _json(read: Any, files: dict[str, Any], name: str) -> Any:
    if name not in files:
        raise NotAnArchiveError(f"it has no {name}")
    try:
        return json.loads(read(name))
    except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply
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
