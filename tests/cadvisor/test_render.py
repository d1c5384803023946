"""The per-sandbox memo of label texts: the same lines whatever it holds, and bounded."""

from __future__ import annotations

from pulse.cadvisor.families import CPU_USAGE, MEMORY_RSS, START_TIME
from pulse.cadvisor.render import BlockWriter, LabelTexts
from pulse.cadvisor.rows import Row

ROW = Row("app", "/kubepods/pod1/c1", "nginx:1.27", "c1", "shop", 'web "1"')


def lines(texts: LabelTexts) -> dict[str, bytes]:
    writer = BlockWriter(1_700_000_000_000, texts)
    writer.add(CPU_USAGE, ROW, 12.5, (("cpu", "total"),))
    writer.add(MEMORY_RSS, ROW, 2_080_374_784.0)
    writer.add(START_TIME, ROW, 1_699_990_000.0)
    writer.add(CPU_USAGE, ROW._replace(name="c2"), 0.0, (("cpu", "total"),))  # omitted
    return dict(writer.block())


def test_a_memo_carried_over_gives_the_lines_of_a_fresh_one_from_the_texts_it_holds() -> None:
    texts = LabelTexts()
    first = lines(texts)
    assert len(texts) == 2  # one per row and extras, shared by families; none for omitted
    held = dict(texts)
    assert lines(texts) == first == lines(LabelTexts())
    assert all(texts[key] is text for key, text in held.items())  # reused, not made again
    assert first[CPU_USAGE] == (
        b'container_cpu_usage_seconds_total{container="app",cpu="total",id="/kubepods/pod1/c1",'
        b'image="nginx:1.27",name="c1",namespace="shop",pod="web \\"1\\""} 12.5 1700000000000\n'
    )
    assert first[MEMORY_RSS].endswith(b'"} 2.080374784e+09 1700000000000\n')
    assert first[START_TIME].endswith(b'"} 1.69999e+09\n')


def test_a_memo_past_its_bound_starts_afresh() -> None:
    texts = LabelTexts()
    for number in range(LabelTexts.MAX_ENTRIES):
        assert texts[ROW._replace(name=f"c{number}"), ()].count(f'name="c{number}"') == 1
    assert len(texts) == LabelTexts.MAX_ENTRIES
    assert 'name="new"' in texts[ROW._replace(name="new"), ()]
    assert len(texts) == 1
