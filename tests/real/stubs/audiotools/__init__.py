"""Import stub for descript-audiotools: only the names dac 1.0.0 touches at import time.
dac.model.dac.Encoder/Decoder are plain torch.nn.Modules and use none of this."""

from . import ml as ml


class AudioSignal:  # used by dac only inside methods (compress/decompress, losses)
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("audiotools stub: AudioSignal is not available")


class STFTParams:  # used by dac only inside __init__ of losses/discriminators
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("audiotools stub: STFTParams is not available")
