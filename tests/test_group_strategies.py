"""Choices tt_query makes inside a page call, checked against the reference on a dataset
numbered in time order (so that chunk walks are planned) with dense value sets:

- a chunk walk whose chunks hold no match (terms the planner takes as independent that
  exclude each other) collects at once instead of walking ts over the same newest traces;
- a value group ordered by time newest first is walked chunk by chunk when that visits
  fewer of the group's members than collecting the group (its filter a value set of many
  dense values, tested by each candidate's register), or when the filter's source is a
  smaller chunked set (each chunk's candidates are the few members of both);
- a value group ordered by request_id is collected and sorted when walking the ids would
  visit far more traces than the candidates.

Every answer, page after page, equals the reference's; where a path is what a test is
about, Redis's own command counters show that the other path did not run."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages, every_page_equals, first_page_calls
from tracetags.client import Client

SCOPE = ["1", "2"]
#: Chunks of 512 trace numbers the fixture's 24,000 traces fill.
CHUNKS = 24_000 // 512 + 1
RUNS = tuple(f"run-{i:02d}" for i in range(20))


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, Any]]]]:
    rng = random.Random(11)
    traces = []
    for i in range(24_000):
        running = rng.random() < 0.08
        traces.append(
            {
                "trace_id": f"tr-{rng.getrandbits(64):016x}",
                "experiment_id": rng.choices(("1", "2", "3"), (60, 35, 5))[0],
                # folded in time order, with ties: trace numbers go with times
                "timestamp_ms": qd.BASE_MS + i * 10 + rng.randrange(12),
                "execution_time_ms": None if running else rng.randrange(1, 1000),
                "status": "IN_PROGRESS" if running else rng.choice(("OK", "OK", "ERROR")),
                "name": rng.choice(("chat", "embed")),
                "client_request_id": None,
                "tags": {"g": f"g{rng.randrange(6)}", "run": rng.choice(RUNS)}
                | ({} if i % 37 == 0 else {"opt": "x"})
                # (five plain value sets of ~400 traces; no rng draw, so the rest is unchanged)
                | ({"few": f"f{i // 12 % 5}"} if i % 12 == 0 else {}),
                "metadata": {},
            }
        )
    with qd.loaded(redis_url, "gstrat", 1, traces) as got:
        yield got


def _calls(client: Client, command: str) -> int:
    stats: dict[str, Any] = client.redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _first_page_counting(
    client: Client, filter_string: str, order: list[str] | None, command: str
) -> tuple[list[str], int]:
    client.redis.config_resetstat()
    page = client.search_traces(
        experiment_ids=SCOPE, filter_string=filter_string, order_by=order, max_results=100
    )
    return [t.info.trace_id for t in page], _calls(client, command)


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    "filter_string",
    [
        "execution_time_ms >= 0 AND status = 'IN_PROGRESS'",
        "execution_time_ms > 100 AND status != 'OK' AND status != 'ERROR'",
    ],
)
def test_a_chunk_walk_finding_no_match_collects_without_walking_ts(
    loaded: tuple[Client, list[dict[str, Any]]], filter_string: str
) -> None:
    client, final = loaded
    text = str(client.explain(filter_string, experiment_ids=SCOPE))
    assert "strategy: chunk-walk" in text and "walks ts instead" in text, text
    got, zranges = _first_page_counting(client, filter_string, None, "zrange")
    assert got == [] == ref.search(final, SCOPE, filter_string, None, None)
    # the chunk walk reads the chunks' time bounds 16 at a time (tsx); a walk of ts would
    # read batches of the ~20k newest traces
    assert zranges <= 4, zranges


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    ("filter_string", "order"),
    [
        (f"tags.run IN ({', '.join(repr(r) for r in RUNS[:7])})", ["tags.g DESC"]),
        ("tags.run LIKE 'run-0%' AND tags.run LIKE '%5' OR tags.run = 'run-12'", ["tags.g"]),
        ("tags.run != 'run-03' AND status = 'ERROR'", ["tags.g DESC", "timestamp_ms DESC"]),
        ("tags.run = 'run-07'", ["tags.g DESC"]),
        # the scope's value sets hold for every trace of an experiment's group
        ("status != 'ERROR'", ["experiment_id DESC"]),
        ("tags.g != 'g2'", ["experiment_id"]),
    ],
)
def test_value_groups_newest_first_equal_the_reference(
    loaded: tuple[Client, list[dict[str, Any]]], filter_string: str, order: list[str]
) -> None:
    client, final = loaded
    text = str(client.explain(filter_string, experiment_ids=SCOPE, order_by=order))
    assert "strategy: walk-values" in text, text
    expected = ref.search(final, SCOPE, filter_string, order, None)
    assert expected, "the filter must match"
    assert all_pages(client, filter_string, order, 100, SCOPE) == expected
    assert all_pages(client, filter_string, order, 37, SCOPE) == expected


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    ("filter_string", "order"),
    [
        ("status = 'IN_PROGRESS'", ["experiment_id"]),
        ("status = 'IN_PROGRESS' AND tags.opt = 'x'", ["experiment_id DESC"]),
        ("status = 'IN_PROGRESS'", ["tags.g", "timestamp_ms DESC"]),
    ],
)
def test_a_large_group_and_a_smaller_chunked_source_are_walked_by_chunks(
    loaded: tuple[Client, list[dict[str, Any]]], filter_string: str, order: list[str]
) -> None:
    """The group's members are many but the filter's source is a smaller chunked set: the
    chunk walk intersects the two per chunk (its candidates are the source's few members
    there), a few chunks for a page, where collecting reads every chunk of the source."""
    client, final = loaded
    expected = ref.search(final, SCOPE, filter_string, order, None)
    got, sinters = _first_page_counting(client, filter_string, order, "sinter")
    assert got == expected[:100]
    assert sinters < CHUNKS / 2, sinters
    every_page_equals(client, filter_string, order, SCOPE, expected)


@pytest.mark.usefixtures("no_deadline")
def test_a_many_valued_filter_in_a_value_group_is_tested_by_registers(
    loaded: tuple[Client, list[dict[str, Any]]],
) -> None:
    client, final = loaded
    filter_string = f"tags.run IN ({', '.join(repr(r) for r in RUNS[:7])})"
    order = ["tags.g DESC"]
    got, hgets = _first_page_counting(client, filter_string, order, "hget")
    assert got == ref.search(final, SCOPE, filter_string, order, None)[:100]
    # each of the seven dense value sets would be tested chunk by chunk (SMISMEMBER);
    # a candidate's own register is one HGET
    assert hgets > 100, hgets


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    ("filter_string", "order"),
    [
        ("tags.run = 'run-05'", ["experiment_id", "request_id DESC"]),
        ("tags.run = 'run-05' AND status = 'OK'", ["experiment_id DESC", "request_id"]),
        ("status = 'ERROR'", ["experiment_id", "request_id DESC"]),  # dense: walked by id
    ],
)
def test_value_groups_by_request_id_equal_the_reference(
    loaded: tuple[Client, list[dict[str, Any]]], filter_string: str, order: list[str]
) -> None:
    client, final = loaded
    expected = ref.search(final, SCOPE, filter_string, order, None)
    assert expected
    assert all_pages(client, filter_string, order, 100, SCOPE) == expected
    assert all_pages(client, filter_string, order, 41, SCOPE) == expected


@pytest.mark.usefixtures("no_deadline")
def test_a_sparse_value_group_by_request_id_is_collected_not_walked_by_id(
    loaded: tuple[Client, list[dict[str, Any]]],
) -> None:
    client, final = loaded
    filter_string, order = "tags.run = 'run-05'", ["experiment_id", "request_id DESC"]
    got, smembers = _first_page_counting(client, filter_string, order, "smembers")
    assert got == ref.search(final, SCOPE, filter_string, order, None)[:100]
    # a walk of the ids reads their buckets (SMEMBERS of each); collecting the ~1,200
    # candidates reads the one value set's chunks (a few SMEMBERS at most)
    assert smembers <= 60, smembers


@pytest.mark.parametrize(
    ("filter_string", "merged"),
    [
        ("tags.run ILIKE 'RUN-0%' AND tags.run LIKE '%1'", "[1 value set]"),
        ("tags.run IN ('run-01', 'run-02') AND NOT tags.run = 'run-02'", "[1 value set]"),
        ("tags.run ILIKE 'RUN-1%' AND tags.run != 'run-13' AND status = 'OK'", "[9 value sets]"),
        ("status != 'OK' AND status != 'ERROR' AND execution_time_ms > 100", "[1 value set]"),
        ("tags.run LIKE '%1' AND tags.run RLIKE '[2]$'", "no value satisfies both"),
        # (a literal RLIKE is planned as its LIKE: the two ends contradict before any read)
        ("tags.run LIKE '%1' AND tags.run RLIKE '2$'", "no value ends as both"),
    ],
)
@pytest.mark.parametrize("order", [None, ["tags.g DESC"], ["request_id"]])
def test_value_sets_of_one_key_in_a_conjunction_are_one_leaf(
    loaded: tuple[Client, list[dict[str, Any]]],
    filter_string: str,
    merged: str,
    order: list[str] | None,
) -> None:
    client, final = loaded
    text = str(client.explain(filter_string, experiment_ids=SCOPE, order_by=order))
    assert merged in text, text
    expected = ref.search(final, SCOPE, filter_string, order, None)
    assert all_pages(client, filter_string, order, 100, SCOPE) == expected


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    ("filter_string", "order"),
    [
        ("tags.opt IS NULL", ["tags.g DESC"]),
        ("tags.opt IS NULL AND status = 'OK'", ["tags.g", "timestamp_ms"]),
        ("tags.opt IS NULL AND tags.run != 'run-01'", ["tags.run DESC"]),
        ("tags.opt IS NULL", None),
    ],
)
def test_a_key_that_is_null_is_taken_out_of_a_groups_chunks(
    loaded: tuple[Client, list[dict[str, Any]]], filter_string: str, order: list[str] | None
) -> None:
    """A group of a walk of values collected under `k IS NULL`: the key's chunked set is
    taken out of the group's chunks (SDIFF) instead of testing every member of the group."""
    client, final = loaded
    expected = ref.search(final, SCOPE, filter_string, order, None)
    assert expected
    every_page_equals(client, filter_string, order, SCOPE, expected)
    if order == ["tags.g DESC"]:
        _, sdiffs = _first_page_counting(client, filter_string, order, "sdiff")
        assert sdiffs > 0, client.explain(filter_string, experiment_ids=SCOPE, order_by=order)


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize("order", [["request_id"], ["request_id DESC"]])
def test_an_id_walk_reads_each_chunk_of_a_conjunction_once(
    loaded: tuple[Client, list[dict[str, Any]]], order: list[str]
) -> None:
    """Each bucket of the ids' byte order holds numbers spread over every chunk: once the
    first bucket shows the conjunction's chunked sets sparse (a tenth of its candidates
    pass), a chunk met again is read as one intersection, kept for the next buckets,
    instead of one SMISMEMBER per set, chunk and bucket."""
    client, final = loaded
    filter_string = "status = 'OK' AND tags.g = 'g1'"
    text = str(client.explain(filter_string, order_by=order))
    assert "strategy: walk-ids" in text and "~4 bucket(s)" in text, text
    expected = ref.search(final, None, filter_string, order, None)
    client.redis.config_resetstat()
    page = client.search_traces(filter_string=filter_string, order_by=order, max_results=100)
    assert [t.info.trace_id for t in page] == expected[:100]
    sinters, smismembers = _calls(client, "sinter"), _calls(client, "smismember")
    # each chunk's intersection read at most once; SMISMEMBER (two sets) for the first
    # bucket only, not for every bucket of the walk (~4 here)
    assert sinters <= CHUNKS and smismembers <= 2 * CHUNKS, (sinters, smismembers)
    every_page_equals(client, filter_string, order, None, expected)


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    "order", [["experiment_id", "request_id DESC"], ["status DESC", "request_id"]]
)
def test_a_nested_id_walk_tests_a_leaf_of_many_values_by_registers(
    loaded: tuple[Client, list[dict[str, Any]]], order: list[str]
) -> None:
    """A group's walk of the ids tests a leaf of many dense values by each candidate's
    register (HGET), as the page's own walk does, not by one SMISMEMBER per value set and
    chunk (each bucket's candidates spread over every chunk)."""
    client, final = loaded
    filter_string = "tags.run LIKE 'run-1%'"
    expected = ref.search(final, SCOPE, filter_string, order, None)
    got, smismembers = _first_page_counting(client, filter_string, order, "smismember")
    assert got == expected[:100]
    # (the other terms, the scope's two value sets and the group's set, are asked once a
    # chunk at the most; the leaf's ten value sets asked per set, chunk and bucket would be
    # several times the bound)
    assert smismembers <= 3 * CHUNKS, smismembers
    every_page_equals(client, filter_string, order, SCOPE, expected)


@pytest.mark.usefixtures("no_deadline")
def test_a_walk_tests_a_few_plain_value_sets_by_a_table_of_their_members(
    loaded: tuple[Client, list[dict[str, Any]]],
) -> None:
    """A walk of ts tests a leaf of five plain value sets (tags.few LIKE 'f%'): once the
    candidates asked of them cost what reading them does, their members are read into a
    table (one SMEMBERS each) and every later batch is tested by lookup, not by one
    SMISMEMBER per set and batch."""
    client, final = loaded
    filter_string = "tags.few LIKE 'f%'"
    text = str(client.explain(filter_string, experiment_ids=SCOPE))
    assert "strategy: walk" in text, text
    expected = ref.search(final, SCOPE, filter_string, None, None)
    client.redis.config_resetstat()
    page = client.search_traces(experiment_ids=SCOPE, filter_string=filter_string, max_results=300)
    assert [t.info.trace_id for t in page] == expected[:300]
    smembers, smismembers = _calls(client, "smembers"), _calls(client, "smismember")
    # (the scope's two sets are still asked per chunk and batch; the five plain sets are
    # read once and looked up, no longer asked per set and batch)
    assert smembers == 5 and smismembers <= 20, (smembers, smismembers)
    assert all_pages(client, filter_string, None, 100, SCOPE) == expected


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    ("filter_string", "order"),
    [
        ("tags.g = 'g3' AND status = 'IN_PROGRESS'", ["tags.g", "timestamp_ms DESC"]),
        ("tags.g IN ('g1', 'g3') AND status = 'IN_PROGRESS'", ["tags.g DESC", "timestamp_ms DESC"]),
        # a LIKE sought by tt_query pins the walked key too
        ("tags.g LIKE 'g3%' AND status = 'IN_PROGRESS'", ["tags.g", "timestamp_ms DESC"]),
    ],
)
def test_a_walk_of_values_the_filter_pins_expects_each_group_dense(
    loaded: tuple[Client, list[dict[str, Any]]], filter_string: str, order: list[str]
) -> None:
    """The filter keeps one or two values of the walked key: a trace of such a group
    matches with the filter's share of those values' traces, not of every trace's, so the
    group is walked newest first by its chunks (a few), not collected whole."""
    client, final = loaded
    expected = ref.search(final, SCOPE, filter_string, order, None)
    assert len(expected) > 100, "the filter must fill more than a page"
    got, calls = first_page_calls(client, filter_string, order, SCOPE, ("smembers", "sinter"))
    assert got == expected[:100]
    assert calls["smembers"] + calls["sinter"] < CHUNKS // 2, calls
    every_page_equals(client, filter_string, order, SCOPE, expected)


@pytest.mark.usefixtures("no_deadline")
def test_a_group_walks_ts_when_collecting_it_would_test_every_candidate_by_register(
    loaded: tuple[Client, list[dict[str, Any]]],
) -> None:
    """A group ordered by time whose filter holds a value leaf of many values (tested by
    each candidate's register, an HGET): collecting the group tests every candidate so,
    a walk of ts only the few that pass its chunk intersections, so the group is walked
    even where it visits somewhat more traces than the group holds."""
    client, final = loaded
    filter_string = f"tags.run IN ({', '.join(repr(r) for r in RUNS[:5])}) AND status != 'OK'"
    order = ["tags.g", "timestamp_ms"]
    expected = ref.search(final, SCOPE, filter_string, order, None)
    assert len(expected) > 100, "the filter must fill more than a page"
    got, calls = first_page_calls(client, filter_string, order, SCOPE, ("hget",))
    assert got == expected[:100]
    assert calls["hget"] < 800, calls
    every_page_equals(client, filter_string, order, SCOPE, expected)
