"""Published codec and separation packages, as shipped (`requirements/real-models.txt`).

torchaudio has no wheel for torch 2.13, and descript-audiotools and argbind are heavy: the
models under test import them but never call them, so tiny import stubs (``stubs/``) stand in.
They come last on the path: an installed package wins."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).parent / "stubs"))
