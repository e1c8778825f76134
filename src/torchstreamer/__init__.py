"""torch-streamer: exact streaming inference of PyTorch networks over 1D signals.

A stream takes a signal block by block (any block size, 0 included) and returns outputs whose
concatenation equals what the offline model returns for the whole signal.

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> conv = torch.nn.Conv1d(2, 3, 5, stride=2)
    >>> stream = pts.Conv1dStream(conv)
    >>> x = torch.randn(2, 40)
    >>> y = torch.cat([stream(x[:, i : i + 9]) for i in range(0, 40, 9)], -1)
    >>> torch.allclose(y, conv(x), atol=1e-6)
    True
"""

from torchstreamer import _torch  # noqa: F401  (first: imports torch without its NumPy warning)
from torchstreamer.base import BaseStream
from torchstreamer.errors import NotStreamableError, StreamError, StreamInputError
from torchstreamer.graph.stream import GraphStream, stream
from torchstreamer.serve.pool import StreamPool
from torchstreamer.serve.triton import export_triton
from torchstreamer.step.blocks import StepStream
from torchstreamer.step.export import export_onnx, export_step, read_onnx_state
from torchstreamer.step.padded import PaddedConv1d
from torchstreamer.step.transform import StepModel, streaming_transform
from torchstreamer.streams.containers import Residual1d, Residual1dStream, Sequential1dStream
from torchstreamer.streams.conv import Conv1dStream, ConvTranspose1dStream
from torchstreamer.streams.elementwise import Elementwise1dStream
from torchstreamer.streams.padding import Pad1dStream
from torchstreamer.streams.pool import Pool1dStream
from torchstreamer.streams.registry import create_stream, register_streamer, unregister_streamer

__all__ = [
    "BaseStream",
    "Conv1dStream",
    "ConvTranspose1dStream",
    "Elementwise1dStream",
    "GraphStream",
    "NotStreamableError",
    "Pad1dStream",
    "PaddedConv1d",
    "Pool1dStream",
    "Residual1d",
    "Residual1dStream",
    "Sequential1dStream",
    "StepModel",
    "StepStream",
    "StreamError",
    "StreamInputError",
    "StreamPool",
    "create_stream",
    "export_onnx",
    "export_step",
    "export_triton",
    "read_onnx_state",
    "register_streamer",
    "stream",
    "streaming_transform",
    "unregister_streamer",
]

__version__ = "0.1.0"
