"""kata-pulse: Kata Containers guest metrics as cAdvisor-compatible Prometheus metrics."""

__version__ = "0.1.0"
