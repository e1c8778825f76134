"""Import stub for audiotools.ml: dac/__init__ appends to BaseModel.INTERN/EXTERN and
dac.utils reads ml.Accelerator at import time; DAC and Discriminator subclass BaseModel."""

from typing import ClassVar

import torch


class BaseModel(torch.nn.Module):
    INTERN: ClassVar[list[str]] = []
    EXTERN: ClassVar[list[str]] = []


class Accelerator:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("audiotools stub: Accelerator is not available")
