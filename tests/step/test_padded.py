"""PaddedConv1d is a causal, length-keeping Conv1d that loads Conv1d weights and streams."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, run_stream, split_lengths


@given(
    kernel=st.integers(1, 6), dilation=st.integers(1, 3), groups=st.integers(1, 2),
    bias=st.booleans(), length=st.integers(1, 40),
)  # fmt: skip
def test_padded_conv_is_causal_and_keeps_the_length(
    kernel: int, dilation: int, groups: int, bias: bool, length: int
) -> None:
    conv = pts.PaddedConv1d(2 * groups, 3 * groups, kernel, dilation, groups, bias)
    plain = nn.Conv1d(2 * groups, 3 * groups, kernel, dilation=dilation, groups=groups, bias=bias)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 2 * groups, length)
    y = conv(x)
    assert y.shape[-1] == length
    span = dilation * (kernel - 1) + 1
    padded = torch.cat([torch.zeros(2, 2 * groups, span - 1), x], -1)
    torch.testing.assert_close(y, plain(padded))
    # causal: changing the last input changes only the last output
    changed = x.clone()
    changed[..., -1] += 1
    assert torch.equal(conv(changed)[..., :-1], y[..., :-1])


@given(sizes=block_sizes())
def test_a_padded_conv_network_streams_with_zero_latency(sizes: list[int]) -> None:
    class Causal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = pts.PaddedConv1d(3, 8, 3)
            self.conv2 = pts.PaddedConv1d(8, 1, 3, dilation=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(torch.relu(self.conv1(x)))

    model = Causal().eval()
    stream = pts.stream(model, torch.randn(1, 3, 64))
    assert stream.latency == 0
    assert stream.receptive_field == 7
    x = torch.randn(1, 3, 50)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, split_lengths(50, sizes)), model(x))


@given(sizes=block_sizes(), scripted=st.booleans())
def test_module_streams_honour_the_left_padding(sizes: list[int], scripted: bool) -> None:
    net = nn.Sequential(pts.PaddedConv1d(2, 3, 3, dilation=2), nn.ReLU(), pts.PaddedConv1d(3, 1, 2))
    stream = pts.Sequential1dStream(net.eval(), padding="model")
    if scripted:
        stream = torch.jit.script(stream)
    x = torch.randn(1, 2, 45)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, split_lengths(45, sizes)), net(x))
