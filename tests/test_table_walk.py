"""Pages ordered by a string key, walked over a table of the matches (lua/value_walk.lua
``table_walk``): the matches are collected first, then the key's groups visited in order
with their members looked up in the table, or ordered at once when few, or once the walk
has cost as much.  Forced on every page here (the planner prices it free), over filters
that reach each of those ways, chunked and plain groups, nulls, nested orders and two
experiments (whose sets the collect joins): every page walk equals the reference."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client
from tracetags.query import costs, executor, strategy

TABLE = "a table of the matches"


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, Any]]]]:
    rng = random.Random(11)
    traces = []
    for _ in range(6000):
        tags = {"grp": f"g{min(3, int(rng.expovariate(1.0)))}"}
        # skewed users: a few with hundreds of traces, most with one or two
        tags["user"] = f"{rng.choice('abcz')}{int(rng.paretovariate(1.2)) % 1500}"
        if rng.random() < 0.7:
            tags["opt"] = f"o{rng.randrange(40)}"
        traces.append(
            {
                "trace_id": f"tr-{rng.getrandbits(64):016x}",
                "experiment_id": rng.choice("1123"),
                "timestamp_ms": qd.BASE_MS + rng.randrange(40_000),
                "execution_time_ms": rng.randrange(100),
                "status": rng.choice(("OK", "OK", "ERROR", "IN_PROGRESS")),
                "name": rng.choice(("chat", "embed")),
                "client_request_id": f"cr-{rng.randrange(3000)}",
                "tags": tags,
                "metadata": {"m": f"m{rng.randrange(2500)}"} if rng.random() < 0.9 else {},
            }
        )
    with qd.loaded(redis_url, "tablewalk", 2, traces) as got:
        yield got


@pytest.fixture
def tables_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner prices a walk over a table of the matches at nothing: every page that
    may walk a string key's values does so."""
    free = dataclasses.replace(
        costs.COSTS,
        table_candidate_us=0.0,
        table_group_us=0.0,
        table_trace_us=0.0,
        table_nested_group_pages=math.inf,
    )
    monkeypatch.setattr(costs, "COSTS", free)
    monkeypatch.setattr(strategy, "COSTS", free)
    executor.clear_caches()


ORDERS = [
    ["tags.user DESC"],
    ["tags.user"],
    ["tags.grp", "tags.user DESC"],
    ["tags.opt DESC", "timestamp_ms ASC"],
    ["metadata.m DESC"],
]
FILTERS = [
    None,
    "status = 'OK'",  # dense: groups walked
    "tags.grp = 'g2' AND status = 'ERROR'",  # sparse: ordered at once
    "tags.user LIKE 'a%'",  # on the walked key: the walk gives up for the order
    "tags.opt IS NULL AND status != 'IN_PROGRESS'",
    "status = 'IN_PROGRESS' AND execution_time_ms > 1000",  # no match
]


@pytest.mark.usefixtures("tables_free")
@pytest.mark.parametrize("order", ORDERS)
def test_every_page_of_a_table_walk_equals_the_reference(
    loaded: tuple[Client, list[dict[str, Any]]], order: list[str]
) -> None:
    client, final = loaded
    tabled = 0
    for filter_string in FILTERS:
        for scope in (None, ["1", "2"]):
            text = client.explain(filter_string, experiment_ids=scope, order_by=order)
            tabled += TABLE in text
            expected = ref.search(final, scope, filter_string, order, None)
            for size in (7, 60):
                got = all_pages(client, filter_string, order, size, experiment_ids=scope)
                assert got == expected, (filter_string, scope, size)
    assert tabled >= len(FILTERS), tabled


@pytest.mark.usefixtures("tables_free")
def test_a_filter_on_the_walked_key_gives_the_walk_up_for_the_order(
    loaded: tuple[Client, list[dict[str, Any]]],
) -> None:
    """'z…' users come first by tags.user DESC; matches of 'a%' come last: the walk meets
    none for as long as ordering the matches would cost, then orders them (one page of
    the reference's first rows)."""
    client, final = loaded
    filter_string, order = "tags.user LIKE 'a1%'", ["tags.user DESC"]
    assert TABLE in client.explain(filter_string, order_by=order)
    page = client.search_traces(filter_string=filter_string, order_by=order, max_results=25)
    assert [t.info.trace_id for t in page] == ref.search(final, None, filter_string, order, 25)


def test_the_planner_prices_a_table_walk_against_the_others(
    loaded: tuple[Client, list[dict[str, Any]]],
) -> None:
    """Unforced: a selective filter ordered by a key of many values walks over a table of
    its matches (each group one read); a filter of every trace does not (building the table
    would read them all, where a walk of the first groups fills the page)."""
    client, _ = loaded
    executor.clear_caches()
    assert TABLE in client.explain("tags.grp = 'g1'", order_by=["metadata.m DESC"])
    assert TABLE not in client.explain(None, order_by=["metadata.m DESC"])
