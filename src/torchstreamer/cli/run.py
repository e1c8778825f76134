"""``torchstreamer run MODEL IN OUT --block N``: stream an audio file through the model block by
block and write the output (WAV/FLAC through ``soundfile``, the ``audio`` extra)."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import torch

from torchstreamer.cli.show import message, progress
from torchstreamer.cli.spec import CliError, LoadedModel
from torchstreamer.errors import NotStreamableError
from torchstreamer.graph.stream import stream

__all__ = ["run_file"]


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as error:
        raise CliError(
            "Reading and writing audio needs soundfile: pip install 'torch-streamer[audio]'."
        ) from error
    return soundfile


def run_file(
    loaded: LoadedModel,
    source: Path,
    target: Path,
    block: int,
    sample_rate: Optional[int] = None,
) -> int:
    """Stream ``source`` through the model in blocks of ``block`` frames; write ``target``.

    A model that takes as many channels as the file gets them all; a one-channel model runs
    each channel of the file as its own stream.

    Raises:
        CliError: missing file, wrong sample rate or channel count, bad block size.
    """
    soundfile = _soundfile()
    if block < 1:
        raise CliError(f"--block must be at least 1, not {block}.")
    if not source.exists():
        raise CliError(f"No such file: {source}.")
    if not target.parent.is_dir():
        raise CliError(f"Cannot write {target}: no such directory {target.parent}.")
    if target.suffix.lstrip(".").upper() not in soundfile.available_formats():
        raise CliError(
            f"Cannot write {target}: use an audio file name such as out.wav or out.flac "
            f"(formats: {', '.join(sorted(soundfile.available_formats()))})."
        )
    try:
        data, rate = soundfile.read(str(source), dtype="float32", always_2d=True)
    except RuntimeError as error:  # soundfile's LibsndfileError is a RuntimeError
        raise CliError(f"Cannot read {source} as audio ({error}).") from error
    if data.shape[0] == 0:
        raise CliError(f"{source} holds no audio frames.")
    expected = sample_rate or loaded.sample_rate
    if expected is not None and rate != expected:
        raise CliError(
            f"{source} is sampled at {rate} Hz but {loaded.name} expects {expected} Hz; "
            "resample the file first."
        )
    example = loaded.example
    channels = int(example.shape[-2]) if example.dim() >= 2 else 1
    file_channels = data.shape[1]
    signal = torch.from_numpy(data.T.copy())  # [channels, frames]
    batch = [1] if example.dim() >= 3 else []  # one signal, whatever the example's batch
    if channels == file_channels:
        inputs = [signal.reshape(*batch, channels, -1)]
    elif channels == 1:
        inputs = [signal[c].reshape(*batch, 1, -1) for c in range(file_channels)]
    else:
        raise CliError(
            f"{loaded.name} takes {channels} channels but {source} has {file_channels}; "
            "give it a file with as many channels, or a one-channel model."
        )
    try:
        streams = [stream(loaded.model, example) for _ in inputs]
    except NotStreamableError as error:
        raise CliError(f"{loaded.name} cannot stream.\n{error}", code=1) from error
    outputs: list[list[torch.Tensor]] = [[] for _ in inputs]
    frames = signal.shape[-1]
    began = time.perf_counter()
    with torch.inference_mode():
        for start in progress(list(range(0, frames, block)), f"streaming {source.name}"):
            for s, x, out in zip(streams, inputs, outputs):
                y = s(x[..., start : start + block])
                if y is not None:
                    out.append(y[0] if isinstance(y, tuple) else y)
        for s, x, out in zip(streams, inputs, outputs):
            y = s(x[..., :0], final=True)
            if y is not None:
                out.append(y[0] if isinstance(y, tuple) else y)
    elapsed = time.perf_counter() - began
    pieces = [torch.cat(out, -1) for out in outputs]
    result = torch.cat([p.reshape(-1, p.shape[-1]) for p in pieces], 0)  # [channels, frames]
    out_rate = Fraction(rate) * streams[0].rate
    if out_rate.denominator != 1:
        raise CliError(f"The output rate {float(out_rate)} Hz is not a whole number.", code=1)
    soundfile.write(str(target), result.T.numpy(), int(out_rate))
    latency = streams[0].latency
    message(
        f"{source} -> {target}: {file_channels} channel(s), {frames} frames at {rate} Hz in "
        f"blocks of {block}; wrote {result.shape[0]} channel(s), {result.shape[1]} frames at "
        f"{int(out_rate)} Hz"
    )
    message(
        f"real-time factor {elapsed / (frames / rate):.4f} ({elapsed:.2f} s for "
        f"{frames / rate:.2f} s of audio); latency {latency} samples "
        f"({1000 * latency / rate:.2f} ms) plus one block ({1000 * block / rate:.2f} ms)"
    )
    return 0
