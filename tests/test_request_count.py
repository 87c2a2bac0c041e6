"""`client_request_id present` (the test of `!=`, `NOT IN` and the negated patterns on it)
is not tested trace by trace where every trace holds one: the fold counts them
(`<prefix>:cn`, lua/batch.lua) and tt_query compares the count with the traces'.  Pages
equal the reference's whether every trace holds one, all but one do, or the partition has
no count (folded before library v19)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client
from tracetags.connections import SyncClient

FILTERS = (
    "client_request_id != 'cr-7'",
    "client_request_id NOT IN ('cr-1', 'cr-2') AND status = 'OK'",
    "client_request_id NOT LIKE 'cr-1%'",
    "client_request_id != 'cr-x' AND tags.env = 'prod'",
)
ORDERS = (None, ["tags.env", "request_id DESC"], ["execution_time_ms DESC"])


def _traces(every: bool) -> list[dict[str, Any]]:
    rng = random.Random(19)
    traces = []
    for i in range(1500):
        traces.append(
            {
                "trace_id": f"tr-{rng.randrange(10**6):06d}-{i}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + rng.randrange(5000),
                "execution_time_ms": rng.randrange(50),
                "status": rng.choice(("OK", "ERROR")),
                "name": "chat",
                # all but the 700th hold one, unless every
                "client_request_id": f"cr-{rng.randrange(900)}" if every or i != 700 else None,
                "tags": {"env": rng.choice(("prod", "dev", "stage"))},
                "metadata": {},
            }
        )
    return traces


@pytest.fixture(scope="module", params=["every trace", "all but one", "no count"])
def loaded(
    redis_url: str, request: pytest.FixtureRequest
) -> Iterator[tuple[Client, list[dict[str, Any]], str]]:
    case = request.param
    with qd.loaded(redis_url, "requests", 1, _traces(case != "all but one")) as (client, final):
        if case == "no count":
            client.redis.delete(client.keys.request_count(0))
        yield client, final, case


def _hexists_calls(r: SyncClient) -> int:
    stats: Any = r.info("commandstats")
    return int(stats.get("cmdstat_hexists", {}).get("calls", 0))


@pytest.mark.parametrize("filter_string", FILTERS)
def test_pages_equal_the_reference_and_skip_the_test_where_every_trace_holds_one(
    loaded: tuple[Client, list[dict[str, Any]], str], filter_string: str
) -> None:
    client, final, case = loaded
    r = client.redis
    expected_count = 1500 if case != "all but one" else 1499
    if case != "no count":
        count: Any = r.get(client.keys.request_count(0))
        assert int(count) == expected_count
    for order in ORDERS:
        expected = ref.search(final, None, filter_string, order, None)
        before = _hexists_calls(r)
        assert all_pages(client, filter_string, order, 70, None) == expected, (case, order)
        tested = _hexists_calls(r) - before
        if case == "every trace":
            assert tested == 0, (order, tested)
        else:
            assert tested > 0, (case, order)
