"""Which stream streams which module: `register_streamer` and `create_stream`.

Lookup order: a streamer registered for the module's type (or a base type) wins; then the
built-in streams; then modules known to act per time step; then a probe of unknown modules.
Modules known to mix time steps are refused with the reason and what to do.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from torchstreamer.base import BaseStream
from torchstreamer.errors import NotStreamableError
from torchstreamer.streams.leaf import layer_label

__all__ = ["create_stream", "refusal", "register_streamer", "unregister_streamer"]

StreamFactory = Callable[[nn.Module], BaseStream]
_REGISTRY: dict[type, StreamFactory] = {}

_REFUSED: tuple[tuple[tuple[type, ...], str, str], ...] = (
    (
        (nn.GroupNorm, nn.InstanceNorm1d, nn.LocalResponseNorm, nn.LayerNorm, nn.RMSNorm),
        "normalises over time (its statistics cover the whole signal or its last axis, time)",
        "normalise over channels per time step instead (e.g. BatchNorm1d in eval mode, or "
        "LayerNorm over channels inside a registered streamer)",
    ),
    (
        (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d, nn.FractionalMaxPool2d),
        "pools over a window that depends on the length of the whole signal",
        "use AvgPool1d or MaxPool1d with a fixed kernel",
    ),
    (
        (nn.Linear, nn.Bilinear, nn.LazyLinear, nn.Flatten, nn.Unflatten, nn.Embedding),
        "acts on the last axis, which is time for [B, C, T] blocks",
        "apply it per time step (a 1x1 Conv1d is a Linear over channels)",
    ),
    (
        (nn.CircularPad1d,),
        "wraps the end of the signal around to its start, so no output exists before the end",
        "use zero, reflect or replicate padding",
    ),
    (
        (nn.RNNBase, nn.RNNCellBase),
        "expects [T, B, F] or [B, T, F] input and carries a hidden state that module streams do "
        "not manage",
        "register a streamer that carries the hidden state",
    ),
    (
        (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
         nn.TransformerEncoderLayer, nn.TransformerDecoderLayer),
        "attends over the whole signal",
        "register a streamer that implements causal attention with a cache",
    ),
    (
        (nn.Upsample, nn.MaxUnpool1d, nn.PixelShuffle, nn.PixelUnshuffle, nn.Fold, nn.Unfold),
        "changes the time axis in a way module streams do not model",
        "use ConvTranspose1d for upsampling",
    ),
    (
        (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MaxPool2d,
         nn.AvgPool2d, nn.BatchNorm2d),
        "is not a 1D layer",
        "use the 1D layer",
    ),
    (
        (nn.Softmax2d,),
        "acts over the last two axes, which include time",
        "use Softmax(dim=-2) over channels",
    ),
)  # fmt: skip
# a layer that only runs on the example's length, of a type not above (see refusal)
_ONE_LENGTH = (
    "only runs on one length of the time axis (an op in it needs the whole signal)",
    "make it act per time step or stream the layers around it",
)


def register_streamer(module_type: type, factory: StreamFactory) -> None:
    """Stream every module of ``module_type`` (and its subclasses) with ``factory(module)``.

    A registered streamer wins over the built-in ones, inside ``Sequential1dStream``,
    ``Residual1dStream`` and ``create_stream`` alike.

    Args:
        module_type: an ``nn.Module`` subclass.
        factory: builds the stream of one module; must return a :class:`BaseStream`.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> class Gain(torch.nn.Module):
        ...     def forward(self, x):
        ...         return 2 * x
        >>> pts.register_streamer(Gain, lambda module: pts.Elementwise1dStream(module))
        >>> type(pts.create_stream(Gain())).__name__
        'Elementwise1dStream'
        >>> pts.unregister_streamer(Gain)
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"register_streamer expects an nn.Module subclass, not {module_type!r}.")
    if not callable(factory):
        raise TypeError(f"register_streamer expects a callable factory, not {factory!r}.")
    _REGISTRY[module_type] = factory


def unregister_streamer(module_type: type) -> None:
    """Forget the streamer registered for ``module_type`` (no error if there is none)."""
    _REGISTRY.pop(module_type, None)


def refusal(module: nn.Module, path: str, found: str = "", fallback: bool = False) -> Optional[str]:
    """The message that refuses ``module``, a layer of a type known to mix time steps: what it
    does and what to do (``None`` for other types, unless ``fallback``: then a layer that only
    runs on one length). ``found`` says what showed it, when something did."""
    known = [(reason, remedy) for kinds, reason, remedy in _REFUSED if isinstance(module, kinds)]
    if not known and not fallback:
        return None
    reason, remedy = known[0] if known else _ONE_LENGTH
    how = f"torchstreamer.register_streamer({type(module).__name__}, factory)"
    # (a remedy that is a streamer says how; any other offers one)
    how = f"with {how}" if "register a streamer" in remedy else f"or register a streamer with {how}"
    return (
        f"Cannot stream {layer_label(module, path)}: it {reason}{found}. To stream this model, "
        f"{remedy}, {how}."
    )


def _registered(module: nn.Module) -> Optional[StreamFactory]:
    for kind in type(module).__mro__:
        if kind in _REGISTRY:
            return _REGISTRY[kind]
    return None


def create_stream(
    module: nn.Module,
    padding: str = "valid",
    *,
    in_channels: Optional[int] = None,
    path: str = "",
) -> BaseStream:
    """Build the stream of ``module``.

    Args:
        module: the layer or network to stream.
        padding: ``"valid"`` (default) ignores the layers' own padding, as the seed API does;
            ``"model"`` honours it, so the stream equals ``module(x)`` exactly.
        in_channels: channels of the input, when known; lets unknown module types be probed
            now instead of on the first block.
        path: the module's path in a larger model, used in error messages.

    Raises:
        NotStreamableError: the module mixes time steps in a way no stream reproduces; the
            message names the layer and what to do.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> pts.create_stream(torch.nn.Conv1d(1, 2, 3))
        Conv1dStream(
          padding='valid'
          (module): Conv1d(1, 2, kernel_size=(3,), stride=(1,))
        )
    """
    from torchstreamer.streams.containers import Residual1d, Residual1dStream, Sequential1dStream
    from torchstreamer.streams.conv import Conv1dStream, ConvTranspose1dStream, check_padding_choice
    from torchstreamer.streams.elementwise import (
        Elementwise1dStream,
        elementwise_verdict,
        probe_elementwise,
    )
    from torchstreamer.streams.padding import Pad1dStream
    from torchstreamer.streams.pool import Pool1dStream

    check_padding_choice(padding)
    if not isinstance(module, nn.Module):
        raise TypeError(f"create_stream expects an nn.Module, not {type(module).__name__}.")
    factory = _registered(module)
    if factory is not None:
        stream = factory(module)
        if not isinstance(stream, BaseStream):
            raise TypeError(
                f"The streamer registered for {type(module).__name__} returned "
                f"{type(stream).__name__}, not a torchstreamer.BaseStream."
            )
        return stream
    if isinstance(module, BaseStream):
        raise NotStreamableError(f"{layer_label(module, path)} is already a stream.")
    if isinstance(module, nn.Conv1d):
        return Conv1dStream(module, padding, path=path)
    if isinstance(module, nn.ConvTranspose1d):
        return ConvTranspose1dStream(module, padding, path=path)
    if isinstance(module, (nn.AvgPool1d, nn.MaxPool1d)):
        return Pool1dStream(module, padding, path=path)
    if isinstance(
        module, (nn.ConstantPad1d, nn.ZeroPad1d, nn.ReflectionPad1d, nn.ReplicationPad1d)
    ):
        return Pad1dStream(module, padding, path=path)
    if isinstance(module, nn.Sequential):
        return Sequential1dStream(module, padding, path=path, in_channels=in_channels)
    if isinstance(module, Residual1d):
        return Residual1dStream(module, padding, path=path, in_channels=in_channels)
    message = refusal(module, path)
    if message is not None:
        raise NotStreamableError(message)
    if elementwise_verdict(module, path):
        return Elementwise1dStream(module, path=path)
    if in_channels is not None:
        probe_elementwise(module, in_channels, path)
        return Elementwise1dStream(module, path=path)
    return Elementwise1dStream(module, path=path, probe=True)
