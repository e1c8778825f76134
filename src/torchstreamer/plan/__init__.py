"""The plan of a stream: what each streamed node does along time, and the exact figures (rate,
latency, receptive field) that follow from it."""

from torchstreamer.plan.timing import Timing

__all__ = ["Timing"]
