"""Pages ordered by several keys: a walk of values orders its large groups by the next key
without sorting them (a nested walk of values, or the ids' byte order), and skips groups
the filter excludes.  Every page walk, small pages included (a group split over pages, rows
of earlier groups already on the page), must equal the reference evaluator."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages, drop_namespace
from tracetags.client import Client
from tracetags.settings import Settings


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    traces, mutations = qd.generate(7, 600, n_mutations=100)
    c = Client(
        Settings(redis_url=redis_url, namespace=f"tt-go-{os.urandom(4).hex()}", partitions=2)
    )
    qd.load(c.redis, c.keys, 2, traces, mutations)
    yield c, ref.apply_mutations(traces, mutations)
    drop_namespace(c.redis, c.keys.namespace)
    c.close()


ORDERS = [
    ["status DESC", "run_id ASC"],
    ["status", "name DESC"],
    ["name", "status DESC", "timestamp_ms ASC"],
    ["experiment_id DESC", "request_id"],
    ["tags.env", "name DESC", "status"],
    ["experiment_id", "request_id DESC"],
]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    "filter_string", [None, "status != 'ERROR'", "timestamp_ms < 1700000004000"]
)
def test_nested_group_orders_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], order: list[str], filter_string: str | None
) -> None:
    client, final = loaded
    for scope in (None, ["1", "10"]):
        expected = ref.search(final, scope, filter_string, order, None)
        for size in (3, 40):
            got = all_pages(client, filter_string, order, size, experiment_ids=scope)
            assert got == expected, (scope, size)


def test_a_large_group_is_walked_by_the_next_key(
    loaded: tuple[Client, list[dict[str, object]]],
) -> None:
    client, _ = loaded
    text = client.explain(None, order_by=["status", "name DESC"], max_results=5)
    assert text.count("strategy: walk-values") == 2, text
