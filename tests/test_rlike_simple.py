"""RLIKE patterns of the simple form (query/rlike.py) are decided as RE2 decides them: by
Python's re in the client, and by Lua's string.find on each candidate inside tt_query (run
in the real Redis's Lua, by EVAL of lua/pattern.lua's own text).  Random patterns over an
alphabet of the hard cases (operators, escapes, classes and ranges, anchors, multi-byte
characters, a newline before the end) against random values."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.lua_patterns import Script, lua_matches, pattern_script
from tracetags.query import rlike
from tracetags.query.logical import lua_pattern, pattern_predicate

VALUE_CHARS = ["a", "b", "A", "z", "0", "5", "9", "-", "_", ".", "%", "$", "^", " ", "]",
               "é", "日", "\U0001f600", "\n", "\r"]  # fmt: skip
PATTERN_PIECES = ["a", "b", "A", "0", "5", "-", "_", "%", " ", "é", "日", ".", "^", "$",
                  "[0-9]", "[a-z]", "[A-Za-z]", "[^a]", "[^0-9]", "[-a]", "[a-]", "[%_]",
                  "[é日]", "\\-", "\\.", "\\$", "\\^", "\\[", "\\\\", "\\d", "*", "+", "?",
                  "(", ")", "|", "{2}", "[", "]", "[]"]  # fmt: skip
values = st.lists(st.sampled_from(VALUE_CHARS), max_size=10).map("".join)
patterns = st.lists(st.sampled_from(PATTERN_PIECES), max_size=6).map("".join)


def _re2(pattern: str) -> re2._Regexp | None:
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern.encode(), options)
    except (re2.error, ValueError):
        return None


def _never_asked(value: str) -> bool:
    raise AssertionError(f"a short value went to the long values' search: {value!r}")


@settings(max_examples=600, deadline=None)
@given(pattern=patterns, vals=st.lists(values, min_size=1, max_size=20))
def test_the_client_decides_simple_patterns_as_re2(pattern: str, vals: list[str]) -> None:
    compiled = _re2(pattern)
    simple = rlike.simple_search(pattern, _never_asked)
    if simple is None:
        return
    assert compiled is not None, pattern  # the simple form is always valid RE2
    for v in vals:
        assert simple(v) == (compiled.search(v.encode()) is not None), (pattern, v)
    predicate = pattern_predicate("RLIKE", pattern)
    assert [predicate(v) for v in vals] == [simple(v) for v in vals]


@pytest.fixture(scope="module")
def script(redis_url: str) -> Iterator[Script]:
    with pattern_script(redis_url) as loaded:
        yield loaded


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    op=st.sampled_from(["RLIKE", "NOT RLIKE"]),
    pattern=patterns,
    vals=st.lists(values, min_size=1, max_size=20),
)
def test_the_lua_matcher_decides_simple_patterns_as_re2(
    script: Script, op: str, pattern: str, vals: list[str]
) -> None:
    spec = lua_pattern(op, pattern)
    if spec is None:
        return
    compiled = _re2(pattern)
    assert compiled is not None, pattern
    negated = op.startswith("NOT ")
    expected = [(compiled.search(v.encode()) is not None) != negated for v in vals]
    assert lua_matches(script, spec, vals) == expected, (op, pattern, spec, vals)


@pytest.mark.parametrize(
    ("pattern", "lua"),
    [
        ("-[0-9]", "%-[0-9]"),
        ("^[A-Za-z]", "^[A-Za-z]"),
        ("MA\\-2$", "MA%-2$"),
        ("[a-]", "[a%-]"),
        ("50%_x", "50%%%_x"),
        # the client decides these: '.' and a negated class match a character, which Lua
        # would match as a byte; a non-ASCII literal; quantifiers, groups, \d
        ("a.b", None),
        ("[^a]", None),
        ("é", None),
        ("a+", None),
        ("(ab)", None),
        ("\\d", None),
        ("a|b", None),
    ],
)
def test_lua_forms(pattern: str, lua: str | None) -> None:
    assert rlike.lua_form(pattern) == lua
    assert lua_pattern("RLIKE", pattern) == (None if lua is None else ("R", 0, lua))


def test_simple_forms_cover_the_common_shapes() -> None:
    for pattern in ("-[0-9]", "^[A-Za-z]", "9624$", "a.b", "[^0-9]x", "é$"):
        assert rlike.simple_search(pattern, _never_asked) is not None, pattern
    for pattern in ("a*", "a{2}", "(a)", "a|b", "\\w", "[[:alpha:]]", "[a-9]", "a$b"):
        assert rlike.simple_search(pattern, _never_asked) is None, pattern
    # too many items for re's search to stay within RE2's order of work on long values
    assert rlike.simple_search("[a]" * rlike.ITEMS_MAX, _never_asked) is not None
    assert rlike.simple_search("[a]" * (rlike.ITEMS_MAX + 1), _never_asked) is None
    assert rlike.lua_form("a" * (rlike.ITEMS_MAX + 1)) is None


@settings(max_examples=200, deadline=None)
@given(pattern=patterns, vals=st.lists(values, min_size=1, max_size=20))
def test_long_values_are_decided_by_re2(pattern: str, vals: list[str]) -> None:
    """Past RE_WORK_MAX characters over the pattern's items a value goes to RE2 (here
    every value of over 2 characters); both ways answer alike."""
    compiled = _re2(pattern)
    saved = rlike.RE_WORK_MAX
    rlike.RE_WORK_MAX = 2  # type: ignore[misc]
    try:
        predicate = pattern_predicate("RLIKE", pattern)
    finally:
        rlike.RE_WORK_MAX = saved  # type: ignore[misc]
    if compiled is None:
        assert not any(predicate(v) for v in vals)
        return
    for v in vals:
        assert predicate(v) == (compiled.search(v.encode()) is not None), (pattern, v)
