"""Hand-written baselines the benchmark measures the library against.

``ring_buffer``: the eager one-sample step that a person writes by hand for a causal CNN. Per
convolution layer it keeps the last ``(kernel_size - 1) * dilation`` inputs; for each new sample
it concatenates that window with the sample (``torch.cat``), runs ``F.conv1d`` on it, applies the
activation, and keeps ``window[..., 1:]`` as the next state. One Python call per input sample,
weights taken from the workload model (nothing is copied or retrained). It applies to causal
``nn.Sequential`` models of :class:`torchstreamer.PaddedConv1d`, 1x1 ``nn.Conv1d``, ReLU and
:class:`torchstreamer.Residual1d` (whose inner layers keep the length): the ``vollo_cnn`` and
``tcn`` workloads.

Example:
    >>> import torch
    >>> from benchmarks.workloads import workloads
    >>> vollo = next(w for w in workloads() if w.name == "vollo_cnn")
    >>> runner = ring_buffer_runner(vollo)
    >>> x = vollo.signal(20)
    >>> bool(torch.allclose(runner.run(x, 1), vollo.model(x), atol=1e-5))
    True
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from benchmarks.workloads import Workload
from torch import Tensor, nn

from torchstreamer.measure import StepRunner
from torchstreamer.step.padded import PaddedConv1d
from torchstreamer.streams.containers import Residual1d

__all__ = ["RingBufferStep", "RingBufferUnsupported", "ring_buffer_runner"]


class RingBufferUnsupported(Exception):  # noqa: N818 - reads as a status
    """The model is not one the hand-written ring buffer covers (the message says why)."""


class RingBufferStep(nn.Module):
    """One sample in (``[B, C]``), one sample out, state in per-layer windows."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.state: list[Optional[Tensor]] = []
        self.program = self._compile(model)

    def _compile(self, module: nn.Module) -> Callable[[Tensor], Tensor]:
        if isinstance(module, nn.Sequential):
            parts = [self._compile(layer) for layer in module]

            def sequence(x: Tensor) -> Tensor:
                for part in parts:
                    x = part(x)
                return x

            return sequence
        if isinstance(module, Residual1d):
            inner = self._compile(module.net)
            return lambda x: inner(x) + x
        if isinstance(module, nn.ReLU):
            return F.relu
        if isinstance(module, nn.Conv1d) and type(module) in (nn.Conv1d, PaddedConv1d):
            if module.stride[0] != 1 or module.groups != 1:
                raise RingBufferUnsupported("strided or grouped convolution")
            kernel, dilation = module.kernel_size[0], module.dilation[0]
            weight, bias = module.weight.detach(), module.bias
            bias = bias.detach() if bias is not None else None
            if kernel == 1 and module.padding in ((0,), "valid"):
                return lambda x: F.conv1d(x, weight, bias)
            if not isinstance(module, PaddedConv1d):
                raise RingBufferUnsupported("a non-causal convolution")
            index = len(self.state)
            self.state.append(None)
            span = (kernel - 1) * dilation

            def ring(x: Tensor) -> Tensor:
                state = self.state[index]
                if state is None:  # zeros: the offline model's left padding
                    state = x.new_zeros(*x.shape[:-1], span)
                window = torch.cat([state, x], -1)
                self.state[index] = window[..., 1:]
                return F.conv1d(window, weight, bias, dilation=dilation)

            return ring
        raise RingBufferUnsupported(f"{type(module).__name__} layers")

    def reset(self) -> None:
        self.state = [None] * len(self.state)

    def forward(self, x: Tensor) -> Tensor:
        return self.program(x.unsqueeze(-1)).squeeze(-1)

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state if t is not None)


class RingBufferRunner(StepRunner):
    """The hand-written step, called once per sample like the one-sample ``step_1`` runner
    (timed at block 1 only)."""

    name = "ring_buffer"

    def __init__(self, step: RingBufferStep) -> None:
        super().__init__(step, -1)  # type: ignore[arg-type,unused-ignore]
        self.ring = step

    def state_bytes(self) -> Optional[int]:
        return self.ring.state_bytes()


def ring_buffer_runner(workload: Workload) -> RingBufferRunner:
    """The hand-written ring-buffer step of ``workload``'s model.

    Raises:
        RingBufferUnsupported: the model is not a causal CNN of the layers it covers.
    """
    if not workload.causal:
        raise RingBufferUnsupported("the model is not causal")
    return RingBufferRunner(RingBufferStep(workload.model))
