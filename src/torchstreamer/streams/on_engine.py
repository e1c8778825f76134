"""Module streams on the frame engine: a container stream runs the generated frame code of the
offline module that it equals.

A container (``Sequential1dStream``, ``Residual1dStream``) built by the user is a stream of an
offline module: the network itself with ``padding="model"``, the same layers with their padding
ignored with ``padding="valid"`` (the seed API). :func:`offline_equivalent` writes that module
down from the layer streams, and :func:`engine_for` hands it to :func:`torchstreamer.stream`,
whose plan and generated frame code then run every block (:mod:`torchstreamer.step.engine`).
Each op's time behaviour is thus the plan's, one definition for every face.

The layer streams stay: they are the container's scriptable form (``torch.jit.script`` compiles
them, since generated Python code does not script), and the fallback for what the engine does
not run (a registered streamer it cannot see into, a model it refuses or cannot reproduce).

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3, padding=1), torch.nn.ReLU())
    >>> offline_equivalent(pts.Sequential1dStream(net))[0].padding  # "valid": padding ignored
    (0,)
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn

from torchstreamer.base import ONE_BUILD_AT_A_TIME, BaseStream

if TYPE_CHECKING:
    from torchstreamer.graph.stream import GraphStream

__all__ = ["engine_for", "offline_equivalent"]

_MIN_OUTPUTS = 8  # the example gives the engine at least this many outputs to check


def offline_equivalent(stream: BaseStream) -> Optional[nn.Module]:
    """The offline module whose output ``stream`` reproduces for a whole signal, or ``None``
    when the stream is not one whose semantics this module knows (a registered streamer of
    its own class). Parameters are shared with the stream's layers, never copied."""
    from torchstreamer.streams.containers import Residual1d, Residual1dStream, Sequential1dStream
    from torchstreamer.streams.conv import Conv1dStream, ConvTranspose1dStream
    from torchstreamer.streams.elementwise import Elementwise1dStream
    from torchstreamer.streams.padding import Pad1dStream
    from torchstreamer.streams.pool import Pool1dStream

    if isinstance(stream, Sequential1dStream):
        parts = [offline_equivalent(s) for s in stream.streams]  # type: ignore[arg-type]
        if any(part is None for part in parts):
            return None
        return nn.Sequential(*parts)  # type: ignore[arg-type]
    if isinstance(stream, Residual1dStream):
        inner = offline_equivalent(stream.stream)
        return None if inner is None else Residual1d(inner)
    if isinstance(stream, Elementwise1dStream):
        return stream.module
    valid = getattr(stream, "padding", None) == "valid"
    if type(stream) in (Conv1dStream, ConvTranspose1dStream, Pool1dStream, Pad1dStream):
        if not valid:
            return stream.module  # type: ignore[return-value]
        if isinstance(stream, Pad1dStream):
            return nn.Identity()
        return _unpadded(stream.module)  # type: ignore[arg-type]
    return None


def _unpadded(layer: nn.Module) -> nn.Module:
    """``layer`` as if built with padding 0 (and, for pools, ``ceil_mode=False``): a shallow
    copy that shares its parameters, parametrizations included."""
    twin: Any = copy.copy(layer)
    twin.padding = 0 if isinstance(layer, (nn.AvgPool1d, nn.MaxPool1d)) else (0,)
    if isinstance(layer, nn.Conv1d):
        twin.padding_mode = "zeros"
    if isinstance(layer, nn.ConvTranspose1d):
        twin.output_padding = (0,)
    if isinstance(layer, (nn.AvgPool1d, nn.MaxPool1d)):
        twin.ceil_mode = False
    return twin


def engine_for(stream: BaseStream, channels: int) -> Optional[GraphStream]:
    """A graph stream of ``stream``'s offline equivalent that runs on the frame engine, or
    ``None`` when there is none: the equivalent is unknown, the input channels are unknown, or
    a type in it has a registered streamer, or :func:`torchstreamer.stream` refuses the module
    or streams it without the engine."""
    from torchstreamer.graph.stream import GraphStream
    from torchstreamer.streams.registry import _registered

    offline = offline_equivalent(stream)
    reference = stream._reference()
    if offline is None or channels < 0:
        return None
    if any(_registered(module) is not None for module in offline.modules()):
        return None  # torchstreamer.stream() would stream it with the registered streamer
    with ONE_BUILD_AT_A_TIME:  # (the capture and the checks that run the model: see base)
        try:
            length = _example_length(stream)
            example = torch.zeros(
                1,
                channels,
                length,
                dtype=reference.dtype if reference is not None else torch.float32,
                device=reference.device if reference is not None else None,
            )
            graph = GraphStream(offline, example)
        except Exception:  # the layer streams stream it as before
            return None
        if graph._engine is None or not _keeps_up(stream, graph, example):
            return None
    return graph


def _keeps_up(stream: BaseStream, graph: GraphStream, example: Tensor) -> bool:
    """Whether the engine returns every output no later than the layer streams do, one sample
    per call (their plan, promises included: a frame returns its values when it ends, so a
    value that a promise gives mid-frame would come later on the engine)."""
    from torchstreamer.plan.rules import stream_rule
    from torchstreamer.plan.timing import chain_timing

    try:
        layers = getattr(stream, "streams", None)  # (each layer a node: their periods count)
        rules = [stream_rule(s) for s in layers] if layers is not None else [stream_rule(stream)]
        timing = chain_timing(rules)
    except (NotImplementedError, ValueError):
        return True  # (no plan to hold the engine to: its own checks stand)
    last, returned = (timing.nodes or ["input"])[-1], 0  # (an empty network: its input)
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example)
    try:
        with torch.no_grad():
            for seen in range(1, example.shape[-1] + 1):
                y = graph(x[..., seen - 1 : seen])
                returned += 0 if y is None else int(y.shape[-1])
                if returned < timing.count_at(last, seen):
                    return False
    finally:
        graph.reset()
    return True


def _example_length(stream: BaseStream) -> int:
    """A signal length that gives at least a few outputs: the engine checks itself on it."""
    length = 16
    while stream.output_length(length) < _MIN_OUTPUTS:
        length *= 2
        if length > 1 << 20:
            raise ValueError("no signal length up to 2**20 gives outputs")
    return 4 * length
