"""The MLflow-style fluent API over the default producer, against a real Redis."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import pytest
import redis

import tracetags
from tests.support.helpers import read_log
from tracetags import Settings, schemas


@pytest.fixture
def fluent(settings: Settings) -> Iterator[tracetags.TagProducer]:
    producer = tracetags.configure(settings.replace(experiment_id="42"))
    yield producer
    producer.close()


def events_by_trace(r: redis.Redis, namespace: str) -> dict[str, list[schemas.Event]]:
    out: dict[str, list[schemas.Event]] = {}
    for _, _, event in read_log(r, namespace):
        out.setdefault(event.trace_id, []).append(event)
    return out


def test_trace_records_start_finish_and_tags(
    fluent: tracetags.TagProducer, settings: Settings, r: redis.Redis
) -> None:
    seen: list[str | None] = []

    @tracetags.trace
    def handle(user: str) -> str:
        seen.append(tracetags.get_current_trace_id())
        tracetags.update_current_trace(tags={"user_id": user, "environment": "production"})
        tracetags.update_current_trace(tags={"environment": "staging"})
        tracetags.update_current_trace(metadata={"mlflow.sourceRun": "run-7"})
        return user.upper()

    assert handle("u1") == "U1"
    assert tracetags.get_current_trace_id() is None
    fluent.flush()
    (trace_id,) = seen
    assert trace_id is not None and re.fullmatch(r"tr-[0-9a-f]{32}", trace_id)
    started, set1, set2, finished = events_by_trace(r, settings.namespace)[trace_id]
    assert isinstance(started, schemas.TraceStarted)
    assert (started.experiment_id, started.name) == ("42", "handle")
    assert isinstance(set1, schemas.TagsSet) and isinstance(set2, schemas.TagsSet)
    assert set1.tags == {"user_id": "u1", "environment": "production"}
    assert set2.tags == {"environment": "staging"}
    assert isinstance(finished, schemas.TraceFinished)
    assert finished.status == "OK" and finished.timestamp_ms == started.timestamp_ms
    assert finished.metadata == {"mlflow.sourceRun": "run-7"}
    assert finished.execution_time_ms >= 0


def test_exception_marks_error_and_propagates(
    fluent: tracetags.TagProducer, settings: Settings, r: redis.Redis
) -> None:
    @tracetags.trace(name="boom", experiment_id="9")
    def fail() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        fail()
    fluent.flush()
    ((started, finished),) = events_by_trace(r, settings.namespace).values()
    assert isinstance(started, schemas.TraceStarted) and started.name == "boom"
    assert started.experiment_id == "9"
    assert isinstance(finished, schemas.TraceFinished) and finished.status == "ERROR"


def test_nested_calls_join_the_outer_trace(
    fluent: tracetags.TagProducer, settings: Settings, r: redis.Redis
) -> None:
    ids: list[str | None] = []

    @tracetags.trace
    def inner() -> None:
        ids.append(tracetags.get_current_trace_id())
        tracetags.update_current_trace(tags={"step": "inner"})

    @tracetags.trace
    def outer() -> None:
        ids.append(tracetags.get_current_trace_id())
        inner()

    outer()
    fluent.flush()
    assert ids[0] == ids[1]
    traces = events_by_trace(r, settings.namespace)
    assert list(traces) == [ids[0]]
    assert [type(e).__name__ for e in traces[ids[0]]] == [
        "TraceStarted",
        "TagsSet",
        "TraceFinished",
    ]


async def test_async_functions_and_concurrent_tasks_keep_their_own_trace(
    fluent: tracetags.TagProducer, settings: Settings, r: redis.Redis
) -> None:
    @tracetags.trace
    async def step(i: int) -> str | None:
        await asyncio.sleep(0.01)
        tracetags.update_current_trace(tags={"i": str(i)})
        await asyncio.sleep(0.01)
        return tracetags.get_current_trace_id()

    @tracetags.trace
    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("async boom")

    ids = await asyncio.gather(*(step(i) for i in range(20)))
    with pytest.raises(ValueError, match="async boom"):
        await failing()
    fluent.flush()
    traces = events_by_trace(r, settings.namespace)
    assert len(set(ids)) == 20 and len(traces) == 21
    for i, trace_id in enumerate(ids):
        events = traces[trace_id]
        tag_events = [e for e in events if isinstance(e, schemas.TagsSet)]
        assert [e.tags for e in tag_events] == [{"i": str(i)}]
        assert isinstance(events[-1], schemas.TraceFinished) and events[-1].status == "OK"
    statuses = [e[-1].status for e in traces.values() if isinstance(e[-1], schemas.TraceFinished)]
    assert statuses.count("ERROR") == 1


def test_threads_do_not_share_a_current_trace(
    fluent: tracetags.TagProducer, settings: Settings, r: redis.Redis
) -> None:
    results: dict[int, str | None] = {}
    inside_thread: list[str | None] = []

    @tracetags.trace
    def work(i: int) -> None:
        results[i] = tracetags.get_current_trace_id()
        tracetags.update_current_trace(tags={"worker": str(i)})

    @tracetags.trace
    def parent() -> None:
        t = threading.Thread(target=lambda: inside_thread.append(tracetags.get_current_trace_id()))
        t.start()
        t.join()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parent()
    fluent.flush()
    assert len(set(results.values())) == 8
    assert inside_thread == [None]  # a new thread starts with no active trace
    traces = events_by_trace(r, settings.namespace)
    for i, trace_id in results.items():
        tags = [e.tags for e in traces[trace_id] if isinstance(e, schemas.TagsSet)]
        assert tags == [{"worker": str(i)}]


def test_update_outside_a_trace_warns_and_records_nothing(
    fluent: tracetags.TagProducer,
) -> None:
    with pytest.warns(UserWarning, match="no active trace"):
        tracetags.update_current_trace(tags={"a": "b"})
    assert fluent.stats().buffered == 0 and fluent.stats().sent == 0


def test_set_and_delete_trace_tag_on_any_trace(
    fluent: tracetags.TagProducer, settings: Settings, r: redis.Redis
) -> None:
    tracetags.set_trace_tag("tr-old", "needs_review", "true")
    tracetags.delete_trace_tag("tr-old", "needs_review")
    with pytest.raises(tracetags.ValidationError, match="tag key '' is invalid"):
        tracetags.set_trace_tag("tr-old", "", "x")
    fluent.flush()
    set_event, deleted = events_by_trace(r, settings.namespace)["tr-old"]
    assert isinstance(set_event, schemas.TagsSet)
    assert set_event.tags == {"needs_review": "true"}
    assert isinstance(deleted, schemas.TagsDeleted) and deleted.keys == ["needs_review"]


def test_invalid_tags_inside_a_trace_raise_but_the_trace_still_finishes(
    fluent: tracetags.TagProducer, settings: Settings, r: redis.Redis
) -> None:
    @tracetags.trace
    def bad() -> None:
        tracetags.update_current_trace(tags={"a//b": "x"})

    with pytest.raises(tracetags.ValidationError):
        bad()
    fluent.flush()
    ((_, finished),) = events_by_trace(r, settings.namespace).values()
    assert isinstance(finished, schemas.TraceFinished) and finished.status == "ERROR"
