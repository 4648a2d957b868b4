"""Benchmarks for vsrt; run them as modules, e.g. `python -m bench.pipeline`."""
