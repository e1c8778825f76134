"""Serving many signals on one model: rows that start and stop on their own, a pool of
stream slots, a Triton model repository."""
