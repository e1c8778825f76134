"""The frame code's window products (`window_product`, `held_product`) against `F.conv1d`, for
one and many rows, few and many outputs per call (each size takes its own path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from torchstreamer.step.frames import held_product, window_product


@given(
    batch=st.integers(0, 3),
    channels=st.integers(1, 6),
    out_channels=st.integers(1, 6),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    length=st.sampled_from([12, 70, 200]),
    keep=st.integers(0, 9),
    bias=st.booleans(),
    time_major_input=st.booleans(),
)
def test_window_products_equal_a_convolution(
    batch: int, channels: int, out_channels: int, kernel: int, stride: int, dilation: int,
    length: int, keep: int, bias: bool, time_major_input: bool,
) -> None:  # fmt: skip
    span = dilation * (kernel - 1) + 1
    keep = min(keep, span - 1)  # the frame code holds less than a window
    shape = [batch] if batch else []
    signal = torch.randn(*shape, channels, keep + length + span)
    weight = torch.randn(out_channels, channels, kernel)
    b = torch.randn(out_channels) if bias else None
    expected = F.conv1d(signal if batch else signal[None], weight, b, stride, 0, dilation)
    expected = expected if batch else expected[0]
    taps = weight.permute(2, 1, 0).contiguous()  # [K, C, O]
    # time-major rows: a transposed view (as the frame code passes them) or contiguous
    rows = signal.transpose(-1, -2)
    rows = rows.contiguous() if time_major_input else rows
    whole = window_product(rows, taps, b, stride, dilation)
    torch.testing.assert_close(whole.transpose(-1, -2), expected, rtol=1e-5, atol=1e-5)
    held, rest = rows[..., :keep, :], rows[..., keep:, :]
    split = held_product(held.contiguous(), rest, taps, b, stride, dilation)
    torch.testing.assert_close(split.transpose(-1, -2), expected, rtol=1e-5, atol=1e-5)
