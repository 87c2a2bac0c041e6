"""A consumer that loses the replies of its reads and claims (the connection cut just after
the server ran the command) takes its own entries again without counting deliveries: with
``max_deliveries=1``, not one valid event is dead-lettered, and the fold equals the model."""

from __future__ import annotations

import threading

import redis

from tests.faults.proxy import Action, FaultProxy
from tests.support.helpers import wait_until
from tests.support.workload import assert_settled, assert_state_equals_model, start_worker
from tracetags import Settings, TagProducer
from tracetags.client import Client
from tracetags.embedded import RedisServer

#: Replies lost of each command, in a row, once the events are in the stream.
LOST_READS = 2
LOST_CLAIMS = 4


def test_lost_read_and_claim_replies_dead_letter_nothing(
    server: RedisServer, admin: redis.Redis, proxy: FaultProxy
) -> None:
    direct = Settings(redis_url=server.url, namespace="lost-replies", max_deliveries=1,
                      claim_idle_ms=30_000, consumer_batch_size=50)  # fmt: skip
    app = direct.replace(redis_url=proxy.url)
    client = Client(direct)
    worker = start_worker(app)
    lost: dict[bytes, int] = {b"XREADGROUP": 0, b"XCLAIM": 0}
    limits = {b"XREADGROUP": LOST_READS, b"XCLAIM": LOST_CLAIMS}
    armed = threading.Event()

    def cut_replies(_: int, command: list[bytes]) -> Action:
        name = command[0].upper()
        if armed.is_set() and name in lost and lost[name] < limits[name]:
            if name == b"XREADGROUP" and not admin.xlen(client.keys.stream(0)):
                return "forward"
            lost[name] += 1
            return "cut_after"
        return "forward"

    try:
        wait_until(lambda: len(client.status().live_consumers) == 1, 60, 0.1)
        proxy.hook = cut_replies
        armed.set()
        with TagProducer(direct) as producer:
            for i in range(200):
                trace = f"tr-{i % 40}"
                producer.set_tags(trace, {"step": str(i), f"k{i % 7}": "v"})
                if i % 11 == 0:
                    producer.delete_tags(trace, [f"k{(i + 3) % 7}"])
            receipt = producer.flush(10)
        client.wait_applied(receipt, timeout=30)
        wait_until(lambda: client.status().total_pending == 0, 30, 0.1)
        # The path under test ran: reads and own claims lost their replies.
        assert lost == limits, lost
        assert_settled(client)
        assert_state_equals_model(admin, direct)
    finally:
        proxy.hook = None
        worker.terminate()
        worker.join(10)
