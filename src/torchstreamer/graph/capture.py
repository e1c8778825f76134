"""Capture a model with ``torch.export`` and a dynamic length on the time axis.

The captured graph must keep the time length symbolic: a graph specialised to the example's
length would compute something else for every other length, so it is refused.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim, ExportedProgram, export

from torchstreamer.errors import NotStreamableError
from torchstreamer.graph.leaves import leaves_swapped, registered_output_channels

__all__ = ["capture", "time_symbol"]


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
        NotStreamableError: the model cannot be captured, or only for the example's length.
    """
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
    raise NotStreamableError(
        f"torch.export could not capture {type(model).__name__} with a dynamic length on axis "
        f"{axis} ({'; '.join(errors)}). An op that needs the whole length (a Linear or a "
        "reshape over time, an adaptive pool...) forces it; stream the parts of the model "
        "that act along time, or an nn.Sequential with Sequential1dStream."
    )
