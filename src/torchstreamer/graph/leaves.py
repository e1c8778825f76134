"""Opaque leaves: modules that ``torch.export`` cannot capture with a dynamic length.

``torch.export`` specialises the time length of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and
``nn.MaxPool1d`` to the example's (and that of an ``nn.AvgPool1d`` with ``ceil_mode`` to the
example's residue modulo its stride), so during the capture each of them is swapped for a
:class:`Leaf` that calls one custom op, ``torchstreamer::leaf``. Its fake implementation gives
the output shapes with a symbolic length; its real one calls the module. The graph then keeps
the time length symbolic, and the leaf maps back to a streaming handler of the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import Tensor, nn

from torchstreamer.errors import NotStreamableError

__all__ = ["LEAF_OP", "leaf_modules", "leaves_swapped"]

_ACTIVE: dict[str, tuple[nn.Module, Callable[[Tensor], list[list[Any]]]]] = {}


@torch.library.custom_op("torchstreamer::leaf", mutates_args=())
def _leaf(x: Tensor, key: str) -> list[Tensor]:
    module = _ACTIVE[key][0]
    result = module(x)
    parts = list(result) if isinstance(result, tuple) else [result]
    flat: list[Tensor] = []
    for part in parts:
        flat.extend(part if isinstance(part, tuple) else [part])
    return [t.clone() for t in flat]


@_leaf.register_fake
def _leaf_fake(x: Tensor, key: str) -> list[Tensor]:
    return [x.new_empty(shape) for shape in _ACTIVE[key][1](x)]


LEAF_OP = torch.ops.torchstreamer.leaf.default


class Leaf(nn.Module):
    """Stands in for a module during the capture; see the module docstring."""

    def __init__(self, key: str, structure: str) -> None:
        super().__init__()
        self.key = key
        self.structure = structure  # "tensor", "rnn" (output, h) or "lstm" (output, (h, c))

    def forward(self, x: Tensor, *initial: Any) -> Any:
        if any(state is not None for state in initial):
            raise NotStreamableError(
                f"Cannot stream layer '{self.key}' ({type(self).__name__}): the model passes it "
                "an initial state, which streams do not carry in from outside the signal; call "
                "it without one (or with None), so that it starts from zeros."
            )
        parts = torch.ops.torchstreamer.leaf(x, self.key)
        if self.structure == "tensor":
            return parts[0]
        if self.structure == "lstm":
            return parts[0], (parts[1], parts[2])
        return parts[0], parts[1]


def _pool_shapes(pool: nn.MaxPool1d | nn.AvgPool1d) -> Callable[[Tensor], list[list[Any]]]:
    from torchstreamer.streams.pool import pool_geometry

    kernel, stride, padding, dilation = pool_geometry(pool)

    def shapes(x: Tensor) -> list[list[Any]]:
        total = x.shape[-1]
        extra = stride - 1 if pool.ceil_mode else 0
        length = (total + 2 * padding - dilation * (kernel - 1) - 1 + extra) // stride + 1
        if pool.ceil_mode:  # the last window must start inside the signal or the left padding
            length = torch.sym_ite((length - 1) * stride >= total + padding, length - 1, length)
        return [[*x.shape[:-1], length]]

    return shapes


def _rnn_shapes(rnn: nn.RNNBase) -> Callable[[Tensor], list[list[Any]]]:
    def shapes(x: Tensor) -> list[list[Any]]:
        batch = x.shape[0] if rnn.batch_first else x.shape[1]
        width = rnn.proj_size if getattr(rnn, "proj_size", 0) else rnn.hidden_size
        out = [*x.shape[:-1], width]
        hidden = [rnn.num_layers, batch, width]
        if isinstance(rnn, nn.LSTM):
            return [out, hidden, [rnn.num_layers, batch, rnn.hidden_size]]
        return [out, hidden]

    return shapes


def _registered_shapes(
    path: str, module: nn.Module, channels: int
) -> Callable[[Tensor], list[list[Any]]]:
    from torchstreamer.streams.registry import create_stream

    stream = create_stream(module, path=path)
    try:
        stream.output_length(64)
    except NotImplementedError as error:
        raise NotStreamableError(
            f"Cannot stream layer '{path}' ({type(module).__name__}) in a graph stream: its "
            "registered streamer does not define output_length(n), which the capture needs to "
            "know the layer's output length."
        ) from error

    def shapes(x: Tensor) -> list[list[Any]]:
        return [[*x.shape[:-2], channels, stream.output_length(x.shape[-1])]]

    return shapes


def leaf_modules(
    model: nn.Module, out_channels: dict[str, int]
) -> dict[str, tuple[nn.Module, Callable[[Tensor], list[list[Any]]], str]]:
    """The submodules of ``model`` to capture as leaves, by path.

    ``out_channels`` gives the output channels of the modules with a registered streamer, as
    seen on the example.
    """
    from torchstreamer.streams.registry import _registered

    found: dict[str, tuple[nn.Module, Callable[[Tensor], list[list[Any]]], str]] = {}
    for path, module in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in found):
            continue
        if _registered(module) is not None and path in out_channels:
            found[path] = (module, _registered_shapes(path, module, out_channels[path]), "tensor")
        elif isinstance(module, nn.MaxPool1d):
            if module.return_indices:
                raise NotStreamableError(
                    f"Cannot stream layer '{path}' (MaxPool1d): it returns indices, which count "
                    "from the start of the block and not of the signal; drop return_indices."
                )
            found[path] = (module, _pool_shapes(module), "tensor")
        elif isinstance(module, nn.AvgPool1d) and module.ceil_mode:
            found[path] = (module, _pool_shapes(module), "tensor")
        elif isinstance(module, nn.RNNBase):
            if module.bidirectional:
                raise NotStreamableError(
                    f"Cannot stream layer '{path}' ({type(module).__name__}): it is "
                    "bidirectional, so every output depends on the end of the signal. Use a "
                    "unidirectional layer."
                )
            structure = "lstm" if isinstance(module, nn.LSTM) else "rnn"
            found[path] = (module, _rnn_shapes(module), structure)
    return found


def registered_output_channels(model: nn.Module, example: Tensor) -> dict[str, int]:
    """Run the model once on ``example`` and note the output channels of every module that has
    a registered streamer (the capture needs them for the modules' fake shapes)."""
    from torchstreamer.streams.registry import _registered

    seen: dict[str, int] = {}
    hooks = []
    for path, module in model.named_modules():
        if path and _registered(module) is not None:

            def note(_: nn.Module, __: Any, out: Any, path: str = path) -> None:
                if isinstance(out, Tensor) and out.dim() >= 2:
                    seen[path] = int(out.shape[-2])

            hooks.append(module.register_forward_hook(note))
    if hooks:
        try:
            with torch.no_grad():
                model(example)
        finally:
            for hook in hooks:
                hook.remove()
    return seen


@contextmanager
def leaves_swapped(
    model: nn.Module, out_channels: dict[str, int]
) -> Iterator[dict[str, nn.Module]]:
    """Swap the leaf modules of ``model`` for :class:`Leaf` during a capture; restore them."""
    leaves = leaf_modules(model, out_channels)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for path, (module, shapes, structure) in leaves.items():
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            _ACTIVE[path] = (module, shapes)
            # a subclass named after the module, so that graph nodes name the user's layer type
            stand_in = type(type(module).__name__, (Leaf,), {})(path, structure)
            setattr(parent, name, stand_in)
            swapped.append((parent, name, module))
        yield {path: entry[0] for path, entry in leaves.items()}
    finally:
        for parent, name, module in swapped:
            setattr(parent, name, module)
        for path in leaves:
            _ACTIVE.pop(path, None)
