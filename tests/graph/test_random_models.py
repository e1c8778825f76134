"""Random stacks of the layers real models use (convolutions padded with zeros, reflection or
replication, strided and dilated; transposed convolutions; LSTMs; residual joins), streamed by
``torchstreamer.stream`` in random blocks: exact, or refused when the stream is built."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, fewer, run_stream, split_lengths

Layer = tuple[str, dict[str, int]]  # a kind and its constructor's keyword arguments


@st.composite
def layer_stacks(draw: st.DrawFn) -> list[Layer]:
    layers: list[Layer] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "transposed", "lstm", "residual"]))
        if kind == "conv":
            kernel, dilation = draw(st.integers(1, 5)), draw(st.integers(1, 3))
            stride = draw(st.sampled_from([1, 1, 2]))
            span = dilation * (kernel - 1)
            pad = draw(st.sampled_from([0, span // 2, span] if stride == 1 else [0, 1]))
            mode = draw(st.sampled_from(["zeros", "reflect", "replicate"])) if pad else "zeros"
            args = {"kernel_size": kernel, "dilation": dilation, "stride": stride, "padding": pad}
            layers.append((f"conv:{mode}", {**args, "out_channels": draw(st.integers(1, 4))}))
        elif kind == "transposed":
            stride = draw(st.integers(1, 3))
            kernel = stride * draw(st.integers(1, 3))
            pad = draw(st.sampled_from([0, (kernel - stride) // 2]))
            args = {"kernel_size": kernel, "stride": stride, "padding": pad}
            layers.append((kind, {**args, "out_channels": draw(st.integers(1, 3))}))
        else:
            layers.append((kind, {"batch_first": int(draw(st.booleans()))}))
    return layers


class Stack(nn.Module):
    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.kinds = [kind.split(":")[0] for kind, _ in layers]
        self.layers = nn.ModuleList()
        channels = 2
        for kind, args in layers:
            if kind.startswith("conv"):
                mode = kind.split(":")[1]
                self.layers.append(nn.Conv1d(channels, padding_mode=mode, **args))
                channels = args["out_channels"]
            elif kind == "transposed":
                self.layers.append(nn.ConvTranspose1d(channels, **args))
                channels = args["out_channels"]
            elif kind == "lstm":
                self.layers.append(
                    nn.LSTM(channels, channels, batch_first=bool(args["batch_first"]))
                )
            else:
                self.layers.append(nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for kind, layer in zip(self.kinds, self.layers):
            if kind == "lstm":
                if layer.batch_first:
                    x = layer(x.transpose(1, 2))[0].transpose(1, 2)
                else:
                    x = layer(x.permute(2, 0, 1))[0].permute(1, 2, 0)
            elif kind == "residual":
                x = x + torch.tanh(layer(x))
            else:
                x = F.elu(layer(x))
        return x


@fewer(25)
@given(
    layers=layer_stacks(),
    sizes=block_sizes(),
    length=st.integers(20, 120),
    batch=st.integers(1, 2),
)
def test_random_layer_stacks_stream_exactly_or_are_refused(
    layers: list[Layer], sizes: list[int], length: int, batch: int
) -> None:
    torch.manual_seed(0)
    model = Stack(layers).eval()
    x = torch.randn(batch, 2, length)
    try:
        with torch.no_grad():
            model(torch.randn(1, 2, 64))
            expected = model(x)
    except RuntimeError:  # a stack PyTorch itself cannot run on these lengths
        return
    try:
        stream = pts.stream(model, torch.randn(1, 2, 64))
    except pts.NotStreamableError:
        return  # refused when built, with its reason: allowed
    with torch.no_grad():
        assert_matches(run_stream(stream, x, split_lengths(length, sizes)), expected)
