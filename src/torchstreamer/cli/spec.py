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

from torchstreamer.cli.archive import NotAnArchiveError, UnsafeArchiveError, check_archive
from torchstreamer.cli.show import count
from torchstreamer.examples import EXAMPLES, load_example

__all__ = ["SAFETY", "USAGE", "CliError", "LoadedModel", "first_layer_channels", "load_model"]

USAGE = (
    "MODEL is package.module:factory (a callable returning the module, or the module and an "
    "example input), a file saved with torch.export.save, or --example NAME for a built-in "
    f"example ({', '.join(sorted(EXAMPLES))})"
)

SAFETY = (
    "package.module:factory imports the module and calls the factory: it runs that code, as "
    "python does. A .pt2 file is checked before loading: one that needs pickle, compiled code "
    "or eval to load (pickled weights, constants or example inputs, AOTInductor libraries, "
    "older layouts) is refused unless you pass --trust-file, which loads it with "
    "torch.export.load and so runs whatever code it carries; pass it only for files you trust"
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
    spec: Optional[str],
    example: Optional[str],
    channels: Optional[int] = None,
    length: int = 4096,
    trust_file: bool = False,
) -> LoadedModel:
    """Load the MODEL of a command.

    ``channels`` sets the example input ``[1, channels, length]`` when a factory returns only a
    module; without it, the channel count is the ``in_channels`` of the model's first
    convolution (or ``in_features`` of its first linear layer), or 1. ``trust_file`` loads a
    ``.pt2`` file even when loading it runs code from it (pickle, compiled code, eval).

    Raises:
        CliError: the spec is malformed, names nothing, the factory fails, or the file is
            missing, malformed or unsafe to load.
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
        return _load_exported(path, trust_file)
    if ":" not in spec:
        raise CliError(f"{spec!r} is neither a file nor package.module:factory. {USAGE}.")
    return _load_factory(spec, channels, length)


def _load_exported(path: Path, trust_file: bool = False) -> LoadedModel:
    if not path.exists():
        raise CliError(f"No such file: {path}.")
    if not path.is_file():
        raise CliError(f"{path} is not a file.")
    if not trust_file:
        try:
            check_archive(path)
        except NotAnArchiveError as error:
            raise CliError(
                f"{path} is not a file saved with torch.export.save ({error})."
            ) from error
        except UnsafeArchiveError as error:
            raise CliError(
                f"{path} was not loaded: {error}, so loading it would run code from the file. "
                "Pass --trust-file to load it anyway, only if you trust where it comes from."
            ) from error
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # torch.export.load raises several types
        raise CliError(f"{path} is not a file saved with torch.export.save ({error}).") from error
    args = program.example_inputs[0] if program.example_inputs else ()
    if not args or not isinstance(args[0], Tensor):
        raise CliError(f"{path} carries no example input; export the model with one.")
    return LoadedModel(path.stem, program.module(), args[0])


def _load_factory(spec: str, channels: Optional[int], length: int) -> LoadedModel:
    module_name, _, attribute = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` has it
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CliError(f"Cannot import {module_name!r} ({_one_line(error)}). {USAGE}.") from error
    except Exception as error:  # the user's module may raise anything while it is imported
        raise CliError(
            f"importing {module_name} for {spec} raised {type(error).__name__}: {_one_line(error)}"
        ) from error
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise CliError(f"{module_name!r} has no callable {attribute!r}. {USAGE}.")
    try:
        made = factory()
    except Exception as error:  # the user's factory may raise anything
        raise CliError(
            f"the factory {spec} raised {type(error).__name__}: {_one_line(error)}"
        ) from error
    model, example = made if isinstance(made, tuple) else (made, None)
    if not isinstance(model, nn.Module):
        raise CliError(f"{spec} returned {type(model).__name__}, not an nn.Module.")
    if example is not None:
        if not isinstance(example, Tensor):
            raise CliError(f"{spec} returned an example of type {type(example).__name__}.")
        return LoadedModel(attribute, model.eval(), example)
    first = first_layer_channels(model)
    example = torch.randn(1, channels or (first[1] if first else 1), length)
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    except Exception as error:  # the model refuses the example: say what would fit
        shape = list(example.shape)
        if first is not None and first[1] != example.shape[1]:
            name, wanted = first
            raise CliError(
                f"the model takes {count(wanted, 'channel')} (its first layer {name} has "
                f"{count(wanted, 'input channel')}) but the example input has "
                f"{example.shape[1]}, {shape}; pass --channels {wanted}."
            ) from error
        if first is not None:  # the channels fit its first layer: the model itself raised
            raise CliError(
                f"the model raised {type(error).__name__}: {_one_line(error)} (run offline on "
                f"an example input shaped {shape}); fix the model, or return an example that "
                "it accepts from the factory."
            ) from error
        raise CliError(
            f"{spec} fails on an example input of shape {shape} ({type(error).__name__}: "
            f"{_one_line(error)}); pass --channels N or return an example from the factory."
        ) from error
    return LoadedModel(attribute, model, example)


def first_layer_channels(model: nn.Module) -> Optional[tuple[str, int]]:
    """The name and input channel count of the first layer that tells (in module order): a
    ``Conv1d`` or ``ConvTranspose1d`` (``in_channels``) or a ``Linear`` (``in_features``).

    Example:
        >>> from torch import nn
        >>> first_layer_channels(nn.Sequential(nn.ReLU(), nn.Conv1d(2, 4, 3), nn.Conv1d(4, 1, 1)))
        ("'1' (Conv1d)", 2)
    """
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            return f"{name or 'the model'!r} ({type(module).__name__})", module.in_channels
        if isinstance(module, nn.Linear):
            return f"{name or 'the model'!r} ({type(module).__name__})", module.in_features
    return None


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"
