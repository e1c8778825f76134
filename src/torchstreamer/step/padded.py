"""`PaddedConv1d`: a causal ``Conv1d`` whose output is as long as its input."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PaddedConv1d"]


class PaddedConv1d(nn.Conv1d):
    """``Conv1d`` with ``(kernel_size - 1) * dilation`` zeros of left padding.

    Output ``t`` reads inputs ``t - (kernel_size-1)*dilation .. t``: the layer is causal and keeps
    the length, so the last output equals the only output of the unpadded ``Conv1d`` on the same
    window. Its parameters are a ``Conv1d``'s, so a plain ``nn.Conv1d`` state dict loads into it.

    Args:
        in_channels: input channels, as for ``nn.Conv1d``.
        out_channels: output channels.
        kernel_size: taps of the filter.
        dilation: spacing between taps.
        groups: channel groups.
        bias: whether to add a learnable bias.

    Shape:
        ``[B, C_in, T]`` or ``[C_in, T]`` to ``[B, C_out, T]`` or ``[C_out, T]``.

    Example:
        >>> import torch
        >>> import torchstreamer as pts
        >>> conv = pts.PaddedConv1d(2, 3, 3)
        >>> x = torch.randn(1, 2, 10)
        >>> conv(x).shape
        torch.Size([1, 3, 10])
        >>> plain = torch.nn.Conv1d(2, 3, 3)
        >>> plain.load_state_dict(conv.state_dict())
        <All keys matched successfully>
        >>> torch.allclose(conv(x)[..., -1], plain(x[..., -3:])[..., 0])
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, dilation=dilation, groups=groups, bias=bias
        )
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(F.pad(input, [self.left_padding, 0]), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, left_padding={self.left_padding}"
