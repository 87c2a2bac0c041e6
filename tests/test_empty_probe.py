"""A page whose probe proves a partition holds no match (an id that does not exist, a
time range with no trace) makes no tt_query page call there: one round trip less for a
page of nothing.  The answers stay the reference's, under NOT and OR too."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages, spy
from tracetags.client import Client


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    rng = random.Random(2)
    traces = [
        {
            "trace_id": f"tr-{i:04d}",
            "experiment_id": "1",
            "timestamp_ms": qd.BASE_MS + i,
            "execution_time_ms": 5,
            "status": rng.choice(("OK", "ERROR")),
            "name": "a",
            "client_request_id": None,
            "tags": {"w": rng.choice(("x", "y"))},
            "metadata": {},
        }
        for i in range(300)
    ]
    with qd.loaded(redis_url, "emptyprobe", 2, traces) as got:
        yield got


@pytest.fixture
def page_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many partitions each tt_query call batch asked for (pages and probes alike)."""
    calls: list[int] = []
    spy(monkeypatch, ["tracetags.functions.query_partitions"], lambda a, _: calls.append(len(a[2])))
    return calls


@pytest.mark.parametrize(
    "filter_string",
    [
        "request_id = 'tr-none'",
        "request_id IN ('tr-none', 'tr-nada') AND tags.w = 'x'",
        f"timestamp_ms > {qd.BASE_MS + 10_000}",
    ],
)
def test_nothing_proved_by_the_probe_costs_no_page_call(
    loaded: tuple[Client, list[dict[str, object]]], page_calls: list[int], filter_string: str
) -> None:
    client, _ = loaded
    page = client.search_traces(filter_string=filter_string)
    assert list(page) == [] and page.token is None
    assert page_calls == []


@pytest.mark.parametrize(
    "filter_string",
    [
        "request_id != 'tr-none'",
        "request_id NOT IN ('tr-none') AND tags.w = 'y'",
        "request_id = 'tr-none' OR tags.w = 'x'",
        f"timestamp_ms <= {qd.BASE_MS - 1} OR status = 'OK'",
        "request_id = 'tr-0007' OR request_id = 'tr-none'",
    ],
)
def test_an_empty_term_under_not_or_or_is_still_answered(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str
) -> None:
    client, final = loaded
    expected = ref.search(final, None, filter_string, None, None)
    assert expected
    assert all_pages(client, filter_string, None, 40) == expected
