"""Graph streaming: stream any model that ``torch.export`` can capture (work in progress)."""
