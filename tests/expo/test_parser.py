"""The shim body parser: agreement with prometheus_client, tolerance, and the fast index."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pulse.expo.parser import Family, ParsedBody, Sample, parse

FIXTURES = Path(__file__).parent.parent / "fixtures" / "shim"


def tricky() -> ParsedBody:
    return parse((FIXTURES / "tricky.prom").read_text())


def _same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _counter_name(name: str) -> str:
    # prometheus_client follows OpenMetrics for counters: the family loses a `_total`
    # suffix and every sample gains one. Compare names without it.
    return name.removesuffix("_total")


def assert_agrees_with_prometheus_client(text: str) -> None:
    parsed = parse(text)
    assert parsed.malformed_lines == 0, parsed.first_error
    reference = {family.name: family for family in text_string_to_metric_families(text)}
    ours = {
        _counter_name(name) if family.type == "counter" else name: family
        for name, family in parsed.families.items()
    }
    assert list(ours) == list(reference)
    for name, family in ours.items():
        expected = reference[name]
        assert family.type == ("untyped" if expected.type == "unknown" else expected.type)
        assert family.help == expected.documentation
        counter = family.type == "counter"
        got = [
            (_counter_name(s.name) if counter else s.name, dict(s.labels), s.value)
            for s in family.samples
        ]
        want = [
            (_counter_name(s.name) if counter else s.name, s.labels, s.value)
            for s in expected.samples
        ]
        assert [g[:2] for g in got] == [w[:2] for w in want], name
        assert all(_same_value(g[2], w[2]) for g, w in zip(got, want, strict=True)), name


@pytest.mark.parametrize(
    "body", sorted(p.name for p in FIXTURES.glob("*.prom") if p.name != "tricky.prom")
)
def test_fixture_bodies_agree_with_prometheus_client(body: str) -> None:
    assert_agrees_with_prometheus_client((FIXTURES / body).read_text())


def test_values_in_every_notation() -> None:
    meminfo = tricky().families["kata_guest_meminfo"].index("item")
    assert meminfo[("mem_total",)] == 2071527424.0
    assert meminfo[("mem_free",)] == 1249280.0
    assert meminfo[("cached",)] == 123456789.0
    assert meminfo[("buffers",)] == 0.5
    load = {s.label("item"): s.value for s in tricky().families["kata_guest_load"].samples}
    assert load == {"load1": 0.25, "load5": 5.0, "": 3.0}


def test_nan_and_infinities() -> None:
    families = tricky().families
    summary = {s.label("quantile"): s.value for s in families["go_gc_duration_seconds"].samples}
    assert math.isnan(summary["1"])
    netdev = families["kata_hypervisor_netdev"].index("interface", "item")
    assert netdev[("tap0_kata", "recv_bytes")] == math.inf
    assert netdev[('eth"0\\x\nnew', "sent_bytes")] == -math.inf


def test_escaped_label_values_and_help() -> None:
    family = tricky().families["kata_hypervisor_netdev"]
    assert family.help == "Net devices statistics.\nSecond line with a \\ backslash."
    interfaces = [s.label("interface") for s in family.samples]
    assert interfaces == ["tap0_kata", 'eth"0\\x\nnew', "lo"]


def test_whitespace_and_trailing_comma_in_label_sets() -> None:
    samples = tricky().families["kata_hypervisor_netdev"].samples
    assert samples[2] == Sample(
        "kata_hypervisor_netdev", (("interface", "lo"), ("item", "recv_bytes")), 1000.0
    )


def test_histogram_and_summary_samples_belong_to_their_family() -> None:
    families = tricky().families
    histogram = families["kata_shim_rpc_durations_histogram_milliseconds"]
    assert histogram.type == "histogram"
    assert [s.name.rsplit("_", 1)[1] for s in histogram.samples] == [
        "bucket",
        "bucket",
        "sum",
        "count",
    ]
    assert histogram.samples[1].labels == (("action", "create"), ("le", "+Inf"))
    summary = families["go_gc_duration_seconds"]
    assert summary.type == "summary"
    assert [s.name for s in summary.samples][-2:] == [
        "go_gc_duration_seconds_sum",
        "go_gc_duration_seconds_count",
    ]
    assert "go_gc_duration_seconds_sum" not in families


def test_malformed_lines_are_counted_and_skipped_not_the_body() -> None:
    parsed = tricky()
    # Lines 25-29: free text, unterminated label set, unquoted label value, non-numeric value,
    # unknown TYPE.
    assert parsed.malformed_lines == 5
    assert parsed.first_error is not None
    assert parsed.first_error.startswith("line 25: ")
    assert "broken_type" not in parsed.families
    netdev = parsed.families["kata_hypervisor_netdev"]
    assert len(netdev.samples) == 3  # the valid ones around the bad lines are kept


def test_family_repeated_by_another_registry_is_merged_first_header_wins() -> None:
    family = tricky().families["kata_guest_meminfo"]
    assert family.help == "Statistics about memory usage in the system."
    assert len(family.chunks) == 2
    assert [s.label("item") for s in family.samples][-1] == "inactive_file"
    assert family.index("item")[("inactive_file",)] == 1024.0


def test_untyped_samples_without_header_and_timestamps() -> None:
    family = tricky().families["kata_untyped_thing"]
    assert (family.type, family.help) == ("untyped", "")
    assert family.samples[0] == Sample("kata_untyped_thing", (), 42.0, 1700000000123)
    assert family.samples[1].timestamp_ms is None


def test_family_order_is_order_of_first_appearance() -> None:
    assert list(tricky().families) == [
        "kata_guest_meminfo",
        "kata_shim_rpc_durations_histogram_milliseconds",
        "go_gc_duration_seconds",
        "kata_hypervisor_netdev",
        "kata_untyped_thing",
        "kata_guest_load",
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_bodies_without_samples(text: str) -> None:
    parsed = parse(text)
    assert (dict(parsed.families), parsed.malformed_lines, parsed.first_error) == ({}, 0, None)


def test_crlf_and_missing_final_newline() -> None:
    parsed = parse('# TYPE a gauge\r\na{x="1"} 1\r\na{x="2"} 2')
    assert parsed.malformed_lines == 0
    assert [s.value for s in parsed.families["a"].samples] == [1.0, 2.0]


def test_a_body_of_garbage_is_all_malformed() -> None:
    parsed = parse("<html>\n<body>502 Bad Gateway</body>\n</html>\n")
    assert parsed.malformed_lines == 3
    assert not parsed.families
    assert parsed.first_error is not None
    assert parsed.first_error.startswith("line 1: ")


def test_index_selects_only_wanted_label_values() -> None:
    body = (
        "# HELP kata_guest_cpu_time Guest CPU stats.\n# TYPE kata_guest_cpu_time gauge\n"
        + "".join(
            f'kata_guest_cpu_time{{cpu="{cpu}",item="{item}"}} {n}\n'
            for n, (cpu, item) in enumerate(
                (c, i) for c in ("total", "0", "1") for i in ("user", "nice", "idle")
            )
        )
    )
    family = parse(body).families["kata_guest_cpu_time"]
    assert family.index("cpu", "item", where={"cpu": ["total"]}) == {
        ("total", "user"): 0.0,
        ("total", "nice"): 1.0,
        ("total", "idle"): 2.0,
    }
    # Samples with more labels than the keys still count; the first of equal keys wins.
    assert family.index("item", where={"item": ["idle"]}) == {("idle",): 2.0}
    assert family.index("cpu", "item", where={"cpu": []}) == {}
    assert len(family.index("cpu", "item")) == 9


def test_index_falls_back_when_a_shim_orders_labels_differently() -> None:
    body = (
        "# TYPE kata_guest_diskstat gauge\n"
        'kata_guest_diskstat{disk="vda",item="reads"} 1\n'
        'kata_guest_diskstat{item="writes",disk="vda"} 2\n'
        'kata_guest_diskstat{item="reads",disk="ram0"} 3\n'
    )
    family = parse(body).families["kata_guest_diskstat"]
    assert family.index("disk", "item", where={"disk": ["vda"]}) == {
        ("vda", "reads"): 1.0,
        ("vda", "writes"): 2.0,
    }


def _diskstat(lines: list[tuple[str, str, str]]) -> Family:
    body = "# HELP kata_guest_diskstat Disks.\n# TYPE kata_guest_diskstat gauge\n" + "".join(
        f'kata_guest_diskstat{{disk="{disk}",item="{item}"}} {value}\n'
        for disk, item, value in lines
    )
    return parse(body).families["kata_guest_diskstat"]


def _label_values_by_index(family: Family) -> list[str]:
    return [disk for disk, _ in family.index("disk", "item", where={"item": ["reads"]})]


def test_label_values_lists_each_value_once_in_body_order() -> None:
    family = _diskstat(
        [
            ("vdb", "reads", "1"),
            ("vdb", "writes", "2"),
            ("vda", "reads", "3"),
            ("ram0", "writes", "4"),  # no reads line: not listed
            ("vdb", "reads", "5"),  # a duplicate: listed once, where it first appeared
            ("vd-c", "reads_merged", "6"),  # an item that only starts like the wanted one
            ("reads", "reads", "7"),  # a value equal to the wanted item
        ]
    )
    expected = ["vdb", "vda", "reads"]
    assert family.label_values("disk", where=("item", "reads")) == expected
    assert _label_values_by_index(family) == expected


def test_label_values_falls_back_when_the_family_is_not_keyed_so() -> None:
    body = (
        "# TYPE kata_guest_diskstat gauge\n"
        'kata_guest_diskstat{disk="vda",item="reads"} 1\n'
        'kata_guest_diskstat{item="reads",disk="vdb"} 2\n'
        'kata_guest_diskstat{disk="v\\"dc",item="reads"} 3\n'
    )
    family = parse(body).families["kata_guest_diskstat"]
    assert family.label_values("disk", where=("item", "reads")) == ["vda", "vdb", 'v"dc']


def test_label_values_of_an_unvalidated_block_names_no_disk_from_a_broken_line() -> None:
    # Only assumed keyed (as parse_selected leaves it with validate=False): a line cut short,
    # a name with an escape or a quote, a value that is not the line's last word, and a line
    # that does not start with the family's name each give no disk.
    family = Family(
        "kata_guest_diskstat",
        "gauge",
        "",
        (
            'kata_guest_diskstat{disk="vda",item="reads"} 1\n'
            'kata_guest_diskstat{disk="vdb\n'
            'x",item="reads"} 2\n'
            'kata_guest_diskstat{disk="a\\",item="reads"} 3\n'
            'kata_guest_diskstat{disk="new\\nx",item="reads"} 4\n'
            'kata_guest_diskstat{disk="stamped",item="reads"} 5 1700000000000\n'
            'kata_guest_diskstat{disk="no_value",item="reads"} \n'
            'kata_guest_diskstat{disk="two_spaces",item="reads"}  6\n'
            '#kata_guest_diskstat{disk="comment",item="reads"} 7\n'
            'kata_guest_diskstat{disk="vdc",item="reads"} 8\n',
        ),
        (True,),
    )
    family.mark_keyed(("disk", "item"))
    assert family.label_values("disk", where=("item", "reads")) == ["vda", "vdc"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z0-9_.\-]{0,6}", fullmatch=True),
            st.sampled_from(["reads", "writes", "reads_merged", "xreads"]),
            st.sampled_from(["0", "12", "3.5", "1e+06"]),
        ),
        max_size=40,
    )
)
def test_label_values_agrees_with_index(lines: list[tuple[str, str, str]]) -> None:
    family = _diskstat(lines)
    assert family.label_values("disk", where=("item", "reads")) == _label_values_by_index(family)


_BROKEN_READS_LINES = (
    'kata_guest_diskstat{{disk="{}",item="reads"}} 1 1700000000000\n',
    'kata_guest_diskstat{{disk="{}",item="reads"}} \n',
    'kata_guest_diskstat{{disk="{}",item="reads"}}  1\n',
    'kata_guest_diskstat{{disk="{}\\",item="reads"}} 1\n',
    'kata_guest_diskstat{{disk="{}",item="reads"}} 1 x\n',
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z0-9]{0,4}", fullmatch=True),
            st.sampled_from(["reads", "writes"]),
            st.integers(min_value=-1, max_value=len(_BROKEN_READS_LINES) - 1),
        ),
        max_size=30,
    )
)
def test_label_values_of_an_unvalidated_block_agrees_with_index(
    lines: list[tuple[str, str, int]],
) -> None:
    # Whatever a broken line looks like, it names the disks index would name, no more.
    chunk = "".join(
        _BROKEN_READS_LINES[broken].format(disk)
        if broken >= 0
        else f'kata_guest_diskstat{{disk="{disk}",item="{item}"}} 2\n'
        for disk, item, broken in lines
    )
    family = Family("kata_guest_diskstat", "gauge", "", (chunk,) if chunk else (), (True,))
    family.mark_keyed(("disk", "item"))
    assert family.label_values("disk", where=("item", "reads")) == _label_values_by_index(family)


# --- Property: whatever we write, we read back --------------------------------------------------

_names = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: not n.endswith(("_bucket", "_sum", "_count", "_created"))
)
_label_values = st.text(alphabet=st.sampled_from(list('ab z0,{}="\\\n=é')), min_size=0, max_size=8)
_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True, width=64),
    st.integers(min_value=-(10**15), max_value=10**15).map(float),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _render(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@st.composite
def _bodies(
    draw: st.DrawFn,
) -> tuple[str, dict[str, list[tuple[tuple[tuple[str, str], ...], float]]]]:
    names = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    expected: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
    lines: list[str] = []
    for name in names:
        keys = draw(
            st.lists(st.sampled_from(["cpu", "item", "disk", "le"]), unique=True, max_size=2)
        )
        lines += [f"# HELP {name} help of {name}", f"# TYPE {name} gauge"]
        rows = draw(
            st.lists(st.tuples(st.tuples(*[_label_values] * len(keys)), _values), max_size=5)
        )
        seen = set()
        for label_values, value in rows:
            if label_values in seen:
                continue
            seen.add(label_values)
            labels = tuple(zip(keys, label_values, strict=True))
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(
                f"{name}{{{text}}} {_render(value)}" if labels else f"{name} {_render(value)}"
            )
            expected.setdefault(name, []).append((labels, value))
    return "\n".join(lines) + "\n", expected


@settings(max_examples=150, deadline=None)
@given(_bodies())
def test_round_trip_of_generated_bodies(
    case: tuple[str, dict[str, list[tuple[tuple[tuple[str, str], ...], float]]]],
) -> None:
    text, expected = case
    parsed = parse(text)
    assert parsed.malformed_lines == 0, parsed.first_error
    for name, rows in expected.items():
        family: Family = parsed.families[name]
        assert [(s.labels, s.value) for s in family.samples] == rows
        keys = tuple(k for k, _ in rows[0][0])
        assert family.index(*keys) == {tuple(v for _, v in labels): value for labels, value in rows}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet=st.sampled_from(list('ab{}="# \\\t1.e+')), max_size=20), max_size=10)
)
def test_arbitrary_text_never_raises_and_counts_add_up(lines: list[str]) -> None:
    text = "\n".join(lines)
    parsed = parse(text)
    total = sum(1 for line in lines if line.strip())
    samples = sum(len(f.samples) for f in parsed.families.values())
    assert samples + parsed.malformed_lines <= total
    assert (parsed.malformed_lines == 0) == (parsed.first_error is None)


@pytest.mark.parametrize("body", sorted(p.name for p in FIXTURES.glob("*.prom")))
def test_fast_index_equals_reading_every_sample(body: str) -> None:
    parsed = parse((FIXTURES / body).read_text())
    for family in parsed.families.values():
        keys = tuple(name for name, _ in family.samples[0].labels) if family.samples else ()
        by_samples: dict[tuple[str, ...], float] = {}
        for sample in family.samples:
            if sample.name == family.name and tuple(k for k, _ in sample.labels) == keys:
                by_samples.setdefault(tuple(v for _, v in sample.labels), sample.value)
        fast = family.index(*keys)
        assert fast.keys() == by_samples.keys(), family.name
        assert all(_same_value(fast[k], by_samples[k]) for k in fast), family.name


def test_index_falls_back_when_lines_have_extra_labels() -> None:
    body = '# TYPE m gauge\nm{disk="vda",item="reads"} 1\nm{disk="vda",item="writes",extra="x"} 2\n'
    family = parse(body).families["m"]
    assert family.canonical == (True,)
    assert family.index("disk", "item") == {("vda", "reads"): 1.0, ("vda", "writes"): 2.0}
