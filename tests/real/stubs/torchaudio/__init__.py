"""Import stub for torchaudio (no wheel for torch 2.13): ``import torchaudio`` succeeds, any
attribute raises, so a model that really needs torchaudio fails loudly."""


def __getattr__(name: str) -> object:
    raise AttributeError(f"torchaudio stub: torchaudio.{name} is not available")
