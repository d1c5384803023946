"""kata-monitor compatible aggregation: injected labels, renames, headers, filter, conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse.expo.parser import Sample, parse
from pulse.katamon import (
    KataBlock,
    assemble_kata,
    emitted_name,
    kata_pieces,
    parse_filter_family,
)
from pulse.model import Labels

FIXTURES = Path(__file__).parent.parent / "fixtures" / "shim"
IDENTITY = ("sandbox_id", "cri_uid", "cri_name", "cri_namespace")


def labels_for(sandbox_id: str) -> Labels:
    return Labels(sandbox_id, pod_name=f'pod "{sandbox_id[:4]}"\\', namespace="ns", uid="u-1")


def _comparable(samples: dict[str, list[Sample]]) -> dict[str, list[tuple[object, ...]]]:
    """NaN is not equal to itself: compare values by their text."""
    return {
        name: [(*s[:2], repr(s.value), s.timestamp_ms) for s in ss] for name, ss in samples.items()
    }


def injected(labels: Labels) -> tuple[tuple[str, str], ...]:
    return (
        ("sandbox_id", labels.sandbox_id),
        ("cri_uid", labels.uid),
        ("cri_name", labels.pod_name),
        ("cri_namespace", labels.namespace),
    )


@pytest.mark.parametrize("body", ["go.1.prom", "runtime-rs.1.prom", "tricky.prom"])
def test_every_sample_comes_back_with_identity_labels_appended(body: str) -> None:
    source = parse((FIXTURES / body).read_text())
    labels = labels_for("a" * 64)
    output = parse(assemble_kata([KataBlock(source, labels)]).decode())
    assert output.malformed_lines == 0, output.first_error
    expected = {
        emitted_name(name): [
            Sample(
                emitted_name(name) + s.name[len(name) :],
                s.labels + injected(labels),
                s.value,
                s.timestamp_ms,
            )
            for s in family.samples
        ]
        for name, family in source.families.items()
        if family.samples
    }
    got = {name: list(family.samples) for name, family in output.families.items()}
    assert _comparable(got) == _comparable(expected)
    for name, family in output.families.items():
        assert (
            family.type
            == source.families[
                name.removeprefix("kata_shim_")
                if name.startswith(("kata_shim_go_", "kata_shim_process_"))
                else name
            ].type
        )


def test_go_and_process_collectors_are_renamed() -> None:
    source = parse((FIXTURES / "go.1.prom").read_text())
    text = assemble_kata([KataBlock(source, labels_for("b" * 64))]).decode()
    assert "\nkata_shim_go_gc_duration_seconds_sum{" in text
    assert "# TYPE kata_shim_go_gc_duration_seconds summary\n" in text
    assert "# TYPE kata_shim_process_cpu_seconds_total counter\n" in text
    assert "\ngo_" not in text and "\nprocess_" not in text and not text.startswith("go_")


def test_one_header_per_family_sorted_and_samples_contiguous() -> None:
    blocks = [
        KataBlock(parse((FIXTURES / f"{flavour}.1.prom").read_text()), labels_for(sid * 64))
        for flavour, sid in (("go", "c"), ("firecracker", "a"), ("runtime-rs", "b"))
    ]
    text = assemble_kata(blocks).decode()
    type_lines = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert type_lines == sorted(set(type_lines))
    # Within a family, sandboxes appear in sandbox id order, each once.
    meminfo = [line for line in text.splitlines() if line.startswith("kata_guest_meminfo{")]
    order = [line.split('sandbox_id="')[1][0] for line in meminfo]
    assert order == sorted(order) and len(meminfo) == 3 * 58
    parsed = parse(text)
    assert parsed.malformed_lines == 0
    assert all(len(family.chunks) >= 1 for family in parsed.families.values())


def test_filter_family_keeps_families_by_prefix() -> None:
    block = KataBlock(parse((FIXTURES / "go.1.prom").read_text()), labels_for("d" * 64))
    text = assemble_kata([block], ("kata_guest_cpu", "kata_shim_go_")).decode()
    families = set(parse(text).families)
    assert "kata_guest_cpu_time" in families
    assert "kata_shim_go_goroutines" in families
    assert not [f for f in families if not f.startswith(("kata_guest_cpu", "kata_shim_go_"))]
    assert parse_filter_family(" kata_guest_cpu, ,kata_shim_go_") == (
        "kata_guest_cpu",
        "kata_shim_go_",
    )
    assert parse_filter_family(None) == parse_filter_family("") == ()


def test_conflicting_types_keep_the_first_sandbox_and_drop_the_others_samples() -> None:
    gauge = parse("# HELP m a gauge\n# TYPE m gauge\nm 1\n")
    counter = parse("# HELP m a counter\n# TYPE m counter\nm 2\n")
    blocks = [KataBlock(counter, Labels("2" * 64)), KataBlock(gauge, Labels("1" * 64))]
    text = assemble_kata(blocks).decode()
    assert text.startswith("# HELP m a gauge\n# TYPE m gauge\n")
    assert [s.value for s in parse(text).families["m"].samples] == [1.0]


def test_empty_and_headerless_bodies() -> None:
    assert assemble_kata([KataBlock(parse(""), Labels("e" * 64))]) == b""
    text = assemble_kata([KataBlock(parse("up 1\n"), Labels("e" * 64))]).decode()
    assert text.endswith(
        'up{sandbox_id="' + "e" * 64 + '",cri_uid="",cri_name="",cri_namespace=""} 1\n'
    )


@pytest.mark.parametrize(
    "line",
    [
        'm{a="x\\"} 1"} 5',  # an escaped quote then "} " inside a value
        'm{a="} 1"} 5',  # a value that starts with "} "
        'm{a="1",} 5',  # a trailing comma
        'm { a = "1" } 5 1700000000000',  # blanks and a timestamp
        "m{} 5",
        "m\t5",
    ],
)
def test_unusual_lines_take_the_general_path_correctly(line: str) -> None:
    source = parse(f"# TYPE m gauge\n{line}\n")
    assert source.malformed_lines == 0
    labels = Labels("f" * 64, "p", "n", "u")
    output = parse(assemble_kata([KataBlock(source, labels)]).decode())
    assert output.malformed_lines == 0
    [before] = source.families["m"].samples
    [after] = output.families["m"].samples
    assert after == Sample("m", before.labels + injected(labels), before.value, before.timestamp_ms)


@pytest.mark.parametrize("prefixes", [(), ("kata_guest_cpu", "kata_shim_go_")])
def test_rendered_as_sent_in_bounded_pieces_it_is_the_same(prefixes: tuple[str, ...]) -> None:
    bodies = {
        sid * 64: parse((FIXTURES / f"{flavour}.1.prom").read_text())
        for sid, flavour in (("b", "go"), ("a", "runtime-rs"), ("c", "go"))
    }
    blocks = [KataBlock(parsed, labels_for(sid)) for sid, parsed in bodies.items()]
    whole = assemble_kata(blocks, prefixes)
    assert whole
    largest_family_share = max(
        len(block.lines(name) or b"") for block in blocks for name in block.types
    )
    pieces = list(kata_pieces(blocks, prefixes, piece_size=4096))
    assert b"".join(pieces) == whole
    assert len(pieces) > 2
    assert all(len(piece) < 4096 + largest_family_share + 4096 for piece in pieces)
