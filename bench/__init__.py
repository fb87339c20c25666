"""Benchmarks, run on demand (``python -m bench.ingest``), never part of the test suite."""
