"""Finding 3 and the producer half of 6: error replies are backed off and counted like a
lost connection, and buffered events go out within ~100 ms of Redis answering again."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from tests.faults.conftest import out_of_memory, read_only
from tests.support.helpers import wait_until
from tracetags import Settings, TagProducer
from tracetags.embedded import RedisServer

#: Stated bound: buffered events are written this soon after Redis takes writes again.
RESUME_BOUND_S = 0.5


def rejected_xadds(admin: redis.Redis) -> int:
    stats = admin.info("commandstats").get("cmdstat_xadd", {})
    return int(stats.get("rejected_calls", 0)) + int(stats.get("failed_calls", 0))


def hold_and_release(
    server: RedisServer, admin: redis.Redis, on: Callable[[bool], None], condition: str
) -> None:
    settings = Settings(redis_url=server.url, namespace=f"bo-{condition}")
    with TagProducer(settings) as producer:
        producer.set_tags("t", {"k": "v"})
        producer.flush(10)
        on(True)
        before = rejected_xadds(admin)
        for i in range(1_000):
            producer.set_tags(f"t{i}", {"k": str(i)})
        time.sleep(3)
        stats = producer.stats()
        rejected = rejected_xadds(admin) - before
        on(False)
        released = time.monotonic()
        producer.flush(10)
        resumed_s = time.monotonic() - released
    print(f"{condition}: {rejected} rejected XADDs in 3 s, {stats.retries} retries; "
          f"buffered events written {resumed_s:.3f} s after it ended")  # fmt: skip
    # Before the fix: ~500k rejected XADDs in 5 s, retries 0, no condition named.
    assert rejected < 10_000, rejected
    assert stats.retries >= 3, stats
    assert stats.condition == condition, stats
    assert stats.buffered == 1_000, stats
    assert producer.stats().condition is None
    assert resumed_s < RESUME_BOUND_S, resumed_s


def test_read_only_is_backed_off_counted_and_named(server: RedisServer, admin: redis.Redis) -> None:
    hold_and_release(server, admin, lambda on: read_only(admin, on), "READONLY")


def test_out_of_memory_is_backed_off_counted_and_named(
    server: RedisServer, admin: redis.Redis
) -> None:
    hold_and_release(server, admin, lambda on: out_of_memory(admin, on), "OOM")


def test_events_go_out_soon_after_redis_restarts(server: RedisServer) -> None:
    """Down for 4 s the backoff reaches seconds; the probe ends it when Redis is back."""
    settings = Settings(redis_url=server.url, namespace="restart")
    with TagProducer(settings) as producer:
        producer.set_tags("t", {"k": "v"})
        producer.flush(10)
        server.kill()
        for i in range(100):
            producer.set_tags(f"t{i}", {"k": str(i)})
        wait_until(lambda: producer.stats().retries >= 1, 5)
        time.sleep(4)
        stats = producer.stats()
        server.start()
        released = time.monotonic()
        producer.flush(10)
        resumed_s = time.monotonic() - released
    print(f"restart: buffered events written {resumed_s:.3f} s after Redis was back")
    # Before the fix: up to retry_max_ms (5 s) after Redis was back.
    assert resumed_s < RESUME_BOUND_S, resumed_s
    assert stats.condition == "unreachable", stats
