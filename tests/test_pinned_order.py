"""An order key the filter pins to one value (``tags.env = 'prod'`` ordered by
``tags.env``), or wants absent (``tags.u IS NULL``), orders nothing: the plans sort by the
other keys (Prepared.plan_order), while page tokens keep the whole order.  Random pinned
filters and orders over three partitions, every page equal to the reference evaluator's."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client
from tracetags.query import executor


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    rng = random.Random(8)
    traces = []
    for i in range(2500):
        status = rng.choice(("OK", "ERROR", "IN_PROGRESS"))
        traces.append(
            {
                "trace_id": f"tr-{rng.randrange(10**6):06d}-{i}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + rng.randrange(500),  # many ties
                # (an unfinished trace has no duration, a finished one has one)
                "execution_time_ms": None if status == "IN_PROGRESS" else rng.randrange(50),
                "status": status,
                "name": rng.choice(("a", "b", "c")),
                "client_request_id": None,
                "tags": {
                    "env": rng.choice(("prod", "dev", "stage")),
                    **({"u": f"u{rng.randrange(300)}"} if rng.random() < 0.8 else {}),
                },
                "metadata": {"m": rng.choice(("x", "y"))},
            }
        )
    with qd.loaded(redis_url, "pinned", 3, traces) as got:
        yield got


PINS = ("tags.env = 'prod'", "status = 'OK'", "name = 'b'", "metadata.m = 'y'", "run_id = 'r'",
        "tags.u IS NULL", "run_id IS NULL", "metadata.m IS NULL")  # fmt: skip
OTHERS = ("", "tags.u LIKE 'u1%'", "execution_time_ms > 20", "tags.env != 'dev'")
KEYS = ("tags.env", "status", "name", "metadata.m", "tags.u", "timestamp_ms", "request_id",
        "execution_time_ms", "experiment_id")  # fmt: skip


def test_a_pinned_key_is_left_out_of_the_plans_order() -> None:
    prepared = executor.prepare(None, "tags.env = 'prod' AND status = 'OK'", ["tags.env DESC"])
    assert [k.field.key for k in prepared.order] == ["env", "timestamp_ms", "request_id"]
    assert [k.field.key for k in prepared.plan_order] == ["timestamp_ms", "request_id"]
    assert prepared.plan_cursor([[1, "prod"], [1, 5], [1, "t"]]) == [[1, 5], [1, "t"]]
    unpinned = executor.prepare(None, "tags.env IN ('prod', 'dev')", ["tags.env DESC"])
    assert unpinned.plan_order == unpinned.order


def test_a_key_the_filter_wants_absent_is_left_out_of_the_plans_order() -> None:
    prepared = executor.prepare(None, "tags.u IS NULL AND status != 'OK'", ["tags.u", "name"])
    assert [k.field.key for k in prepared.plan_order] == [
        "mlflow.traceName", "timestamp_ms", "request_id"
    ]  # fmt: skip
    present = executor.prepare(None, "tags.u IS NOT NULL", ["tags.u"])
    assert present.plan_order == present.order


@pytest.mark.parametrize("seed", range(4))
def test_random_pinned_orders_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], seed: int
) -> None:
    client, final = loaded
    rng = random.Random(seed)
    for _ in range(10):
        pin, other = rng.choice(PINS), rng.choice(OTHERS)
        filter_string = f"{pin} AND {other}" if other else pin
        keys = rng.sample(KEYS, rng.randrange(1, 4))
        order = [f"{k} {rng.choice(('ASC', 'DESC'))}" for k in keys]
        if rng.random() < 0.5:  # the pinned key itself first
            pinned = pin.split(" ")[0]
            order = [f"{pinned} DESC", *(o for o in order if not o.startswith(pinned + " "))]
        expected = ref.search(final, None, filter_string, order, None)
        for size in (1, 29):
            got = all_pages(client, filter_string, order, size) if size > 1 else None
            if got is not None:
                assert got == expected, (filter_string, order)
        page = client.search_traces(filter_string=filter_string, order_by=order, max_results=7)
        assert [t.info.trace_id for t in page] == expected[:7], (filter_string, order)
