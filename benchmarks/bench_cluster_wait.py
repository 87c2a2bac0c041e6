"""The cost of ``producer_wait_replicas=1`` (WAIT for one replica per transaction) on a local
Redis Cluster, against the same producer without it, in one run.

    .venv/bin/python benchmarks/bench_cluster_wait.py [--events 20000] [--rounds 3]

Starts a 3-primary + 3-replica cluster from the ``redis-server`` binary on loopback (the
tests' fixture), and measures in alternating order, ``--rounds`` times, ``TagProducer``
events/s (``set_tags`` of two tags over 1,000 traces, 16 partitions, back-to-back calls then
``flush()``) with WAIT off and with WAIT 1, plus the flush latency of a single event (the
write round trip a caller waiting on ``flush()`` sees).  The ratio is WAIT on over WAIT off.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.cluster import LocalCluster
from tests.support.helpers import drop_namespace

from tracetags import Settings, TagProducer
from tracetags.connections import sync_client


def ingest(url: str, events: int, wait: int) -> float:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=url, namespace=namespace, producer_wait_replicas=wait)
    started = time.perf_counter()
    with TagProducer(settings) as producer:
        for i in range(events):
            producer.set_tags(f"tr-{i % 1000:06d}", {"env": "prod", "user_id": f"u{i % 5000}"})
        producer.flush(timeout=120)
    rate = events / (time.perf_counter() - started)
    client = sync_client(url)
    drop_namespace(client, namespace)
    client.close()
    return rate


def flush_latency_ms(url: str, wait: int, samples: int = 200) -> float:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=url, namespace=namespace, producer_wait_replicas=wait)
    times = []
    with TagProducer(settings) as producer:
        producer.set_tags("tr-warm", {"a": "b"})
        producer.flush()
        for i in range(samples):
            started = time.perf_counter()
            producer.set_tags(f"tr-{i}", {"a": "b"})
            producer.flush()
            times.append((time.perf_counter() - started) * 1000)
    client = sync_client(url)
    drop_namespace(client, namespace)
    client.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tt-bench-cluster-") as directory:
        cluster = LocalCluster(directory).start()
        try:
            rates: dict[int, list[float]] = {0: [], 1: []}
            for _ in range(args.rounds):
                for wait in (0, 1):
                    rates[wait].append(ingest(cluster.url, args.events, wait))
            latency = {wait: flush_latency_ms(cluster.url, wait) for wait in (0, 1)}
        finally:
            cluster.stop()
    off, on = statistics.median(rates[0]), statistics.median(rates[1])
    print(f"machine: {platform.machine()}, {platform.python_version()}, {args.events} events")
    print(f"ingest, WAIT off: {off:,.0f} events/s  (rounds: {[round(r) for r in rates[0]]})")
    print(f"ingest, WAIT 1:   {on:,.0f} events/s  (rounds: {[round(r) for r in rates[1]]})")
    print(f"ratio WAIT 1 / off: {on / off:.2f}")
    print(f"flush of one event, median: WAIT off {latency[0]:.2f} ms, WAIT 1 {latency[1]:.2f} ms")


if __name__ == "__main__":
    main()
