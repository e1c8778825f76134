"""Step models: a causal model as a function of one data point, with its state inside."""
