"""A Triton Inference Server Python-backend model that streams many sequences through the
sequence step that :func:`torchstreamer.export_triton` wrote beside it (``sequence.pt2``,
``sequence.json``).

This file is copied into the model repository and runs inside Triton's Python backend stub:
it needs torch and numpy there, not torchstreamer. Triton's sequence batcher gives each request
the controls START, END, READY and CORRID. The Python backend has no implicit state, so this
model keeps each sequence's state by CORRID: fresh at START, dropped at END, and dropped when a
sequence has been idle for longer than the batcher's ``max_sequence_idle_microseconds`` (Triton
then forgets the sequence too; a later request without START is answered with an error).

Samples wait per sequence until they make a whole block (``sequence.json``: ``block``); the
whole blocks of all requests in one ``execute`` call run as rows of one batched step.
"""

import json
import time
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = Path(__file__).parent
        self.meta = json.loads((here / "sequence.json").read_text())
        self.program = torch.export.load(str(here / "sequence.pt2")).module()
        config = json.loads(args["model_config"])
        idle = int(config["sequence_batching"].get("max_sequence_idle_microseconds", 10**9))
        self.idle_seconds = idle / 1e6
        self.axis = self.meta["time_axis"]  # of the signal, batch first
        self.block = self.meta["block"]
        self.dtype = getattr(torch, self.meta["dtype"])
        self.sequences = {}  # CORRID -> _Sequence
        torch.set_num_threads(int(self.meta.get("threads", 1)))

    def execute(self, requests):
        now = time.monotonic()
        responses = [None] * len(requests)
        work = []
        for index, request in enumerate(requests):
            if not _flag(request, "READY", True):  # a padding slot of the direct strategy
                responses[index] = self._response([_empty(s) for s in self.meta["outputs"]])
                continue
            corrid = int(_scalar(request, "CORRID", 0))
            start, end = _flag(request, "START", False), _flag(request, "END", False)
            signal = pb_utils.get_input_tensor_by_name(request, self.meta["input"])
            x = torch.from_numpy(signal.as_numpy().copy()).to(self.dtype)
            problem = self._misfit(x)
            if problem:  # this request fails alone; its sequence's state is unchanged
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
                continue
            if start:
                sequence = _Sequence(self.meta, x)
            else:
                sequence = self.sequences.get(corrid)
                if sequence is None:
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(
                            f"sequence {corrid} has no state: it did not start with START, "
                            "ended, or was idle longer than the sequence batcher allows"
                        )
                    )
                    continue
            sequence.add(x, self.axis)
            sequence.seen = now
            work.append((index, corrid, sequence, end))
        self._run([sequence for _, _, sequence, _ in work])
        for index, corrid, sequence, end in work:
            responses[index] = self._response(sequence.take(self.meta, self.axis))
            if end:
                self.sequences.pop(corrid, None)
            else:
                self.sequences[corrid] = sequence
        for corrid in [c for c, s in self.sequences.items() if now - s.seen > self.idle_seconds]:
            del self.sequences[corrid]  # Triton dropped it after its idle timeout
        return responses

    def _misfit(self, x):
        """Why a request's signal does not fit the model, or None."""
        shape, axis = self.meta["shape"], self.axis
        fits = x.dim() == len(shape) + 1 and x.shape[0] == 1
        fits = fits and all(
            size == own for d, (size, own) in enumerate(zip(x.shape[1:], shape)) if d + 1 != axis
        )
        if fits:
            return None
        expected = ["1"] + ["T" if d + 1 == axis else str(s) for d, s in enumerate(shape)]
        return (
            f"{self.meta['input']} must be shaped [{', '.join(expected)}] (one sequence per "
            f"request, any number T of samples) but is {list(x.shape)}"
        )

    @property
    def _outputs(self):
        return len(self.meta["outputs"])

    def _run(self, sequences):
        """Run every whole block waiting in ``sequences``, as rows of one step per block."""
        while True:
            ready = [s for s in sequences if s.pending.shape[self.axis] >= self.block]
            if not ready:
                return
            signal = torch.cat([s.pending.narrow(self.axis, 0, self.block) for s in ready], 0)
            start = torch.tensor([[1.0 if s.fresh else 0.0] for s in ready])
            states = tuple(
                torch.cat([s.states[j] for s in ready], 0) for j in range(len(ready[0].states))
            )
            with torch.no_grad():
                results = self.program(signal, start, states)
            outputs = results[: self._outputs]
            news = results[self._outputs :]
            for row, s in enumerate(ready):
                s.outputs.append([o[row : row + 1] for o in outputs])
                s.states = [n[row : row + 1] for n in news]
                s.fresh = False
                rest = s.pending.shape[self.axis] - self.block
                s.pending = s.pending.narrow(self.axis, self.block, rest)

    def _response(self, tensors):
        names = [spec["name"] for spec in self.meta["outputs"]]
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, t.contiguous().numpy()) for name, t in zip(names, tensors)
            ]
        )


class _Sequence:
    """One sequence: its state rows, the samples short of a block, the outputs not yet sent."""

    def __init__(self, meta, like):
        self.states = [
            torch.zeros([1, *s["shape"]], dtype=getattr(torch, s["dtype"])) for s in meta["states"]
        ]
        self.pending = like.narrow(meta["time_axis"], 0, 0)
        self.fresh = True  # the step puts the state back to its start
        self.outputs = []
        self.seen = 0.0

    def add(self, x, axis):
        self.pending = torch.cat([self.pending, x], axis) if self.pending.numel() else x

    def take(self, meta, axis):
        """The outputs completed since the last request, one tensor per model output."""
        taken = []
        for index, spec in enumerate(meta["outputs"]):
            parts = [o[index] for o in self.outputs]
            taken.append(torch.cat(parts, spec["time_axis"]) if parts else _empty(spec))
        self.outputs = []
        return taken


def _empty(spec):
    """An output with no samples (a request that completes none)."""
    shape = [1, *spec["shape"]]
    shape[spec["time_axis"]] = 0
    return torch.zeros(shape, dtype=getattr(torch, spec["dtype"]))


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]


def _flag(request, name, default):
    return bool(_scalar(request, name, default))
