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
from tests.support.helpers import all_pages, spy
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
    modules = ("needle", "executor", "physical")
    paths = [f"tracetags.query.{m}.needle_hits" for m in modules]
    spy(monkeypatch, paths, lambda args, got: taken.append(got is not None))
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
    paths = ["tracetags.query.needle.values_by_needle", "tracetags.query.executor.values_by_needle"]
    spy(monkeypatch, paths, lambda args, got: by_values.append(got is not None))
    client, final = loaded
    rng = random.Random(seed)
    for filter_string in sparse_filters(rng):
        order = rng.choice((None, ["request_id DESC"], ["tags.u"], ["status", "timestamp_ms"]))
        scope = rng.choice((None, ["2"]))
        expected = ref.search(final, scope, filter_string, order, None)
        got = all_pages(client, filter_string, order, rng.choice((7, 100)), experiment_ids=scope)
        assert got == expected, (filter_string, order, scope)
    assert any(decided) and any(by_values)


def unique_ids(count: int) -> list[dict[str, object]]:
    """Traces of unique client request ids ('cr-…' or 'CR-…')."""
    rng = random.Random(13)
    return [
        {
            "trace_id": f"tr-{rng.randrange(16**8):08x}{i:05d}",
            "experiment_id": "1",
            "timestamp_ms": qd.BASE_MS + rng.randrange(5_000),
            "execution_time_ms": 1,
            "status": rng.choice(("OK", "ERROR")),
            "name": "a",
            "client_request_id": f"{rng.choice(('cr', 'CR'))}-{i:06d}",
            "tags": {},
            "metadata": {},
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def one_partition(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    """6,000 unique client request ids in one partition: more than a window of values."""
    with qd.loaded(redis_url, "onepart", 1, unique_ids(6_000)) as got:
        yield got


@pytest.fixture(scope="module")
def unindexed(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    """The same, whose byte-order index is then dropped: data folded before library v11,
    which readers meet until the key is folded again."""
    with qd.loaded(redis_url, "unindexed", 1, unique_ids(6_000)) as (client, final):
        index = f"{client.keys.prefix(0)}:crd:L"
        assert client.redis.exists(index)
        client.redis.delete(index, *client.redis.keys(f"{index}:*"))
        yield client, final


@pytest.mark.parametrize("indexed", [True, False])
def test_a_dense_lead_is_sized_by_part_of_its_values(
    loaded: tuple[Client, list[dict[str, object]]],
    unindexed: tuple[Client, list[dict[str, object]]],
    indexed: bool,
) -> None:
    """A page's count of a LIKE lead stops past SOUGHT_VALUES_MAX matching values and
    extrapolates (the explain shows ~): by the share of the lead's buckets read in the
    byte-order index, or, for a key without it, by the share of its values read; a sparse
    lead is counted exactly; pages equal the reference."""
    client, final = loaded if indexed else unindexed
    dense = "client_request_id LIKE 'CR-%'"
    sparse = "client_request_id LIKE 'cr-0011%'"
    shown = client.explain(filter_string=dense)
    assert "each candidate's value tested; ~" in shown
    shown = client.explain(filter_string=sparse)
    assert "sought by tt_query" in shown and "value tested" not in shown
    filters = [dense, sparse, f"{dense} AND status = 'OK'"]
    if indexed:
        filters += ["tags.u LIKE 'User%'", "tags.u LIKE 'user_1%' AND tags.w = 'y'"]
        assert "each candidate's value tested; ~" in client.explain(filter_string=filters[3])
    for filter_string in filters:
        for order in (None, ["request_id DESC"], ["timestamp_ms"]):
            expected = ref.search(final, None, filter_string, order, None)
            assert all_pages(client, filter_string, order, 100) == expected, filter_string


def test_an_ilike_lead_of_many_values_is_sampled_not_sought(
    one_partition: tuple[Client, list[dict[str, object]]],
) -> None:
    """'CR_00%': the case variants of 'cr' hold every client request id (more than a
    window of values in their buckets): the probe samples instead of seeking them all."""
    client, final = one_partition
    filter_string = "client_request_id ILIKE 'CR_00%'"
    assert "sampled values" in client.explain(filter_string=filter_string)
    for order in (None, ["request_id DESC"]):
        expected = ref.search(final, None, filter_string, order, None)
        assert all_pages(client, filter_string, order, 100) == expected
