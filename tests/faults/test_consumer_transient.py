"""Finding 2: a transient condition (here OOM at maxmemory, noeviction) under load never
counts toward max_deliveries and never dead-letters a valid event; the fold resumes within
the stated bound once Redis takes writes again."""

from __future__ import annotations

import time

import redis

from tests.faults.conftest import out_of_memory, read_only
from tests.support.helpers import wait_until
from tests.support.workload import (
    Load,
    assert_log_in_call_order,
    assert_settled,
    assert_state_equals_model,
    start_worker,
)
from tracetags import Settings, TagProducer
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.keys import Keys
from tracetags.producer import Receipt

#: Stated bound: what the stream held when Redis took writes again is folded this soon.
RECOVERY_BOUND_S = 2.0


def run_fault(server: RedisServer, admin: redis.Redis, fault: str, hold_s: float = 6.0) -> float:
    settings = Settings(
        redis_url=server.url,
        namespace=f"tr-{fault}",
        # A low limit and a short idle time: before the fix, 2 failed deliveries of a valid
        # entry were enough to dead-letter it.
        max_deliveries=2,
        claim_idle_ms=1_000,
        consumer_batch_size=100,
    )
    producer = TagProducer(settings)
    client = Client(settings)
    workers = [start_worker(settings), start_worker(settings)]
    load = Load(producer, rate=3_000)
    flip = out_of_memory if fault == "oom" else read_only
    try:
        wait_until(lambda: len(client.status().live_consumers) == 2, 60, 0.1)
        load.start()
        time.sleep(2.0)
        load.burst(5_000)  # a backlog in the consumers' hands when the fault starts
        producer.flush(10)
        flip(admin, True)
        time.sleep(hold_s)
        load.stop()
        tail = admin.xrevrange(Keys(settings.namespace).stream(0), count=1)[0][0].decode()
        held = client.status().total_pending
        flip(admin, False)
        ended = time.monotonic()
        wait_until(
            lambda: client.is_applied(Receipt(namespace=settings.namespace, positions={0: tail})),
            10,
            0.01,
        )
        resumed_s = time.monotonic() - ended
        client.wait_applied(producer.flush(30), timeout=30)
        drained_s = time.monotonic() - ended
        assert_settled(client)
    finally:
        flip(admin, False)
        for worker in workers:
            worker.terminate()
            worker.join(30)
        producer.close(5)
        client.close()
    assert load.calls > 10_000
    assert assert_log_in_call_order(admin, settings.namespace) == load.calls
    assert_state_equals_model(admin, settings)
    print(f"{fault}: fold resumed {resumed_s:.2f} s after the fault, backlog of "
          f"{load.calls} events folded {drained_s:.2f} s after")  # fmt: skip
    if fault == "oom":
        assert held > 0  # the fault did hold entries pending (read, not applied)
    return resumed_s


def test_out_of_memory_under_load_dead_letters_nothing(
    server: RedisServer, admin: redis.Redis
) -> None:
    recovered_s = run_fault(server, admin, "oom")
    assert recovered_s < RECOVERY_BOUND_S, recovered_s


def test_read_only_under_load_dead_letters_nothing(server: RedisServer, admin: redis.Redis) -> None:
    recovered_s = run_fault(server, admin, "readonly")
    assert recovered_s < RECOVERY_BOUND_S, recovered_s
