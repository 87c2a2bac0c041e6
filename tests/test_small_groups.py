"""Pages ordered by a key of many values, each held by a few traces (user ids, request
hashes): the walk of its values gathers small groups (lua/value_walk.lua `small_groups`)
and tests their members on the filter together.  Groups of 1-12 traces (the small ones
and the larger ones interleaved), ties on the next order keys inside a group, filters of
every density, cursors landing inside a gathered batch, and the traces without the key
under a filter that excludes another key (`tags.h IS NULL`: that group walked newest
first chunk by chunk, each chunk's traces minus the excluded keys'): every page equals
the reference evaluator's."""

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
    rng = random.Random(83)
    traces = []
    owners = [f"u{rng.randrange(10**5):05d}" for _ in range(900)]
    for i in range(5000):
        status = rng.choices(("OK", "ERROR", "IN_PROGRESS"), (7, 2, 1))[0]
        tags = {"env": rng.choices(("prod", "dev"), (1, 4))[0]}
        if rng.random() < 0.96:  # `tags.h IS NULL`: a few traces, spread over every chunk
            tags["h"] = "x"
        if rng.random() < 0.85:
            # skewed: most owners hold a few traces, some a dozen or more
            tags["owner"] = owners[min(int(rng.paretovariate(0.9)), len(owners)) - 1]
        traces.append(
            {
                "trace_id": f"tr-{rng.randrange(10**6):06d}-{i}",
                "experiment_id": rng.choice(("1", "2", "3")),
                # few distinct times: ties inside a group are ordered by the next keys
                "timestamp_ms": qd.BASE_MS + rng.randrange(40),
                "execution_time_ms": None if status == "IN_PROGRESS" else rng.randrange(9),
                "status": status,
                "name": rng.choice(("a", "b")),
                "client_request_id": None,
                "tags": tags,
                "metadata": {"m": f"m{rng.randrange(3)}"} if rng.random() < 0.5 else {},
            }
        )
    with qd.loaded(redis_url, "smallgroups", 1, traces) as got:
        yield got


FILTERS = ("", "tags.env = 'prod'", "status = 'ERROR'", "tags.env = 'prod' AND status != 'OK'",
           "metadata.m = 'm1'", "tags.owner LIKE 'u1%'", "tags.owner != 'u00042'",
           "execution_time_ms < 3", "tags.owner IS NULL", "tags.h IS NULL",
           "tags.h IS NULL AND tags.env = 'dev'")  # fmt: skip
NEXT = ("", "timestamp_ms ASC", "execution_time_ms DESC", "status", "request_id DESC")


@pytest.mark.parametrize(
    ("filter_string", "direction"),
    [("tags.h IS NULL", "DESC"), ("tags.h IS NULL AND tags.env = 'dev'", "ASC")],
)
def test_the_nulls_group_under_an_is_null_filter_equals_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str, direction: str
) -> None:
    client, final = loaded
    order = [f"tags.owner {direction}"]
    expected = ref.search(final, None, filter_string, order, None)
    for size in (5, 40, 400):
        assert all_pages(client, filter_string, order, size, None) == expected, size


@pytest.mark.parametrize("seed", range(5))
def test_pages_over_many_small_groups_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], seed: int
) -> None:
    client, final = loaded
    rng = random.Random(seed)
    for _ in range(6):
        filter_string = rng.choice(FILTERS) or None
        order = [f"tags.owner {rng.choice(('ASC', 'DESC'))}"]
        if then := rng.choice(NEXT):
            order.append(then)
        scope = rng.choice((None, ["1", "2"]))
        expected = ref.search(final, scope, filter_string, order, None)
        for size in (rng.choice((1, 3, 10)), 100):
            page = client.search_traces(
                experiment_ids=scope, filter_string=filter_string, order_by=order,
                max_results=size,
            )  # fmt: skip
            assert [t.info.trace_id for t in page] == expected[:size], (filter_string, order)
        size = rng.choice((17, 64, 250))
        assert all_pages(client, filter_string, order, size, scope) == expected, (
            filter_string,
            order,
            size,
        )
