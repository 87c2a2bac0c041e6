"""A page walk that tests each candidate's value (an M leaf: a LIKE lead matching more
values than the planner seeks one by one) assumes the matches spread over time; when they
gather where the walk reaches last and the walk gives up, the page is planned again with
the pattern's values listed and their value sets collected by windows, not by a scan of
every trace.  Pages equal the reference's, in several orders and page sizes, over two
partitions."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages, spy
from tracetags.client import Client
from tracetags.query import budget, executor


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    """20,000 traces whose client_request_id follows their time: 'cr-00…' are the
    oldest half, which a newest-first walk reaches last."""
    rng = random.Random(5)
    traces = []
    for i in range(20_000):
        traces.append(
            {
                "trace_id": f"tr-{rng.randrange(16**8):08x}{i:05d}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + i * 3 + rng.randrange(3),
                "execution_time_ms": rng.randrange(100),
                "status": rng.choice(("OK", "ERROR")),
                "name": rng.choice(("a", "b")),
                "client_request_id": f"cr-{i:06d}" if rng.random() < 0.9 else None,
                "tags": {"w": rng.choice(("x", "y"))},
                "metadata": {},
            }
        )
    with qd.loaded(redis_url, "listed", 2, traces) as got:
        yield got


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Page calls get a 1 ms deadline (the walk surely gives up); records the listed plans
    made and the scans run."""
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 1_000)
    seen: dict[str, list[Any]] = {"listed": [], "scans": []}
    listed, scans = seen["listed"], seen["scans"]
    spy(monkeypatch, ["tracetags.query.executor._listed_plan"], lambda _, got: listed.append(got))
    spy(monkeypatch, ["tracetags.query.pages._scanned"], lambda a, _: scans.append(a[3].limit))
    return seen


@pytest.mark.parametrize(
    "filter_string",
    [
        "client_request_id LIKE 'cr-00%'",
        "client_request_id LIKE 'cr-001%'",
        "client_request_id LIKE 'cr-0019%' AND status = 'OK'",
        "client_request_id ILIKE 'CR-001%' AND tags.w = 'x'",
    ],
)
@pytest.mark.parametrize("order", [None, ["request_id DESC"], ["timestamp_ms DESC", "name"]])
def test_a_walk_that_gives_up_lists_the_values(
    loaded: tuple[Client, list[dict[str, object]]],
    traced: dict[str, list[Any]],
    filter_string: str,
    order: list[str] | None,
) -> None:
    client, final = loaded
    expected = ref.search(final, None, filter_string, order, None)
    assert expected
    # every page at one size; the first pages at another (thousands of matches)
    assert all_pages(client, filter_string, order, len(expected) // 4 + 1) == expected
    assert first_pages(client, filter_string, order, 10, 4) == expected[:40]


def first_pages(
    client: Client, filter_string: str, order: list[str] | None, size: int, count: int
) -> list[str]:
    got: list[str] = []
    token = None
    for _ in range(count):
        page = client.search_traces(
            filter_string=filter_string, order_by=order, max_results=size, page_token=token
        )
        got += [t.info.trace_id for t in page]
        token = page.token
        if token is None:
            break
    return got


def test_the_listed_plan_is_collected_without_a_scan(
    loaded: tuple[Client, list[dict[str, object]]], traced: dict[str, list[Any]]
) -> None:
    client, final = loaded
    filter_string = "client_request_id LIKE 'cr-00%'"  # ~4,500 values a partition
    assert "each candidate's value tested" in client.explain(filter_string=filter_string)
    executor.clear_caches()
    page = client.search_traces(filter_string=filter_string, max_results=50)
    assert [t.info.trace_id for t in page] == ref.search(final, None, filter_string, None, None)[
        :50
    ]
    made = [plan for plan in traced["listed"] if plan is not None]
    assert made
    assert not any(executor._tests_each_candidate(plan.tree) for plan in made)
    assert traced["scans"] == []


def test_a_plan_without_a_value_test_is_not_listed(
    loaded: tuple[Client, list[dict[str, object]]], traced: dict[str, list[Any]]
) -> None:
    """An equality walk that gives up goes on by steps and budgeted ways as before."""
    client, final = loaded
    filter_string = "tags.w = 'x' AND status = 'OK'"
    expected = ref.search(final, None, filter_string, None, None)[:30]
    page = client.search_traces(filter_string=filter_string, max_results=30)
    assert [t.info.trace_id for t in page] == expected
    assert traced["listed"] == [None] * len(traced["listed"])


def test_explain_names_the_attribute_a_walk_tests(
    loaded: tuple[Client, list[dict[str, object]]],
) -> None:
    """A walk testing client_request_id's register says so (it once said 'metadata.')."""
    client, _ = loaded
    shown = client.explain(filter_string="client_request_id LIKE 'cr-0011%'")
    assert "a walk tests client_request_id by each trace's register" in shown
    assert "metadata." not in shown and "TRACETAGS_LOOKUP_KEYS" not in shown
