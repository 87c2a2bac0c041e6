"""The bulk-tagging loss and the overflow policy: bulk operations apply backpressure and
never drop; a shortfall is an error (exit 4), never a success; a receipt reports drops."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from tests.faults.conftest import out_of_memory
from tests.support.workload import start_worker
from tracetags import AsyncTagProducer, Settings, TagProducer
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.errors import BufferFullError, BulkWriteError

TRACES = 3_000


def small_buffer(server: RedisServer, namespace: str) -> Settings:
    return Settings(
        redis_url=server.url, namespace=namespace, buffer_size=100, producer_batch_size=50
    )


def seeded(settings: Settings) -> Client:
    """TRACES traces, folded by a consumer that keeps running (the caller stops it)."""
    with TagProducer(settings.replace(overflow="block")) as producer:
        for i in range(TRACES):
            producer.trace_started(f"t{i}", experiment_id="1", timestamp_ms=i, tags={"g": "a"})
        receipt = producer.flush(30)
    client = Client(settings)
    client.wait_applied(receipt, 60)
    return client


def test_bulk_tagging_more_matches_than_the_buffer_holds_writes_every_one(
    server: RedisServer,
) -> None:
    """Before the fix: the call returned 3000 while the buffer of 100 dropped most events."""
    settings = small_buffer(server, "bulk")
    worker = start_worker(settings)
    try:
        client = seeded(settings)
        written = client.set_tags_where("tags.g = 'a'", {"flag": "yes"}, wait=True, timeout=60)
        assert written == TRACES
        assert client.count("tags.flag = 'yes'") == TRACES
        deleted = client.delete_tags_where("tags.flag = 'yes'", ["g"], wait=True, timeout=60)
        assert deleted == TRACES
        assert client.count("tags.g IS NULL") == TRACES
        env = {**os.environ, "TRACETAGS_REDIS_URL": server.url, "TRACETAGS_NAMESPACE": "bulk",
               "TRACETAGS_BUFFER_SIZE": "100", "TRACETAGS_PRODUCER_BATCH_SIZE": "50"}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "tracetags.cli", "tag", "set", "--filter",
             "tags.flag = 'yes'", "cli", "on"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"on {TRACES} traces" in done.stderr
        assert client.count("tags.cli = 'on'") == TRACES
        client.close()
    finally:
        worker.terminate()
        worker.join(30)


def test_a_bulk_write_that_falls_short_is_an_error_and_exit_4(
    server: RedisServer, admin: redis.Redis
) -> None:
    settings = small_buffer(server, "short")
    worker = start_worker(settings)
    try:
        client = seeded(settings)
        out_of_memory(admin, True)  # writes refused until the bulk call gives up
        with pytest.raises(BulkWriteError) as caught:
            client.set_tags_where("tags.g = 'a'", {"flag": "yes"}, timeout=1.0)
        assert caught.value.total == TRACES
        assert caught.value.written < TRACES
        assert f"of {TRACES} events" in str(caught.value)
        env = {**os.environ, "TRACETAGS_REDIS_URL": server.url, "TRACETAGS_NAMESPACE": "short",
               "TRACETAGS_BUFFER_SIZE": "100", "TRACETAGS_OVERFLOW_TIMEOUT_MS": "500"}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "tracetags.cli", "tag", "set", "--filter",
             "tags.g = 'a'", "--no-wait", "cli", "on"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 4, (done.returncode, done.stderr)
        assert f"of {TRACES} events" in done.stderr
        client.close()
    finally:
        out_of_memory(admin, False)
        worker.terminate()
        worker.join(30)


def test_receipts_report_drops_and_block_raises_buffer_full(server: RedisServer) -> None:
    settings = Settings(redis_url=server.url, namespace="drops", buffer_size=10,
                        producer_batch_size=5, retry_initial_ms=10)  # fmt: skip
    with TagProducer(settings) as producer:
        producer.set_tags("t", {"k": "v"})
        assert producer.flush(10).dropped == 0
        server.kill()
        for i in range(100):
            producer.set_tags("t", {"k": str(i)})
        dropped = producer.stats().dropped
        assert dropped >= 80
        server.start()
        assert producer.flush(10).dropped == dropped
        assert producer.flush(10).dropped == 0
    blocking = settings.replace(overflow="block", overflow_timeout_ms=300)
    with TagProducer(blocking) as producer:
        producer.set_tags("t", {"k": "v"})
        producer.flush(10)
        server.kill()
        started = time.monotonic()
        with pytest.raises(BufferFullError):
            for i in range(100):
                producer.set_tags("t", {"k": str(i)})
        assert 0.25 < time.monotonic() - started < 5
        assert producer.stats().dropped == 0
        server.start()
        assert producer.flush(10).dropped == 0


async def test_the_asyncio_producer_with_block_raises_at_once_when_full(
    server: RedisServer,
) -> None:
    """Its flusher runs on the caller's loop: waiting there would wait for ever."""
    settings = Settings(redis_url=server.url, namespace="async-full", buffer_size=10,
                        producer_batch_size=5, overflow="block")  # fmt: skip
    producer = AsyncTagProducer(settings)
    producer.set_tags("t", {"k": "v"})
    await producer.flush(10)
    server.kill()
    with pytest.raises(BufferFullError, match="await flush"):
        for i in range(100):
            producer.set_tags("t", {"k": str(i)})
    assert producer.stats().dropped == 0
    server.start()
    receipt = await producer.flush(10)
    assert receipt.dropped == 0
    await producer.close(5)
