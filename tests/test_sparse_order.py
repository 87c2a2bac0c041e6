"""Pages ordered by a sparse key (a tenth of the traces hold it, most of its values one
trace each) under filters that keep a small share of them: the walk of its values finds
the rows spread thin over hundreds of groups and collects the key's traces instead
(lua/value_shortcuts.lua), the traces without the key following.  Every page of random
filters and orders equal to the reference evaluator's, first pages and tokens alike."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    rng = random.Random(57)
    traces = []
    for i in range(4000):
        status = rng.choices(("OK", "ERROR", "IN_PROGRESS"), (7, 2, 1))[0]
        tags = {"env": rng.choices(("prod", "dev", "stage"), (1, 3, 6))[0]}
        if rng.random() < 0.1:
            tags["sp"] = f"v{rng.randrange(700):03d}"
        traces.append(
            {
                "trace_id": f"tr-{rng.randrange(10**6):06d}-{i}",
                "experiment_id": rng.choice(("1", "2", "3")),
                "timestamp_ms": qd.BASE_MS + rng.randrange(3000),
                "execution_time_ms": None if status == "IN_PROGRESS" else rng.randrange(90),
                "status": status,
                "name": rng.choice(("a", "b")),
                "client_request_id": None,
                "tags": tags,
                "metadata": {"m": f"m{rng.randrange(5)}"} if rng.random() < 0.5 else {},
            }
        )
    with qd.loaded(redis_url, "sparse", 1, traces) as got:
        yield got


FILTERS = ("tags.env = 'prod'", "tags.env = 'prod' AND status = 'ERROR'", "status != 'OK'",
           "metadata.m = 'm1'", "execution_time_ms < 10", "tags.env != 'stage'",
           "tags.sp LIKE 'v1%'", "")  # fmt: skip
NEXT = ("", "timestamp_ms ASC", "status DESC", "name", "request_id DESC")


@pytest.mark.parametrize("seed", range(4))
def test_random_pages_by_a_sparse_key_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], seed: int
) -> None:
    client, final = loaded
    rng = random.Random(seed)
    for _ in range(6):
        filter_string = rng.choice(FILTERS) or None
        order = [f"tags.sp {rng.choice(('ASC', 'DESC'))}"]
        if then := rng.choice(NEXT):
            order.append(then)
        scope = rng.choice((None, ["1", "2"]))
        expected = ref.search(final, scope, filter_string, order, None)
        page = client.search_traces(
            experiment_ids=scope, filter_string=filter_string, order_by=order, max_results=100
        )
        assert [t.info.trace_id for t in page] == expected[:100], (filter_string, order)
        size = rng.choice((40, 150))
        assert all_pages(client, filter_string, order, size, scope) == expected, (
            filter_string,
            order,
        )
