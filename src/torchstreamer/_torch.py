"""Import torch without the warning it prints when NumPy is not installed.

torch warns "Failed to initialize NumPy" on import when NumPy is missing, though nothing in this
library needs NumPy (only the optional ONNX helpers do). When torchstreamer is the first to
import torch, that warning is silenced; a program that imports torch itself still sees it.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    import torch  # noqa: F401
