"""Reading a body where the previous one had its figures: the same figures as a full parse, or
a refusal (None) that sends the body the usual way.

A layout may decline, but whatever it reads must be what a full parse of the same body gives;
every change of what the conversion could read (a device, a CPU, an item coming or going) must
make it decline. `digest_body` turns a refusal into the usual reading.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.cadvisor import GUEST_SHAPES, GuestSample, extract_guest
from pulse.cadvisor.convert import DEFAULT_DISK_EXCLUDE
from pulse.cadvisor.layout import GuestLayout
from pulse.expo.parser import parse
from pulse.pipeline import BodyDigest, digest_body, digest_next, wants_layout
from pulse.sim.bodies import Flavour, SimulatedGuest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "shim"
NOW = 1_761_003_600.0
DISKS = re.compile(DEFAULT_DISK_EXCLUDE)
GUEST_FLAVOURS = [f for f in Flavour if f is not Flavour.NO_GUEST]


def body_of(flavour: Flavour, at: float = NOW, seed: int = 3) -> str:
    guest = SimulatedGuest("a" * 64, flavour, seed=seed, boot_time=NOW - 3600)
    return guest.render(at).decode()


def figures(text: str) -> GuestSample:
    return extract_guest(parse(text), DISKS)


def layout_of(text: str) -> GuestLayout:
    layout = GuestLayout.of(text, figures(text))
    assert layout is not None
    return layout


def read_the_usual_way(text: str, layout: GuestLayout) -> GuestSample:
    """What the collector gets when the layout declines: the body read as before layouts."""
    digest = digest_body(text.encode(), DISKS, whole=False, layout=layout)
    assert digest.guest == figures(text)
    return digest.guest


def replace_lines(text: str, old: str, new: list[str]) -> str:
    """`text` with the lines that start with `old` replaced by `new` (where the first was)."""
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(old))
    kept = [line for line in lines if not line.startswith(old)]
    return "\n".join(kept[:at] + new + kept[at:])


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.split("\n") if line.startswith(prefix)]


# --- the same layout, other values ----------------------------------------------------------


@pytest.mark.parametrize("flavour", GUEST_FLAVOURS)
def test_later_bodies_of_a_shim_give_the_figures_of_a_full_parse(flavour: Flavour) -> None:
    layout = layout_of(body_of(flavour))
    for step in range(1, 25):
        # The Go shim writes the agent's families, the guest's among them, in another order
        # every time: the blocks move, their layout stays.
        later = body_of(flavour, NOW + 5 * step)
        assert layout.read(later) == figures(later)


@pytest.mark.parametrize("name", ["go", "go-2.4", "runtime-rs", "firecracker"])
def test_recorded_shim_bodies_read_with_the_layout_of_the_body_before(name: str) -> None:
    first = (FIXTURES / f"{name}.0.prom").read_text()
    second = (FIXTURES / f"{name}.1.prom").read_text()
    layout = layout_of(first)
    assert layout.read(second) == figures(second)


def test_a_digest_read_with_a_layout_keeps_it() -> None:
    first = digest_body(body_of(Flavour.GO).encode(), DISKS, whole=False, make_layout=True)
    assert first.layout is not None
    later = body_of(Flavour.GO, NOW + 5)
    digest = digest_body(later.encode(), DISKS, whole=False, layout=first.layout)
    assert digest.layout is first.layout and not digest.whole
    assert digest.guest == figures(later) and digest.has_samples


def test_sandboxes_of_one_shape_share_their_blocks() -> None:
    one = layout_of(body_of(Flavour.GO, NOW + 5))
    other = layout_of(body_of(Flavour.GO, NOW + 10))
    assert all(a is b for a, b in zip(one.blocks, other.blocks, strict=True))


def test_a_layout_is_made_when_asked_from_a_clean_body_read_without_the_whole_parse() -> None:
    text = body_of(Flavour.GO).encode()
    assert digest_body(text, DISKS, whole=False).layout is None
    assert digest_body(text, DISKS, whole=False, make_layout=True).layout is not None
    assert digest_body(text, DISKS, whole=True, make_layout=True).layout is None
    broken = CHANGES["a read line broken"](body_of(Flavour.GO)).encode()
    digest = digest_body(broken, DISKS, whole=False, make_layout=True)
    assert digest.malformed_lines == 1 and digest.whole and digest.layout is None


# --- what the conversion could read changed: declined at once ---------------------------------

DISK = 'kata_guest_diskstat{disk="vda",'
INTERFACE = 'kata_guest_netdev_stat{interface="eth0",'
CPU_ROW = 'kata_guest_cpu_time{cpu="0",'
MEM_FREE = 'kata_guest_meminfo{item="mem_free"} '
UNREAD_VM_STAT = 'kata_guest_vm_stat{item="nr_free_pages"} '


def without_block(text: str, family: str) -> str:
    blocks = text.split("\n# HELP ")
    return "\n# HELP ".join(b for b in blocks if not b.startswith(family + " "))


def plugged(text: str, prefix: str, old: str, new: str) -> str:
    """A device (disk, interface, CPU) plugged in after `old`: its lines copied with `new`."""
    lines = lines_starting(text, prefix)
    return replace_lines(text, prefix, lines + [line.replace(old, new) for line in lines])


CHANGES = {
    "a disk plugged in": lambda t: plugged(t, DISK, '"vda"', '"vdb"'),
    "a disk unplugged": lambda t: replace_lines(t, DISK, []),
    "an interface plugged in": lambda t: plugged(t, INTERFACE, '"eth0"', '"eth1"'),
    "an interface gone": lambda t: replace_lines(t, INTERFACE, []),
    "a CPU plugged in": lambda t: plugged(t, CPU_ROW, 'cpu="0"', 'cpu="7"'),
    "an item added": lambda t: t.replace(MEM_FREE, 'kata_guest_meminfo{item="zz"} 1\n' + MEM_FREE),
    "a line it does not read removed": lambda t: replace_lines(t, UNREAD_VM_STAT, []),
    "a read line broken": lambda t: t.replace(MEM_FREE, 'kata_guest_meminfo{item="mem_free} '),
    "a read line relabelled": lambda t: t.replace(MEM_FREE, MEM_FREE.replace("free", "freed")),
    "a family gone": lambda t: without_block(t, "kata_guest_tasks"),
    # Declined by its extra line; the check for a family written twice is tested below.
    "a family written twice, with a line of its own": lambda t: t.replace(
        "# HELP kata_guest_cpu_time ",
        "# HELP kata_guest_tasks again\n# TYPE kata_guest_tasks gauge\n"
        'kata_guest_tasks{item="extra"} 1\n# HELP kata_guest_cpu_time ',
    ),
}


@pytest.mark.parametrize("flavour", [Flavour.GO, Flavour.RUST])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_of_what_could_be_read_is_declined(flavour: Flavour, change: str) -> None:
    text = body_of(flavour)
    changed = CHANGES[change](body_of(flavour, NOW + 5))
    assert changed != body_of(flavour, NOW + 5)
    layout = layout_of(text)
    assert layout.read(changed) is None
    read_the_usual_way(changed, layout)


def test_a_block_a_line_shorter_is_declined_even_if_a_help_line_follows_it() -> None:
    # The next block's `# HELP` line must not count as the missing line.
    text = body_of(Flavour.RUST)
    blocks = text.rstrip("\n").split("\n# HELP ")
    at = next(i for i, b in enumerate(blocks) if b.startswith("kata_guest_vm_stat "))
    blocks[at] = blocks[at].rsplit("\n", 1)[0] + "\n# HELP go_nothing_here x"
    shorter = "\n# HELP ".join(blocks) + "\n"
    layout = layout_of(text)
    assert layout.read(shorter) is None
    read_the_usual_way(shorter, layout)


@pytest.mark.parametrize(
    "value",
    # `float` takes the last three; the exposition format does not, nor does a parse.
    ["12abc", "1 2", "1\t2", "", "1,5", "1 ", "0x10", "1_000", "\u0661\u0662"],
)
def test_a_value_off_the_format_or_anything_after_it_is_declined(value: str) -> None:
    text = body_of(Flavour.GO)
    changed = re.sub(re.escape(MEM_FREE) + r"\S+", MEM_FREE + value, body_of(Flavour.GO, NOW + 5))
    layout = layout_of(text)
    assert layout.read(changed) is None
    read_the_usual_way(changed, layout)


def test_a_family_that_appears_is_declined() -> None:
    text = body_of(Flavour.GO)
    layout = layout_of(without_block(text, "kata_guest_tasks"))
    assert layout.read(text) is None


def test_guest_blocks_are_found_wherever_they_are() -> None:
    text = body_of(Flavour.GO)
    layout = layout_of(text)
    first_guest = text.index("\n# HELP kata_guest_")
    # Tens of kilobytes of other families fewer, or more, before the guest's.
    blocks = text[:first_guest].split("\n# HELP ")
    shorter = "\n# HELP ".join(blocks[:1] + blocks[-3:]) + text[first_guest:]
    extra = "".join(f"# HELP go_extra_{i} x\ngo_extra_{i} 1\n" for i in range(500))
    longer = text.replace("# HELP go_goroutines ", extra + "# HELP go_goroutines ")
    for moved in (shorter, longer):
        assert abs(len(moved) - len(text)) > 16_000
        assert layout.read(moved) == figures(moved)
    # A guest block first in the body, right at its start, is found too.
    tasks = next(b for b in text.split("\n# HELP ") if b.startswith("kata_guest_tasks "))
    tasks_first = "# HELP " + tasks + "\n" + without_block(text, "kata_guest_tasks")
    assert layout.read(tasks_first) == figures(tasks_first)


def test_a_family_new_to_the_layout_is_declined_wherever_it_is() -> None:
    text = body_of(Flavour.GO)
    layout = layout_of(without_block(text, "kata_guest_tasks"))
    tasks = next(b for b in text.split("\n# HELP ") if b.startswith("kata_guest_tasks "))
    at_the_start = "# HELP " + tasks + "\n" + without_block(text, "kata_guest_tasks")
    for body in (text, at_the_start):
        assert figures(body).tasks
        assert layout.read(body) is None
        read_the_usual_way(body, layout)


def test_a_guest_block_last_in_a_body_without_a_final_newline_gets_no_layout() -> None:
    text = body_of(Flavour.RUST)
    tasks = next(b for b in text.split("\n# HELP ") if b.startswith("kata_guest_tasks "))
    last = without_block(text, "kata_guest_tasks").rstrip("\n") + "\n# HELP " + tasks + "\n"
    assert last.endswith("\n") and layout_of(last).read(last) == figures(last)
    unterminated = last.rstrip("\n")
    assert GuestLayout.of(unterminated, figures(unterminated)) is None


def test_a_figure_that_becomes_nan_or_infinite_reads_as_a_parse_reads_it() -> None:
    layout = layout_of(body_of(Flavour.GO))
    later = body_of(Flavour.GO, NOW + 5)
    for value in ("NaN", "+Inf", "-Inf", "1e3", ".5"):
        changed = re.sub(re.escape(MEM_FREE) + r"\S+", MEM_FREE + value, later)
        read = layout.read(changed)
        assert read is not None
        expected = figures(changed).meminfo["mem_free"]
        assert read.meminfo["mem_free"] == expected or math.isnan(expected)
        assert math.isnan(read.meminfo["mem_free"]) == math.isnan(expected)


# --- bodies a layout is not made for ---------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        # labels in another order than the plain shape's
        lambda t: t.replace(
            '{interface="eth0",item="recv_bytes"}', '{item="recv_bytes",interface="eth0"}'
        ),
        # a timestamp after a value it reads
        lambda t: re.sub(re.escape(MEM_FREE) + r"(\S+)", MEM_FREE + r"\1 1761003600000", t),
        # a figure on a line whose label value needs escaping
        lambda t: plugged(t, INTERFACE, '"eth0"', '"e\\\\th1"'),
    ],
)
def test_no_layout_for_figures_off_the_plain_shape(change: object) -> None:
    assert callable(change)
    text = change(body_of(Flavour.GO))
    sample = figures(text)
    assert parse(text).malformed_lines == 0 and not sample.empty
    assert GuestLayout.of(text, sample) is None
    assert digest_body(text.encode(), DISKS, whole=False).guest == sample


@pytest.mark.parametrize(
    "other_shape",
    ['kata_guest_meminfo{item="mem_free",} ', 'kata_guest_meminfo{ item="mem_free" } '],
)
def test_no_layout_when_a_parse_could_read_a_figure_from_another_line(other_shape: str) -> None:
    # The same series written another way before it, with the same value: a parse takes that
    # first line. A layout would read the second, and diverge once the two values do.
    text = body_of(Flavour.GO)
    value = re.search(re.escape(MEM_FREE) + r"(\S+)", text)
    assert value is not None
    doubled = text.replace(MEM_FREE, other_shape + value[1] + "\n" + MEM_FREE, 1)
    sample = figures(doubled)
    assert sample == figures(text) and parse(doubled).malformed_lines == 0
    assert GuestLayout.of(doubled, sample) is None


def test_no_layout_without_guest_figures() -> None:
    text = body_of(Flavour.NO_GUEST)
    assert GuestLayout.of(text, figures(text)) is None
    assert digest_body(text.encode(), DISKS, whole=False).layout is None


def test_no_layout_from_figures_the_body_does_not_hold() -> None:
    text = body_of(Flavour.GO)
    other = figures(body_of(Flavour.GO, NOW + 5))
    assert GuestLayout.of(text, other) is None  # it must give back what it was made from


# --- when a layout is made ------------------------------------------------------------------


@pytest.fixture
def layouts_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The bodies `GuestLayout.of` is called for, while the test runs."""
    calls: list[str] = []
    make = GuestLayout.of.__func__  # type: ignore[attr-defined]

    def counted(cls: type[GuestLayout], text: str, sample: GuestSample) -> GuestLayout | None:
        calls.append(text)
        result: GuestLayout | None = make(cls, text, sample)
        return result

    monkeypatch.setattr(GuestLayout, "of", classmethod(counted))
    return calls


def collections(bodies: list[str], whole_at: set[int]) -> list[BodyDigest]:
    """Digests of `bodies` as a collector makes them, whole at the indexes in `whole_at`."""
    digests: list[BodyDigest] = []
    previous: BodyDigest | None = None
    for index, text in enumerate(bodies):
        whole = index in whole_at
        previous = digest_next(text.encode(), DISKS, whole=whole, previous=previous)
        digests.append(previous)
    return digests


def test_a_layout_is_made_after_a_whole_check_and_when_it_no_longer_fits(
    layouts_made: list[str],
) -> None:
    bodies = [body_of(Flavour.GO, NOW + 5 * i) for i in range(5)]
    bodies.append(CHANGES["a disk plugged in"](body_of(Flavour.GO, NOW + 25)))
    bodies.append(CHANGES["a disk plugged in"](body_of(Flavour.GO, NOW + 30)))
    digests = collections(bodies, whole_at={1})
    # Not at the first collection (at start, hundreds come at once), nor at the whole check:
    # at the one after it, then again when a disk came.
    assert layouts_made == [bodies[2], bodies[5]]
    assert [d.layout is None for d in digests[:2]] == [True, True]
    made = digests[2].layout
    assert made is not None and digests[3].layout is made and digests[4].layout is made
    assert digests[5].layout is not None and digests[6].layout is digests[5].layout
    assert all(d.guest == figures(text) for d, text in zip(digests, bodies, strict=True))


def test_a_body_no_layout_fits_is_tried_once_after_each_whole_check(
    layouts_made: list[str],
) -> None:
    # A timestamp on a line it reads: read the usual way, and no layout fits.
    text = re.sub(
        re.escape(MEM_FREE) + r"(\S+)", MEM_FREE + r"\1 1761003600000", body_of(Flavour.GO)
    )
    digests = collections([text] * 9, whole_at={1, 6})
    assert len(layouts_made) == 2  # at collections 2 and 7
    assert all(d.layout is None and d.guest == figures(text) for d in digests)
    # Asked for after each whole check only (the whole checks themselves make none).
    assert [wants_layout(digest) for digest in digests] == [
        False, True, False, False, False, False, True, False, False
    ]  # fmt: skip


def test_a_body_that_needs_the_whole_parse_every_time_makes_no_layout(
    layouts_made: list[str],
) -> None:
    crlf = body_of(Flavour.GO).replace("\n", "\r\n")
    digest = digest_body(crlf.encode(), DISKS, whole=False, make_layout=True)
    assert digest.whole and digest.layout is None and layouts_made == []


# --- any edit: the figures of a full parse, or declined ---------------------------------------

_TEXT = body_of(Flavour.GO)
_LINES = _TEXT.split("\n")
_SAMPLE_LINES = [i for i, line in enumerate(_LINES) if line and not line.startswith("#")]
# Lines of the families the conversion reads (kata_guest_load is not one of them).
_GUEST_LINES = [i for i in _SAMPLE_LINES if _LINES[i].split("{")[0] in GUEST_SHAPES]
_LAYOUT = layout_of(_TEXT)
_VALID_NUMBERS = st.one_of(
    st.integers(min_value=-(10**15), max_value=10**15).map(str),
    st.floats(width=64).map(repr),  # nan and inf included
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e3", "1E-3", ".5", "5.", "-0"]),
)
_OTHER_VALUES = st.sampled_from(["1_000", "\u0661", "0x10", "1 2", "", "1,5", "12abc"])


def _same_figures(read: GuestSample, parsed: GuestSample) -> bool:
    """Equal, with NaN equal to NaN."""
    return repr(read) == repr(parsed)


@settings(max_examples=200, deadline=None)
@given(
    values=st.dictionaries(st.sampled_from(_SAMPLE_LINES), _VALID_NUMBERS, max_size=200),
    broken=st.dictionaries(st.sampled_from(_SAMPLE_LINES), _OTHER_VALUES, max_size=3),
    renamed=st.lists(st.sampled_from(_GUEST_LINES), max_size=2),
    structural=st.sampled_from(["none", "insert", "delete"]),
    where=st.sampled_from(_GUEST_LINES),
    copied=st.sampled_from(_SAMPLE_LINES),
    order=st.randoms(use_true_random=False),
)
def test_any_edit_reads_as_a_parse_or_is_declined(
    values: dict[int, str],
    broken: dict[int, str],
    renamed: list[int],
    structural: str,
    where: int,
    copied: int,
    order: object,
) -> None:
    lines = list(_LINES)
    for number, value in {**values, **broken}.items():
        lines[number] = lines[number].rsplit(" ", 1)[0] + " " + value
    for number in renamed:  # in place, into a line no figure is read from
        lines[number] = lines[number].replace('item="', 'item="renamed_', 1)
    if structural == "insert":
        lines.insert(where, lines[copied])
    elif structural == "delete":
        del lines[where]
    # Blocks in any order, as the Go shim writes the agent's.
    blocks = "\n".join(lines).rstrip("\n").split("\n# HELP ")
    rest = blocks[1:]
    order.shuffle(rest)  # type: ignore[attr-defined]
    text = "\n# HELP ".join([blocks[0], *rest]) + "\n"
    read = _LAYOUT.read(text)
    parsed = figures(text)
    if structural != "none":
        assert read is None  # a line more or fewer in a guest block
    elif not broken and not renamed:
        assert read is not None and _same_figures(read, parsed)
    if read is not None:
        assert _same_figures(read, parsed)
    usual = digest_body(text.encode(), DISKS, whole=False, layout=_LAYOUT)
    assert _same_figures(usual.guest, parsed)


@pytest.mark.parametrize("where", ["before every guest block", "among them", "after them"])
def test_a_family_written_twice_is_declined_wherever_its_second_block_is(where: str) -> None:
    # The second block has the very lines of the first, other values: only the search for the
    # guest blocks can tell. A parse keeps each series' first sample; a layout that read the
    # other block would give other figures.
    text = body_of(Flavour.GO, NOW + 5)
    tasks = next(b for b in text.split("\n# HELP ") if b.startswith("kata_guest_tasks "))
    second = re.sub(r"} \S+\n", "} 999\n", "# HELP " + tasks + "\n")
    assert second.count(" 999\n") == 2
    at = {
        "before every guest block": text.index("# HELP kata_guest_"),
        "among them": text.rindex("# HELP kata_guest_"),
        "after them": len(text),
    }[where]
    twice = text[:at] + second + text[at:]
    layout = layout_of(body_of(Flavour.GO))
    assert layout.read(text) == figures(text)
    assert layout.read(twice) is None
    read_the_usual_way(twice, layout)
