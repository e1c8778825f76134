"""The library's one family of errors.

Every message is a sentence that names the layer (its path in the model), what was found and
what the user can do about it.

Example:
    >>> import torch
    >>> import torchstreamer as pts
    >>> stream = pts.Conv1dStream(torch.nn.Conv1d(4, 8, 3))
    >>> try:
    ...     stream(torch.randn(3, 10))
    ... except pts.StreamInputError as error:
    ...     print(error)
    Conv1d stream expects 4 channels (dim -2) but the block has 3 (shape [3, 10]).
"""

from __future__ import annotations

__all__ = ["NotStreamableError", "StreamError", "StreamInputError"]


class StreamError(Exception):
    """Base class of every error raised by torchstreamer."""


class NotStreamableError(StreamError, TypeError):
    """A module (or op) cannot be streamed exactly; raised when the stream is built."""


class StreamInputError(StreamError, ValueError):
    """A block given to a stream is invalid; the stream's state is left as it was."""
