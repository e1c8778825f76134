"""`export_triton`: the model repository it writes. The configs parse with the protobuf
definitions that tritonclient ships; the generated Python-backend model runs here against a
stand-in for Triton's `triton_python_backend_utils` (the real server runs it in
tests/serving); the ONNX model runs in onnxruntime with Triton's implicit-state loop."""

from __future__ import annotations

import importlib.util
import random
import sys
import types
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches
from tests.step.test_frames import Causal, Recurrent
from torchstreamer.examples.models import vollo_cnn


def strided() -> nn.Module:
    return nn.Sequential(Causal(2, 3, 4, 2, 1), nn.GELU(), Recurrent(3, nn.GRU, 1)).eval()


def parse(text: str) -> Any:
    text_format = pytest.importorskip("google.protobuf.text_format")
    config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return text_format.Parse(text, config_pb2.ModelConfig())


def test_the_configs_parse_as_triton_model_configs(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    written = pts.export_triton(strided(), torch.randn(1, 2, 32), tmp_path, name="m", block=8)
    python = parse((tmp_path / "m" / "config.pbtxt").read_text())
    assert python.backend == "python"
    assert python.max_batch_size == 8
    controls = {c.name: c.control[0].kind for c in python.sequence_batching.control_input}
    assert set(controls) == {"START", "END", "READY", "CORRID"}
    assert list(python.input[0].dims) == [2, -1]  # the batch is left to Triton
    onnx = parse((tmp_path / "m_onnx" / "config.pbtxt").read_text())
    assert onnx.backend == "onnxruntime"
    pairs = [(s.input_name, s.output_name) for s in onnx.sequence_batching.state]
    assert len(pairs) == 2
    assert all(i[3:] == o[4:] for i, o in pairs)
    assert tmp_path / "m_onnx" / "1" / "model.onnx" in written


def test_the_onnx_sequence_step_streams_sequences_as_triton_feeds_them(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = strided()
    pts.export_triton(model, torch.randn(1, 2, 32), tmp_path, name="m", block=4)
    session = ort.InferenceSession(str(tmp_path / "m_onnx" / "1" / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    assert names[:2] == ["in_signal", "START"]
    x = torch.randn(3, 2, 24)
    states = [np.zeros([3, *i.shape[1:]], np.float32) for i in session.get_inputs()[2:]]
    outputs = []
    for call, t in enumerate(range(0, 24, 4)):
        start = np.full((3, 1), 1.0 if call == 0 else 0.0, np.float32)
        feed = dict(zip(names, [x[..., t : t + 4].numpy(), start, *states]))
        y, *states = session.run(None, feed)
        outputs.append(torch.from_numpy(y))
    assert_matches(torch.cat(outputs, -1), model(x).detach())


# -- the Python-backend model, with a stand-in for Triton's utilities ---------------------


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors: Optional[list[_Tensor]] = None, error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


class _Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = inputs


def _load_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Any:
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = _Tensor  # type: ignore[attr-defined]
    utils.InferenceResponse = _Response  # type: ignore[attr-defined]
    utils.TritonError = str  # type: ignore[attr-defined]
    utils.get_input_tensor_by_name = lambda r, n: (  # type: ignore[attr-defined]
        _Tensor(n, r.inputs[n]) if n in r.inputs else None
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("served", tmp_path / name / "1" / "model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    served = module.TritonPythonModel()
    config = '{"sequence_batching": {"max_sequence_idle_microseconds": 1000000}}'
    served.initialize({"model_config": config, "model_name": name})
    return served


def _request(x: torch.Tensor, corrid: int, start: bool, end: bool, ready: bool = True) -> _Request:
    def flag(value: bool) -> np.ndarray:
        return np.array([[1.0 if value else 0.0]], np.float32)

    return _Request(
        in_signal=x.numpy(), START=flag(start), END=flag(end), READY=flag(ready),
        CORRID=np.array([[corrid]], np.uint64),
    )  # fmt: skip


@pytest.mark.parametrize("block", [1, 16])
def test_the_python_backend_model_keeps_each_sequence_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    model = vollo_cnn().eval()
    pts.export_triton(model, torch.randn(1, 32, 64), tmp_path, name="v", block=block, onnx=False)
    served = _load_model(tmp_path, monkeypatch, "v")
    rng = random.Random(block)
    signals = {c: torch.randn(1, 32, rng.randint(1, 70)) for c in range(1, 8)}
    fed = dict.fromkeys(signals, 0)
    outputs: dict[int, list[torch.Tensor]] = {c: [] for c in signals}
    while any(fed[c] < s.shape[-1] for c, s in signals.items()):
        batch = [c for c in signals if fed[c] < signals[c].shape[-1] and rng.random() < 0.7]
        requests = []
        for c in batch:
            size = rng.choice([1, 5, 16, 23])
            piece = signals[c][..., fed[c] : fed[c] + size]
            end = fed[c] + piece.shape[-1] == signals[c].shape[-1]
            requests.append(_request(piece, c, fed[c] == 0, end))
            fed[c] += piece.shape[-1]
        requests.append(_request(torch.zeros(1, 32, 1), 0, False, False, ready=False))
        for c, response in zip(batch, served.execute(requests)):
            assert response.error is None
            outputs[c].append(torch.from_numpy(response.outputs["out_signal"]))
    for c, x in signals.items():
        whole = x.shape[-1] // block * block  # samples short of a block wait for more
        expected = model(x[..., :whole]).detach() if whole else x[:, :1, :0]
        assert_matches(torch.cat(outputs[c], -1), expected)
    assert served.sequences == {}  # every sequence ended: no state left


def test_the_python_backend_model_refuses_a_sequence_without_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 3)).eval()
    pts.export_triton(model, torch.randn(1, 1, 16), tmp_path, name="p", onnx=False)
    served = _load_model(tmp_path, monkeypatch, "p")
    (response,) = served.execute([_request(torch.randn(1, 1, 4), 5, False, False)])
    assert "no state" in response.error
    wrong, right = served.execute(
        [
            _request(torch.randn(1, 2, 4), 8, True, False),
            _request(torch.randn(1, 1, 4), 9, True, False),
        ]
    )
    assert "must be shaped [1, 1, T]" in wrong.error
    assert right.error is None
    assert 8 not in served.sequences
    served.execute([_request(torch.randn(1, 1, 4), 6, True, False)])
    served.idle_seconds = 0.0  # as if Triton's idle timeout had passed
    served.execute([_request(torch.randn(1, 1, 4), 7, True, False)])
    assert list(served.sequences) == [7]  # 6 was idle too long: dropped


def test_a_model_with_lookahead_is_refused_for_triton(tmp_path: Path) -> None:
    # the refusal pointed to torchstreamer.stream, which has no Triton form: a pool serves it
    lookahead = nn.Conv1d(1, 1, 3, padding=1)
    right_padding = nn.Sequential(nn.ConstantPad1d((2, 2), 0.0), nn.Conv1d(1, 1, 3))
    for model in (lookahead, right_padding):
        with pytest.raises(
            pts.NotStreamableError, match=r"with torchstreamer\.StreamPool"
        ) as error:
            pts.export_triton(model, torch.randn(1, 1, 16), tmp_path)
        assert "torchstreamer.stream(" not in str(error.value)
        assert not pts.StreamPool(model, torch.randn(1, 1, 16), slots=2).batched


def test_a_step_model_of_one_row_is_refused_for_serving(tmp_path: Path) -> None:
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 3)).eval()
    step, _ = pts.streaming_transform(model, torch.randn(1, 1, 16), -1, frame="auto")
    with pytest.raises(pts.StreamError, match="at least two rows"):
        pts.export_triton(step, None, tmp_path, onnx=False)


def test_a_bad_request_fails_alone_and_changes_no_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 3), nn.Tanh()).eval()
    pts.export_triton(model, torch.randn(1, 1, 16), tmp_path, name="p", block=2, onnx=False)
    served = _load_model(tmp_path, monkeypatch, "p")
    x = torch.randn(1, 1, 12)
    outputs = []
    (first,) = served.execute([_request(x[..., :3], 1, True, False)])
    outputs.append(first.outputs["out_signal"])
    good = _request(x[..., 3:7], 1, False, False)
    no_signal = _request(x[..., :2], 2, True, False)
    del no_signal.inputs["in_signal"]
    as_objects = _request(x[..., :2], 3, True, False)
    as_objects.inputs["in_signal"] = as_objects.inputs["in_signal"].astype(object)
    as_complex = _request(x[..., :2], 4, True, False)
    as_complex.inputs["in_signal"] = as_complex.inputs["in_signal"].astype(np.complex64)
    float_id = _request(x[..., :2], 5, True, False)
    float_id.inputs["CORRID"] = np.array([[5.5]], np.float64)
    no_flag = _request(x[..., :2], 6, True, False)
    no_flag.inputs["START"] = np.zeros((1, 0), np.float32)
    twice = _request(x[..., :2], 1, False, False)
    responses = served.execute([good, no_signal, as_objects, as_complex, float_id, no_flag, twice])
    assert responses[0].error is None
    outputs.append(responses[0].outputs["out_signal"])
    errors = [r.error for r in responses[1:]]
    assert "no input 'in_signal'" in errors[0]
    assert "real numbers (float32), not object" in errors[1]
    assert "real numbers (float32), not complex64" in errors[2]
    assert "CORRID must be an integer or a string" in errors[3]
    assert errors[4]  # an empty control: refused, not an IndexError for the whole batch
    assert "two requests in one batch" in errors[5]
    assert set(served.sequences) == {1}
    # the step fails: no sequence changes, and the same request sent again goes on exactly
    program = served.program
    served.program = lambda *args: (_ for _ in ()).throw(RuntimeError("out of memory"))
    (failed,) = served.execute([_request(x[..., 7:10], 1, False, False)])
    assert "the step failed: out of memory" in failed.error
    served.program = program
    (again,) = served.execute([_request(x[..., 7:10], 1, False, False)])
    (last,) = served.execute([_request(x[..., 10:], 1, False, True)])
    outputs += [again.outputs["out_signal"], last.outputs["out_signal"]]
    assert_matches(torch.from_numpy(np.concatenate(outputs, -1)), model(x).detach())


def test_a_string_correlation_id_names_a_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 3)).eval()
    pts.export_triton(model, torch.randn(1, 1, 16), tmp_path, name="p", onnx=False)
    served = _load_model(tmp_path, monkeypatch, "p")
    x = torch.randn(1, 1, 8)
    outputs = []
    for t, (start, end) in zip((0, 4), ((True, False), (False, True))):
        request = _request(x[..., t : t + 4], 0, start, end)
        request.inputs["CORRID"] = np.array([[b"client-7"]], dtype=object)
        (response,) = served.execute([request])
        assert response.error is None
        outputs.append(response.outputs["out_signal"])
    assert_matches(torch.from_numpy(np.concatenate(outputs, -1)), model(x).detach())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"instances": 0}, "instances must be a whole number of at least 1"),
        ({"idle_seconds": -1.0}, "idle_seconds .* positive number"),
        ({"idle_seconds": float("nan")}, "idle_seconds .* positive number"),
        ({"name": "../outside"}, "cannot name a Triton model"),
        ({"name": 'say"hi'}, "cannot name a Triton model"),
        ({"name": ""}, "cannot name a Triton model"),
        ({"block": -4}, "block must be a whole number of at least 0"),
    ],
)
def test_arguments_that_triton_cannot_serve_are_refused_before_anything_is_written(
    tmp_path: Path, arguments: dict[str, Any], message: str
) -> None:
    model = nn.Sequential(pts.PaddedConv1d(1, 2, 3)).eval()
    with pytest.raises(pts.StreamError, match=message):
        pts.export_triton(model, torch.randn(1, 1, 16), tmp_path / "repo", onnx=False, **arguments)
    assert not (tmp_path / "repo").exists()
    assert not (tmp_path / "outside").exists()
