"""Benchmark helpers and entry points (run as `python bench/<script>.py` from the repo root)."""
