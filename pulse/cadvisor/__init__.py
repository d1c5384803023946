"""Kata guest metrics as kubelet's cAdvisor shows containers: one module per group of families
(cpu, memory, network, disk, tasks, spec), row identities in `rows`, orchestration in
`convert`. The formulas are listed in docs/metrics.md.
"""

from pulse.cadvisor.convert import (
    ConversionOptions,
    ConversionState,
    Rates,
    Totals,
    convert,
)
from pulse.cadvisor.families import FAMILIES, HEADERS
from pulse.cadvisor.guest import GUEST_SHAPES, GuestSample, extract_guest

__all__ = [
    "FAMILIES",
    "GUEST_SHAPES",
    "HEADERS",
    "ConversionOptions",
    "ConversionState",
    "GuestSample",
    "Rates",
    "Totals",
    "convert",
    "extract_guest",
]
