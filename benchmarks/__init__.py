"""Benchmarks: run each as ``python benchmarks/<name>.py [--quick]``; results in docs/BENCHMARKS.md."""
