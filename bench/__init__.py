"""The kata-pulse benchmark: `python -m bench` (see docs/benchmark.md)."""
