"""The producer against a real Redis: wire format, order, outages, overflow, fork."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
import redis

import tracetags
from tests.support.helpers import exactly_once_problems, read_log, wait_until
from tracetags import AsyncTagProducer, Settings, TagProducer, schemas
from tracetags.connections import SyncClient
from tracetags.embedded import RedisServer, free_port
from tracetags.errors import (
    InvalidTagKeyError,
    InvalidTagValueError,
    ProducerClosedError,
    TracetagsError,
    TracetagsTimeoutError,
    ValidationError,
)
from tracetags.keys import Keys, partition_of


def test_every_event_type_reaches_the_log(any_settings: Settings, any_r: SyncClient) -> None:
    settings, r = any_settings, any_r
    with TagProducer(settings) as producer:
        producer.trace_started(
            "tr-a",
            experiment_id="1",
            timestamp_ms=100,
            name="chat",
            metadata={"mlflow.sourceRun": "run-1"},
            tags={"env": "prod"},
            client_request_id="req-1",
        )
        producer.set_tags("tr-a", {"user_id": "u1", "model.version": "v2"})
        producer.delete_tags("tr-a", ["env"])
        producer.trace_finished(
            "tr-a", experiment_id="1", timestamp_ms=100, execution_time_ms=42, status="ERROR"
        )
        producer.delete_trace("tr-a")
        receipt = producer.flush()
    events = [event for _, _, event in read_log(r, settings.namespace)]
    assert [type(e).__name__ for e in events] == [
        "TraceStarted",
        "TagsSet",
        "TagsDeleted",
        "TraceFinished",
        "TraceDeleted",
    ]
    started, tags_set, deleted, finished, _ = events
    assert isinstance(started, schemas.TraceStarted)
    assert (started.experiment_id, started.timestamp_ms, started.name) == ("1", 100, "chat")
    assert started.metadata == {"mlflow.sourceRun": "run-1"}
    assert started.tags == {"env": "prod"} and started.client_request_id == "req-1"
    assert isinstance(tags_set, schemas.TagsSet)
    assert tags_set.tags == {"user_id": "u1", "model.version": "v2"}
    assert isinstance(deleted, schemas.TagsDeleted) and deleted.keys == ["env"]
    assert isinstance(finished, schemas.TraceFinished)
    assert (finished.execution_time_ms, finished.status) == (42, "ERROR")
    assert len({e.event_id for e in events}) == 5
    partition = partition_of("tr-a", settings.partition_count)
    last_id = r.xrevrange(Keys(settings.namespace).stream(partition), count=1)[0][0].decode()
    assert receipt.positions == {partition: last_id}
    assert receipt.namespace == settings.namespace


def test_per_trace_order_across_threads_and_partitions(
    any_settings: Settings, any_r: SyncClient
) -> None:
    settings, r = any_settings.replace(partitions=4, producer_batch_size=64), any_r
    producer = TagProducer(settings)

    def work(thread: int) -> None:
        for i in range(2_000):
            producer.set_tags(f"tr-{thread}-{i % 50}", {"seq": str(i)})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    producer.close()
    seen: dict[str, list[int]] = defaultdict(list)
    log = read_log(r, settings.namespace)
    assert len(log) == 8_000
    for partition, _, event in log:
        assert partition == partition_of(event.trace_id, 4)
        assert isinstance(event, schemas.TagsSet)
        seen[event.trace_id].append(int(event.tags["seq"]))
    assert len(seen) == 200
    for trace_id, seqs in seen.items():
        assert seqs == sorted(seqs), trace_id
        assert len(seqs) == 40


def test_namespace_keeps_the_partition_count_it_was_created_with(
    any_settings: Settings, any_r: SyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    settings, r = any_settings, any_r
    with TagProducer(settings.replace(partitions=3)) as first:
        first.set_tags("tr-x", {"a": "1"})
    with (
        caplog.at_level(logging.WARNING, "tracetags.producer"),
        TagProducer(settings.replace(partitions=8)) as second,
    ):
        for i in range(30):
            second.set_tags(f"tr-{i}", {"a": "1"})
        second.flush()
    assert "created with 3 partitions" in caplog.text
    assert {p for p, _, _ in read_log(r, settings.namespace)} <= {0, 1, 2}


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda p: p.set_tags("t", {"a//b": "x"}),
            InvalidTagKeyError,
            f"tag key 'a//b' is invalid: {schemas.KEY_RULE}",
        ),
        (
            lambda p: p.set_tags("t", {"k": "x" * 8001}),
            InvalidTagValueError,
            "tag 'k': value is 8001 characters long; the limit is 8000 "
            "(values are refused, never truncated)",
        ),
        (lambda p: p.set_tags("t", {}), ValidationError, "no tags given: pass at least one tag"),
        (
            lambda p: p.set_tags("", {"a": "b"}),
            ValidationError,
            "trace_id must be a non-empty str, got ''",
        ),
        (
            lambda p: p.delete_tags("t", "env"),
            ValidationError,
            "tag keys must be a list of str, not str",
        ),
        (
            lambda p: p.trace_started("t", experiment_id="1", metadata={"/x": "y"}),
            InvalidTagKeyError,
            f"metadata key '/x' is invalid: {schemas.KEY_RULE}",
        ),
        (
            lambda p: p.trace_finished(
                "t", experiment_id="1", timestamp_ms=1, execution_time_ms=-1
            ),
            ValidationError,
            "execution_time_ms must be a non-negative int (milliseconds) below 2**63, got -1",
        ),
        (
            lambda p: p.trace_finished(
                "t", experiment_id="1", timestamp_ms=1, execution_time_ms=1, status="FAILED"
            ),
            ValidationError,
            "status 'FAILED' is not one of OK, ERROR, IN_PROGRESS, STATE_UNSPECIFIED",
        ),
    ],
)
def test_invalid_input_raises_at_the_call_and_nothing_is_buffered(
    settings: Settings, call: object, error: type[Exception], message: str
) -> None:
    producer = TagProducer(settings)
    with pytest.raises(error) as info:
        call(producer)  # type: ignore[operator]
    assert str(info.value) == message
    # callers that do not know tracetags can catch the builtin
    assert isinstance(info.value, TracetagsError) and isinstance(info.value, ValueError)
    assert producer.stats().buffered == 0
    producer.close()


def dead_settings(namespace: str, **changes: Any) -> Settings:
    """Settings pointing at a loopback port nobody listens on."""
    return Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        namespace=namespace,
        flush_interval_ms=2,
        retry_initial_ms=10,
        retry_max_ms=50,
        socket_timeout_ms=500,
        **changes,
    )


def test_calls_never_raise_or_block_while_redis_is_down(namespace: str) -> None:
    producer = TagProducer(dead_settings(namespace))
    started = time.perf_counter()
    for i in range(5_000):
        producer.set_tags(f"tr-{i}", {"env": "prod"})
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0  # 5k calls; a blocking call would take >= one connect each
    wait_until(lambda: producer.stats().retries >= 2)
    stats = producer.stats()
    assert stats.buffered == 5_000 and stats.sent == 0 and stats.dropped == 0
    assert stats.last_error is not None and "ConnectionError" in stats.last_error
    with pytest.raises(TracetagsTimeoutError, match="5000 events still buffered"):
        producer.flush(timeout=0.2)
    producer.close(timeout=0.1)
    assert producer.stats().dropped == 5_000
    with pytest.raises(ProducerClosedError):
        producer.set_tags("tr-1", {"a": "b"})


def test_overflow_drops_the_oldest_and_counts_exactly(
    namespace: str, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dead_settings(namespace, buffer_size=1_000, producer_batch_size=100)
    producer = TagProducer(settings)
    with caplog.at_level(logging.WARNING, "tracetags.producer"):
        for i in range(3_000):
            producer.set_tags("tr-0", {"seq": str(i)})
    stats = producer.stats()
    # Redis was never reached, so nothing is in flight: the 1,000 newest survive
    assert (stats.buffered, stats.dropped) == (1_000, 2_000)
    # 2,000 drops within a second: one warning (rate-limited to one per 10 s), not 2,000
    (warning,) = [m for m in caplog.messages if "buffer full" in m]
    assert warning.startswith(
        "tracetags producer buffer full (1000 events): dropped 1 oldest events (1 in all); "
        "last error: "
    )
    url = settings.effective_redis_url
    server = RedisServer(tmp_path / "redis", port=int(url.rsplit(":", 1)[1].split("/")[0]))  # type: ignore[operator]
    with server:
        producer.flush(timeout=15)
        client = redis.Redis.from_url(url)
        seqs = [
            int(e.tags["seq"])
            for _, _, e in read_log(client, namespace)
            if isinstance(e, schemas.TagsSet)
        ]
        client.close()
        assert seqs == list(range(2_000, 3_000))
        stats = producer.stats()
        assert (stats.sent, stats.buffered, stats.dropped) == (1_000, 0, 2_000)
        producer.close()


def test_redis_killed_mid_stream_loses_and_duplicates_nothing(
    own_redis: RedisServer, namespace: str
) -> None:
    """SIGKILL under load with AOF fsync always, then restart: exactly once, in order."""
    settings = Settings(
        redis_url=own_redis.url,
        namespace=namespace,
        partitions=2,
        producer_batch_size=200,
        retry_initial_ms=10,
        retry_max_ms=100,
        socket_timeout_ms=1_000,
    )
    producer = TagProducer(settings)
    total = 30_000
    for i in range(total):
        producer.set_tags(f"tr-{i % 97}", {"seq": str(i)})
        if i in (8_000, 20_000):
            wait_until(lambda: producer.stats().sent > 0)
            own_redis.kill()
            time.sleep(0.3)
            own_redis.start()
    producer.flush(timeout=60)
    client = redis.Redis.from_url(own_redis.url)
    seqs = [
        int(e.tags["seq"])
        for _, _, e in read_log(client, namespace)
        if isinstance(e, schemas.TagsSet)
    ]
    client.close()
    by_trace: dict[int, list[int]] = defaultdict(list)
    for s in seqs:
        by_trace[s % 97].append(s)
    assert exactly_once_problems(seqs, total) == ""  # every event exactly once
    assert all(v == sorted(v) for v in by_trace.values())  # per-trace order kept
    stats = producer.stats()
    assert stats.sent == total and stats.dropped == 0 and stats.retries >= 2
    producer.close()


def test_connections_cut_mid_pipeline_write_no_duplicates(
    settings: Settings, r: redis.Redis
) -> None:
    """CLIENT KILL cuts the producer's connection while pipelines are in flight: a pipeline
    may have been applied whole or in part; the producer finds what landed and resends the
    rest only."""
    settings = settings.replace(producer_batch_size=500, retry_initial_ms=5, retry_max_ms=20)
    producer = TagProducer(settings)
    stop = threading.Event()

    def cutter() -> None:
        killer = redis.Redis.from_url(settings.effective_redis_url)
        while not stop.is_set():
            killer.client_kill_filter(_type="normal", skipme=True)
            time.sleep(0.02)
        killer.close()

    thread = threading.Thread(target=cutter)
    thread.start()
    total = 60_000
    for i in range(total):
        producer.set_tags(f"tr-{i % 13}", {"seq": str(i)})
        if i % 5_000 == 0:
            time.sleep(0.01)
    try:
        producer.flush(timeout=60)
    finally:
        stop.set()
        thread.join()
    seqs = [
        int(e.tags["seq"])
        for _, _, e in read_log(r, settings.namespace)
        if isinstance(e, schemas.TagsSet)
    ]
    assert producer.stats().retries > 0, "the test did not cut any connection"
    assert exactly_once_problems(seqs, total) == ""
    assert seqs == list(range(total))  # one partition: the whole log is in call order
    producer.close()


def test_flush_returns_receipt_per_partition(any_settings: Settings, any_r: SyncClient) -> None:
    settings, r = any_settings.replace(partitions=4), any_r
    with TagProducer(settings) as producer:
        for i in range(100):
            producer.set_tags(f"tr-{i}", {"a": "b"})
        receipt = producer.flush()
        keys = Keys(settings.namespace)
        for partition in range(4):
            last = r.xrevrange(keys.stream(partition), count=1)[0][0].decode()
            assert receipt.positions[partition] == last
        assert producer.flush().positions == receipt.positions  # nothing new: same receipt


def test_forked_child_gets_a_working_producer_of_its_own(
    any_settings: Settings, any_r: SyncClient
) -> None:
    settings, r = any_settings, any_r
    producer = TagProducer(settings)
    producer.set_tags("tr-parent", {"who": "parent-before"})
    producer.flush()
    pid = os.fork()
    if pid == 0:  # child: must not resend the parent's events, must send its own
        code = 1
        try:
            producer.set_tags("tr-child", {"who": "child"})
            producer.flush(timeout=10)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    producer.set_tags("tr-parent", {"who": "parent-after"})
    producer.close()
    whos = sorted(
        e.tags["who"]
        for _, _, e in read_log(r, settings.namespace)
        if isinstance(e, schemas.TagsSet)
    )
    assert whos == ["child", "parent-after", "parent-before"]


def test_log_is_never_trimmed_by_the_producer(any_settings: Settings, any_r: SyncClient) -> None:
    settings, r = any_settings, any_r
    with TagProducer(settings.replace(producer_batch_size=50)) as producer:
        for i in range(5_000):
            producer.set_tags("tr-1", {"i": str(i)})
    partition = partition_of("tr-1", settings.partition_count)
    assert r.xlen(Keys(settings.namespace).stream(partition)) == 5_000


# --- asyncio flavour -------------------------------------------------------------------


async def test_async_producer_round_trip_and_order(
    any_settings: Settings, any_r: SyncClient
) -> None:
    settings, r = any_settings.replace(partitions=2, producer_batch_size=100), any_r
    async with AsyncTagProducer(settings) as producer:
        producer.trace_started("tr-a", experiment_id="1", timestamp_ms=5)
        for i in range(3_000):
            producer.set_tags(f"tr-{i % 7}", {"seq": str(i)})
            if i % 500 == 0:
                await asyncio.sleep(0)
        producer.delete_trace("tr-a")
        receipt = await producer.flush()
        assert set(receipt.positions) <= {0, 1}
    log = read_log(r, settings.namespace)
    assert len(log) == 3_002
    by_trace: dict[str, list[int]] = defaultdict(list)
    for _, _, event in log:
        if isinstance(event, schemas.TagsSet):
            by_trace[event.trace_id].append(int(event.tags["seq"]))
    assert sum(len(v) for v in by_trace.values()) == 3_000
    assert all(v == sorted(v) for v in by_trace.values())
    assert producer.stats().sent == 3_002


async def test_async_producer_survives_an_outage(own_redis: RedisServer, namespace: str) -> None:
    settings = Settings(
        redis_url=own_redis.url,
        namespace=namespace,
        retry_initial_ms=10,
        retry_max_ms=50,
        socket_timeout_ms=500,
    )
    producer = AsyncTagProducer(settings)
    producer.set_tags("tr-1", {"seq": "0"})
    await producer.flush()
    own_redis.kill()
    for i in range(1, 2_001):
        producer.set_tags("tr-1", {"seq": str(i)})  # never raises, never blocks
    with pytest.raises(TracetagsTimeoutError):
        await producer.flush(timeout=0.3)
    assert producer.stats().retries >= 1
    own_redis.start()
    await producer.flush(timeout=30)
    await producer.close()
    client = redis.Redis.from_url(own_redis.url)
    seqs = [
        int(e.tags["seq"])
        for _, _, e in read_log(client, namespace)
        if isinstance(e, schemas.TagsSet)
    ]
    client.close()
    assert seqs == list(range(2_001))


async def test_fluent_trace_nested_across_async_sync_and_to_thread(
    settings: Settings, r: redis.Redis
) -> None:
    """The default producer's active trace follows the context: an async function calling
    another async one, a sync one, and work handed to a thread all join the outer trace."""
    producer = tracetags.configure(settings)
    ids: list[str | None] = []

    @tracetags.trace
    def sync_inner() -> None:
        ids.append(tracetags.get_current_trace_id())
        tracetags.update_current_trace(tags={"step": "sync_inner"})

    @tracetags.trace
    async def async_inner() -> None:
        await asyncio.sleep(0)
        ids.append(tracetags.get_current_trace_id())
        sync_inner()
        tracetags.update_current_trace(tags={"step": "async_inner"})

    def in_a_thread() -> None:
        ids.append(tracetags.get_current_trace_id())
        tracetags.update_current_trace(tags={"step": "thread"})

    @tracetags.trace(name="outer")
    async def outer() -> None:
        ids.append(tracetags.get_current_trace_id())
        await async_inner()
        await asyncio.to_thread(in_a_thread)  # copies the context

    await outer()
    assert tracetags.get_current_trace_id() is None
    producer.close()
    trace_id = ids[0]
    assert trace_id is not None and ids == [trace_id] * 4
    log = [event for _, _, event in read_log(r, settings.namespace)]
    assert {event.trace_id for event in log} == {trace_id}
    started, *tag_events, finished = log
    assert isinstance(started, schemas.TraceStarted) and started.name == "outer"
    assert [e.tags for e in tag_events if isinstance(e, schemas.TagsSet)] == [
        {"step": "sync_inner"},
        {"step": "async_inner"},
        {"step": "thread"},
    ]
    assert len(tag_events) == 3
    assert isinstance(finished, schemas.TraceFinished) and finished.status == "OK"


def test_atexit_hook_flushes_what_the_app_forgot(
    settings: Settings, r: redis.Redis, tmp_path: object
) -> None:
    """A script that never calls flush()/close(): its events still reach the log."""
    import subprocess
    import sys

    script = (
        "import tracetags\n"
        f"tracetags.configure(tracetags.Settings(redis_url={settings.redis_url!r}, "
        f"namespace={settings.namespace!r}, flush_interval_ms=10_000, "
        "producer_batch_size=5_000))\n"
        "for i in range(2_000):\n"
        "    tracetags.set_trace_tag(f'tr-{i}', 'env', 'prod')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert len(read_log(r, settings.namespace)) == 2_000
