"""Consumers killed with SIGKILL under load, racing in one group, stopped with SIGTERM, and
a stream deleted under a running consumer: the state must equal the model's in-order fold."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import redis

from tests.support.helpers import wait_until
from tests.support.workload import assert_state_equals_model, start_worker
from tracetags import Settings, TagProducer
from tracetags.client import Client
from tracetags.keys import Keys
from tracetags.serve import Supervisor


def mixed_load(producer: TagProducer, events: int, seed: int) -> None:
    """Sets, overwrites, deletes, finishes and trace deletions over 300 traces."""
    rng = random.Random(seed)
    for i in range(events):
        trace = f"tr-{rng.randrange(300)}"
        roll = rng.random()
        if roll < 0.55:
            producer.set_tags(trace, {f"k{rng.randrange(6)}": f"v{rng.randrange(20)}"})
        elif roll < 0.7:
            producer.delete_tags(trace, [f"k{rng.randrange(6)}"])
        elif roll < 0.85:
            producer.trace_started(
                trace,
                experiment_id=str(rng.randrange(3)),
                timestamp_ms=i,
                tags={"env": rng.choice(("prod", "dev"))},
            )
        elif roll < 0.98:
            producer.trace_finished(
                trace,
                experiment_id="1",
                timestamp_ms=i,
                execution_time_ms=rng.randrange(10_000),
                status=rng.choice(("OK", "ERROR")),
            )
        else:
            producer.delete_trace(trace)
        if i % 200 == 0:
            time.sleep(0.005)  # keep it a stream of load, not one burst


def test_sigkilled_racing_consumers_converge_to_the_model(
    settings: Settings, r: redis.Redis
) -> None:
    settings = settings.replace(
        partitions=2, consumer_batch_size=100, claim_idle_ms=300, max_deliveries=1_000
    )
    producer = TagProducer(settings)
    producer.set_tags("tr-0", {"k0": "first"})
    producer.flush()
    workers = [start_worker(settings), start_worker(settings)]
    load = threading.Thread(target=mixed_load, args=(producer, 30_000, 11))
    load.start()
    rng = random.Random(5)
    kills = 0
    deadline = time.monotonic() + 10
    while load.is_alive() or time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 0.6))
        slot = rng.randrange(len(workers))
        os.kill(workers[slot].pid, signal.SIGKILL)  # type: ignore[arg-type]
        workers[slot].join()
        kills += 1
        workers[slot] = start_worker(settings)
        if kills > 60:
            break
    load.join()
    producer.flush()
    client = Client(settings)
    try:
        wait_until(
            lambda: client.status().total_pending == 0 and client.status().total_lag == 0,
            timeout=90,
            interval=0.2,
        )
        status = client.status()
        assert all(p.dead_letters == 0 for p in status.partitions)
    finally:
        for worker in workers:
            worker.terminate()
            worker.join(30)
        client.close()
        producer.close()
    assert kills >= 10
    assert_state_equals_model(r, settings)


def test_sigterm_stops_a_consumer_cleanly(settings: Settings) -> None:
    producer = TagProducer(settings)
    worker = start_worker(settings)
    client = Client(settings)
    for i in range(5_000):
        producer.set_tags(f"tr-{i % 50}", {"i": str(i)})
    client.wait_applied(producer.flush(), timeout=60)
    for i in range(5_000):
        producer.set_tags(f"tr-{i % 50}", {"i": str(i)})
    producer.flush()
    os.kill(worker.pid, signal.SIGTERM)  # type: ignore[arg-type]
    worker.join(40)
    assert worker.exitcode == 0
    # whatever it had taken, it finished: nothing is left pending
    assert client.status().total_pending == 0
    client.close()
    producer.close()


def test_a_stream_deleted_under_a_running_consumer_is_recovered(
    settings: Settings, r: redis.Redis
) -> None:
    supervisor = Supervisor(settings, workers=1)
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    producer = TagProducer(settings)
    client = Client(settings)
    try:
        producer.set_tags("tr-1", {"phase": "one"})
        client.wait_applied(producer.flush(), timeout=60)
        r.delete(Keys(settings.namespace).stream(0))  # an operator's mistake
        time.sleep(0.5)
        producer.set_tags("tr-2", {"phase": "two"})
        client.wait_applied(producer.flush(), timeout=60)
        trace = client.get_trace("tr-2")
        assert trace is not None and trace.info.tags == {"phase": "two"}
        trace = client.get_trace("tr-1")  # folded state outlives the deleted log
        assert trace is not None and trace.info.tags == {"phase": "one"}
    finally:
        supervisor.stop()
        thread.join(60)
        client.close()
        producer.close()
