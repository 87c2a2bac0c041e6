"""Pages whose matches tie on their first order keys by the hundred (a duration of 10 ms, a
status, the traces without a name): the tied matches are ordered by the next keys level by
level.  Random filters and orders of two to four keys, every page equal to the reference
evaluator's."""

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
    rng = random.Random(31)
    traces = []
    for i in range(3000):
        status = rng.choices(("OK", "ERROR", "IN_PROGRESS"), (6, 3, 1))[0]
        traces.append(
            {
                "trace_id": f"tr-{rng.randrange(10**6):06d}-{i}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + rng.randrange(40),  # ~75 traces a millisecond
                "execution_time_ms": None if status == "IN_PROGRESS" else rng.choice((10, 20)),
                "status": status,
                "name": rng.choice(("a", "b", None, None)),
                "client_request_id": None,
                "tags": {
                    **({"k": rng.choice(("x", "y", "10", "9"))} if rng.random() < 0.7 else {}),
                    "u": f"u{rng.randrange(20)}",
                },
                "metadata": {},
            }
        )
    with qd.loaded(redis_url, "ties", 1, traces) as got:
        yield got


FILTERS = ("", "status = 'IN_PROGRESS'", "status != 'OK'", "name IS NULL", "tags.k IS NULL",
           "execution_time_ms <= 10", "tags.u LIKE 'u1%'", "tags.k IN ('x', '10')")  # fmt: skip
KEYS = ("execution_time_ms", "status", "name", "tags.k", "tags.u", "timestamp_ms",
        "request_id", "experiment_id")  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_random_orders_over_large_ties_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], seed: int
) -> None:
    client, final = loaded
    rng = random.Random(seed)
    for _ in range(8):
        filter_string = rng.choice(FILTERS) or None
        keys = rng.sample(KEYS, rng.randrange(2, 5))
        order = [f"{k} {rng.choice(('ASC', 'DESC'))}" for k in keys]
        expected = ref.search(final, None, filter_string, order, None)
        assert all_pages(client, filter_string, order, rng.choice((37, 250))) == expected, (
            filter_string,
            order,
        )
