"""Faults of a Redis Cluster under a steady load (3 primaries + 3 replicas on loopback, two
consumer processes, one producer): a primary SIGKILLed and its replica promoted, and a slot
of a busy partition migrated to another primary while the fold runs.  Neither the producer
nor the consumers are restarted; each test ends with the folded state equal to the model's
fold of the log, nothing pending, no dead letters, every event at most once and in call
order per partition."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis.cluster

from tests.support.cluster import ClusterNode, LocalCluster
from tests.support.helpers import scratch_namespace, wait_until
from tests.support.workload import Load, assert_state_equals_model, start_worker
from tracetags import Settings, TagProducer, log
from tracetags.client import Client
from tracetags.connections import SyncClient, sync_client
from tracetags.errors import RedisUnavailableError
from tracetags.keys import Keys

RATE = 500
PARTITIONS = 6


@pytest.fixture
def cluster_ns(redis_cluster: LocalCluster) -> Iterator[str]:
    with scratch_namespace(redis_cluster.url) as ns:
        yield ns


def _settings(cluster: LocalCluster, namespace: str, **changes: Any) -> Settings:
    return Settings(
        redis_url=cluster.url, namespace=namespace, partitions=PARTITIONS, claim_idle_ms=1_000,
        socket_timeout_ms=2_000, retry_max_ms=200, flush_interval_ms=2, **changes,
    )  # fmt: skip


def _log_checked(r: SyncClient, namespace: str) -> int:
    """Every event at most once, and per partition in call order (one producer: its event
    ids are made in call order).  Returns the number of events."""
    ids: dict[int, list[bytes]] = defaultdict(list)
    for entry in log.read_log(r, namespace):
        assert entry.event is not None, entry.error
        ids[entry.partition].append(entry.event.event_id)
    every = [i for part in ids.values() for i in part]
    assert len(every) == len(set(every)), "an event landed twice"
    for partition, part in ids.items():
        assert part == sorted(part), f"partition {partition} out of call order"
    return len(every)


def _settled(client: Client) -> bool:
    """Nothing pending and no lag.  (After a failover XINFO may not know a group's lag,
    which status counts as 0: callers wait for the producer's receipt first.)"""
    try:
        status = client.status()
    except RedisUnavailableError:  # its slot table is refreshed by the failed call
        return False
    return status.total_pending == 0 and status.total_lag == 0


def _script_refusals(node: ClusterNode) -> int:
    """Fold calls the node refused for touching a key it does not have (a migrating slot)."""
    direct = node.client()
    try:
        stats: Any = direct.info("errorstats")
    finally:
        direct.close()
    return int(stats.get("errorstat_ERR", {}).get("count", 0))


def _assert_no_dead_letters(client: Client) -> None:
    status = client.status()
    assert [p.dead_letters for p in status.partitions] == [0] * PARTITIONS, status


@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["wait1", "nowait"])
def test_a_primary_killed_under_load_fails_over_and_the_fold_equals_the_model(
    redis_cluster: LocalCluster, cluster_ns: str, wait_replicas: int
) -> None:
    settings = _settings(redis_cluster, cluster_ns, producer_wait_replicas=wait_replicas)
    keys = Keys(settings.namespace)
    r = sync_client(settings.effective_redis_url)
    assert isinstance(r, redis.cluster.RedisCluster)
    client = Client(settings)
    workers = [start_worker(settings) for _ in range(2)]
    producer = TagProducer(settings)
    load = Load(producer, rate=RATE)
    killed = None
    try:
        load.start()
        wait_until(lambda: producer.stats().sent > 1_000, timeout=60)
        wait_until(lambda: client.status().partitions[0].traces > 0, timeout=60)
        killed, replica = redis_cluster.kill_primary_of_slot(r.keyslot(keys.stream(0)))
        killed_at = time.monotonic()
        redis_cluster.wait_promoted(replica)
        promoted_s = time.monotonic() - killed_at
        if wait_replicas:
            # Its supervisor restarts the dead node, which rejoins as the promoted one's
            # replica: until then each write to that node waits out WAIT's timeout (the
            # limit docs/cluster.md states), and this test would wait ~50 s for them.
            redis_cluster.rejoin(killed)
            killed = None
        sent_at_promotion = producer.stats().sent
        wait_until(lambda: producer.stats().sent > sent_at_promotion + 1_000, timeout=60)
        load.stop()
        # The receipt's positions were written after the promotion (the load went on), so
        # they are on the new primary whatever replication lost.
        client.wait_applied(producer.flush(timeout=60), timeout=60)
        wait_until(lambda: _settled(client), timeout=60)
        stats = producer.stats()
        landed = _log_checked(r, settings.namespace)
        lost = stats.sent - landed
        print(
            f"wait_replicas={wait_replicas}: replica promoted {promoted_s:.1f}s after the kill;"
            f" {stats.sent} events written, {landed} in the log, {lost} lost with the primary,"
            f" {stats.retries} producer retries"
        )
        assert stats.dropped == 0
        if wait_replicas:
            # Each write counted only once a replica had it: the promoted replica has all.
            assert lost == 0
        else:
            # Asynchronous replication: what the primary acknowledged in its last moments
            # and had not yet sent to its replica is gone; at most the load of one second.
            assert 0 <= lost <= RATE
        _assert_no_dead_letters(client)
        assert_state_equals_model(r, settings)
    finally:
        load.stop()
        producer.close(timeout=5)
        for worker in workers:
            worker.terminate()
            worker.join(10)
        client.close()
        r.close()
        if killed is not None:
            redis_cluster.rejoin(killed)


def test_a_busy_partitions_slot_migrated_while_the_fold_runs_loses_and_doubles_nothing(
    redis_cluster: LocalCluster, cluster_ns: str
) -> None:
    settings = _settings(redis_cluster, cluster_ns)
    keys = Keys(settings.namespace)
    r = sync_client(settings.effective_redis_url)
    assert isinstance(r, redis.cluster.RedisCluster)
    client = Client(settings)
    workers = [start_worker(settings) for _ in range(2)]
    producer = TagProducer(settings)
    load = Load(producer, rate=RATE)
    partition = 1
    slot = r.keyslot(keys.stream(partition))
    source = redis_cluster.owner_of_slot(slot)
    target = next(n for n in redis_cluster.primaries() if n is not source)
    # A dead-letter stream that exists (as after any poison entry): then a fold call on the
    # migrating source finds both its declared keys there and runs, and only its first read
    # of a key that is not there (the never-written <prefix>:absent) refuses it, unwritten.
    r.xadd(keys.dead_letters(partition), {"entry_id": "0-1", "payload": b"", "reason": "test"})
    try:
        load.start()
        wait_until(lambda: client.status().partitions[partition].traces > 20, timeout=60)
        refused_before = _script_refusals(source)
        redis_cluster.migrate_slot(
            slot, target, last=[keys.stream(partition), keys.dead_letters(partition)],
            batch=10, pause_s=0.5,
        )  # fmt: skip
        sent = producer.stats().sent
        wait_until(lambda: producer.stats().sent > sent + 1_000, timeout=60)
        load.stop()
        client.wait_applied(producer.flush(timeout=60), timeout=60)
        wait_until(lambda: _settled(client), timeout=60)
        assert _log_checked(r, settings.namespace) == producer.stats().sent
        dead = [p.dead_letters for p in client.status().partitions]
        assert dead == [1 if p == partition else 0 for p in range(PARTITIONS)]
        assert _script_refusals(source) > refused_before, "no fold call met the migrating slot"
        assert_state_equals_model(r, settings)
        direct = target.client()
        try:
            assert direct.exists(keys.stream(partition), keys.trace_ids(partition)) == 2
        finally:
            direct.close()
    finally:
        load.stop()
        producer.close(timeout=5)
        for worker in workers:
            worker.terminate()
            worker.join(10)
        client.close()
        r.close()
