"""A sparse pattern's ids or values are narrowed by its needle (query/needle.py): the
needle is only a necessary condition, so a result equals testing every string with the
exact predicate (random strings and patterns, non-ASCII case folding and separators
included), and searches over keys of more values than a window (several needle windows)
equal the reference evaluator's, with the needle path taken."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client
from tracetags.query import needle
from tracetags.query.logical import pattern_predicate, regex_literal
from tracetags.query.needle import needle_hits, needle_of

# Characters whose lower case is longer (İ), ASCII (K Kelvin), context-dependent (Σ), the
# separator itself, and plain ones.
ALPHABET = "abAB-_%.xyz01Kk\u212a\u0130iI\u03a3\u03c3ßé日\x00"
PATTERN_ALPHABET = "abAB-_%.xyz01Kki\u0130Σé"


def exhaustive(strings: list[str], op: str, pattern: str) -> list[int]:
    predicate = pattern_predicate(op, pattern)
    return [i for i, s in enumerate(strings) if predicate(s)]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.text(ALPHABET, max_size=12), min_size=1, max_size=60),
    st.sampled_from(("LIKE", "ILIKE")),
    st.text(PATTERN_ALPHABET, min_size=1, max_size=6),
    st.booleans(),
)
def test_like_and_ilike_hits_are_the_predicates(
    strings: list[str], op: str, pattern: str, as_bytes: bool
) -> None:
    found = needle_of(op, pattern)
    if found is None:
        return
    raw: list[Any] = [s.encode() for s in strings] if as_bytes else strings
    got = needle_hits(raw, found, pattern_predicate(op, pattern))
    if got is not None:
        assert got == exhaustive(strings, op, pattern)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(ALPHABET, max_size=12), min_size=1, max_size=60),
    st.lists(
        st.sampled_from(("ab", "x", "é", "Σ", "0", ".", "[a-z]", "1?", "$", "^", "k+")),
        min_size=1,
        max_size=4,
    ),
)
def test_rlike_hits_are_the_predicates(strings: list[str], parts: list[str]) -> None:
    pattern = "".join(parts)
    found = needle_of("RLIKE", pattern, regex_literal(pattern))
    if found is None:
        return
    got = needle_hits(strings, found, pattern_predicate("RLIKE", pattern))
    if got is not None:
        assert got == exhaustive(strings, "RLIKE", pattern)


def test_the_needle_decides_sparse_ascii_strings_and_gives_up_when_it_cannot() -> None:
    rng = random.Random(3)
    strings = [f"cr-{rng.randrange(10**6):06d}" for _ in range(5000)] + ["CR_123456", "x-zz"]
    for op, pattern in (("ILIKE", "CR_123456"), ("LIKE", "%-zz"), ("LIKE", "cr_12%")):
        found = needle_of(op, pattern)
        assert found is not None
        got = needle_hits(strings, found, pattern_predicate(op, pattern))
        assert got is not None and got == exhaustive(strings, op, pattern), (op, pattern)
    # the needle in most strings: too little narrowing, the caller tests each one
    dense = needle_of("LIKE", "%cr-%")
    assert dense is not None
    assert needle_hits(strings, dense, pattern_predicate("LIKE", "%cr-%")) is None
    # a string holding the separator, or a lowering that changes a length: undecided
    assert needle_hits(["a\x00b", "ab"], (("a",), False), lambda v: "a" in v) is None
    assert needle_hits(["İx", "ix"], (("i",), True), lambda v: "i" in v.lower()) is None
    # no literal (only % and _), and the NOT ops: no needle
    assert needle_of("LIKE", "%_%") is None
    assert needle_of("NOT LIKE", "%a%") is None


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    """12,000 traces: client_request_id and tag u nearly unique (more values than a probe
    window of values), ids of two heads."""
    rng = random.Random(8)
    traces = []
    for i in range(12_000):
        head = rng.choice(("tr-", "TR-"))
        traces.append(
            {
                "trace_id": f"{head}{rng.randrange(16**8):08x}{i:05d}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + rng.randrange(3_000),  # ties
                "execution_time_ms": rng.randrange(100),
                "status": rng.choice(("OK", "ERROR")),
                "name": rng.choice(("a", "b")),
                "client_request_id": None
                if rng.random() < 0.2
                else f"{rng.choice(('cr', 'CR', 'Cr'))}-{i:06d}",
                "tags": {
                    **(
                        {"u": f"{rng.choice(('user', 'User', 'é'))}_{i * 7 % 12_000}"}
                        if rng.random() < 0.9
                        else {}
                    ),
                    "w": rng.choice(("x", "y")),
                },
                "metadata": {"m": str(i % 40)},
            }
        )
    with qd.loaded(redis_url, "needle", 2, traces) as got:
        yield got


@pytest.fixture
def decided(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each needle_hits call decided (not None)."""
    taken: list[bool] = []
    real = needle.needle_hits

    def spy(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        taken.append(got is not None)
        return got

    for module in (
        "tracetags.query.needle",
        "tracetags.query.executor",
        "tracetags.query.physical",
    ):
        monkeypatch.setattr(f"{module}.needle_hits", spy)
    return taken


def sparse_filters(rng: random.Random) -> Iterator[str]:
    for _ in range(10):
        i = rng.randrange(12_000)
        yield rng.choice(
            (
                f"client_request_id ILIKE 'cR_{i:06d}'",
                f"client_request_id LIKE '%-{i:06d}'",
                f"client_request_id LIKE 'C__{i:06d}'",
                f"client_request_id RLIKE '{i:06d}$'",
                f"tags.u ILIKE '%ER_{i}'",
                f"tags.u LIKE '%_{i}' AND status = 'OK'",
                f"tags.u RLIKE '_{i}$' OR tags.w = 'x'",
                f"request_id LIKE '%{i:05d}'",
                f"request_id ILIKE '%{i % 97:02d}%' AND name = 'a'",
                f"request_id RLIKE '{i:05d}$'",
            )
        )


@pytest.mark.parametrize("window", [needle.NEEDLE_WINDOW, 2_500])
@pytest.mark.parametrize("seed", range(3))
def test_sparse_patterns_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]],
    decided: list[bool],
    monkeypatch: pytest.MonkeyPatch,
    window: int,
    seed: int,
) -> None:
    monkeypatch.setattr(needle, "NEEDLE_WINDOW", window)
    by_values: list[bool] = []
    real = needle.values_by_needle

    def spy(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        by_values.append(got is not None)
        return got

    monkeypatch.setattr("tracetags.query.executor.values_by_needle", spy)
    client, final = loaded
    rng = random.Random(seed)
    for filter_string in sparse_filters(rng):
        order = rng.choice((None, ["request_id DESC"], ["tags.u"], ["status", "timestamp_ms"]))
        scope = rng.choice((None, ["2"]))
        expected = ref.search(final, scope, filter_string, order, None)
        got = all_pages(client, filter_string, order, rng.choice((7, 100)), experiment_ids=scope)
        assert got == expected, (filter_string, order, scope)
    assert any(decided) and any(by_values)


def test_a_dense_lead_over_a_key_without_the_byte_order_index_is_sized_by_part(
    loaded: tuple[Client, list[dict[str, object]]],
) -> None:
    """client_request_id has no byte-order index: a page's count of a LIKE lead reads its
    values a window at a time and, past SOUGHT_VALUES_MAX matches, extrapolates (the
    explain shows ~); a sparse lead is counted exactly; pages equal the reference."""
    client, final = loaded
    dense, sparse = "client_request_id LIKE 'CR-%'", "client_request_id LIKE 'cr-0011%'"
    assert "each candidate's value tested; ~" in client.explain(filter_string=dense)
    shown = client.explain(filter_string=sparse)
    assert "sought by tt_query" in shown and "value tested" not in shown
    for filter_string in (dense, sparse, f"{dense} AND status = 'OK'"):
        for order in (None, ["request_id DESC"], ["timestamp_ms"]):
            expected = ref.search(final, None, filter_string, order, None)
            assert all_pages(client, filter_string, order, 100) == expected, filter_string
