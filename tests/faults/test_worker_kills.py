"""Workers SIGKILLed under load: their entries are claimed within claim_idle_ms and folded,
nothing is dead-lettered, and their names leave the group (finding 6: 11 names for 4)."""

from __future__ import annotations

import os
import signal
import time

import redis

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

CLAIM_IDLE_MS = 1_000
#: Stated bound: after the last kill, everything written is folded within claim_idle_ms
#: plus this much.
RECOVERY_SLACK_S = 3.0


def test_killed_workers_are_claimed_and_forgotten(server: RedisServer, admin: redis.Redis) -> None:
    settings = Settings(redis_url=server.url, namespace="kills", claim_idle_ms=CLAIM_IDLE_MS,
                        max_deliveries=3, consumer_batch_size=100)  # fmt: skip
    producer = TagProducer(settings)
    client = Client(settings)
    workers = [start_worker(settings), start_worker(settings)]
    load = Load(producer, rate=3_000)
    stream = Keys("kills").stream(0)
    try:
        wait_until(lambda: len(client.status().live_consumers) == 2, 60, 0.1)
        load.start()
        for kill in range(6):
            time.sleep(1.0)
            victim = workers[kill % 2]
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            victim.join(10)
            workers[kill % 2] = start_worker(settings)
        load.stop()
        killed_at = time.monotonic()
        client.wait_applied(producer.flush(30), timeout=60)
        recovered_s = time.monotonic() - killed_at
        wait_until(lambda: client.status().total_pending == 0, 30, 0.1)
        assert_settled(client)
        wait_until(lambda: len(admin.xinfo_consumers(stream, settings.consumer_group)) <= 2,
                   40, 0.5)  # fmt: skip
    finally:
        for worker in workers:
            worker.terminate()
            worker.join(30)
        producer.close(5)
        client.close()
    print(f"6 SIGKILLs: everything folded {recovered_s:.2f} s after the load stopped")
    assert recovered_s < CLAIM_IDLE_MS / 1000 + RECOVERY_SLACK_S, recovered_s
    assert assert_log_in_call_order(admin, "kills") == load.calls
    assert_state_equals_model(admin, settings)
