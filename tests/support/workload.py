"""The fault suite's workload: consumer processes, a steady mixed load with the model of
its expected state, and the checks every fault test ends with."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from multiprocessing.process import BaseProcess

import msgspec

from tests.support.model import FoldModel, dump
from tracetags import Settings, TagProducer, log
from tracetags.client import Client
from tracetags.connections import SyncClient
from tracetags.keys import Keys
from tracetags.serve import run_worker

_ctx = multiprocessing.get_context("spawn")


def start_worker(settings: Settings) -> BaseProcess:
    proc = _ctx.Process(target=run_worker, args=(msgspec.to_builtins(settings),), daemon=True)
    proc.start()
    return proc


class Load(threading.Thread):
    """Sets, overwrites, deletes and finishes over 300 traces at about ``rate`` events/s;
    each tag value carries its call number, so the log's order can be checked."""

    def __init__(self, producer: TagProducer, rate: int = 3_000, seed: int = 7) -> None:
        super().__init__(daemon=True)
        self.producer = producer
        self.rate = rate
        self.rng = random.Random(seed)
        self.calls = 0
        self.halt = threading.Event()
        self._burst = 0
        self.burst_done = threading.Event()

    def burst(self, events: int) -> None:
        """Submit ``events`` at once (a backlog for the consumers), then go on at the rate."""
        self.burst_done.clear()
        self._burst = events
        self.burst_done.wait(30)

    def run(self) -> None:
        rng, producer = self.rng, self.producer
        started = time.monotonic()
        while not self.halt.is_set():
            i = self.calls
            trace = f"tr-{rng.randrange(300)}"
            roll = rng.random()
            if roll < 0.6:
                producer.set_tags(trace, {f"k{rng.randrange(6)}": f"{i}"})
            elif roll < 0.75:
                producer.delete_tags(trace, [f"k{rng.randrange(6)}"])
            elif roll < 0.9:
                producer.trace_started(trace, experiment_id="1", timestamp_ms=i)
            else:
                producer.trace_finished(
                    trace, experiment_id="1", timestamp_ms=i, execution_time_ms=i % 997
                )
            self.calls += 1
            if self._burst:
                self._burst -= 1
                if not self._burst:
                    started = time.monotonic() - self.calls / self.rate
                    self.burst_done.set()
                continue
            ahead = self.calls / self.rate - (time.monotonic() - started)
            if ahead > 0.005:
                time.sleep(ahead)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def assert_log_in_call_order(r: SyncClient, namespace: str) -> int:
    """One producer wrote the log: its events' emitted order (the event ids, made in call
    order) must be the stream order.  Returns the number of entries."""
    ids = [e.event.event_id for e in log.read_log(r, namespace) if e.event is not None]
    assert ids == sorted(ids), "events landed out of call order"
    assert len(ids) == len(set(ids)), "an event landed twice"
    return len(ids)


def assert_state_equals_model(r: SyncClient, settings: Settings) -> None:
    keys = Keys(settings.namespace)
    models = {p: FoldModel() for p in range(settings.partition_count)}
    for entry in log.read_log(r, settings.namespace):
        assert entry.event is not None, entry.error
        models[entry.partition].apply(entry.entry_id, entry.event)
    for partition, model in models.items():
        assert dump(r, keys, partition) == model.expected(keys, partition), partition


def assert_settled(client: Client) -> None:
    """Nothing pending, nothing lagging, no dead letters."""
    status = client.status()
    assert status.total_pending == 0, status
    assert status.total_lag == 0, status
    assert [p.dead_letters for p in status.partitions] == [0] * len(status.partitions), status
