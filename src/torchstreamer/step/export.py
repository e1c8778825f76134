"""Export a step model for serving, as the pure function ``(x_t, *state) -> (y_t, *new_state)``.

Serving systems keep the state themselves: NVIDIA Triton's sequence batcher with implicit state
feeds each state output back as the matching input on the next request of a sequence, and an
onnxruntime loop does the same by hand. The names follow one rule so that no name is a prefix of
another and inputs and outputs sort in the same order (Triton pairs implicit states by name;
orders that disagree have swapped states in the field):

- ``in_signal`` / ``out_signal`` (``out_signal_00``, ``out_signal_01``... for several outputs);
- ``in_state_NN_<layer>_<kind>`` / ``out_state_NN_<layer>_<kind>``, ``NN`` zero-padded.

The ONNX file also carries, as metadata, everything a runtime needs to start a sequence without
this library: the state names, shapes, dtypes and initial values, and the latency.
"""

from __future__ import annotations

import base64
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from torchstreamer.base import ONE_BUILD_AT_A_TIME
from torchstreamer.errors import StreamError
from torchstreamer.step.transform import StepModel

__all__ = ["export_onnx", "export_step", "onnx_names", "read_onnx_state"]

METADATA_KEY = "torchstreamer.step"


def onnx_names(step: StepModel) -> tuple[list[str], list[str]]:
    """The input and output names of the exported step, in call order."""
    width = len(str(max(len(step.state_names) - 1, 0)))
    # state_NN_<label>_<kind>: renumber with enough digits that names sort in state order
    states = [
        f"{i:0{max(2, width)}d}_{name.split('_', 2)[2]}" for i, name in enumerate(step.state_names)
    ]
    outputs = len(step.output_axes)
    signal_out = ["out_signal"] if outputs == 1 else [f"out_signal_{i:02d}" for i in range(outputs)]
    return (
        ["in_signal", *(f"in_state_{s}" for s in states)],
        [*signal_out, *(f"out_state_{s}" for s in states)],
    )


def _example(step: StepModel) -> tuple[Tensor, ...]:
    state = step.initial_state()
    reference = next(iter(step.step_function.buffers()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = reference.device if reference is not None else torch.device("cpu")
    x = torch.zeros(step._input_shape, dtype=dtype, device=device)
    return (x, *state)


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence what the exporters say about their own internals (nn.LSTM's flat weights, a
    pytree deprecation, torchvision ops that are not installed)."""
    with ONE_BUILD_AT_A_TIME:  # (the logger, the warning filters and the export: see base)
        registration = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registration.level
        registration.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*were assigned during export.*")
                warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
                with torch.no_grad():
                    yield
        finally:
            registration.setLevel(level)


def export_step(step: StepModel) -> torch.export.ExportedProgram:
    """The step in pure form, captured by ``torch.export`` (static shapes).

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> step, _ = pts.streaming_transform(pts.PaddedConv1d(2, 3, 3), torch.randn(1, 2, 8), 2)
        >>> program = pts.export_step(step)
        >>> y, new_state = program.module()(torch.randn(1, 2), *step.initial_state())
        >>> y.shape, new_state.shape
        (torch.Size([1, 3]), torch.Size([1, 4]))
    """
    with _quiet_export():
        return torch.export.export(step.pure(), _example(step), strict=False)


def export_onnx(step: StepModel, path: Union[str, Path], opset: int = 18) -> Path:
    """Write the step as an ONNX model in pure form, with named state inputs and outputs (see
    the module doc) and the metadata entry ``torchstreamer.step`` (JSON, read it with
    :func:`read_onnx_state`). Needs the ``onnx`` extra: ``pip install torch-streamer[onnx]``.

    Returns:
        The path written.
    """
    try:  # both up front: torch.onnx's exporter imports onnxscript only half way through
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"export_onnx needs the onnx extra, but {error.name or 'a package of it'} is not "
            "installed: pip install 'torch-streamer[onnx]' (onnx, onnxscript; onnxruntime to "
            "run the file)."
        ) from error
    path = Path(path)
    inputs, outputs = onnx_names(step)
    metadata = json.dumps(_metadata(step, inputs, outputs))  # before writing: nothing half-done
    with _quiet_export():
        program = torch.onnx.export(
            step.pure(), _example(step), input_names=inputs, output_names=outputs,
            opset_version=opset, dynamo=True, verbose=False,
        )  # fmt: skip
    assert program is not None
    program.save(str(path))
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata
    onnx.save(model, str(path))
    return path


def _metadata(step: StepModel, inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    signals = len(step.output_axes)
    states = []
    for i, name in enumerate(step.state_names):
        initial = step.initial.get_buffer(name).detach().cpu().contiguous()
        states.append(
            {
                "input": inputs[1 + i],
                "output": outputs[signals + i],
                "layer": step.layers[i],
                "shape": list(initial.shape),
                "dtype": str(initial.dtype).removeprefix("torch."),
                "initial_all_zero": bool((initial == 0).all()),
                "initial_base64": base64.b64encode(_raw_bytes(initial)).decode("ascii"),
            }
        )
    return {
        "format": "pure step: (in_signal, *in_state) -> (out_signal..., *out_state)",
        "input": {"name": inputs[0], "shape": list(step._input_shape)},
        "frame": step.frame,  # input samples per call, time axis kept; null: one, axis removed
        "time_axis": step.axis,
        "outputs": [{"name": n, "time_axis": a} for n, a in zip(outputs, step.output_axes)],
        "latency_samples": 0,
        "states": states,
    }


def _raw_bytes(tensor: Tensor) -> bytes:
    """The tensor's memory, little-endian, for any dtype (NumPy has no bfloat16)."""
    flat = tensor.reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def read_onnx_state(path: Union[str, Path]) -> dict[str, Any]:
    """The ``torchstreamer.step`` metadata of an exported file, with each state's initial value
    decoded into a NumPy array (``"initial"``): what a runtime loop needs to start a sequence."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    entry = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if entry is None:
        raise StreamError(
            f"{path} has no '{METADATA_KEY}' metadata entry: it was not written by "
            "torchstreamer.export_onnx, or a tool dropped its metadata; export the step model "
            "again."
        )
    metadata: dict[str, Any] = json.loads(entry)
    for state in metadata["states"]:
        data = base64.b64decode(state["initial_base64"])
        if state["dtype"] == "bfloat16":  # NumPy has no bfloat16: decode through torch
            raw = (
                torch.frombuffer(bytearray(data), dtype=torch.bfloat16) if data else torch.zeros(0)
            )
            state["initial"] = raw.float().numpy().reshape(state["shape"])
        else:
            state["initial"] = np.frombuffer(data, dtype=state["dtype"]).reshape(state["shape"])
    return metadata
