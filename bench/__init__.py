"""Benchmark scripts (run as ``python bench/<script>.py``) and the helpers they share."""
