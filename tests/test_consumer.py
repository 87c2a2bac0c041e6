"""The FastStream consumer against a real Redis: folding, poison entries, foreign
publishers, Redis restarts, and the Client's read side."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio
from faststream.redis import RedisBroker

from tests.support.consumer import consumer, wait_applied
from tracetags import Settings, TagProducer, schemas
from tracetags.client import Client
from tracetags.connections import SyncClient
from tracetags.consumer import Folder
from tracetags.embedded import RedisServer
from tracetags.keys import Keys


async def test_events_written_before_the_first_start_are_folded(any_settings: Settings) -> None:
    settings = any_settings.replace(partitions=2)
    producer = TagProducer(settings)
    producer.trace_started(
        "tr-early",
        experiment_id="1",
        timestamp_ms=10,
        name="chat",
        tags={"env": "prod"},
        metadata={"mlflow.sourceRun": "r1"},
        client_request_id="req-1",
    )
    producer.flush()
    client = Client(settings)
    async with consumer(settings):
        producer.trace_finished(
            "tr-early", experiment_id="1", timestamp_ms=10, execution_time_ms=250, status="ERROR"
        )
        producer.set_tags("tr-early", {"needs_review": "true"})
        producer.delete_tags("tr-early", ["env"])
        await wait_applied(client, producer)
    trace = client.get_trace("tr-early")
    assert trace is not None
    info = trace.info
    assert (info.trace_id, info.request_id, info.experiment_id) == ("tr-early", "tr-early", "1")
    assert (info.timestamp_ms, info.execution_time_ms, info.end_time_ms) == (10, 250, 260)
    assert info.status == "ERROR" and info.name == "chat" and info.client_request_id == "req-1"
    assert info.tags == {"mlflow.traceName": "chat", "needs_review": "true"}
    assert info.request_metadata == info.trace_metadata == {"mlflow.sourceRun": "r1"}
    assert client.get_trace("tr-missing") is None
    status = client.status()
    assert status.total_pending == 0 and status.total_lag == 0
    assert sum(p.traces for p in status.partitions) == 1
    producer.close()
    client.close()


async def test_tags_before_start_and_a_deleted_trace(any_settings: Settings) -> None:
    settings = any_settings
    producer = TagProducer(settings)
    client = Client(settings)
    async with consumer(settings):
        producer.set_tags("tr-a", {"user_id": "u1"})
        await wait_applied(client, producer)
        early = client.get_trace("tr-a")
        assert early is not None and early.info.tags == {"user_id": "u1"}
        assert early.info.timestamp_ms is None and early.info.status is None
        producer.trace_started("tr-a", experiment_id="3", timestamp_ms=5)
        await wait_applied(client, producer)
        started = client.get_trace("tr-a")
        assert started is not None and started.info.status == "IN_PROGRESS"
        assert started.info.tags == {"user_id": "u1"}
        producer.delete_trace("tr-a")
        await wait_applied(client, producer)
        assert client.get_trace("tr-a") is None
    producer.close()
    client.close()


async def test_poison_entries_are_dead_lettered_and_their_neighbours_applied(
    any_settings: Settings, any_r: SyncClient
) -> None:
    settings, r = any_settings.replace(partitions=1), any_r
    keys = Keys(settings.namespace)
    stream = keys.stream(0)
    producer = TagProducer(settings)
    client = Client(settings)
    producer.set_tags("tr-1", {"before": "1"})
    producer.flush()
    bad_ids = [
        r.xadd(stream, {"e": b"\xc1\xc1 garbage"}).decode(),
        r.xadd(stream, {"e": msgspec.msgpack.encode({"type": "tags_set", "trace_id": "x"})})
        .decode(),
        r.xadd(stream, {"e": msgspec.msgpack.encode(
            {"type": "tags_set", "trace_id": "tr-1", "event_id": schemas.new_event_id(),
             "emitted_at_ms": 1, "tags": {"k": "v" * 8001}})}).decode(),
        r.xadd(stream, {"something": b"else"}).decode(),
    ]  # fmt: skip
    producer.set_tags("tr-1", {"after": "1"})
    async with consumer(settings):
        await wait_applied(client, producer)
    trace = client.get_trace("tr-1")
    assert trace is not None and trace.info.tags == {"before": "1", "after": "1"}
    dead = r.xrange(keys.dead_letters(0))
    assert [d[1][b"entry_id"].decode() for d in dead] == bad_ids
    reasons = [d[1][b"reason"].decode() for d in dead]
    assert reasons[0].startswith("not a msgpack event")
    assert reasons[1].startswith("schema violation: Object missing required field")
    assert reasons[2] == ("schema violation: Expected `str` of length <= 8000 - at `$.tags[...]`")
    assert reasons[3] == ("entry has neither field 'e' (tracetags) nor '__data__' (FastStream)")
    assert dead[0][1][b"payload"] == b"\xc1\xc1 garbage"
    assert client.status().partitions[0].dead_letters == 4
    assert r.xpending(keys.stream(0), settings.consumer_group)["pending"] == 0
    producer.close()
    client.close()


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_events_published_by_a_faststream_app_are_folded(
    settings: Settings, redis_url: str, encoding: str
) -> None:
    keys = Keys(settings.namespace)
    event = schemas.TraceStarted(
        trace_id="tr-fs", event_id=schemas.new_event_id(), emitted_at_ms=schemas.now_ms(),
        experiment_id="5", timestamp_ms=99, tags={"source": "faststream"},
    )  # fmt: skip
    client = Client(settings)
    async with consumer(settings), RedisBroker(redis_url) as broker:
        if encoding == "json":
            await broker.publish(msgspec.to_builtins(event), stream=keys.stream(0))
        else:
            await broker.publish(
                schemas.encode(event),
                stream=keys.stream(0),
                headers={"content-type": "application/msgpack"},
            )
        direct = TagProducer(settings)
        direct.set_tags("tr-fs", {"also": "raw xadd"})
        await wait_applied(client, direct)
        direct.close()
    trace = client.get_trace("tr-fs")
    assert trace is not None
    assert trace.info.tags == {"source": "faststream", "also": "raw xadd"}
    assert trace.info.timestamp_ms == 99 and trace.info.experiment_id == "5"
    client.close()


async def test_consumer_rides_out_a_redis_restart(own_redis: RedisServer, namespace: str) -> None:
    settings = Settings(
        redis_url=own_redis.url,
        namespace=namespace,
        retry_initial_ms=10,
        retry_max_ms=200,
        socket_timeout_ms=1_000,
    )
    producer = TagProducer(settings)
    client = Client(settings)
    async with consumer(settings):
        for i in range(500):
            producer.set_tags(f"tr-{i}", {"phase": "before"})
        await wait_applied(client, producer)
        own_redis.stop()
        for i in range(500):
            producer.set_tags(f"tr-{i}", {"phase": "after"})
        await asyncio.sleep(1.0)
        own_redis.start()
        await wait_applied(client, producer, timeout=60)
    for i in (0, 250, 499):
        trace = client.get_trace(f"tr-{i}")
        assert trace is not None and trace.info.tags == {"phase": "after"}
    assert client.status().total_pending == 0
    producer.close()
    client.close()


async def test_a_trace_with_1000_tags(settings: Settings) -> None:
    producer = TagProducer(settings)
    client = Client(settings)
    # (an event holds at most 500 keys: docs/limits.md; the trace holds 1,000)
    first = {f"key_{i}": f"value {i}" for i in range(500)}
    second = {f"key_{i}": f"value {i}" for i in range(500, 1_000)}
    async with consumer(settings):
        producer.trace_started("tr-big", experiment_id="1", timestamp_ms=1, tags=first)
        producer.set_tags("tr-big", second)
        await wait_applied(client, producer)
        trace = client.get_trace("tr-big")
        assert trace is not None and len(trace.info.tags) == 1_000
        producer.delete_tags("tr-big", [f"key_{i}" for i in range(0, 1_000, 4)])
        producer.delete_tags("tr-big", [f"key_{i}" for i in range(2, 1_000, 4)])
        await wait_applied(client, producer)
    trace = client.get_trace("tr-big")
    assert trace is not None
    assert trace.info.tags == {f"key_{i}": f"value {i}" for i in range(1, 1_000, 2)}
    producer.close()
    client.close()


async def test_100k_traces(settings: Settings, r: redis.Redis) -> None:
    settings = settings.replace(partitions=2)
    producer = TagProducer(settings)
    client = Client(settings)
    async with consumer(settings):
        for i in range(100_000):
            producer.trace_started(
                f"tr-{i}",
                experiment_id=str(i % 3),
                timestamp_ms=i,
                tags={"env": ("prod", "dev")[i % 2], "user": f"u{i % 997}"},
            )
        await wait_applied(client, producer, timeout=120)
    status = client.status()
    assert sum(p.traces for p in status.partitions) == 100_000
    assert status.total_pending == 0
    trace = client.get_trace("tr-77777")
    assert trace is not None
    assert trace.info.tags == {"env": "dev", "user": f"u{77777 % 997}"}
    assert trace.info.experiment_id == str(77777 % 3)
    producer.close()
    client.close()


async def test_wait_applied_times_out_without_a_consumer(settings: Settings) -> None:
    producer = TagProducer(settings)
    client = Client(settings)
    producer.set_tags("tr-1", {"a": "b"})
    receipt = producer.flush()
    from tracetags.errors import TracetagsTimeoutError

    with pytest.raises(TracetagsTimeoutError, match="is a consumer running"):
        client.wait_applied(receipt, timeout=0.2)
    producer.close()
    client.close()


async def test_a_stopping_consumer_folds_the_entries_its_cut_short_read_took(
    settings: Settings, r: redis.Redis
) -> None:
    # A read the stop interrupts leaves its entries pending for this consumer, never handed
    # to the handler; the stop must fold them (not leave them for claim_idle_ms).
    settings = settings.replace(claim_idle_ms=600_000)
    producer = TagProducer(settings)
    for i in range(300):
        producer.set_tags(f"tr-{i % 30}", {"i": str(i)})
    producer.flush()
    keys = Keys(settings.namespace)
    stream = keys.stream(0)
    r.xgroup_create(stream, settings.consumer_group, id="0", mkstream=True)
    taken = r.xreadgroup(settings.consumer_group, "c-stopped", {stream: ">"}, count=1000)
    assert len(taken[0][1]) == 300
    assert r.xpending(stream, settings.consumer_group)["pending"] == 300

    client = redis.asyncio.Redis.from_url(settings.effective_redis_url)
    folder = Folder(settings, client)
    await folder.prepare()
    assert await folder.drain_own(0, "c-stopped") == 300
    await client.aclose()

    assert r.xpending(stream, settings.consumer_group)["pending"] == 0
    with Client(settings) as reader:
        for t in range(30):
            trace = reader.get_trace(f"tr-{t}")
            assert trace is not None and trace.info.tags == {"i": str(270 + t)}
    producer.close()


async def test_the_consumer_writes_nothing_to_stdout(
    settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    # FastStream's access logger has its own stdout handler; the app routes FastStream's
    # messages through `logging` (the "tracetags.faststream" logger) instead, so a command
    # that runs a consumer keeps stdout for its data.
    producer = TagProducer(settings)
    client = Client(settings)
    async with consumer(settings):
        producer.set_tags("tr-quiet", {"k": "v"})
        await wait_applied(client, producer)
    assert client.get_trace("tr-quiet") is not None
    assert capfd.readouterr().out == ""
    producer.close()
    client.close()


@pytest.mark.parametrize("freeze", [True, False])
async def test_a_started_consumer_puts_its_start_up_objects_out_of_the_collectors_reach(
    settings: Settings, freeze: bool
) -> None:
    # Full collections of the objects every consumer process holds (imports, the app)
    # stalled the fold for 20-150 ms every few seconds at 10k events/s.
    gc.unfreeze()
    try:
        async with consumer(settings.replace(consumer_gc_freeze=freeze)):
            frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    if freeze:
        assert frozen > 10_000  # every module, function and class loaded so far
    else:
        assert frozen == 0


async def test_a_partition_folded_before_time_bounds_gets_them_at_start(
    settings: Settings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition made by an older version has no tsx; the consumer's start makes it from
    ts (in batches, ties across batch edges included), and newest-first pages walk chunks
    again.  Here tsx is deleted to stand for such a partition."""
    from tests.support import query_data as qd
    from tests.support.model import dump
    from tracetags import functions

    monkeypatch.setattr(functions, "TIME_BOUNDS_BATCH", 7)  # many batches, ties across them
    keys = Keys(settings.namespace)
    traces, _ = qd.generate(3, 3000, dense=True)
    for index, trace in enumerate(traces):
        trace["timestamp_ms"] = qd.BASE_MS + index % 3  # long runs of equal timestamps
    qd.load(r, keys, 1, traces)
    r.delete(keys.time_bounds(0))
    with Client(settings) as reader:
        filter_string = "tags.env = 'production' AND status = 'ERROR' AND name = 'chat'"
        assert "chunk-walk" not in reader.explain(filter_string)
        before = [t.info.trace_id for t in reader.search_traces(filter_string=filter_string)]

        client = redis.asyncio.Redis.from_url(settings.effective_redis_url)
        folder = Folder(settings, client)
        await folder.prepare()
        assert await functions.ensure_time_bounds_async(client, keys, 0) == 0  # once
        await client.aclose()

        assert dump(r, keys, 0)  # checks every trace's timestamp against its chunk's bound
        exact: dict[int, float] = {}
        scored: Any = r.zrange(keys.by_timestamp(0), 0, -1, withscores=True)
        for member, score in scored:
            chunk = int(member) // 512
            exact[chunk] = max(exact.get(chunk, score), score)
        stored: Any = r.zrange(keys.time_bounds(0), 0, -1, withscores=True)
        bounds = {int(m): s for m, s in stored}
        assert bounds == {-1: float("-inf"), **exact}  # nothing skipped across batch edges
        from tracetags.query import executor

        executor.clear_caches()
        assert "chunk-walk" in reader.explain(filter_string)
        after = [t.info.trace_id for t in reader.search_traces(filter_string=filter_string)]
        assert after == before


async def test_a_consumer_builds_the_lookups_of_its_lookup_keys_at_start(
    settings: Settings, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """TRACETAGS_LOOKUP_KEYS lists keys; the consumer's start builds their fingerprints for
    traces folded before, the fold keeps them, and a newest-first LIKE page uses them."""
    from tests.support import query_data as qd
    from tests.support import query_reference as ref
    from tests.support.model import dump
    from tracetags import functions

    keys = Keys(settings.namespace)
    traces, mutations = qd.generate(5, 1200, dense=True, n_mutations=60)
    qd.load(r, keys, 1, traces, mutations)
    assert not r.exists(keys.lookups(0))
    listed = settings.replace(lookup_keys=("tags.user", "metadata.source"))
    client = redis.asyncio.Redis.from_url(settings.effective_redis_url)
    try:
        with caplog.at_level("INFO", logger="tracetags"):
            await Folder(listed, client).prepare()
        assert "building the lookup fingerprints of tuser for 1200 traces" in caplog.text
        assert "built the lookup fingerprints of tuser (3 chunks of 512 traces)" in caplog.text
        assert r.hgetall(keys.lookups(0)) == {b"tuser": b"ready", b"msource": b"ready"}
        assert await functions.ensure_lookups_async(client, keys, 0, listed.lookup_fields) == {}
    finally:
        await client.aclose()
    assert dump(r, keys, 0)  # checks every listed field's fingerprints against the registers
    final = ref.apply_mutations(traces, mutations)
    with Client(settings) as reader:
        filter_string = "tags.user LIKE 'user_1%'"
        expected = ref.search(final, None, filter_string, None, None)
        page = reader.search_traces(filter_string=filter_string, max_results=50)
        assert [t.info.trace_id for t in page] == expected[:50]
