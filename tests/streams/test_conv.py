"""Conv1dStream and ConvTranspose1dStream equal the offline layer for every chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import torchstreamer as pts
from tests.conftest import assert_matches, block_sizes, run_stream, split_lengths
from torchstreamer.time import conv_span, same_padding


@st.composite
def conv1d_cases(draw: st.DrawFn) -> tuple[nn.Conv1d, str, torch.Tensor]:
    groups = draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 6))
    stride = draw(st.integers(1, 5))
    dilation = draw(st.integers(1, 3))
    padding_choice = draw(st.sampled_from(["valid", "model"]))
    padding: int | str = draw(st.one_of(st.integers(0, 7), st.just("same")))
    if stride > 1 and padding == "same":
        padding = kernel // 2
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate"]))
    conv = nn.Conv1d(
        groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3)), kernel, stride=stride,
        padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()),
        padding_mode=mode,
    )  # fmt: skip
    left, right = conv._reversed_padding_repeated_twice[:2]
    span = conv_span(kernel, dilation)
    shortest = (
        span if padding_choice == "valid" else max(1, span - left - right, max(left, right) + 1)
    )
    length = draw(st.integers(shortest, shortest + 60))
    batch = draw(st.sampled_from([None, 1, 3]))
    shape = [conv.in_channels, length] if batch is None else [batch, conv.in_channels, length]
    return conv, padding_choice, torch.randn(shape)


def offline_conv(conv: nn.Conv1d, padding: str, x: torch.Tensor) -> torch.Tensor:
    if padding == "model":
        return conv(x)
    return F.conv1d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
@given(case=conv1d_cases(), sizes=block_sizes())
def test_conv1d_parity(
    script: bool, case: tuple[nn.Conv1d, str, torch.Tensor], sizes: list[int]
) -> None:
    conv, padding, x = case
    stream = pts.Conv1dStream(conv, padding)
    if script:
        stream = torch.jit.script(stream)
    with torch.no_grad():
        expected = offline_conv(conv, padding, x)
        assert_matches(run_stream(stream, x, split_lengths(x.shape[-1], sizes)), expected)
        # the stream is ready for a new signal after final=True
        assert_matches(run_stream(stream, x, [x.shape[-1]]), expected)


@st.composite
def transposed_cases(draw: st.DrawFn) -> tuple[nn.ConvTranspose1d, str, torch.Tensor]:
    groups = draw(st.integers(1, 2))
    kernel = draw(st.integers(1, 6))
    stride = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 3))
    output_padding = draw(st.integers(0, max(stride, dilation) - 1))
    padding = draw(st.integers(0, 6))
    conv = nn.ConvTranspose1d(
        groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3)), kernel, stride=stride,
        padding=padding, output_padding=output_padding, dilation=dilation, groups=groups,
        bias=draw(st.booleans()),
    )  # fmt: skip
    padding_choice = draw(st.sampled_from(["valid", "model"]))
    length = draw(st.integers(1, 40))
    if padding_choice == "model":
        span = conv_span(kernel, dilation)
        assume((length - 1) * stride - 2 * padding + span + output_padding > 0)
    batch = draw(st.sampled_from([None, 2]))
    shape = [conv.in_channels, length] if batch is None else [batch, conv.in_channels, length]
    return conv, padding_choice, torch.randn(shape)


@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
@given(case=transposed_cases(), sizes=block_sizes())
def test_conv_transpose1d_parity(
    script: bool, case: tuple[nn.ConvTranspose1d, str, torch.Tensor], sizes: list[int]
) -> None:
    conv, padding, x = case
    stream = pts.ConvTranspose1dStream(conv, padding)
    if script:
        stream = torch.jit.script(stream)
    with torch.no_grad():
        if padding == "model":
            expected = conv(x)
        else:
            expected = F.conv_transpose1d(
                x, conv.weight, conv.bias, conv.stride, 0, 0, conv.groups, conv.dilation
            )
        assert_matches(run_stream(stream, x, split_lengths(x.shape[-1], sizes)), expected)


@given(
    kernel=st.integers(1, 6), stride=st.integers(1, 5), dilation=st.integers(1, 3),
    sizes=block_sizes(),
)  # fmt: skip
def test_conv1d_emits_each_output_as_soon_as_its_window_is_complete(
    kernel: int, stride: int, dilation: int, sizes: list[int]
) -> None:
    conv = nn.Conv1d(1, 1, kernel, stride=stride, dilation=dilation)
    stream = pts.Conv1dStream(conv)
    span = conv_span(kernel, dilation)
    received = emitted = 0
    for length in split_lengths(50, sizes):
        y = stream(torch.randn(1, length))
        received += length
        emitted += 0 if y is None else y.shape[-1]
        assert emitted == (0 if received < span else (received - span) // stride + 1)


@given(kernel=st.integers(1, 6), stride=st.integers(1, 4), sizes=block_sizes())
def test_conv_transpose1d_emits_outputs_when_their_last_input_arrives(
    kernel: int, stride: int, sizes: list[int]
) -> None:
    stream = pts.ConvTranspose1dStream(nn.ConvTranspose1d(1, 1, kernel, stride=stride))
    received = emitted = 0
    for length in split_lengths(30, sizes):
        y = stream(torch.randn(1, length))
        received += length
        emitted += 0 if y is None else y.shape[-1]
        # every output below received*stride has all its inputs; when the kernel is shorter
        # than the stride, the gap after the last input exists only if another input comes
        assert emitted == (
            0 if received == 0 else min(received * stride, (received - 1) * stride + kernel)
        )


@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(1, 1, 5), (2, 1, 6), (3, 2, 7)])
def test_a_transposed_convolution_that_crops_more_than_it_spans_carries_every_sum(
    kernel: int, stride: int, padding: int, script: bool
) -> None:
    # found by hypothesis: its first output needs 2 * padding + 1 samples, and the carry
    # was sized for padding + span (the stream raised a size mismatch)
    layer = nn.ConvTranspose1d(1, 2, kernel, stride=stride, padding=padding)
    stream = pts.ConvTranspose1dStream(layer, "model")
    if script:
        stream = torch.jit.script(stream)
    x = torch.randn(1, 1, 30)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, [1] * 30), layer(x))


def test_same_padding_streams_exactly_with_even_kernel() -> None:
    conv = nn.Conv1d(2, 3, 4, padding="same", dilation=3, padding_mode="reflect")
    assert same_padding(4, 3) == (4, 5)
    x = torch.randn(2, 31)
    with torch.no_grad():
        assert_matches(run_stream(pts.Conv1dStream(conv, "model"), x, [1, 0, 5, 2]), conv(x))


@pytest.mark.parametrize(
    "wrap",
    [
        torch.nn.utils.weight_norm,
        torch.nn.utils.parametrizations.weight_norm,
        torch.nn.utils.spectral_norm,
        torch.nn.utils.parametrizations.spectral_norm,
    ],
    ids=[
        "weight_norm",
        "parametrizations.weight_norm",
        "spectral_norm",
        "parametrizations.spectral_norm",
    ],
)
@pytest.mark.parametrize("kind", [nn.Conv1d, nn.ConvTranspose1d])
@pytest.mark.parametrize("script", [False, True], ids=["eager", "script"])
def test_normalised_weights_stream_exactly_and_follow_updates(wrap, kind, script: bool) -> None:
    conv = wrap(kind(3, 4, 3, stride=2)).eval()
    stream = pts.create_stream(conv)
    x = torch.randn(3, 25)
    if script:
        stream = torch.jit.script(stream)
    with torch.no_grad():
        assert_matches(run_stream(stream, x, [4, 0, 1, 7]), conv(x))
        if not script:  # eager streams read the current parameters
            for name, parameter in conv.named_parameters():
                if "weight" in name:
                    parameter.mul_(1.5)
            assert_matches(run_stream(stream, x, [3, 9]), conv(x))


def test_stream_reads_weights_changed_after_it_was_built() -> None:
    conv = nn.Conv1d(2, 2, 3)
    stream = pts.Conv1dStream(conv)
    with torch.no_grad():
        conv.weight.add_(1.0)
        x = torch.randn(2, 12)
        assert_matches(run_stream(stream, x, [5]), conv(x))


def test_transposed_convolution_computes_each_input_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 13, item 6: the overlapping partial outputs are carried (overlap-add), so a block
    # runs the layer on its own samples only, never again on earlier ones
    conv = nn.ConvTranspose1d(4, 3, 16, stride=8, padding=4).eval()
    stream = pts.ConvTranspose1dStream(conv, "model")
    seen: list[int] = []
    original = F.conv_transpose1d

    def counting(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        seen.append(x.shape[-1])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(F, "conv_transpose1d", counting)
    x = torch.randn(1, 4, 30)
    with torch.no_grad():
        y = run_stream(stream, x, [1, 0, 3, 1, 1, 7])
        assert sum(seen) == 30
        monkeypatch.setattr(F, "conv_transpose1d", original)
        assert_matches(y, conv(x))


@pytest.mark.parametrize("stride", [1, 2, 5])
@pytest.mark.parametrize(("padding", "output_padding"), [(0, 0), (3, 1), (1, 0)])
def test_transposed_stream_returns_what_the_time_rule_says(
    stride: int, padding: int, output_padding: int
) -> None:
    """The stream's own (scriptable) count is the plan's: time.transposed_ready, with and
    without a promise of more input."""
    from torchstreamer.time import transposed_ready

    output_padding = min(output_padding, stride - 1)
    conv = nn.ConvTranspose1d(1, 1, 4, stride, padding, output_padding)
    stream = pts.ConvTranspose1dStream(conv, "model")
    for n in range(0, 40):
        ready = stream._ready_end(n, 0) - stream._crop
        assert ready == transposed_ready(n, stream._span, stride, padding, output_padding)
        for promised in (n + 1, n + 3):
            ready = stream._ready_end(n, promised) - stream._crop
            expected = transposed_ready(
                n, stream._span, stride, padding, output_padding, promised=promised
            )
            assert ready == expected
