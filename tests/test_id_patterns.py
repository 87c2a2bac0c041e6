"""request_id patterns tested on each candidate's id by tt_query (an M leaf) when the
probe's sample says enough traces match, else decided by reading every id: random LIKE /
ILIKE / NOT patterns over ids with multi-byte and case-folding characters, every answer
equal to the reference evaluator's, pages, orders and counts, and the plan that was taken
shown by explain."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages, drop_namespace
from tracetags.client import Client
from tracetags.query import probe
from tracetags.settings import Settings

PIECES = ("tr-", "TR-", "\u212a", "k", "\u0130", "i", "é", "日", "_", "%", "a", "B", "-")
TESTED = "each candidate's id tested"


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    rng = random.Random(11)
    traces = []
    for i in range(2500):
        head = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 4)))
        traces.append(
            {
                "trace_id": f"{head}{i:05d}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + rng.randrange(50_000),
                "execution_time_ms": rng.randrange(100),
                "status": rng.choice(("OK", "ERROR")),
                "name": "n",
                "client_request_id": None,
                "tags": {"w": rng.choice(("x", "y", "z"))},
                "metadata": {},
            }
        )
    c = Client(Settings(redis_url=redis_url, namespace=f"tt-idpat-{os.urandom(4).hex()}"))
    qd.load(c.redis, c.keys, 1, traces)
    yield c, ref.apply_mutations(traces, [])
    drop_namespace(c.redis, c.keys.namespace)
    c.close()


def _patterns(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pattern = "".join(rng.choice((*PIECES, "%", "%", "_", "0", "1")) for _ in range(4))
        op = rng.choice(("LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"))
        out.append(f"request_id {op} '{pattern}'")
    return out


@pytest.mark.parametrize("seed", range(4))
def test_random_id_patterns_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], seed: int
) -> None:
    client, final = loaded
    tested = 0
    for filter_string in _patterns(seed, 12):
        tested += TESTED in client.explain(filter_string=filter_string)
        for order in (None, ["status", "request_id DESC"]):
            expected = ref.search(final, None, filter_string, order, None)
            assert all_pages(client, filter_string, order, 97) == expected, (filter_string, order)
        everything = ref.search(final, None, filter_string, None, None)
        assert client.count(filter_string) == len(everything)
    assert tested > 0  # (the seeds' patterns include dense ones)


@pytest.mark.parametrize(
    ("filter_string", "tested"),
    [
        ("request_id ILIKE 'T%'", False),  # sought in the ids' byte order (~400 ids)
        ("request_id NOT ILIKE '%b%'", True),  # dense, no lead: tested
        ("request_id NOT ILIKE '%日%'", False),  # a non-ASCII ILIKE: the client decides
        ("request_id NOT LIKE '%0'", True),
        ("request_id LIKE '%99'", False),  # ~25 ids: every id is read instead
        # an RLIKE reads every id: the LIKE is decided from the same read, not tested ('[0]':
        # a literal RLIKE would be planned as its LIKE)
        ("request_id RLIKE '[0]{1}' AND request_id NOT ILIKE '%b%'", False),
        # an RLIKE of query/rlike.py's simple form is a pattern Lua decides: tested
        ("request_id RLIKE '[0-9]'", True),
        ("request_id NOT RLIKE '-[a-c]'", True),
        ("request_id RLIKE '[0-9]$' AND request_id NOT ILIKE '%b%'", True),
    ],
)
def test_the_sample_decides_between_testing_and_reading(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str, tested: bool
) -> None:
    client, final = loaded
    assert (TESTED in client.explain(filter_string=filter_string)) is tested
    expected = ref.search(final, None, filter_string, None, 1000)
    page = client.search_traces(filter_string=filter_string, max_results=1000)
    assert [t.info.trace_id for t in page] == expected


def test_a_partition_smaller_than_the_sample_is_decided_exactly(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HRANDFIELD of more ids than the partition holds returns every id: no test needed."""
    monkeypatch.setattr(probe, "ID_SAMPLE", 5000)
    monkeypatch.setattr("tracetags.query.executor.ID_SAMPLE", 5000)
    traces: list[dict[str, object]] = [
        {
            "trace_id": f"tr-{i:04d}", "experiment_id": "1", "timestamp_ms": qd.BASE_MS + i,
            "execution_time_ms": 1, "status": "OK", "name": "n", "client_request_id": None,
            "tags": {}, "metadata": {},
        }
        for i in range(300)
    ]  # fmt: skip
    c = Client(Settings(redis_url=redis_url, namespace=f"tt-idpat-{os.urandom(4).hex()}"))
    try:
        qd.load(c.redis, c.keys, 1, traces)
        text = c.explain(filter_string="request_id LIKE '%1%'")
        assert TESTED not in text and "request_id LIKE '%1%'" in text
        page = c.search_traces(filter_string="request_id LIKE '%1%'", max_results=1000)
        expected = ref.search(ref.apply_mutations(traces, []), None, "request_id LIKE '%1%'",
                              None, 1000)  # fmt: skip
        assert [t.info.trace_id for t in page] == expected
    finally:
        drop_namespace(c.redis, c.keys.namespace)
        c.close()


VALUE_TESTED = "each candidate's value tested"


@pytest.fixture(scope="module")
def many_values(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    """Tags, metadata and client request ids of ~1,000 distinct values each (tests shrink
    the probe's window of values to 50, so these count as keys of many values)."""
    rng = random.Random(12)
    traces = []

    def word() -> str:
        return "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 4)))

    for i in range(2000):
        traces.append(
            {
                "trace_id": f"tr-{i:05d}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + rng.randrange(50_000),
                "execution_time_ms": rng.randrange(100),
                "status": rng.choice(("OK", "ERROR")),
                "name": "n",
                "client_request_id": None if rng.random() < 0.2 else f"{word()}{i % 997}",
                "tags": {"u": f"{word()}{i % 1009}"} if rng.random() < 0.9 else {},
                "metadata": {"m": f"{word()}{i % 991}"},
            }
        )
    c = Client(Settings(redis_url=redis_url, namespace=f"tt-valpat-{os.urandom(4).hex()}"))
    qd.load(c.redis, c.keys, 1, traces)
    yield c, ref.apply_mutations(traces, [])
    drop_namespace(c.redis, c.keys.namespace)
    c.close()


@pytest.mark.parametrize("seed", range(3))
def test_random_value_patterns_equal_the_reference(
    many_values: tuple[Client, list[dict[str, object]]],
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tracetags.query.budget.VALUES_WINDOW", 50)
    client, final = many_values
    rng = random.Random(seed)
    tested = 0
    for _ in range(12):
        key = rng.choice(("tags.u", "metadata.m", "client_request_id"))
        pattern = "".join(rng.choice((*PIECES, "%", "%", "_", "1")) for _ in range(4))
        op = rng.choice(("LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"))
        filter_string = f"{key} {op} '{pattern}'"
        tested += VALUE_TESTED in client.explain(filter_string=filter_string)
        for order in (None, ["tags.u DESC"]):
            expected = ref.search(final, None, filter_string, order, None)
            assert all_pages(client, filter_string, order, 97) == expected, (filter_string, order)
        everything = ref.search(final, None, filter_string, None, None)
        assert client.count(filter_string) == len(everything), filter_string
    assert tested > 0


@pytest.mark.parametrize(
    ("filter_string", "tested"),
    [
        ("tags.u NOT LIKE '%7'", True),  # ~90 % of the traces with the key
        ("metadata.m LIKE '%1%'", True),
        ("client_request_id ILIKE '%-%'", True),
        ("tags.u LIKE '%_999'", False),  # a few traces: every value is read
        ("tags.u RLIKE '[1]{1}$'", False),  # an RLIKE Lua cannot decide
        ("tags.u RLIKE '[0-8]$'", True),  # one it can
        ("metadata.m NOT RLIKE '^[a-c]'", True),
    ],
)
def test_the_value_sample_decides(
    many_values: tuple[Client, list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
    filter_string: str,
    tested: bool,
) -> None:
    monkeypatch.setattr("tracetags.query.budget.VALUES_WINDOW", 50)
    client, final = many_values
    assert (VALUE_TESTED in client.explain(filter_string=filter_string)) is tested
    expected = ref.search(final, None, filter_string, None, None)
    assert all_pages(client, filter_string, None, 97) == expected


def test_a_dense_lead_is_tested_rather_than_sought(
    many_values: tuple[Client, list[dict[str, object]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's LIKE of a lead and one final % matching more values than SOUGHT_VALUES_MAX
    (5 here) is tested on each candidate; fewer are sought value by value."""
    monkeypatch.setattr("tracetags.query.physical.SOUGHT_VALUES_MAX", 5)
    client, final = many_values
    for filter_string, tested in (("tags.u LIKE 'k%'", True), ("tags.u LIKE 'tr-%'", True),
                                  ("tags.u LIKE 'k%1000'", False)):  # fmt: skip
        assert (VALUE_TESTED in client.explain(filter_string=filter_string)) is tested
        for order in (None, ["tags.u"]):
            expected = ref.search(final, None, filter_string, order, None)
            assert all_pages(client, filter_string, order, 97) == expected, filter_string


@pytest.mark.parametrize(
    "filter_string",
    [
        "request_id RLIKE '[1-9]{1}'",  # most ids
        "request_id RLIKE '[1]{1}' AND status = 'OK'",
        "request_id NOT RLIKE '^[_]{1}' AND NOT (request_id RLIKE '[9]{1}$')",
    ],
)
def test_many_matched_ids_go_as_a_bitmap(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str
) -> None:
    """Past 1,024 trace numbers an id pattern's matches go to tt_query as a bitmap (7 bits
    a character): every page, order and count as the reference's."""
    client, final = loaded
    text = client.explain(filter_string=filter_string)
    assert "a bitmap of" in text, text
    for order in (None, ["status", "request_id DESC"], ["execution_time_ms"]):
        expected = ref.search(final, None, filter_string, order, None)
        assert all_pages(client, filter_string, order, 97) == expected, (filter_string, order)
    assert client.count(filter_string) == len(ref.search(final, None, filter_string, None, None))


@pytest.mark.parametrize(
    ("filter_string", "tested"),
    [
        # the other terms hold a handful of traces: each is tested, no value read
        ("tags.u LIKE '%_999' AND request_id IN ('tr-00999', 'tr-01998')", True),
        ("client_request_id LIKE '%b%' AND tags.u IS NULL AND metadata.m LIKE 'a%'", True),
        ("tags.u LIKE '%_999' AND request_id = 'tr-00999'", True),
        # they hold many: every value of the key is read after all
        ("tags.u LIKE '%_999' AND status = 'OK'", False),
        ("tags.u LIKE '%_999'", False),  # alone: nothing to test it beside
    ],
)
def test_a_sparse_pattern_beside_few_candidates_is_tested_on_each(
    many_values: tuple[Client, list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
    filter_string: str,
    tested: bool,
) -> None:
    """A pattern the sample finds sparse, ANDed with terms that hold few traces, is left to
    tt_query's test of each of their candidates instead of reading every value of its key
    (and the probe reads them after all when the other terms hold many)."""
    monkeypatch.setattr("tracetags.query.budget.VALUES_WINDOW", 50)
    monkeypatch.setattr("tracetags.query.executor.DEFERRED_VALUES_PER_CANDIDATE", 2)
    client, final = many_values
    assert (VALUE_TESTED in client.explain(filter_string=filter_string)) is tested
    for order in (None, ["tags.u DESC"]):
        expected = ref.search(final, None, filter_string, order, None)
        assert all_pages(client, filter_string, order, 7) == expected, (filter_string, order)
    assert client.count(filter_string) == len(ref.search(final, None, filter_string, None, None))
