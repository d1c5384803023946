"""Coverage-guided fuzzing of the parser with atheris (libFuzzer): run by test_atheris.py, or
by hand for longer: `python tests/hostile/fuzz_parser_atheris.py -max_total_time=600`."""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from pulse.expo.parser import parse
    from pulse.pipeline import digest_body


def one_input(data: bytes) -> None:
    parsed = parse(data.decode("utf-8", "replace"))
    for family in parsed.families.values():
        for _ in family.samples:
            pass
        family.index("item")
    digest_body(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
