"""Step models: one data point per call (the Vollo flow). Work in progress: `PaddedConv1d`."""
