"""Benchmark scripts (run as ``python -m benchmarks.<name>``); timings live here, not in tests."""
