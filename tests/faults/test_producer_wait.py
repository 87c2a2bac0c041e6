"""A producer that waits for a replica's acknowledgement (``producer_wait_replicas``) on a
Redis that has none: each transaction's ``WAIT`` times out, the write counts as possibly
lost, and the resend check finds it on the primary.  docs/cluster.md states the outcome:
writes slow down to about a batch per timeout, nothing is lost and nothing lands twice."""

from __future__ import annotations

import time
from collections import defaultdict

import redis

from tracetags import Settings, TagProducer, log
from tracetags.embedded import RedisServer

ROUNDS, PER_ROUND = 5, 60
EVENTS = ROUNDS * PER_ROUND
WAIT_TIMEOUT_MS = 50


def test_waiting_for_a_replica_that_is_not_there_loses_and_doubles_nothing(
    server: RedisServer, admin: redis.Redis
) -> None:
    settings = Settings(
        redis_url=server.url, namespace="wait-none", partitions=2,
        producer_wait_replicas=1, producer_wait_timeout_ms=WAIT_TIMEOUT_MS,
    )  # fmt: skip
    started = time.monotonic()
    with TagProducer(settings) as producer:
        for r in range(ROUNDS):  # a flush each round: separate transactions, each waited on
            for i in range(r * PER_ROUND, (r + 1) * PER_ROUND):
                producer.set_tags(f"t{i % 40}", {"k": str(i)})
            producer.flush(30)
        stats = producer.stats()
    took_s = time.monotonic() - started
    waits = admin.info("commandstats").get("cmdstat_wait", {})
    print(f"no replica: {EVENTS} events written in {took_s:.2f} s, {stats.retries} retries, "
          f"{waits.get('calls')} WAITs; last error {stats.last_error!r}")  # fmt: skip
    assert stats.sent == EVENTS and stats.dropped == 0 and stats.buffered == 0, stats
    # Each WAIT answered 0 replicas: the producer said so and retried, not dropped.
    assert stats.retries >= ROUNDS, stats
    assert stats.last_error is not None and "NOREPLICAS 0 of 1" in stats.last_error, stats
    # ... and each round's write waited out the timeout: a batch per timeout at most.
    assert int(waits.get("calls", 0)) >= ROUNDS, waits
    assert took_s >= ROUNDS * WAIT_TIMEOUT_MS / 1000, took_s
    ids: dict[int, list[bytes]] = defaultdict(list)
    for entry in log.read_log(admin, settings.namespace):
        assert entry.event is not None, entry.error
        ids[entry.partition].append(entry.event.event_id)
    every = [i for part in ids.values() for i in part]
    assert len(every) == EVENTS, "an event was lost"
    assert len(set(every)) == EVENTS, "an event landed twice"
    for partition, part in ids.items():
        assert part == sorted(part), f"partition {partition} out of call order"
