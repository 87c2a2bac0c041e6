"""An anchored RLIKE's literal lead (``'^tr\\-b6.*'``): every value it matches starts with
the lead, so the probe seeks the lead in the byte-order index instead of reading every id
or value; likewise a request_id RLIKE's literal end (``'[0-9]a1$'``) in the reversed ids'
order.  The lead is proven sound against RE2 itself on random patterns, and anchored
patterns over ids and values answer as the reference evaluator does.  A literal RLIKE
(``'a'``, ``'^tr\\-1$'``) is planned as the LIKE that holds for the same values, proven
against RE2 the same way."""

from __future__ import annotations

import random
from collections.abc import Iterator

import hypothesis.strategies as st
import pytest
import re2
from hypothesis import given, settings

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client
from tracetags.keys import Keys
from tracetags.query import logical
from tracetags.query.parser import parse_filter
from tracetags.query.probe import probe_commands

ATOMS = (
    *("a", "b", "-", "\\-", "\\.", ".", "[0-9]", "[ab]", "*", "?", "+", "{2}", "{0,1}", "|"),
    *("(", ")", "(?i)", "$", "^", "\\d", "\\w", "é", "\\Q", "\\E", "A", "1", "\\b"),
    *("\\x41", "\\p{L}", "[]a]", "[^]b]", "[a-c]", "\\101", "{", "}", "[[:alpha:]]"),
)


@pytest.mark.parametrize(
    ("pattern", "lead"),
    [
        ("^zz[0-9]q", "zz"),
        ("^tr\\-b627$", "tr-b627"),
        ("^[A-Za-z]", None),
        ("^ab*", "a"),
        ("^ab+c", "ab"),
        ("^ab?", "a"),
        ("^a{2}", None),
        ("^a|^b", None),
        ("(?i)^ab", None),
        ("^(?i)ab", None),
        ("^tr-\\d", "tr-"),
        ("^\\Qa.b\\E", None),
        ("^é", None),
        ("ab", None),
        ("^a\\.b", "a.b"),
    ],
)
def test_the_lead_of_examples(pattern: str, lead: str | None) -> None:
    assert logical.regex_prefix(pattern) == lead


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.sampled_from(ATOMS), min_size=1, max_size=6),
    st.lists(st.text(alphabet="ab-.01Aé\n", max_size=6), min_size=1, max_size=8),
)
def test_every_match_starts_with_the_lead(atoms: list[str], values: list[str]) -> None:
    pattern = "^" + "".join(atoms)
    lead = logical.regex_prefix(pattern)
    if lead is None:
        return
    try:
        regex = re2.compile(pattern)
    except re2.error:
        return
    for value in [*values, lead, lead + "a", lead + "-1", lead[:-1]]:
        if regex.search(value) is not None:
            assert value.startswith(lead), (pattern, value, lead)


@pytest.mark.parametrize(
    ("pattern", "end"),
    [
        ("3_x$", "3_x"),
        ("[0-9]ab$", "ab"),
        ("ab*$", None),
        ("ab+$", None),
        ("a{2}$", None),
        ("a{2}b$", "b"),
        ("a\\$", None),
        ("a\\\\$", "a\\"),
        ("a\\.b$", "a.b"),
        ("a|b$", None),
        ("(?i)ab$", None),
        ("ab", None),
        ("ab$$", None),
        ("[]a]b$", "b"),
        ("[^]a]b$", "b"),
        ("x\\db$", None),  # (conservative: an escape's letters and digits are its argument)
        ("x\\d-b$", "-b"),
        ("é$", None),
        ("\\Qa$", None),
        ("[[:alpha:]]a$", None),
    ],
)
def test_the_end_of_examples(pattern: str, end: str | None) -> None:
    assert logical.regex_suffix(pattern) == end


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.sampled_from(ATOMS), min_size=1, max_size=6),
    st.lists(st.text(alphabet="ab-.01Aé]{}\n", max_size=6), min_size=1, max_size=8),
)
def test_every_match_ends_with_the_end(atoms: list[str], values: list[str]) -> None:
    """regex_suffix: the text sought in the reversed ids' order ends every match."""
    pattern = "".join(atoms) + "$"
    end = logical.regex_suffix(pattern)
    if end is None:
        return
    try:
        regex = re2.compile(pattern)
    except re2.error:
        return
    for value in [*values, end, "a" + end, "-1" + end, end[1:], end + "\n"]:
        if regex.search(value) is not None:
            assert value.endswith(end), (pattern, value, end)


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.sampled_from(ATOMS), min_size=1, max_size=7),
    st.lists(st.text(alphabet="ab-.01Aé]{}\n", max_size=8), min_size=1, max_size=8),
)
def test_every_match_holds_the_literal(atoms: list[str], values: list[str]) -> None:
    """regex_literal: the text the client tests before RE2 is in every match."""
    pattern = "".join(atoms)
    literal = logical.regex_literal(pattern)
    if literal is None:
        return
    try:
        regex = re2.compile(pattern)
    except re2.error:
        return
    for value in [*values, literal, "A" + literal, "a-1b" * 2]:
        if regex.search(value) is not None:
            assert literal in value, (pattern, value, literal)
    assert logical.pattern_predicate("RLIKE", pattern)("zz" + literal) == (
        regex.search("zz" + literal) is not None
    )


@pytest.mark.parametrize(
    ("pattern", "like"),
    [
        ("a", "%a%"),
        ("^tr\\-b627$", "tr-b627"),
        ("4379$", "%4379"),
        ("^IN", "IN%"),
        ("a\\$", "%a$%"),
        ("a\\\\$", "%a\\"),
        ("é$", "%é"),
        ("^IN_", None),
        ("50%", None),
        ("^[A-Za-z]", None),
        ("a.b", None),
        ("^$", None),
        ("\\d", None),
        ("a\\ b", None),
        ("(?i)a", None),
        ("a|b", None),
    ],
)
def test_the_like_of_examples(pattern: str, like: str | None) -> None:
    assert logical.regex_as_like(pattern) == like


LITERAL_ATOMS = ("a", "b", "-", "\\-", "\\.", "\\$", "\\\\", "$", "^", "é", "%", "_", ".", "\n")


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.sampled_from(LITERAL_ATOMS), min_size=1, max_size=6),
    st.lists(st.text(alphabet="ab-.$\\é\n%_", max_size=7), min_size=1, max_size=8),
)
def test_the_like_of_a_literal_regex_holds_for_what_re2_finds(
    atoms: list[str], values: list[str]
) -> None:
    pattern = "".join(atoms)
    like = logical.regex_as_like(pattern)
    if like is None:
        return
    regex = re2.compile(pattern)
    predicate = logical.pattern_predicate("LIKE", like)
    literal = like.strip("%")
    for value in [*values, literal, "\n" + literal, literal + "\n", "b" + literal + "a"]:
        assert predicate(value) == (regex.search(value) is not None), (pattern, like, value)


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    rng = random.Random(5)
    heads = ("tr-", "tr-a", "tr-b", "TR-", "ab", "a.b", "zz")
    traces = []
    for i in range(1500):
        traces.append(
            {
                "trace_id": f"{rng.choice(heads)}{i:05d}",
                "experiment_id": "1",
                "timestamp_ms": qd.BASE_MS + rng.randrange(50_000),
                "execution_time_ms": rng.randrange(100),
                "status": rng.choice(("OK", "ERROR")),
                "name": "n",
                "client_request_id": f"{rng.choice(heads)}{i % 300}",
                "tags": {"u": f"{rng.choice(heads)}{i % 400}"},
                "metadata": {},
            }
        )
    with qd.loaded(redis_url, "rxlead", 1, traces) as got:
        yield got


def _anchored(rng: random.Random) -> str:
    lead = rng.choice(("tr", "tr-", "tr\\-a", "TR", "a\\.b", "ab", "zz", "q"))
    tail = "".join(rng.choice(("", "[0-9]", "0*", "b?", "0+", ".", "1$", "$")) for _ in range(2))
    return f"^{lead}{tail}"


@pytest.mark.parametrize("seed", range(3))
def test_anchored_patterns_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], seed: int
) -> None:
    client, final = loaded
    rng = random.Random(seed)
    for _ in range(10):
        key = rng.choice(("request_id", "client_request_id", "tags.u"))
        filter_string = f"{key} RLIKE '{_anchored(rng)}'"
        for order in (None, ["request_id DESC"]):
            expected = ref.search(final, None, filter_string, order, None)
            assert all_pages(client, filter_string, order, 53) == expected, (filter_string, order)
        everything = ref.search(final, None, filter_string, None, None)
        assert client.count(filter_string) == len(everything), filter_string


def test_an_anchored_id_pattern_seeks_its_lead_instead_of_reading_every_id() -> None:
    def reads(filter_string: str) -> list[str]:
        root = logical.logical(parse_filter(filter_string), None)
        return [c[0] for c in probe_commands(root, Keys("x"), 0, page=True).commands]

    assert "IDSEEK" in reads("request_id RLIKE '^tr\\-b6[0-9]'")
    assert "HGETALL" not in reads("request_id RLIKE '^tr\\-b6[0-9]'")
    # unanchored: every id is read, or (a pattern Lua decides alike) a sample of them
    assert "HGETALL" in reads("request_id RLIKE 'b[6]+'")
    assert "IDSAMPLE" in reads("request_id RLIKE 'b[6]'")
    assert "HGETALL" not in reads("request_id RLIKE 'b[6]'")


@pytest.mark.parametrize("seed", range(2))
def test_anchored_patterns_over_windows_of_values_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]],
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Client request ids have no byte-order index: the values starting with the lead are
    kept by tt_query a window of values at a time (windows of 50 here, 300 values)."""
    monkeypatch.setattr("tracetags.query.budget.VALUES_WINDOW", 50)
    client, final = loaded
    rng = random.Random(100 + seed)
    for _ in range(8):
        filter_string = f"client_request_id RLIKE '{_anchored(rng)}'"
        expected = ref.search(final, None, filter_string, None, None)
        assert all_pages(client, filter_string, None, 61) == expected, filter_string


@pytest.fixture(scope="module")
def mostly_cr(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    traces = [
        {
            "trace_id": f"t{i:04d}",
            "experiment_id": "1",
            "timestamp_ms": qd.BASE_MS + i,
            "execution_time_ms": 1,
            "status": "OK",
            "name": "n",
            "client_request_id": f"{'zz' if i % 3 == 0 else 'cr'}-{i}",
            "tags": {},
            "metadata": {},
        }
        for i in range(400)
    ]
    with qd.loaded(redis_url, "crlead", 1, traces) as got:
        yield got


@pytest.mark.parametrize(
    "filter_string",
    [
        "client_request_id ILIKE 'CR%'",
        "client_request_id RLIKE '^cr'",
        "client_request_id ILIKE 'c_-1%'",
    ],
)
def test_values_kept_by_their_lead_are_not_taken_for_every_value(
    mostly_cr: tuple[Client, list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
    filter_string: str,
) -> None:
    """Windows of values kept by the lead (no byte-order index) are not every value of the
    key: a pattern matching most of them must not be planned as 'present AND NOT the few
    others' (that would take in the 'zz-' values the windows left out).  The sample is made
    to decline, so an ILIKE reads the values too."""
    monkeypatch.setattr("tracetags.query.budget.VALUES_WINDOW", 50)
    monkeypatch.setattr("tracetags.query.probe.TEST_MIN_MATCHES", 10**9)
    client, final = mostly_cr
    expected = ref.search(final, None, filter_string, None, None)
    assert len(expected) > 64
    assert all_pages(client, filter_string, None, 100) == expected
    assert client.count(filter_string) == len(expected)


@settings(max_examples=3000, deadline=None)
@given(
    st.text(alphabet="ab%_-\n\u0130", max_size=6),
    st.lists(st.text(alphabet="abAB-\n%_\u0130", max_size=7), min_size=1, max_size=10),
)
def test_like_shortcuts_equal_the_sql_definition(pattern: str, values: list[str]) -> None:
    """LIKE patterns of literal runs (``'a%'``, ``'%a'``, ``'a%b'``, ``'%a%'``) are decided
    by str methods: the same answers as the SQL definition written as a regex."""
    import re

    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    like, ilike = (
        logical.pattern_predicate("LIKE", pattern),
        logical.pattern_predicate("ILIKE", pattern),
    )
    for value in values:
        assert like(value) == (re.fullmatch(regex, value, re.DOTALL) is not None), value
        folded = "".join(
            ".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern.lower()
        )
        assert ilike(value) == (re.fullmatch(folded, value.lower(), re.DOTALL) is not None)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("request_id", "1$"),
        ("request_id", "^tr\\-a"),
        ("client_request_id", "tr\\-b1"),
        ("tags.u", "^zz1"),
        ("tags.u", "7$"),
        ("client_request_id", "^a\\.b12$"),
    ],
)
def test_literal_regexes_are_planned_as_likes_and_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], key: str, value: str
) -> None:
    client, final = loaded
    for op in ("RLIKE", "NOT RLIKE"):
        filter_string = f"{key} {op} '{value}'"
        text = client.explain(filter_string)
        assert "decided in the client" not in text, text
        for order in (None, ["tags.u DESC"]):
            expected = ref.search(final, None, filter_string, order, None)
            assert all_pages(client, filter_string, order, 41) == expected, (filter_string, order)
        everything = ref.search(final, None, filter_string, None, None)
        assert client.count(filter_string) == len(everything), filter_string
