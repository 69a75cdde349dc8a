"""Synthetic national data sets for the demo, the benchmarks and the load test."""
