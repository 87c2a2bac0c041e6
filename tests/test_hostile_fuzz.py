"""Hostile input, fuzzed: every filter gives a clean error or a result, every event is
refused at the call or folded, in bounded time, and no Function call blocks Redis longer
than the budget (a PING loop on another connection and SLOWLOG watch the whole run)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import query_data as qd
from tests.support.blocking import Blocking
from tests.support.consumer import consumer, wait_applied
from tests.support.helpers import drop_namespace
from tracetags import Settings, TagProducer
from tracetags.client import Client
from tracetags.errors import EventLimitError, FilterError, QueryLimitError, ValidationError

BASE = qd.BASE_MS
#: The longest any one call of the library may take here (many budgeted calls included).
CALL_SECONDS = 30.0


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[Client]:
    namespace = f"tt-fz-{uuid.uuid4().hex[:10]}"
    client = Client(Settings(redis_url=redis_url, namespace=namespace, partitions=2))
    traces = [
        {
            "trace_id": f"t{i:06d}",
            "experiment_id": str(i % 3),
            "timestamp_ms": BASE + i,
            "execution_time_ms": (i * 7) % 1000,
            "status": ("OK", "ERROR", "IN_PROGRESS")[i % 3],
            "tags": {"u": f"user_{i}", "env": ("prod", "dev")[i % 2], "n": str(i % 50)},
            "metadata": {"m": f"x{i % 10}"},
        }
        for i in range(4000)
    ]
    qd.load(client.redis, client.keys, 2, traces)
    yield client
    drop_namespace(client.redis, namespace)
    client.close()


FIELDS = ["tags.u", "tags.env", "tags.n", "tags.missing", "metadata.m", "status", "name",
          "request_id", "run_id", "client_request_id"]  # fmt: skip
NUMERIC = ["timestamp_ms", "execution_time_ms", "end_time_ms"]
TEXT = st.text(alphabet="ab_%.*+()[]^$\\'u0123456789 ", max_size=12)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "") + "'"


@st.composite
def terms(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        field = draw(st.sampled_from(NUMERIC))
        op = draw(st.sampled_from(["<", "<=", ">", ">=", "=", "!="]))
        return f"{field} {op} {BASE + draw(st.integers(-100, 4100))}"
    field = draw(st.sampled_from(FIELDS))
    if kind == 1:
        n = draw(st.sampled_from([1, 3, 50, 2000, 10_001]))
        start = draw(st.integers(0, 4000))
        values = ", ".join(f"'user_{start + i}'" for i in range(n))
        return f"{field} {draw(st.sampled_from(['IN', 'NOT IN']))} ({values})"
    if kind == 2:
        op = draw(st.sampled_from(["LIKE", "ILIKE", "RLIKE", "NOT LIKE", "NOT RLIKE"]))
        pattern = draw(st.sampled_from(["%5", "user_1%", "%_%_%", "(a+)+$", "^user_[0-9]*7$"]))
        if draw(st.booleans()):
            pattern = draw(TEXT) * draw(st.sampled_from([1, 100]))
        return f"{field} {op} {_quote(pattern)}"
    if kind == 3:
        return f"{field} IS {draw(st.sampled_from(['NULL', 'NOT NULL']))}"
    if kind == 4:
        return f"{field} {draw(st.sampled_from(['=', '!=', '<', '>']))} {draw(st.integers(0, 60))}"
    return f"{field} = {_quote(draw(TEXT))}"


@st.composite
def filters(draw: st.DrawFn) -> str:
    shape = draw(st.integers(0, 4))
    if shape == 0:  # a wide OR, maybe over the declared limit
        n = draw(st.sampled_from([2, 50, 499, 600]))
        term = draw(terms())
        return " OR ".join(f"({term} AND timestamp_ms > {BASE + i})" for i in range(n))
    parts = draw(st.lists(terms(), min_size=1, max_size=6))
    joined = f" {draw(st.sampled_from(['AND', 'OR']))} ".join(parts)
    if shape == 1:
        return f"NOT ({joined})"
    if shape == 2:  # junk inserted anywhere
        at = draw(st.integers(0, len(joined)))
        return (
            joined[:at]
            + draw(st.sampled_from(["(", ")", "'", "\x00", " OR", "\u00e9"]))
            + joined[at:]
        )
    return joined


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(filter_string=filters(), what=st.sampled_from(["count", "page", "stats"]))
def test_a_fuzzed_filter_is_a_clean_error_or_a_result_within_the_budget(
    loaded: Client, filter_string: str, what: str
) -> None:
    with Blocking(loaded.settings.effective_redis_url) as blocking:
        start = time.monotonic()
        try:
            if what == "count":
                assert loaded.count(filter_string) >= 0
            elif what == "page":
                page = loaded.search_traces(filter_string=filter_string, max_results=20)
                assert len(page) <= 20
            else:
                groups = loaded.stats(filter_string, group_by=["tags.env"], metrics=["count"])
                assert all(g["count"] > 0 for g in groups)
        except (FilterError, QueryLimitError) as exc:
            assert str(exc) and "Traceback" not in str(exc)
        assert time.monotonic() - start < CALL_SECONDS
    blocking.assert_within_budget()


@st.composite
def events(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    n = draw(st.sampled_from([0, 1, 10, 999, 1000, 1001, 3000]))
    size = draw(st.sampled_from([1, 100, 1100, 8000, 8001]))
    return f"t{draw(st.integers(0, 5))}", {f"k{i}": "v" * size for i in range(n)}


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(events(), min_size=1, max_size=6))
async def test_fuzzed_events_are_refused_at_the_call_or_folded_within_the_budget(
    redis_url: str, batch: list[tuple[str, dict[str, str]]]
) -> None:
    namespace = f"tt-fe-{uuid.uuid4().hex[:10]}"
    settings_ = Settings(redis_url=redis_url, namespace=namespace, flush_interval_ms=2)
    producer = TagProducer(settings_)
    client = Client(settings_)
    accepted = 0
    try:
        for trace_id, tags in batch:
            try:
                producer.set_tags(trace_id, tags)
                accepted += 1
            except EventLimitError as exc:
                assert "over the limit" in str(exc)
            except ValidationError as exc:
                assert str(exc)
        with Blocking(redis_url) as blocking:
            start = time.monotonic()
            async with consumer(settings_):
                await wait_applied(client, producer)
            assert time.monotonic() - start < CALL_SECONDS
        blocking.assert_within_budget()
        applied: Any = client.status().partitions[0]
        assert applied.dead_letters <= accepted
    finally:
        producer.close()
        drop_namespace(client.redis, namespace)
        client.close()
