"""Parsing only the guest families: the same figures as parsing the whole body, or a refusal.

`parse_selected` may decline (None) but must never give figures that differ from what a full
parse gives; `digest_body(whole=False)` turns a refusal into a full parse.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.cadvisor import GUEST_SHAPES, extract_guest
from pulse.cadvisor.convert import DEFAULT_DISK_EXCLUDE
from pulse.expo.parser import parse, parse_selected
from pulse.pipeline import digest_body
from pulse.sim.bodies import Flavour, SimulatedGuest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "shim"
NOW = 1_761_003_600.0
DISKS = re.compile(DEFAULT_DISK_EXCLUDE)


def body_of(flavour: Flavour, seed: int = 3) -> str:
    guest = SimulatedGuest("a" * 64, flavour, seed=seed, boot_time=NOW - 3600)
    return guest.render(NOW).decode()


def same_guest_as_full_parse(text: str) -> bool:
    selected = parse_selected(text, GUEST_SHAPES)
    assert selected is not None
    return extract_guest(selected, DISKS) == extract_guest(parse(text), DISKS)


@pytest.mark.parametrize("flavour", [f for f in Flavour if f is not Flavour.NO_GUEST])
def test_every_simulated_shim_gives_the_figures_of_a_full_parse(flavour: Flavour) -> None:
    text = body_of(flavour)
    selected = parse_selected(text, GUEST_SHAPES)
    assert selected is not None
    assert set(selected.families) == set(GUEST_SHAPES) & set(parse(text).families)
    assert same_guest_as_full_parse(text)
    guest = extract_guest(selected, DISKS)
    assert guest.cpu and guest.meminfo and guest.netdev and guest.diskstat


@pytest.mark.parametrize("body", sorted(p.name for p in FIXTURES.glob("*.prom")))
def test_recorded_shim_bodies_agree_with_a_full_parse(body: str) -> None:
    text = (FIXTURES / body).read_text()
    selected = parse_selected(text, GUEST_SHAPES)
    if selected is not None:
        assert extract_guest(selected, DISKS) == extract_guest(parse(text), DISKS)


def test_other_families_are_not_parsed_nor_validated() -> None:
    text = body_of(Flavour.GO) + "go_goroutines{ this line is broken\n"
    selected = parse_selected(text, GUEST_SHAPES)
    assert selected is not None
    assert set(selected.families) <= set(GUEST_SHAPES)
    assert parse(text).malformed_lines == 1


def test_a_guest_sample_outside_its_block_makes_it_decline() -> None:
    stray = 'kata_guest_meminfo{item="mem_free"} 1\n'
    text = body_of(Flavour.GO) + "# HELP other_metric x\n# TYPE other_metric gauge\n" + stray
    assert parse_selected(text, GUEST_SHAPES) is None
    # The whole-body parse merges the stray line into its family; the digest does the same.
    digest = digest_body(text.encode(), DISKS, whole=False)
    assert digest.whole
    assert digest.guest == digest_body(text.encode(), DISKS).guest


def test_a_malformed_guest_line_makes_it_decline_so_the_error_has_its_real_line_number() -> None:
    text = body_of(Flavour.GO)
    good = 'kata_guest_meminfo{item="mem_free"} '
    broken = text.replace(good, good.replace('"} ', "} "))
    assert broken != text
    assert parse_selected(broken, GUEST_SHAPES) is None
    digest = digest_body(broken.encode(), DISKS, whole=False)
    assert digest.whole and digest.malformed_lines == 1
    line = broken[: broken.index('{item="mem_free} ')].count("\n") + 1
    assert digest.first_error is not None and digest.first_error.startswith(f"line {line}:")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # Labels in another order, an extra label, blanks, escapes, Inf and an upper-case E: valid,
        # but not the plain shape; such a block goes through the full parser.
        ('{item="mem_free"}', '{item="mem_free",extra="x"}'),
        ('{cpu="total",item="user"}', '{item="user",cpu="total"}'),
        ('{item="mem_total"} ', '{ item = "mem_total" }\t'),
        ('{interface="eth0",item="recv_bytes"}', '{interface="eth\\\\0",item="recv_bytes"}'),
        (
            'kata_guest_vm_stat{item="pgfault"}',
            'kata_guest_vm_stat{item="x"} 1.5E3\nkata_guest_vm_stat{item="pgfault"}',
        ),
        ("kata_guest_tasks{", 'kata_guest_tasks{item="x"} +Inf 1700000000000\nkata_guest_tasks{'),
    ],
)
def test_blocks_of_another_shape_still_give_the_full_parse_figures(old: str, new: str) -> None:
    text = body_of(Flavour.GO)
    assert old in text
    changed = text.replace(old, new, 1)
    assert parse(changed).malformed_lines == 0
    assert same_guest_as_full_parse(changed)


def test_a_body_without_guest_families_falls_back_to_the_whole_body() -> None:
    text = body_of(Flavour.NO_GUEST)
    selected = parse_selected(text, GUEST_SHAPES)
    assert selected is not None and not selected.families
    digest = digest_body(text.encode(), DISKS, whole=False)
    assert digest.whole and digest.has_samples and digest.guest.empty


def test_crlf_bodies_are_left_to_the_full_parser() -> None:
    text = body_of(Flavour.GO).replace("\n", "\r\n")
    assert parse_selected(text, GUEST_SHAPES) is None
    assert (
        digest_body(text.encode(), DISKS, whole=False).guest
        == digest_body(body_of(Flavour.GO).encode(), DISKS).guest
    )


# --- Property: rearranged bodies never give other figures -----------------------------------

_BLOCKS = body_of(Flavour.GO).split("\n# HELP ")


@settings(max_examples=120, deadline=None)
@given(
    order=st.permutations(range(1, len(_BLOCKS))),
    cut=st.integers(min_value=0, max_value=len(_BLOCKS) - 2),
    moved_line=st.integers(min_value=0, max_value=10_000),
    move=st.booleans(),
)
def test_any_order_of_blocks_and_any_moved_line_keep_the_figures(
    order: list[int], cut: int, moved_line: int, move: bool
) -> None:
    blocks = [_BLOCKS[0], *(_BLOCKS[i] for i in order)]
    text = "\n# HELP ".join(blocks)
    if move:
        # Take one sample line out of its block and put it at another block's end.
        lines = text.split("\n")
        samples = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
        taken = lines.pop(samples[moved_line % len(samples)])
        blocks = "\n".join(lines).split("\n# HELP ")
        blocks[cut] = blocks[cut].rstrip("\n") + "\n" + taken
        text = "\n# HELP ".join(blocks)
    text = text if text.endswith("\n") else text + "\n"
    full = parse(text)
    assert full.malformed_lines == 0
    selected = parse_selected(text, GUEST_SHAPES)
    if selected is not None:
        assert extract_guest(selected, DISKS) == extract_guest(full, DISKS)
    assert digest_body(text.encode(), DISKS, whole=False).guest == extract_guest(full, DISKS)


def test_a_family_written_twice_is_merged_as_the_full_parser_merges_it() -> None:
    again = (
        "# HELP kata_guest_meminfo written again\n# TYPE kata_guest_meminfo gauge\n"
        'kata_guest_meminfo{item="mem_free"} 1\nkata_guest_meminfo{item="extra"} 2\n'
    )
    text = body_of(Flavour.GO) + again
    assert same_guest_as_full_parse(text)
    guest = extract_guest(parse(text), DISKS)
    assert guest.meminfo["mem_free"] != 1  # the first block's value wins


# --- Reading without validation, checked against the previous figures -----------------------

MEM_FREE = 'kata_guest_meminfo{item="mem_free"} '
UNREAD_VM_STAT = 'kata_guest_vm_stat{item="nr_free_pages"} '


def test_unvalidated_reading_gives_the_figures_of_a_full_parse() -> None:
    for flavour in (f for f in Flavour if f is not Flavour.NO_GUEST):
        text = body_of(flavour)
        selected = parse_selected(text, GUEST_SHAPES, validate=False)
        assert selected is not None
        assert extract_guest(selected, DISKS) == extract_guest(parse(text), DISKS)


def test_a_malformed_line_the_conversion_does_not_read_goes_unchecked() -> None:
    text = body_of(Flavour.GO)
    assert UNREAD_VM_STAT in text
    broken = text.replace(UNREAD_VM_STAT, UNREAD_VM_STAT.replace('"} ', "} "))
    assert parse(broken).malformed_lines == 1
    assert parse_selected(broken, GUEST_SHAPES) is None  # validated: declined
    unvalidated = parse_selected(broken, GUEST_SHAPES, validate=False)
    assert unvalidated is not None
    previous = extract_guest(parse(text), DISKS)
    digest = digest_body(broken.encode(), DISKS, whole=False, checked_against=previous)
    assert not digest.whole and digest.malformed_lines == 0
    assert digest.guest == extract_guest(parse(broken), DISKS)


@pytest.mark.parametrize(
    "broken_line",
    [
        'kata_guest_meminfo{item="mem_free} 1\n',  # unterminated label value: not read at all
        'kata_guest_meminfo{item="mem_free"}\n',  # no value
        'kata_guest_meminfo{item="mem_free"} 12abc\n',  # a value float() refuses
        'kata_guest_meminfo{item="mem_free"} 1 2 3\n',  # trailing garbage
    ],
)
def test_a_broken_line_the_conversion_reads_is_counted_at_once(broken_line: str) -> None:
    text = body_of(Flavour.GO)
    start = text.index(MEM_FREE)
    end = text.index("\n", start) + 1
    broken = text[:start] + broken_line + text[end:]
    previous = extract_guest(parse(text), DISKS)
    digest = digest_body(broken.encode(), DISKS, whole=False, checked_against=previous)
    # Not the unchecked reading: the whole body, with the error and its real line number.
    assert digest.whole and digest.malformed_lines == 1
    line = text[:start].count("\n") + 1
    assert digest.first_error is not None and digest.first_error.startswith(f"line {line}:")
    assert "mem_free" not in digest.guest.meminfo
    assert digest.guest == extract_guest(parse(broken), DISKS)


def test_a_figure_gone_for_good_is_validated_then_accepted() -> None:
    # A disk unplugged from the guest: fewer figures, and no error anywhere.
    text = body_of(Flavour.GO)
    previous = extract_guest(parse(text), DISKS)
    disk = sorted(previous.diskstat)[-1]
    unplugged = "".join(
        line for line in text.splitlines(keepends=True) if f'disk="{disk}"' not in line
    )
    assert parse(unplugged).malformed_lines == 0
    digest = digest_body(unplugged.encode(), DISKS, whole=False, checked_against=previous)
    # Validated, but only the guest families: no whole-body parse for a routine change.
    assert not digest.whole and digest.malformed_lines == 0
    assert disk not in digest.guest.diskstat and digest.guest.diskstat
    assert digest.guest == extract_guest(parse(unplugged), DISKS)
    # From then on the smaller set is what the next collection is checked against.
    again = digest_body(unplugged.encode(), DISKS, whole=False, checked_against=digest.guest)
    assert again.guest == digest.guest and not again.whole


def test_more_figures_than_before_are_taken_unchecked() -> None:
    text = body_of(Flavour.GO)
    previous = extract_guest(parse(text), DISKS)
    fewer = dataclasses.replace(previous, meminfo={})
    digest = digest_body(text.encode(), DISKS, whole=False, checked_against=fewer)
    assert not digest.whole and digest.guest == previous


def test_has_every_figure_of_compares_keys_at_every_level() -> None:
    full = extract_guest(parse(body_of(Flavour.GO)), DISKS)
    assert full.has_every_figure_of(full)
    interface = next(iter(full.netdev))
    item = next(iter(full.netdev[interface]))
    fewer_items = {
        **full.netdev,
        interface: {k: v for k, v in full.netdev[interface].items() if k != item},
    }
    cases = [
        dataclasses.replace(full, ncpu=full.ncpu - 1),
        dataclasses.replace(full, cpu={k: v for k, v in list(full.cpu.items())[1:]}),
        dataclasses.replace(full, vm_stat={}),
        dataclasses.replace(full, tasks={}),
        dataclasses.replace(full, netdev=fewer_items),
        dataclasses.replace(full, diskstat=dict(list(full.diskstat.items())[1:])),
    ]
    for smaller in cases:
        assert full.has_every_figure_of(smaller)
        assert not smaller.has_every_figure_of(full), smaller
