"""Sequential1dStream and Residual1dStream equal the offline network for every chunking."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, fewer, run_stream, split_lengths


@st.composite
def layers(draw: st.DrawFn, channels: int, depth: int) -> tuple[list[nn.Module], int]:
    """Random layers of every streamable kind; returns them and the output channels."""
    modules: list[nn.Module] = []
    for _ in range(depth):
        kind = draw(st.sampled_from(["conv", "convT", "pool", "act", "pad", "res", "bn"]))
        if kind == "conv":
            out = draw(st.integers(1, 4))
            padding = draw(st.one_of(st.integers(0, 3), st.just("same")))
            stride = 1 if padding == "same" else draw(st.integers(1, 3))
            mode = draw(st.sampled_from(["zeros", "reflect", "replicate"]))
            modules.append(
                nn.Conv1d(
                    channels,
                    out,
                    draw(st.integers(1, 4)),
                    stride=stride,
                    padding=padding,
                    dilation=draw(st.integers(1, 2)),
                    padding_mode=mode,
                )
            )
            channels = out
        elif kind == "convT":
            out = draw(st.integers(1, 4))
            stride = draw(st.integers(1, 3))
            modules.append(
                nn.ConvTranspose1d(
                    channels,
                    out,
                    draw(st.integers(1, 4)),
                    stride=stride,
                    padding=draw(st.integers(0, 2)),
                    output_padding=draw(st.integers(0, stride - 1)),
                )
            )
            channels = out
        elif kind == "pool":
            kernel = draw(st.integers(1, 3))
            pool_type = draw(st.sampled_from([nn.AvgPool1d, nn.MaxPool1d]))
            modules.append(
                pool_type(
                    kernel,
                    draw(st.integers(1, 3)),
                    draw(st.integers(0, kernel // 2)),
                    ceil_mode=draw(st.booleans()),
                )
            )
        elif kind == "act":
            modules.append(draw(st.sampled_from([nn.ReLU(), nn.GELU(), nn.Tanh(), nn.Identity()])))
        elif kind == "pad":
            modules.append(nn.ReplicationPad1d((draw(st.integers(0, 2)), draw(st.integers(0, 2)))))
        elif kind == "bn":
            norm = nn.BatchNorm1d(channels).eval()
            norm.running_mean.normal_()
            modules.append(norm)
        else:
            inner = nn.Sequential(
                nn.Conv1d(
                    channels, 3, draw(st.integers(1, 4)), padding=draw(st.sampled_from([0, "same"]))
                ),
                nn.ReLU(),
                nn.Conv1d(3, channels, 1),
            )
            modules.append(pts.Residual1d(inner))
    return modules, channels


@st.composite
def network_cases(draw: st.DrawFn) -> tuple[nn.Sequential, str, torch.Tensor]:
    channels = draw(st.integers(1, 3))
    modules, _ = draw(layers(channels, draw(st.integers(1, 5))))
    if draw(st.booleans()):  # nested containers
        split = draw(st.integers(0, len(modules)))
        modules = [*modules[:split], nn.Sequential(*modules[split:])]
    net = nn.Sequential(*modules).eval()
    padding = draw(st.sampled_from(["valid", "model"]))
    length = draw(st.integers(20, 80))
    shape = [channels, length] if draw(st.booleans()) else [2, channels, length]
    return net, padding, torch.randn(shape)


def offline(net: nn.Module, padding: str, x: torch.Tensor) -> torch.Tensor | None:
    """The offline output for the chosen padding, or None when the signal is too short."""
    if padding == "valid":
        net = strip_padding(net)
    try:
        with torch.no_grad():
            return net(x)
    except RuntimeError:
        return None


def strip_padding(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every layer's padding set to 0, as padding='valid' streams it."""
    import copy

    net = copy.deepcopy(net)
    for _name, module in list(net.named_modules()):
        if isinstance(module, nn.Conv1d):
            module.padding, module._reversed_padding_repeated_twice = (0,), [0, 0]
        elif isinstance(module, nn.ConvTranspose1d):
            module.padding, module.output_padding = (0,), (0,)
        elif isinstance(module, (nn.AvgPool1d, nn.MaxPool1d)):
            module.padding, module.ceil_mode = 0, False
        elif isinstance(module, nn.ReplicationPad1d):
            module.padding = (0, 0)
    return net


@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
@fewer(20)
@given(case=network_cases(), sizes=block_sizes())
def test_sequential_parity(
    script: bool, case: tuple[nn.Sequential, str, torch.Tensor], sizes: list[int]
) -> None:
    net, padding, x = case
    expected = offline(net, padding, x)
    assume(expected is not None and expected.shape[-1] > 0)
    stream = pts.Sequential1dStream(net, padding)
    if script:
        stream = torch.jit.script(stream)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, split_lengths(x.shape[-1], sizes)), expected)
        assert_matches(run_stream(stream, x, [x.shape[-1]]), expected)


@fewer(20)
@given(case=network_cases(), sizes=block_sizes())
def test_batched_stream_equals_one_stream_per_item(
    case: tuple[nn.Sequential, str, torch.Tensor], sizes: list[int]
) -> None:
    net, padding, x = case
    assume(x.dim() == 3)
    expected = offline(net, padding, x)
    assume(expected is not None and expected.shape[-1] > 0)
    with torch.no_grad():
        lengths = split_lengths(x.shape[-1], sizes)
        batched = run_stream(pts.Sequential1dStream(net, padding), x, lengths)
        for item in range(x.shape[0]):
            single = run_stream(pts.Sequential1dStream(net, padding), x[item], lengths)
            assert single is not None
            assert batched is not None
            torch.testing.assert_close(batched[item], single, rtol=1e-5, atol=1e-5)


def test_residual_with_model_padding_aligns_same_padded_inner() -> None:
    block = pts.Residual1d(nn.Conv1d(2, 2, 5, padding="same", padding_mode="reflect"))
    x = torch.randn(2, 30)
    with torch.no_grad():
        assert_matches(run_stream(pts.Residual1dStream(block, "model"), x, [1, 0, 3, 8]), block(x))


def test_residual_of_several_modules_wraps_them_in_sequential() -> None:
    block = pts.Residual1d(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 2, 2))
    assert isinstance(block.net, nn.Sequential)
    x = torch.randn(2, 17)
    with torch.no_grad():
        assert_matches(run_stream(pts.create_stream(block), x, [2, 0, 1]), block(x))


def test_residual_whose_inner_changes_the_rate_is_refused() -> None:
    block = pts.Residual1d(nn.Conv1d(2, 2, 2, stride=2), nn.ConvTranspose1d(2, 2, 2, stride=2))
    with pytest.raises(pts.NotStreamableError, match=r"layer '1' \(Residual1d\).*changes the rate"):
        pts.Sequential1dStream(nn.Sequential(nn.Conv1d(1, 2, 1), block))


def test_final_flushes_layers_after_one_that_returns_nothing() -> None:
    # the strided conv gives nothing for the last sample, but the padded conv after it must
    # still add its right padding when the signal ends
    net = nn.Sequential(nn.Conv1d(1, 1, 2, stride=2), nn.Conv1d(1, 1, 3, padding=2))
    x = torch.randn(1, 9)
    stream = pts.Sequential1dStream(net, "model")
    with torch.no_grad():
        head = stream(x[:, :8])
        tail = stream(x[:, 8:], final=True)
        assert head is not None
        assert tail is not None
        assert_matches(torch.cat([head, tail], -1), net(x))


def test_empty_sequential_is_an_identity() -> None:
    x = torch.randn(2, 5)
    assert torch.equal(run_stream(pts.Sequential1dStream(nn.Sequential()), x, [2]), x)


@pytest.mark.parametrize(
    "first",
    [lambda: nn.BatchNorm1d(3), lambda: nn.PReLU(3), lambda: nn.Sequential(nn.ReLU(), nn.PReLU(3))],
    ids=["batch-norm", "prelu", "nested"],
)
def test_a_first_layer_that_tells_its_channels_puts_the_sequential_on_the_engine(first) -> None:
    # the engine needs the input's channels to build its example: a normalisation or a PReLU
    # with one weight per channel tells them as a convolution does
    net = nn.Sequential(first(), nn.Conv1d(3, 2, 3, padding=1), nn.ReLU()).eval()
    stream = pts.Sequential1dStream(net, "model")
    assert stream.engine.startswith("frames of"), stream.engine
    x = torch.randn(2, 3, 20)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, [1, 0, 6, 4]), net(x))


def test_sequential_requires_a_sequential() -> None:
    with pytest.raises(TypeError, match=r"use torchstreamer\.create_stream"):
        pts.Sequential1dStream(nn.Conv1d(1, 1, 1))  # type: ignore[arg-type]


def test_residual_checks_channels_mid_signal_when_its_layers_accept_any() -> None:
    stream = pts.Residual1dStream(pts.Residual1d(nn.Tanh()))
    x = torch.randn(3, 8)
    head = stream(x[:, :2])
    with pytest.raises(pts.StreamInputError, match="expects 3 channels"):
        stream(torch.randn(4, 3))
    assert_matches(torch.cat([head, stream(x[:, 2:], final=True)], -1), x + torch.tanh(x))


def test_residual_whose_inner_lengthens_the_signal_is_refused() -> None:
    with pytest.raises(pts.NotStreamableError, match="lengthens the signal by 2 samples"):
        pts.Residual1dStream(pts.Residual1d(nn.ConvTranspose1d(2, 2, 3)))


def test_a_network_built_while_another_thread_builds_layers_runs_on_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a container counts the containers that build their layers (a nested one builds no engine
    # of its own): per thread, so a network built meanwhile in another thread is no layer of it
    from torchstreamer.streams import registry

    inside, done = threading.Event(), threading.Event()
    create = registry.create_stream

    def waiting(*args, **kwargs):  # the other thread waits in its layers' loop
        if threading.current_thread().name == "layers":
            inside.set()
            done.wait(60)
        return create(*args, **kwargs)

    monkeypatch.setattr(registry, "create_stream", waiting)
    other = threading.Thread(
        target=pts.Sequential1dStream, args=(nn.Sequential(nn.Tanh()),), name="layers", daemon=True
    )
    other.start()
    assert inside.wait(60)
    try:
        net = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU()).eval()
        stream = pts.Sequential1dStream(net, "model")
    finally:
        done.set()
        other.join(60)
    assert not other.is_alive()
    assert stream.engine.startswith("frames of"), stream.engine
    x = torch.randn(1, 1, 20)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, [1, 0, 6, 4]), net(x))
