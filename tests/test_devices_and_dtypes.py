"""Streams follow the module's dtype and device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import run_stream

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def network() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1, padding_mode="reflect"), nn.GELU(),
        nn.ConvTranspose1d(4, 4, 4, stride=2, padding=1), nn.AvgPool1d(3, 2, 1, ceil_mode=True),
        pts.Residual1d(nn.Conv1d(4, 4, 3)), nn.ReplicationPad1d(2), nn.MaxPool1d(2),
    ).eval()  # fmt: skip


@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)],
)
@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
def test_dtype(dtype: torch.dtype, tolerance: float, script: bool) -> None:
    net = network().to(dtype)
    stream = pts.Sequential1dStream(net, "model")
    if script:
        stream = torch.jit.script(stream)
    x = torch.randn(3, 2, 45, dtype=dtype)
    with torch.no_grad():
        y = run_stream(stream, x, [1, 0, 4, 9])
        expected = net(x)
    assert y is not None
    assert y.dtype == dtype
    torch.testing.assert_close(y, expected, rtol=tolerance, atol=tolerance)


@CUDA
@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
def test_cuda(script: bool) -> None:
    net = network().cuda()
    stream = pts.Sequential1dStream(net, "model")
    if script:
        stream = torch.jit.script(stream)
    x = torch.randn(3, 2, 300, device="cuda")
    with torch.no_grad():
        y = run_stream(stream, x, [1, 0, 17, 64])
        expected = net(x)
    assert y is not None
    assert y.device.type == "cuda"
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(pts.StreamInputError, match="is on cuda:0 but the block is on cpu"):
        stream(x.cpu()) if not script else stream.forward(x.cpu())


@CUDA
def test_stream_moves_with_its_module() -> None:
    conv = nn.Conv1d(1, 1, 3)
    stream = pts.Conv1dStream(conv).cuda()
    x = torch.randn(1, 20, device="cuda")
    torch.testing.assert_close(run_stream(stream, x, [3]), conv(x))
