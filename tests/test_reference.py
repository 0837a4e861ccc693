"""docs/reference.md: every `feat` example compiles (with the examples above
it: the page reads as one repo, top to bottom), formats without changing
meaning, and the page covers every diagnostic code, aggregation and function."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from dsl import CODES, compile_files
from dsl.checker import AGGREGATIONS, SUPPORTED_AGGREGATIONS
from dsl.checker_expr import FUNCTIONS
from dsl.format import format_text

PAGE = Path(__file__).parent.parent / "docs" / "reference.md"
TEXT = PAGE.read_text()
BLOCKS = re.findall(r"^```feat\n(.*?)^```", TEXT, re.S | re.M)
EXAMPLES = BLOCKS[1:]   # the first holds the definitions the others build on


def _line_of(block: str) -> int:
    return TEXT[:TEXT.index(block)].count("\n") + 1


def _compile(block: str, text: str | None = None):
    """The block (or `text` in its place), as example.feat, with every block
    above it on the page."""
    above = BLOCKS[:BLOCKS.index(block)]
    return compile_files({**{f"above{i}.feat": b for i, b in enumerate(above)},
                          "example.feat": block if text is None else text})


def _not_computed_yet(d) -> bool:
    """E404 for an aggregation the engines do not compute yet: expected until
    the gate in dsl.checker_expr opens for it, then the example must compile."""
    m = re.fullmatch(r"aggregation '(\w+)' is not supported yet", d.message)
    return d.code == "E404" and m is not None and m.group(1) not in SUPPORTED_AGGREGATIONS


@pytest.mark.parametrize("block", EXAMPLES, ids=[f"line{_line_of(b)}" for b in EXAMPLES])
def test_example_compiles(block):
    result = _compile(block)
    errors = [d for d in result.errors if not _not_computed_yet(d)]
    assert not errors, result.render()
    assert not result.warnings, result.render()


FORMAT = pytest.mark.parametrize("block", BLOCKS, ids=[f"line{_line_of(b)}" for b in BLOCKS])


@FORMAT
def test_example_is_formatted(block):
    assert format_text("example.feat", block) == block


@FORMAT
def test_formatting_does_not_change_meaning(block):
    # No indentation, no alignment: fmt must rebuild the layout from the tree.
    scrambled = re.sub(r" {2,}", " ", re.sub(r"(?m)^ +", "", block))
    formatted = format_text("example.feat", scrambled)
    assert formatted == format_text("example.feat", block)
    before, after = _compile(block), _compile(block, formatted)
    assert before.plan == after.plan
    assert [(d.code, d.message) for d in before.diagnostics] == \
        [(d.code, d.message) for d in after.diagnostics]


def test_the_page_covers_every_code_aggregation_and_function():
    for code in CODES:
        assert f"| {code} |" in TEXT, f"{code} is missing from the table of diagnostics"
    examples = "\n".join(EXAMPLES)
    for name in (*AGGREGATIONS, *FUNCTIONS, "cast"):
        assert re.search(rf"\b{name}\(", examples), f"no example uses {name}()"
    for construct in ("import ", "lateness", "list<float32>", "case when", " is null",
                      "is not null", "batch csv", "batch table", "batch query", "stream kafka",
                      "stream files", "stream datagen", "owner", "tags", "description",
                      "service fraud v2", ".*", "over 1h, 1d"):
        assert construct in TEXT, construct
