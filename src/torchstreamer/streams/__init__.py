"""Streams of single modules and of module containers (the seed's module-stream API)."""
