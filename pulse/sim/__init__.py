"""Simulated Kata sandboxes and a simulated CRI: real servers on real Unix sockets.

Used by `kata-pulse demo`, the test suite and the benchmark.
"""
