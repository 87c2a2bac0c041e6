"""A key most traces hold, excluded (``IS NULL``): its few traces are found chunk by chunk
as every trace's chunk minus the key's (one SDIFF a chunk), as the source a page collects
from or by the chunk walk newest first, alone or beside one chunked set (then that set's
chunk minus the key's); never by testing each candidate of the other terms.

Every answer, page after page, equals the reference's; where a path is what a test is
about, Redis's own command counters show which ran."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages, drop_namespace, every_page_equals, first_page_calls
from tracetags.client import Client
from tracetags.settings import Settings

SCOPE = ["1", "2"]
TRACES = 24_000
#: Chunks of 512 trace numbers the fixture's traces fill.
CHUNKS = TRACES // 512 + 1


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, Any]]]]:
    rng = random.Random(5)
    traces = []
    for i in range(TRACES):
        running = rng.random() < 0.1
        traces.append(
            {
                "trace_id": f"tr-{rng.getrandbits(64):016x}",
                "experiment_id": rng.choices(("1", "2", "3"), (60, 35, 5))[0],
                # folded in time order, with ties: trace numbers go with times
                "timestamp_ms": qd.BASE_MS + i * 10 + rng.randrange(12),
                "execution_time_ms": None if running else rng.randrange(1, 1000),
                "status": "IN_PROGRESS" if running else rng.choice(("OK", "OK", "ERROR")),
                # (~1 in 40 traces has no name: the mlflow.traceName tag's key set is dense)
                "name": None if rng.random() < 0.025 else rng.choice(("chat", "embed")),
                "client_request_id": None,
                "tags": {"g": f"g{rng.randrange(6)}"} | ({} if i % 13 == 0 else {"opt": "x"}),
                "metadata": {},
            }
        )
    with qd.loaded(redis_url, "exkeys", 1, traces) as got:
        yield got


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    "filter_string",
    [
        "tags.opt IS NULL",
        "name IS NULL",
        "status = 'ERROR' AND tags.opt IS NULL",
        "tags.g = 'g3' AND tags.opt IS NULL",
    ],
)
def test_a_chunk_walk_takes_the_excluded_key_out_of_each_chunk(
    loaded: tuple[Client, list[dict[str, Any]]], filter_string: str
) -> None:
    client, final = loaded
    text = str(client.explain(filter_string, experiment_ids=SCOPE))
    assert "strategy: chunk-walk" in text, text
    expected = ref.search(final, SCOPE, filter_string, None, None)
    assert len(expected) > 100, "the filter must fill more than a page"
    got, calls = first_page_calls(client, filter_string, None, SCOPE, ("sdiff", "zrange"))
    assert got == expected[:100]
    # one SDIFF per chunk visited, a few of the newest chunks, never a walk of ts (read in
    # batches of the newest traces) nor every chunk
    assert 0 < calls["sdiff"] < CHUNKS // 2, calls
    assert calls["zrange"] <= 2, calls
    every_page_equals(client, filter_string, None, SCOPE, expected)


@pytest.mark.usefixtures("no_deadline")
@pytest.mark.parametrize(
    ("filter_string", "order"),
    [
        # (orders a walk of an order zset does not serve: the matches are collected)
        ("status != 'OK' AND tags.opt IS NULL", ["tags.g DESC"]),
        ("status != 'OK' AND tags.opt IS NULL", ["tags.g", "request_id DESC"]),
        ("tags.opt IS NULL", ["request_id DESC"]),
        ("tags.g != 'g1' AND tags.opt IS NULL", ["request_id"]),
    ],
)
def test_a_collect_enumerates_the_traces_without_the_key(
    loaded: tuple[Client, list[dict[str, Any]]], filter_string: str, order: list[str]
) -> None:
    client, final = loaded
    expected = ref.search(final, SCOPE, filter_string, order, None)
    assert expected, "the filter must match"
    got, calls = first_page_calls(client, filter_string, order, SCOPE, ("sdiff", "smembers"))
    assert got == expected[:100]
    # every chunk of every trace minus the key's (one SDIFF each), not the members of the
    # other terms' sets tested one chunk at a time
    assert calls["sdiff"] == CHUNKS, calls
    if order[0].startswith("request_id"):
        # ... then the id buckets walked over a table of those matches (SMEMBERS of a few
        # buckets of the ids' order, not of the terms' sets)
        assert "looked up among" in client.explain(filter_string, SCOPE, order)
        buckets = client.redis.zcard(client.keys.id_order(0))
        assert 0 < calls["smembers"] < buckets, (calls, buckets)
    else:
        assert calls["smembers"] == 0, calls
    every_page_equals(client, filter_string, order, SCOPE, expected)


@pytest.mark.parametrize("seed", range(3))
def test_random_exclusions_equal_the_reference(
    loaded: tuple[Client, list[dict[str, Any]]], seed: int
) -> None:
    """Random conjunctions of an excluded key with other terms, in random orders, paged."""
    client, final = loaded
    rng = random.Random(seed)
    excluded = ("tags.opt IS NULL", "name IS NULL", "tags.g IS NULL")
    others = (
        "status = 'ERROR'",
        "status != 'OK'",
        "tags.g IN ('g0', 'g4')",
        "execution_time_ms > 500",
        "timestamp_ms < 1700000060000",
        "name = 'chat'",
        "tags.opt IS NOT NULL",
    )
    orders: tuple[list[str] | None, ...] = (
        None,
        ["timestamp_ms"],
        ["tags.g DESC"],
        ["request_id"],
        ["status", "execution_time_ms DESC"],
        ["execution_time_ms"],
        ["name", "timestamp_ms"],
    )
    for _ in range(10):
        terms = [rng.choice(excluded), *rng.sample(others, rng.randrange(3))]
        rng.shuffle(terms)
        filter_string = " AND ".join(terms)
        order = rng.choice(orders)
        scope = rng.choice((SCOPE, None))
        size = rng.choice((50, 100, 400))
        expected = ref.search(final, scope, filter_string, order, None)
        got = all_pages(client, filter_string, order, size, scope)
        assert got == expected, (filter_string, order, size, scope)


def test_exclusions_follow_tags_set_and_deleted_later(redis_url: str) -> None:
    """The key's set changes after the traces are folded (tags deleted from some traces,
    set on others that lacked it): the traces without the key, enumerated chunk by chunk,
    are those of the final state."""
    rng = random.Random(8)
    traces = [
        {
            "trace_id": f"tr-{i:05d}",
            "experiment_id": rng.choice(("1", "2")),
            "timestamp_ms": qd.BASE_MS + i * 10,
            "execution_time_ms": rng.randrange(1, 1000),
            "status": rng.choice(("OK", "ERROR")),
            "name": "chat",
            "client_request_id": None,
            "tags": {"g": f"g{rng.randrange(3)}"} | ({} if i % 17 == 0 else {"opt": "x"}),
            "metadata": {},
        }
        for i in range(6_000)
    ]
    mutations: list[dict[str, Any]] = []
    for i in rng.sample(range(6_000), 400):
        if i % 17 == 0:
            mutations.append({"op": "set", "trace_id": f"tr-{i:05d}", "key": "opt", "value": "y"})
        else:
            mutations.append({"op": "delete", "trace_id": f"tr-{i:05d}", "key": "opt"})
    client = Client(Settings(redis_url=redis_url, namespace=f"tt-exmut-{os.urandom(4).hex()}"))
    try:
        qd.load(client.redis, client.keys, 1, traces, mutations)
        final = ref.apply_mutations(traces, mutations)
        for filter_string, order in (
            ("tags.opt IS NULL", None),
            ("tags.opt IS NULL AND status = 'ERROR'", None),
            ("tags.opt IS NULL AND tags.g != 'g1'", ["tags.g DESC"]),
            ("tags.opt IS NULL", ["request_id DESC"]),
        ):
            expected = ref.search(final, None, filter_string, order, None)
            assert len(expected) > 100, filter_string
            assert all_pages(client, filter_string, order, 100) == expected, filter_string
    finally:
        drop_namespace(client.redis, client.keys.namespace)
        client.close()
