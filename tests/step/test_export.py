"""Step models under torch.compile, torch.export, ONNX (run by onnxruntime) and CUDA graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.step.test_transform import Assorted, Block, SeedCNN


def models() -> list[tuple[nn.Module, torch.Tensor]]:
    recurrent = nn.Sequential(
        pts.PaddedConv1d(2, 3, 2), Block("lstm", 3, 2, 1), Block("grouped", 3, 3, 2)
    )
    return [
        (SeedCNN(32, 1, 128).eval(), torch.randn(2, 32, 120)),
        (Assorted().eval(), torch.randn(1, 3, 120)),
        (recurrent.eval(), torch.randn(1, 2, 120)),
    ]


def as_tuple(y: object) -> tuple[torch.Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)  # type: ignore[return-value]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_onnxruntime_runs_the_exported_step_for_100_steps(index: int, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, x = models()[index]
    step, _ = pts.streaming_transform(model, x[..., :32], 2)
    path = pts.export_onnx(step, tmp_path / "step.onnx")
    # the file alone says how to set the state up: no torch-streamer object is used below
    metadata = pts.read_onnx_state(path)
    session = ort.InferenceSession(str(path))
    state = {s["input"]: s["initial"] for s in metadata["states"]}
    signals = len(metadata["outputs"])
    for t in range(100):
        results = session.run(None, {metadata["input"]["name"]: x[..., t].numpy(), **state})
        for spec, value in zip(metadata["states"], results[signals:]):
            state[spec["input"]] = value
        for ours, theirs in zip(as_tuple(step(x[..., t])), results[:signals]):
            torch.testing.assert_close(torch.from_numpy(theirs), ours, rtol=1e-5, atol=1e-5)


def test_onnx_names_never_prefix_one_another_and_pair_in_sorted_order(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    model = nn.Sequential(*[pts.PaddedConv1d(2, 2, 2) for _ in range(12)]).eval()
    step, _ = pts.streaming_transform(model, torch.randn(1, 2, 16), 2)
    inputs, outputs = pts.step.export.onnx_names(step)
    names = inputs + outputs
    assert not [(a, b) for a in names for b in names if a != b and b.startswith(a)]
    state_in = sorted(n for n in inputs if "state" in n)
    state_out = sorted(n for n in outputs if "state" in n)
    assert [n.removeprefix("in_") for n in state_in] == [n.removeprefix("out_") for n in state_out]
    metadata = pts.read_onnx_state(pts.export_onnx(step, tmp_path / "s.onnx"))
    assert [(s["input"], s["output"]) for s in metadata["states"]] == list(zip(state_in, state_out))
    assert metadata["latency_samples"] == 0
    for spec, initial in zip(metadata["states"], step.initial_state()):
        assert spec["shape"] == list(initial.shape)
        assert torch.equal(torch.from_numpy(spec["initial"].copy()), initial)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_exported_program_is_the_pure_step(index: int) -> None:
    model, x = models()[index]
    step, _ = pts.streaming_transform(model, x[..., :32], 2)
    program = pts.export_step(step).module()
    state = step.initial_state()
    signals = len(step.output_axes)
    for t in range(60):
        results = program(x[..., t], *state)
        state = tuple(results[signals:])
        for ours, pure in zip(as_tuple(step(x[..., t])), results[:signals]):
            assert torch.equal(ours, pure)


def test_torch_compile_gives_the_eager_results() -> None:
    model, x = models()[1]
    step, _ = pts.streaming_transform(model, x, 2)
    eager = [as_tuple(step(x[..., t])) for t in range(40)]
    step.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for t in range(40):
        for a, b in zip(as_tuple(compiled(x[..., t])), eager[t]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_torch_compile_with_inductor() -> None:
    model, x = models()[0]
    step, _ = pts.streaming_transform(model, x, 2)
    eager = [step(x[..., t]) for t in range(20)]
    step.reset()
    compiled = torch.compile(step, fullgraph=True)
    for t in range(20):
        torch.testing.assert_close(compiled(x[..., t]), eager[t], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_and_cuda_graph_replay() -> None:
    model, x = models()[1]
    step, _ = pts.streaming_transform(model.cuda(), x.cuda()[..., :32], 2)
    x = x.cuda()
    expected = model(x)
    replay = step.cuda_graph()
    outputs = [replay(x[..., t]) for t in range(x.shape[-1])]
    for i in range(2):
        torch.testing.assert_close(
            torch.stack([o[i] for o in outputs], 2), expected[i], rtol=1e-4, atol=1e-4
        )


def test_a_cuda_graph_needs_a_cuda_step() -> None:
    step, _ = pts.streaming_transform(SeedCNN(2, 1, 3), torch.randn(1, 2, 8), 2)
    with pytest.raises(pts.StreamError, match="CUDA device"):
        step.cuda_graph()
