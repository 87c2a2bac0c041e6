"""lua/pattern.lua (the M leaf's matcher) decides LIKE and ILIKE exactly as the client's
predicate (``pattern_predicate``): random values and patterns over an alphabet of the hard
cases (``%``, ``_``, multi-byte characters, the two non-ASCII characters whose lower case
holds ASCII), run in the real Redis's Lua by EVAL of the part's own text."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.lua_patterns import Script, lua_matches, pattern_script
from tracetags.query.logical import lua_pattern, pattern_predicate

ALPHABET = ["a", "b", "A", "B", "k", "K", "i", "I", "-", "_", "%", "é", "É", "日",
            "\u212a", "\u0130", "\u0307", "ß", "\U0001f600", "\n"]  # fmt: skip
values = st.lists(st.sampled_from(ALPHABET), max_size=8).map("".join)


@pytest.fixture(scope="module")
def script(redis_url: str) -> Iterator[Script]:
    with pattern_script(redis_url) as loaded:
        yield loaded


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    op=st.sampled_from(["LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"]),
    pattern=values,
    vals=st.lists(values, min_size=1, max_size=30),
)
def test_the_lua_matcher_decides_as_the_client_predicate(
    script: Script, op: str, pattern: str, vals: list[str]
) -> None:
    spec = lua_pattern(op, pattern)
    if spec is None:  # an ILIKE of a non-ASCII pattern: the client decides it
        assert op.removeprefix("NOT ") == "ILIKE" and not pattern.lower().isascii()
        return
    base = pattern_predicate(op, pattern)
    expected = [base(v) != op.startswith("NOT ") for v in vals]
    assert lua_matches(script, spec, vals) == expected, (op, pattern, vals)


@pytest.mark.parametrize(
    ("op", "pattern", "value", "matches"),
    [
        ("LIKE", "a%b", "ab", True),
        ("LIKE", "a%b", "a", False),
        ("LIKE", "a_b", "a日b", True),
        ("LIKE", "%_", "", False),
        ("LIKE", "%b%b%", "abab", True),
        ("LIKE", "%b%b%", "ab", False),
        ("LIKE", "_", "\U0001f600", True),
        ("LIKE", "", "", True),
        ("ILIKE", "k%", "\u212aelvin", True),
        ("ILIKE", "i_", "\u0130", True),  # U+0130 lowers to two characters
        ("ILIKE", "i", "\u0130", False),
        ("ILIKE", "T%", "tr-1", True),
        ("NOT ILIKE", "T%", "tr-1", False),
    ],
)
def test_known_cases(script: Script, op: str, pattern: str, value: str, matches: bool) -> None:
    spec = lua_pattern(op, pattern)
    assert spec is not None
    expected = pattern_predicate(op, pattern)(value) != op.startswith("NOT ")
    assert expected == matches
    assert lua_matches(script, spec, [value]) == [matches]
