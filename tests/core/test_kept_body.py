"""Kept shim bodies: compressed while kept, restored byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pulse.kept import KeptBody
from pulse.sim.bodies import Flavour, SimulatedGuest


def test_a_shim_body_is_kept_in_a_fraction_of_its_size_and_restored_exactly() -> None:
    body = SimulatedGuest("a" * 64, Flavour.GO, seed=3).render(1.8e9)
    kept = KeptBody.of(body)
    assert kept.size == len(body)
    assert len(kept.compressed) * 3 < len(body)
    assert kept.raw() == body


@given(st.binary(max_size=4096))
def test_any_bytes_round_trip(body: bytes) -> None:
    kept = KeptBody.of(body)
    assert kept.raw() == body and kept.size == len(body)
