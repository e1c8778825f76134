"""EnCodec, Kyutai's Mimi (moshi), DAC and asteroid stream as shipped: the packages' own code,
unpatched, with random weights and narrow channels. Each model streams exactly in blocks of
its hop, of 160 samples, of random sizes with empty blocks, of 1 where affordable, and ends
with ``final=True``; causal ones also run as step models, or are refused for the true reason."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, run_stream, split_lengths

# the packages warn about their own choices (asteroid switches a causal norm, weight_norm's
# deprecation) and torch.export about their attribute tensors: not this library's to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@dataclass(frozen=True)
class Case:
    make: Callable[[], nn.Module]
    example: tuple[int, ...]  # an input the model accepts
    length: int  # of the streamed signal (a length the model accepts)
    hop: int  # input samples per output frame (1 for decoders: one latent frame)
    causal: bool
    refusal: Optional[str] = None  # why streaming_transform refuses a causal model


def _encodec(decoder: bool, causal: bool) -> nn.Module:
    from encodec.modules import SEANetDecoder, SEANetEncoder

    kind = SEANetDecoder if decoder else SEANetEncoder
    return kind(channels=1, dimension=8, n_filters=4, ratios=[4, 2], norm="weight_norm",
                causal=causal, lstm=2)  # fmt: skip


def _moshi(decoder: bool) -> nn.Module:
    from moshi.models.loaders import _seanet_kwargs
    from moshi.modules import SEANetDecoder, SEANetEncoder

    kind = SEANetDecoder if decoder else SEANetEncoder
    return kind(**{**_seanet_kwargs, "n_filters": 4, "dimension": 8})


def _dac(decoder: bool) -> nn.Module:
    from dac.model.dac import Decoder, Encoder

    return Decoder(16, 16, [4, 2]) if decoder else Encoder(d_model=8, strides=[2, 4], d_latent=16)


def _conv_tasnet() -> nn.Module:
    from asteroid.models import ConvTasNet

    return ConvTasNet(n_src=2, causal=True, n_filters=16, kernel_size=16, stride=8, bn_chan=8,
                      hid_chan=16, skip_chan=8, n_blocks=3, n_repeats=1)  # fmt: skip


def _tdconvnet(causal: bool) -> nn.Module:
    from asteroid.masknn import TDConvNet

    return TDConvNet(in_chan=8, n_src=2, n_blocks=3, n_repeats=1, bn_chan=8, hid_chan=16,
                     skip_chan=8, norm_type="cLN", causal=causal)  # fmt: skip


_REFLECT = "padding that copies samples"
CASES = {
    "encodec_encoder_causal": Case(lambda: _encodec(False, True), (1, 1, 128), 960, 8, True,
                                   _REFLECT),
    "encodec_encoder": Case(lambda: _encodec(False, False), (1, 1, 128), 960, 8, False),
    "encodec_decoder_causal": Case(lambda: _encodec(True, True), (1, 8, 16), 24, 1, True,
                                   _REFLECT),
    "encodec_decoder": Case(lambda: _encodec(True, False), (1, 8, 16), 24, 1, False),
    "mimi_encoder": Case(lambda: _moshi(False), (1, 1, 1920), 2880, 960, True),
    "mimi_decoder": Case(lambda: _moshi(True), (1, 8, 2), 4, 1, True),
    "dac_encoder": Case(lambda: _dac(False), (1, 1, 128), 960, 8, False),
    "dac_decoder": Case(lambda: _dac(True), (1, 16, 16), 24, 1, False),
    "asteroid_conv_tasnet": Case(_conv_tasnet, (1, 1, 128), 960, 8, True,
                                 "depends on inputs up to"),
    "asteroid_tdconvnet_causal": Case(lambda: _tdconvnet(True), (1, 8, 64), 96, 1, True),
    "asteroid_tdconvnet": Case(lambda: _tdconvnet(False), (1, 8, 64), 96, 1, False),
}  # fmt: skip


@functools.cache
def built(name: str) -> tuple[nn.Module, pts.GraphStream]:
    torch.manual_seed(0)
    model = CASES[name].make().eval()
    with torch.no_grad():
        return model, pts.stream(model, torch.randn(CASES[name].example))


def _signal(case: Case, length: Optional[int] = None) -> torch.Tensor:
    shape = list(case.example)
    shape[-1] = length or case.length
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _patterns(case: Case) -> dict[str, list[int]]:
    rng = random.Random(2)
    return {
        "hop": [case.hop],
        "160": [160],
        "random": [rng.choice([0, 0, 1, 2, 3, 7, 13, 31, 64, 257]) for _ in range(40)],
        "whole": [case.length],
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_model_streams_exactly_as_shipped(name: str) -> None:
    case = CASES[name]
    model, stream = built(name)
    # every one runs on the frame engine (the interpreter would be exact too, and slow: a
    # regression that sends a model there must fail here, not hide)
    assert stream.engine.startswith("frames of"), stream.engine
    x = _signal(case)
    with torch.no_grad():
        expected = model(x)
        for pattern, sizes in _patterns(case).items():
            lengths = split_lengths(case.length, sizes)[:-1]  # (the rest with final=True)
            try:
                assert_matches(run_stream(stream, x, lengths), expected)
            except AssertionError as error:
                raise AssertionError(f"{name}, blocks of {pattern}: {error}") from error


@pytest.mark.parametrize("name", sorted(CASES))
def test_blocks_of_one_sample_are_exact(name: str) -> None:
    case = CASES[name]
    model, stream = built(name)
    length = 2 * case.hop * max(1, 64 // case.hop) if case.hop < 960 else 1920  # (affordable)
    length = min(case.length, max(length, case.example[-1]))
    x = _signal(case, length)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, [1] * (length - 1)), model(x))


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.causal))
def test_causal_models_run_as_step_models_or_are_refused_for_the_true_reason(name: str) -> None:
    case = CASES[name]
    model, _ = built(name)
    example = torch.randn(case.example)
    if case.refusal is not None:
        with pytest.raises(pts.NotStreamableError, match=case.refusal):
            pts.streaming_transform(model, example, frame="auto")
        return
    step, _ = pts.streaming_transform(model, example, frame="auto")
    stream = pts.StepStream(step)
    x = _signal(case)
    with torch.no_grad():
        expected = model(x)
        for sizes in ([case.hop], [160], [0, 1, 7, 0, 33]):
            assert_matches(run_stream(stream, x, split_lengths(case.length, sizes)[:-1]), expected)
