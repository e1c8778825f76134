"""``torchstreamer run MODEL IN OUT --block N``: stream an audio file through the model block by
block and write the output (WAV/FLAC through ``soundfile``, the ``audio`` extra).

The output is written as 32-bit float where its format can hold it (WAV, AIFF, CAF, W64, RF64,
AU, ...), so values outside [-1, 1], such as the energies in dB of the ``filterbank`` example,
come out as they are. Formats without a float subtype (FLAC, OGG, MP3, ...) and a PCM
``--subtype`` hold [-1, 1]: output outside it is refused, and nothing is written."""

from __future__ import annotations

import copy
import io
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import torch

from torchstreamer.cli.show import message, progress, stage
from torchstreamer.cli.spec import CliError, LoadedModel
from torchstreamer.errors import NotStreamableError
from torchstreamer.graph.stream import stream

__all__ = ["output_format", "run_file"]

_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as error:
        raise CliError(
            "Reading and writing audio needs soundfile: pip install 'torch-streamer[audio]'."
        ) from error
    return soundfile


def output_format(target: Path, subtype: Optional[str] = None) -> tuple[str, str]:
    """The soundfile format (from the extension) and subtype that ``target`` is written in:
    ``subtype``, or else ``FLOAT`` where the format has it, or else the format's default.

    Raises:
        CliError: no soundfile, no such directory, an extension that is not an audio format
            soundfile writes, or a subtype that the format does not have.
    """
    soundfile = _soundfile()
    if not target.parent.is_dir():
        raise CliError(f"Cannot write {target}: no such directory {target.parent}.")
    formats = soundfile.available_formats()
    extension = target.suffix.lstrip(".")
    if extension.upper() not in formats:
        extensions = ", ".join("." + name.lower() for name in sorted(formats))
        raise CliError(
            f"Cannot write {target}: use an audio file name such as out.wav or out.flac; the "
            f"extensions soundfile writes are {extensions}."
        )
    file_format = extension.upper()
    subtypes = list(soundfile.available_subtypes(file_format))
    if subtype is None:
        subtype = "FLOAT" if "FLOAT" in subtypes else soundfile.default_subtype(file_format)
        return file_format, subtype or subtypes[0]
    if subtype.upper() not in subtypes:
        raise CliError(
            f"A .{extension} file has no subtype {subtype}; pass --subtype as one of "
            f"{', '.join(subtypes)}, or leave it out."
        )
    return file_format, subtype.upper()


def _check_writable(
    soundfile: Any, target: Path, file_format: str, subtype: str, rate: int, channels: int
) -> None:
    """Refuse a rate or channel count that the format cannot hold, before ``target`` is
    touched (an open that fails leaves an empty file)."""
    try:
        soundfile.SoundFile(io.BytesIO(), "w", rate, channels, subtype, format=file_format).close()
    except (RuntimeError, TypeError, ValueError) as error:  # LibsndfileError is a RuntimeError
        reason = str(getattr(error, "error_string", error)).replace("Error : ", "").rstrip(".")
        what = f"{channels} channels" if channels > 1 else "audio"
        raise CliError(
            f"Cannot write {what} at {rate} Hz to {target} as {file_format} {subtype} "
            f"({reason}); name the output .wav instead."
        ) from error


def _check_range(
    soundfile: Any, result: torch.Tensor, name: str, target: Path, file_format: str, subtype: str
) -> None:
    """Refuse output that ``subtype`` would clip (all but float hold only [-1, 1])."""
    if subtype in _FLOAT_SUBTYPES or result.numel() == 0:
        return
    peak = float(result.abs().max())
    if peak <= 1:  # NaN is not
        return
    remedy = (
        "leave out --subtype (the file is then 32-bit float) or pass --subtype FLOAT"
        if "FLOAT" in soundfile.available_subtypes(file_format)
        else "name the output .wav instead, which is written as 32-bit float"
    )
    raise CliError(
        f"The output of {name} reaches {peak:g}, outside the [-1, 1] that {subtype} in "
        f"{target} holds, so it would be clipped; nothing was written. To keep the values, "
        f"{remedy}.",
        code=1,
    )


def run_file(
    loaded: LoadedModel,
    source: Path,
    target: Path,
    block: int,
    sample_rate: Optional[int] = None,
    began: Optional[float] = None,
    subtype: Optional[str] = None,
) -> int:
    """Stream ``source`` through the model in blocks of ``block`` frames; write ``target``.

    A model that takes as many channels as the file gets them all; a one-channel model runs
    each channel of the file as its own stream, and the output holds the model's output
    channels for the file's first channel, then those for its second, and so on (a model with
    ``C`` output channels on a file of ``N``: ``N * C`` channels, channel ``n * C + c`` is
    output channel ``c`` of file channel ``n``). The real-time factor is the wall time since
    ``began`` (a ``time.perf_counter()`` value: the start of the command) over the duration of
    the audio. ``target`` is written in the subtype that :func:`output_format` picks; output
    that the subtype cannot hold is refused (see the module's docstring).

    Raises:
        CliError: missing file, wrong sample rate or channel count, bad block size, an output
            name or subtype that cannot be written (all before streaming), output outside
            [-1, 1] for a subtype that holds only that (exit code 1, nothing written).
    """
    if began is None:
        began = time.perf_counter()
    soundfile = _soundfile()
    if block < 1:
        raise CliError(f"--block must be at least 1, not {block}.")
    if not source.exists():
        raise CliError(f"No such file: {source}.")
    file_format, subtype = output_format(target, subtype)
    try:
        with stage(f"reading {source.name}"):
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
        with stage(f"analysing {loaded.name}"):
            first = stream(loaded.model, example)  # one capture; a copy for each channel
            streams = [first, *(copy.deepcopy(first) for _ in inputs[1:])]
    except NotStreamableError as error:
        raise CliError(f"{loaded.name} cannot stream.\n{error}", code=1) from error
    out_rate = Fraction(rate) * first.rate
    if out_rate.denominator != 1:
        raise CliError(f"The output rate {float(out_rate)} Hz is not a whole number.", code=1)
    _check_writable(soundfile, target, file_format, subtype, int(out_rate), 1)
    outputs: list[list[torch.Tensor]] = [[] for _ in inputs]
    frames = signal.shape[-1]
    streaming = time.perf_counter()
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
    streamed = time.perf_counter() - streaming
    pieces = [torch.cat(out, -1) for out in outputs]
    result = torch.cat([p.reshape(-1, p.shape[-1]) for p in pieces], 0)  # [channels, frames]
    _check_range(soundfile, result, loaded.name, target, file_format, subtype)
    _check_writable(soundfile, target, file_format, subtype, int(out_rate), result.shape[0])
    with stage(f"writing {target.name}"):
        soundfile.write(str(target), result.T.numpy(), int(out_rate), subtype, format=file_format)
    with stage(f"measuring the latency of {loaded.name}"):
        latency = streams[0].latency
    elapsed = time.perf_counter() - began
    duration = frames / rate
    message(
        f"{source} -> {target}: {file_channels} channel(s), {frames} frames at {rate} Hz in "
        f"blocks of {block}; wrote {result.shape[0]} channel(s), {result.shape[1]} frames at "
        f"{int(out_rate)} Hz"
    )
    message(
        f"real-time factor {elapsed / duration:.4f}: {elapsed:.2f} s of wall time from the "
        f"start of the command to this line, for {duration:.2f} s of audio (loading and "
        f"analysing the model, reading, streaming and writing the audio); streaming alone took "
        f"{streamed:.2f} s (real-time factor {streamed / duration:.4f})"
    )
    message(
        f"latency {latency} samples ({1000 * latency / rate:.2f} ms) plus one block "
        f"({1000 * block / rate:.2f} ms)"
    )
    return 0
