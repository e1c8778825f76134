"""Write a Triton Inference Server model repository for a model's step form.

Triton's *sequence batcher* routes every request of a sequence (a client's signal, named by its
correlation id) to the same model instance, batches the requests of different sequences, and
tells the model which request starts or ends a sequence. :func:`export_triton` writes:

- ``NAME/``: a Python-backend model (runs on any Triton server, CPU included):
  ``config.pbtxt`` with ``sequence_batching`` (START, END, READY and CORRID controls, the
  ``oldest`` strategy), ``1/model.py`` that keeps each sequence's state by CORRID (the Python
  backend has no implicit state), and ``1/sequence.pt2``, the sequence step exported by
  ``torch.export`` with any number of rows per call;
- ``NAME_onnx/`` (with the ``onnx`` extra): the same step as ONNX for the onnxruntime backend
  (GPU servers), whose ``config.pbtxt`` declares each state as Triton *implicit state*: Triton
  keeps the state of each sequence and feeds ``out_state_*`` back as ``in_state_*``.

Both steps take a ``START`` input and put a starting sequence's state back to the start of a
signal themselves, so a new sequence may come with any state (Triton's zeros).

Example:
    >>> import tempfile, torch
    >>> import torchstreamer as pts
    >>> model = torch.nn.Sequential(pts.PaddedConv1d(1, 4, 3), torch.nn.Tanh()).eval()
    >>> with tempfile.TemporaryDirectory() as root:
    ...     written = pts.export_triton(model, torch.randn(1, 1, 32), root, name="denoiser",
    ...                                 block=16, onnx=False)
    ...     [p.relative_to(root).as_posix() for p in written]  # doctest: +NORMALIZE_WHITESPACE
    ['denoiser/1/model.py', 'denoiser/1/sequence.json', 'denoiser/1/sequence.pt2',
     'denoiser/config.pbtxt']
"""

from __future__ import annotations

import json
import math
import numbers
import re
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from torchstreamer.errors import NotStreamableError, StreamError
from torchstreamer.serve.sequence import SequenceStep, export_sequence
from torchstreamer.step.rewrite import _STREAM_REMEDY
from torchstreamer.step.transform import StepModel, streaming_transform

__all__ = ["export_triton", "triton_configs"]

_POOL_REMEDY = (
    "serve it with torchstreamer.StreamPool(model, example, slots) in a Python server, which "
    "streams each signal in its own slot (a Triton repository needs the step form, which this "
    "model lacks)"
)
_TYPES = {
    torch.float32: "TYPE_FP32",
    torch.float64: "TYPE_FP64",
    torch.float16: "TYPE_FP16",
    torch.bfloat16: "TYPE_BF16",
    torch.int64: "TYPE_INT64",
    torch.int32: "TYPE_INT32",
    torch.bool: "TYPE_BOOL",
}


def export_triton(
    model: Union[nn.Module, StepModel],
    example: Optional[Tensor],
    directory: Union[str, Path],
    name: str = "stream",
    block: int = 0,
    max_batch_size: int = 8,
    instances: int = 1,
    idle_seconds: float = 10.0,
    axis: int = -1,
    onnx: bool = True,
) -> list[Path]:
    """Write a Triton model repository (``directory``) that streams ``model`` for many
    sequences at once; return the files written.

    Args:
        model: a causal model (with ``example``, a signal shaped like its input: ``[B, C, T]``,
            whose first row is used, or ``[C, T]``), or a frame
            :class:`StepModel` built for a batch of at least two rows (``example`` ``None``).
        block: input samples per step call (a multiple of the model's frame; 0: one frame).
            Samples short of a block wait for the sequence's next request.
        max_batch_size: the most sequences Triton batches into one call.
        instances: model instances (each holds the state of its own sequences).
        idle_seconds: Triton ends a sequence that sends nothing for this long.
        onnx: also write the onnxruntime-backend model (needs the ``onnx`` extra).

    Raises:
        NotStreamableError: the model has no step form (lookahead, or an end that needs the
            offline model); serve it with :class:`torchstreamer.StreamPool` instead.
        StreamError: the block is not a whole number of frames, or the step's rows depend on
            each other.
    """
    _check_arguments(name, block, instances, idle_seconds)
    step = _step(model, example, axis)
    sequence = SequenceStep(step)
    block = block or sequence.frame
    program = export_sequence(step, block, max_rows=max(2, max_batch_size))
    meta = _meta(step, sequence, block)
    configs = triton_configs(meta, name, max_batch_size, instances, idle_seconds)
    root = Path(directory)
    python_dir = root / name / "1"
    python_dir.mkdir(parents=True, exist_ok=True)
    written = [root / name / "config.pbtxt", python_dir / "model.py"]
    written[0].write_text(configs["python"])
    template = resources.files("torchstreamer.serve").joinpath("templates/triton_model.py")
    written[1].write_text(template.read_text())
    (python_dir / "sequence.json").write_text(json.dumps(meta, indent=2))
    torch.export.save(program, str(python_dir / "sequence.pt2"))
    written += [python_dir / "sequence.json", python_dir / "sequence.pt2"]
    if onnx:
        onnx_dir = root / f"{name}_onnx" / "1"
        onnx_dir.mkdir(parents=True, exist_ok=True)
        _export_onnx(program, meta, onnx_dir / "model.onnx")
        (root / f"{name}_onnx" / "config.pbtxt").write_text(configs["onnx"])
        written += [root / f"{name}_onnx" / "config.pbtxt", onnx_dir / "model.onnx"]
    return sorted(written)


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_arguments(name: str, block: int, instances: int, idle_seconds: float) -> None:
    """Refuse, before anything is built or written, arguments that Triton cannot serve."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise StreamError(
            f"The model name {name!r} cannot name a Triton model: use letters, digits, '_', "
            "'-' and '.' (not first, and no '..'), so that the model stays inside the "
            "repository and its config.pbtxt parses."
        )
    for what, value, least in (("block", block, 0), ("instances", instances, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise StreamError(f"{what} must be a whole number of at least {least}, not {value!r}.")
    if not isinstance(idle_seconds, numbers.Real) or not 0 < idle_seconds < math.inf:
        raise StreamError(
            "idle_seconds (how long Triton waits for a sequence's next request) must be a "
            f"positive number of seconds, not {idle_seconds!r}."
        )


def _step(model: Union[nn.Module, StepModel], example: Optional[Tensor], axis: int) -> StepModel:
    if isinstance(model, StepModel):
        return model  # (SequenceStep refuses one built for a single row)
    if example is None:
        raise StreamError("export_triton needs an example input for a model.")
    if example.dim() == 2:  # one signal [C, T]: serving batches signals on a new first axis
        example = example.unsqueeze(0)
    rows = example.narrow(0, 0, 1).expand(2, *example.shape[1:]).contiguous()
    try:
        step, _ = streaming_transform(model, rows, axis, frame="auto")
    except NotStreamableError as error:  # torchstreamer.stream, its advice, has no Triton form
        if _STREAM_REMEDY not in str(error):
            raise
        raise NotStreamableError(str(error).replace(_STREAM_REMEDY, _POOL_REMEDY)) from error
    return step


def _meta(step: StepModel, sequence: SequenceStep, block: int) -> dict[str, Any]:
    """What the server's model needs: names, per-row shapes and types, the block."""
    from torchstreamer.step.export import onnx_names

    inputs, outputs = onnx_names(step)
    shape = list(step._input_shape)
    shape[step.axis] = block
    signal = torch.zeros([2, *shape[1:]], dtype=step._dtype or torch.float32)
    with torch.no_grad():
        results = sequence(signal, torch.ones(2, 1), tuple(sequence.zero_states(2)))
    signals = len(step.output_axes)
    dtype = str(signal.dtype).removeprefix("torch.")
    return {
        "format": "sequence step: (signal, start, states) -> (*outputs, *new_states), rows first",
        "input": inputs[0],
        "dtype": dtype,
        "shape": shape[1:],  # one row, without the batch axis
        "time_axis": step.axis,  # in the batched signal
        "frame": sequence.frame,
        "block": block,
        "outputs": [
            {
                "name": outputs[i],
                "shape": list(results[i].shape[1:]),
                "time_axis": axis,
                "dtype": str(results[i].dtype).removeprefix("torch."),
            }
            for i, axis in enumerate(step.output_axes)
        ],
        "states": [
            {
                "input": inputs[1 + i],
                "output": outputs[signals + i],
                "shape": row[1:],
                "dtype": str(initial.dtype).removeprefix("torch."),
            }
            for i, (row, initial) in enumerate(zip(sequence.row_shapes, sequence.initial_rows()))
        ],
    }


def triton_configs(
    meta: dict[str, Any], name: str, max_batch_size: int, instances: int, idle_seconds: float
) -> dict[str, str]:
    """The ``config.pbtxt`` texts of the Python-backend and the onnxruntime-backend models."""
    if not 1 <= max_batch_size <= 1024:
        raise StreamError(f"max_batch_size must be in [1, 1024], not {max_batch_size}.")
    time_in = meta["time_axis"] - 1
    in_dims = [-1 if d == time_in else s for d, s in enumerate(meta["shape"])]
    fixed_in = list(meta["shape"])
    fixed_in[time_in] = meta["block"]

    def tensor(name_: str, dtype: str, dims: list[int]) -> str:
        return f'  {{ name: "{name_}" data_type: {_TYPES[getattr(torch, dtype)]} dims: {dims} }}'

    def outputs(variable: bool) -> str:
        rows = []
        for spec in meta["outputs"]:
            dims = list(spec["shape"])
            if variable:
                dims[spec["time_axis"] - 1] = -1
            rows.append(tensor(spec["name"], spec["dtype"], dims))
        return ",\n".join(rows)

    idle = int(idle_seconds * 1e6)
    controls = [("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"),
                ("READY", "CONTROL_SEQUENCE_READY")]  # fmt: skip
    control = ",\n".join(
        f'    {{ name: "{n}" control [ {{ kind: {k} fp32_false_true: [ 0, 1 ] }} ] }}'
        for n, k in controls
    )
    corrid = (
        '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID '
        "data_type: TYPE_UINT64 } ] }"
    )
    batching = (
        f"  max_sequence_idle_microseconds: {idle}\n"
        f"  oldest {{ max_candidate_sequences: {max(1024, 8 * max_batch_size)} "
        f"preferred_batch_size: [ {max_batch_size} ] max_queue_delay_microseconds: 1000 }}\n"
    )
    python = (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{tensor(meta['input'], meta['dtype'], in_dims)}\n]\n"
        f"output [\n{outputs(True)}\n]\n"
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
        f"sequence_batching {{\n{batching}  control_input [\n{control},\n{corrid}\n  ]\n}}\n"
    )
    states = ",\n".join(
        f'    {{ input_name: "{s["input"]}" output_name: "{s["output"]}" '
        f"data_type: {_TYPES[getattr(torch, s['dtype'])]} dims: {s['shape']} "
        f"initial_state {{ data_type: {_TYPES[getattr(torch, s['dtype'])]} dims: {s['shape']} "
        f'zero_data: true name: "start" }} }}'
        for s in meta["states"]
    )
    onnx = (
        f'name: "{name}_onnx"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{tensor(meta['input'], meta['dtype'], fixed_in)}\n]\n"
        f"output [\n{outputs(False)}\n]\n"
        f"instance_group [ {{ count: {instances} kind: KIND_GPU }} ]\n"
        f"sequence_batching {{\n{batching}  control_input [\n{control}\n  ]\n"
        f"  state [\n{states}\n  ]\n}}\n"
    )
    return {"python": python, "onnx": onnx}


def _export_onnx(program: torch.export.ExportedProgram, meta: dict[str, Any], path: Path) -> None:
    """The exported sequence step as ONNX with inputs (signal, START, *states), rows dynamic."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"export_triton(onnx=True) needs the onnx extra, but {error.name} is not installed: "
            "pip install 'torch-streamer[onnx]', or pass onnx=False."
        ) from error
    from torchstreamer.step.export import _quiet_export

    names_in = [meta["input"], "START", *(s["input"] for s in meta["states"])]
    names_out = [o["name"] for o in meta["outputs"]] + [s["output"] for s in meta["states"]]
    with _quiet_export():
        onnx_program = torch.onnx.export(
            program, input_names=names_in, output_names=names_out, dynamo=True, verbose=False
        )
    assert onnx_program is not None
    onnx_program.save(str(path))
