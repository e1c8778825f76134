"""The time arithmetic agrees with what PyTorch's layers do, exhaustively on small ranges."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from torchstreamer import time


def test_valid_output_length_matches_conv1d() -> None:
    for n, kernel, stride, dilation in itertools.product(
        range(1, 14), range(1, 5), range(1, 4), range(1, 3)
    ):
        span = time.conv_span(kernel, dilation)
        expected = (
            F.conv1d(
                torch.zeros(1, 1, n), torch.zeros(1, 1, kernel), stride=stride, dilation=dilation
            ).shape[-1]
            if n >= span
            else 0
        )
        assert time.valid_output_length(n, span, stride) == expected


def test_same_padding_matches_pytorch() -> None:
    for kernel, dilation in itertools.product(range(1, 7), range(1, 4)):
        conv = torch.nn.Conv1d(1, 1, kernel, padding="same", dilation=dilation)
        assert (
            list(time.same_padding(kernel, dilation)) == conv._reversed_padding_repeated_twice[:2]
        )


def test_avg_pool_divisor_matches_pytorch() -> None:
    cases = itertools.product(range(1, 12), range(1, 5), range(1, 4), [False, True], [False, True])
    for n, kernel, stride, ceil_mode, include in cases:
        for padding in range(kernel // 2 + 1):
            expected_length = time.pool_output_length(n, kernel, stride, padding, 1, ceil_mode)
            if expected_length == 0:
                continue
            y = F.avg_pool1d(torch.ones(1, 1, n), kernel, stride, padding, ceil_mode, include)
            assert y.shape[-1] == expected_length
            for j in range(expected_length):
                start, end = j * stride - padding, j * stride - padding + kernel
                real = min(end, n) - max(start, 0)
                divisor = time.avg_pool_divisor(j, n, kernel, stride, padding, include)
                assert y[0, 0, j].item() == pytest.approx(real / divisor)


def test_transposed_output_length_matches_pytorch() -> None:
    cases = itertools.product(range(1, 8), range(1, 5), range(1, 4), range(0, 3), range(1, 3))
    for n, kernel, stride, padding, dilation in cases:
        for output_padding in range(max(stride, dilation)):
            expected = time.transposed_output_length(
                n, kernel, stride, padding, output_padding, dilation
            )
            if expected <= 0:
                continue
            y = F.conv_transpose1d(
                torch.zeros(1, 1, n), torch.zeros(1, 1, kernel), None, stride, padding,
                output_padding, 1, dilation,
            )  # fmt: skip
            assert y.shape[-1] == expected


def test_ceil_extra_padding_makes_room_for_the_last_window() -> None:
    for n_padded, outputs, span, stride in itertools.product(
        range(1, 12), range(0, 6), range(1, 5), range(1, 4)
    ):
        extra = time.ceil_extra_padding(n_padded, outputs, span, stride)
        if outputs > 0:
            assert time.valid_output_length(n_padded + extra, span, stride) >= outputs
            assert (
                extra == 0 or time.valid_output_length(n_padded + extra - 1, span, stride) < outputs
            )


def test_residual_crop_and_errors() -> None:
    assert time.residual_crop(0) == (0, 0)
    assert time.residual_crop(5) == (2, 3)
    with pytest.raises(ValueError, match="lengthens the signal by 2"):
        time.residual_crop(-2)
    with pytest.raises(ValueError, match="must be at least 1"):
        time.conv_span(0)
