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

import numpy as np
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
        """Answer each request: a bad request (no signal, a signal that does not fit, a CORRID
        that is not an id, a sequence without state) gets an error response of its own, and
        neither its sequence nor any other changes. The good ones run as rows of one step."""
        now = time.monotonic()
        responses = [None] * len(requests)
        work = []  # (index, corrid, the sequence's next state, end)
        taken = set()
        for index, request in enumerate(requests):
            try:
                parsed = self._parse(request)
                if parsed is None:  # a padding slot of the direct strategy
                    responses[index] = self._response([_empty(s) for s in self.meta["outputs"]])
                    continue
                corrid, start, end, x = parsed
                if corrid in taken:
                    raise ValueError(f"sequence {corrid} sent two requests in one batch")
                sequence = self._next(corrid, start, x)
            except (ValueError, TypeError, IndexError) as error:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error))
                )
                continue
            taken.add(corrid)
            sequence.seen = now
            work.append((index, corrid, sequence, end))
        try:
            self._run([sequence for _, _, sequence, _ in work])
        except Exception as error:  # no sequence changed: each request may be sent again
            for index, _, _, _ in work:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"the step failed: {error}")
                )
            return responses
        for index, corrid, sequence, end in work:
            responses[index] = self._response(sequence.take(self.meta, self.axis))
            if end:
                self.sequences.pop(corrid, None)
            else:
                self.sequences[corrid] = sequence
        for corrid in [c for c, s in self.sequences.items() if now - s.seen > self.idle_seconds]:
            del self.sequences[corrid]  # Triton dropped it after its idle timeout
        return responses

    def _parse(self, request):
        """(CORRID, START, END, signal) of a request, None for a padding slot, or ValueError /
        TypeError with the reason the request is refused."""
        if not _flag(request, "READY", True):
            return None
        corrid = _corrid(request)
        start, end = _flag(request, "START", False), _flag(request, "END", False)
        signal = pb_utils.get_input_tensor_by_name(request, self.meta["input"])
        if signal is None:
            raise ValueError(f"the request has no input '{self.meta['input']}'")
        array = signal.as_numpy()
        if array.dtype.kind not in "fiu":  # complex, bool, bytes, objects: no silent cast
            raise TypeError(
                f"{self.meta['input']} must hold real numbers ({self.meta['dtype']}), not "
                f"{array.dtype}"
            )
        x = torch.from_numpy(array.copy()).to(self.dtype)
        problem = self._misfit(x)
        if problem:
            raise ValueError(problem)
        return corrid, start, end, x

    def _next(self, corrid, start, x):
        """The state of the sequence ``corrid`` after ``x`` joins its waiting samples: a new
        object, so that the sequence is unchanged until the step has run."""
        if start:
            sequence = _Sequence(self.meta, x)
        else:
            current = self.sequences.get(corrid)
            if current is None:
                raise ValueError(
                    f"sequence {corrid} has no state: it did not start with START, ended, or "
                    "was idle longer than the sequence batcher allows"
                )
            sequence = current.copy()
        sequence.add(x, self.axis)
        return sequence

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

    def copy(self):
        """A sequence with the same state, waiting samples and unsent outputs, which can change
        while this one stays as it is (the tensors themselves are never written in place)."""
        twin = _Sequence.__new__(_Sequence)
        twin.states, twin.pending, twin.fresh = list(self.states), self.pending, self.fresh
        twin.outputs, twin.seen = list(self.outputs), self.seen
        return twin

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
    value = _scalar(request, name, default)
    if isinstance(value, (bytes, str)):
        raise TypeError(f"the control {name} must be a number (0 or 1), not {value!r}")
    return bool(value)


def _corrid(request):
    """The sequence's correlation id: an integer, or a string (Triton's string ids)."""
    value = _scalar(request, "CORRID", 0)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"CORRID must be an integer or a string, not {value!r}")
    return int(value)
