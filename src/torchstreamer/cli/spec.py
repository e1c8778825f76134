"""What the CLI's MODEL argument names: ``package.module:factory``, a file saved with
``torch.export.save``, or a built-in example (``--example NAME``)."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from torchstreamer.examples import EXAMPLES, load_example

__all__ = ["CliError", "LoadedModel", "load_model"]

USAGE = (
    "MODEL is package.module:factory (a callable returning the module, or the module and an "
    "example input), a file saved with torch.export.save, or --example NAME for a built-in "
    f"example ({', '.join(sorted(EXAMPLES))})"
)


class CliError(Exception):
    """An error the CLI reports in one sentence and exits with ``code`` (2: the command line
    or a file is wrong; 1: the model cannot do what was asked)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class LoadedModel:
    """A model ready to stream, with an example input (time on the last axis)."""

    name: str
    model: nn.Module
    example: Tensor
    sample_rate: Optional[int] = None
    module_padding: str = "model"

    def signal(self, length: int, seed: int = 0) -> Tensor:
        """A random input shaped like the example, ``length`` samples long."""
        generator = torch.Generator().manual_seed(seed)
        shape = [*self.example.shape[:-1], length]
        return torch.randn(shape, generator=generator, dtype=self.example.dtype)


def load_model(
    spec: Optional[str], example: Optional[str], channels: int = 1, length: int = 4096
) -> LoadedModel:
    """Load the MODEL of a command.

    ``channels`` sets the example input ``[1, channels, length]`` when a factory returns only a
    module.

    Raises:
        CliError: the spec is malformed, names nothing, or the file is missing.
    """
    if example is not None:
        if spec is not None:
            raise CliError(f"Give either MODEL or --example, not both. {USAGE}.")
        try:
            loaded = load_example(example)
        except KeyError as error:
            raise CliError(str(error.args[0])) from error
        return LoadedModel(
            example, loaded.model, loaded.input(length), loaded.sample_rate, loaded.module_padding
        )
    if spec is None:
        raise CliError(f"No model given. {USAGE}.")
    path = Path(spec)
    if path.suffix in (".pt2", ".pt", ".ep") or path.exists():
        return _load_exported(path)
    if ":" not in spec:
        raise CliError(f"{spec!r} is neither a file nor package.module:factory. {USAGE}.")
    return _load_factory(spec, channels, length)


def _load_exported(path: Path) -> LoadedModel:
    if not path.exists():
        raise CliError(f"No such file: {path}.")
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # torch.export.load raises several types
        raise CliError(f"{path} is not a file saved with torch.export.save ({error}).") from error
    args = program.example_inputs[0] if program.example_inputs else ()
    if not args or not isinstance(args[0], Tensor):
        raise CliError(f"{path} carries no example input; export the model with one.")
    return LoadedModel(path.stem, program.module(), args[0])


def _load_factory(spec: str, channels: int, length: int) -> LoadedModel:
    module_name, _, attribute = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` has it
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CliError(f"Cannot import {module_name!r} ({error}). {USAGE}.") from error
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise CliError(f"{module_name!r} has no callable {attribute!r}. {USAGE}.")
    made = factory()
    model, example = made if isinstance(made, tuple) else (made, None)
    if not isinstance(model, nn.Module):
        raise CliError(f"{spec} returned {type(model).__name__}, not an nn.Module.")
    if example is None:
        example = torch.randn(1, channels, length)
    if not isinstance(example, Tensor):
        raise CliError(f"{spec} returned an example of type {type(example).__name__}.")
    return LoadedModel(attribute, model.eval(), example)
