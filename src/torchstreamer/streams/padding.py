"""Stream of the padding layers ``ConstantPad1d``, ``ZeroPad1d``, ``ReflectionPad1d`` and
``ReplicationPad1d``."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from torchstreamer.errors import NotStreamableError
from torchstreamer.streams.conv import check_padding_choice
from torchstreamer.streams.leaf import layer_label
from torchstreamer.streams.window import WindowStream

__all__ = ["Pad1dStream"]

PadModule = Union[nn.ConstantPad1d, nn.ZeroPad1d, nn.ReflectionPad1d, nn.ReplicationPad1d]
_MODES = {
    nn.ConstantPad1d: "constant", nn.ZeroPad1d: "constant", nn.ReflectionPad1d: "reflect",
    nn.ReplicationPad1d: "replicate",
}  # fmt: skip


class Pad1dStream(WindowStream):
    """Streams a 1D padding layer: the left padding comes with the first samples it needs, the
    right padding with ``final=True``.

    Args:
        pad: the padding layer.
        padding: ``"valid"`` (default) treats the layer as padding 0, an identity, as module
            streams treat every layer's padding; ``"model"`` pads as the layer does.
        path: the layer's path in a model, used in error messages.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> pad = torch.nn.ReflectionPad1d((2, 1))
        >>> stream = pts.Pad1dStream(pad, padding="model")
        >>> x = torch.randn(1, 6)
        >>> stream(x[:, :2]) is None  # the left padding mirrors x[1:3]: it needs x[2]
        True
        >>> torch.equal(torch.cat([stream(x[:, 2:4]), stream(x[:, 4:], final=True)], -1), pad(x))
        True
    """

    def __init__(self, pad: PadModule, padding: str = "valid", *, path: str = "") -> None:
        mode = next((m for t, m in _MODES.items() if isinstance(pad, t)), None)
        if mode is None:
            raise TypeError(f"Pad1dStream streams a 1D padding layer, not {type(pad).__name__}.")
        check_padding_choice(padding)
        label = layer_label(pad, path)
        left, right = (int(p) for p in pad.padding)
        if left < 0 or right < 0:
            raise NotStreamableError(
                f"{label} has negative padding {pad.padding}, which crops the signal; crop with "
                "a slice in a registered streamer or use non-negative padding."
            )
        if padding == "valid":
            left = right = 0
        value = float(getattr(pad, "value", 0.0))
        super().__init__(label, -1, 1, 1, left, right, mode, value)
        self.module = pad
        self.padding = padding

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}"

    def _compute(self, x: Tensor, first: int, count: int, total: int) -> Tensor:
        return x

    @torch.jit.unused
    def output_length(self, n: int) -> int:
        return n + self._left + self._right if n > 0 else 0
