"""A walk of an order key's values over terms the planner takes as independent but that
exclude each other (unfinished traces have no duration: ``execution_time_ms >= 0 AND
status = 'IN_PROGRESS'`` matches nothing) would visit every group; past its walk budget it
collects the candidates instead, in the same call, and the answer stays exact."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client
from tracetags.query import budget, pages


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    rng = random.Random(3)
    traces = []
    for i in range(20_000):
        running = i % 10 == 0
        traces.append(
            {
                "trace_id": f"tr-{i:06d}",
                "experiment_id": "1",
                "timestamp_ms": qd.BASE_MS + rng.randrange(100_000),
                "execution_time_ms": None if running else rng.randrange(1000),
                "status": "IN_PROGRESS" if running else rng.choice(("OK", "ERROR")),
                "name": "n",
                "client_request_id": None,
                "tags": {"k": f"v{rng.randrange(6)}"},
                "metadata": {},
            }
        )
    with qd.loaded(redis_url, "wbudget", 1, traces) as got:
        yield got


@pytest.mark.parametrize(
    "filter_string",
    [
        "execution_time_ms >= 0 AND status = 'IN_PROGRESS'",
        "execution_time_ms >= 0 AND status = 'IN_PROGRESS' AND tags.k != 'v1'",
        "execution_time_ms > 500 AND status = 'IN_PROGRESS' OR tags.k = 'v9'",
        "execution_time_ms >= 0 AND status = 'OK'",  # matches: the walk fills the page
    ],
)
@pytest.mark.parametrize("order", [["tags.k DESC"], ["tags.k", "timestamp_ms"]])
def test_an_empty_intersection_walked_by_values_collects_in_the_same_call(
    loaded: tuple[Client, list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
    filter_string: str,
    order: list[str],
) -> None:
    client, final = loaded
    text = client.explain(filter_string=filter_string, order_by=order)
    # No deadline (a loaded machine must not decide the path): the page is the one call's,
    # walked until the walk budget, then collected; never the budgeted ways'.
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 10_000_000)
    fallbacks: list[str] = []
    for name in ("_stepped_page", "_budgeted_page"):
        real = getattr(pages, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            fallbacks.append(_name)
            return _real(*args)

        monkeypatch.setattr(pages, name, spy)
    page = client.search_traces(filter_string=filter_string, order_by=order, max_results=50)
    expected = ref.search(final, None, filter_string, order, None)
    assert [t.info.trace_id for t in page] == expected[:50]
    if " OR " not in filter_string:
        assert "strategy: walk-values" in text, text  # (the path under test)
    assert not fallbacks
    assert all_pages(client, filter_string, order, 400) == expected
