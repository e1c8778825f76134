"""`export_onnx` names the missing ``onnx`` extra up front (issue 12), before any work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import torchstreamer as pts


@pytest.mark.parametrize("missing", ["onnxscript", "onnx"])
def test_export_onnx_without_the_extra_names_it(
    missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if missing == "onnxscript":
        pytest.importorskip("onnx")  # else the message names onnx, the first one missing
    step, _ = pts.streaming_transform(pts.PaddedConv1d(2, 3, 3), torch.randn(1, 2, 8), 2)
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` raises ImportError
    with pytest.raises(ImportError, match=rf"{missing} is not installed: pip install") as error:
        pts.export_onnx(step, tmp_path / "step.onnx")
    assert "'torch-streamer[onnx]'" in str(error.value)
    assert not isinstance(error.value, ModuleNotFoundError)  # ours, not the import's own
    assert not (tmp_path / "step.onnx").exists()
