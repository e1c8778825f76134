"""Capture a model with ``torch.export`` and a dynamic length on the time axis.

The captured graph must keep the time length symbolic: a graph specialised to the example's
length would compute something else for every other length, so it is refused.

``torch.export`` keeps process-wide state while it traces (and so do the leaves swapped in for
the capture), so captures run one at a time, inside the build that holds
:data:`torchstreamer.base.ONE_BUILD_AT_A_TIME`: streams may be built from several threads.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from torchstreamer.base import ONE_BUILD_AT_A_TIME
from torchstreamer.errors import NotStreamableError
from torchstreamer.graph.leaves import leaves_swapped, registered_output_channels
from torchstreamer.streams.leaf import layer_label
from torchstreamer.streams.registry import refusal

if TYPE_CHECKING:
    from torch.export import ExportedProgram

__all__ = ["capture", "prune_unused", "time_symbol"]

# words of torch.export's errors when a model forces or constrains the dynamic length
_LENGTH_WORDS = ("constraint", "specializ", "guard", "dynamic", "symbolic", "dim(", "sym")


def time_symbol(value: object) -> bool:
    """Whether a size is symbolic (depends on the captured time length)."""
    return isinstance(value, torch.SymInt) and bool(value.node.expr.free_symbols)


def capture(
    model: nn.Module, example: torch.Tensor, axis: int
) -> tuple[ExportedProgram, dict[str, nn.Module]]:
    """Export ``model`` on ``example`` with a dynamic length on ``axis``.

    Tries a named dimension first (export fails loudly if the model forces a length) and then
    ``Dim.AUTO``, which also accepts models whose lengths must be multiples of a stride product.
    Recurrent layers and max pools are captured as opaque leaves (:mod:`.leaves`); the leaf
    modules come back with the program, by path.

    Raises:
        NotStreamableError: the model raises on the example, cannot be captured, or only for the
            example's length.
    """
    with ONE_BUILD_AT_A_TIME:
        return _capture(model, example, axis)


def _capture(
    model: nn.Module, example: torch.Tensor, axis: int
) -> tuple[ExportedProgram, dict[str, nn.Module]]:
    from torch.export import Dim, export  # imported on first use: it loads much of torch

    axis = axis % example.dim()
    minimum = max(16, example.shape[axis] // 4)
    errors = []
    out_channels = registered_output_channels(model, example)
    for dim in (Dim("T", min=minimum), Dim.AUTO):
        try:
            with leaves_swapped(model, out_channels) as leaves:
                program = export(model, (example,), dynamic_shapes=({axis: dim},), strict=False)
        except NotStreamableError:
            raise
        except Exception as error:  # export raises many types; keep the message for the user
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")
            continue
        placeholder = next(
            n for n in program.graph.nodes
            if n.op == "placeholder" and n.name in program.graph_signature.user_inputs
        )  # fmt: skip
        if time_symbol(placeholder.meta["val"].shape[axis]):
            return program, leaves
        errors.append("the captured graph only works for the example's length")
    _check_runs(model, example)
    why = _fixed_length(model, example, axis)
    if why is not None:
        raise NotStreamableError(why)
    name = type(model).__name__
    if any(word in error.lower() for error in errors for word in _LENGTH_WORDS):
        raise NotStreamableError(
            f"torch.export could not capture {name} with a dynamic length on axis {axis} "
            f"({'; '.join(errors)}). An op that needs the whole length (a Linear or a reshape "
            "over time, an adaptive pool...) forces it; stream the parts of the model that act "
            "along time, or an nn.Sequential with Sequential1dStream."
        )
    raise NotStreamableError(
        f"torch.export could not capture {name} ({'; '.join(errors)}). The model runs on the "
        "example, so this is about tracing it, not about time: make its forward traceable by "
        "torch.export (no Python side effects or unsupported calls), or stream its parts."
    )


def _check_runs(model: nn.Module, example: torch.Tensor) -> None:
    """Raise, naming the model's own error, if the model fails on the example offline (a copy
    runs, so that a model in training mode keeps its statistics)."""
    try:
        with torch.no_grad():
            copy.deepcopy(model)(example)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise NotStreamableError(
            f"The model {type(model).__name__} raised {type(error).__name__}: {first} (run "
            f"offline on the example input shaped {list(example.shape)}); fix the model or give "
            "an example that it accepts."
        ) from error


def _fixed_length(model: nn.Module, example: torch.Tensor, axis: int) -> Optional[str]:
    """Why a capture fixed the length, where runs of (a copy of) the model on the example and
    on one twice as long show it: the layer that raises on the longer input, or a layer whose
    output the example leaves with at most one sample (which ``torch.export`` fixes); ``None``
    where neither does."""
    copied = copy.deepcopy(model)
    calls: list[str] = []  # the paths of the layers running now, outermost first
    outputs: dict[str, Any] = {}

    def enter(path: str) -> Callable[..., None]:
        return lambda module, args: calls.append(path)

    def leave(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls.pop()
            outputs.setdefault(path, list(tree_leaves(output)))

        return hook

    handles = []
    for path, module in copied.named_modules():
        handles.append(module.register_forward_pre_hook(enter(path)))
        handles.append(module.register_forward_hook(leave(path)))
    try:
        with torch.no_grad():
            copied(example)
            short = dict(outputs)
            outputs.clear()
            longer = torch.cat([example, example], axis)
            try:
                copied(longer)
            except Exception as error:
                if len(calls) < 2:  # the model's own forward raised, not one of its layers
                    return None
                path = calls[-1]
                first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
                found = (
                    f"; on {longer.shape[axis]} samples instead of the example's "
                    f"{example.shape[axis]}, it raises {type(error).__name__}: {first}"
                )
                return refusal(copied.get_submodule(path), path, found, fallback=True)
    except Exception:  # (the model raises on its example: _check_runs has said so)
        return None
    finally:
        for handle in handles:
            handle.remove()
    for path, values in short.items():
        for value, other in zip(values, outputs.get(path, [])):
            if not isinstance(value, torch.Tensor) or not isinstance(other, torch.Tensor):
                continue
            if value.dim() == other.dim() and any(
                size <= 1 < grown for size, grown in zip(value.shape, other.shape)
            ):
                whose = (
                    "its output"
                    if not path
                    else f"the output of {layer_label(copied.get_submodule(path), path)}"
                )
                return (
                    f"The example input (shape {list(example.shape)}) is too short for "
                    f"{type(model).__name__}: {whose} (shape {list(value.shape)}) has too few "
                    "samples to follow the input's length. Give a longer example, several times "
                    "the model's total stride."
                )
    return None


def prune_unused(graph: fx.Graph) -> int:
    """Erase the nodes of a captured graph whose values reach no output: a model run offline
    may compute what only its own streaming mode reads (moshi's convolutions update a local
    state they then drop; ``torch.tensor(x.shape)`` feeds only an assert). An in-place op stays
    when a kept node reads the tensor it writes after it. Returns how many nodes went."""
    kept: set[fx.Node] = set()
    order = {node: index for index, node in enumerate(graph.nodes)}
    for node in reversed(list(graph.nodes)):
        if node.op in ("output", "placeholder") or any(user in kept for user in node.users):
            kept.add(node)
            continue
        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable and node.args:
            written = node.args[0]
            if isinstance(written, fx.Node) and any(
                user in kept and order[user] > order[node] for user in written.users
            ):
                kept.add(node)
    erased = 0
    for node in reversed(list(graph.nodes)):
        if node not in kept and not node.users:
            graph.erase_node(node)
            erased += 1
    return erased
