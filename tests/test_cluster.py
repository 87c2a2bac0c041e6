"""tracetags on a real Redis Cluster (3 primaries + 3 replicas on loopback): connecting, the
Functions library on every primary, and the partitions spread over the primaries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from tests.support.cluster import ClusterNode, LocalCluster
from tests.support.helpers import read_log, scratch_namespace, wait_until
from tracetags import TagProducer, functions, schemas
from tracetags.cluster import Unit, units_of
from tracetags.connections import async_client, cluster_seed_url, sync_client
from tracetags.keys import Keys, partition_of
from tracetags.settings import Settings


@pytest.fixture
def cluster_settings(redis_cluster: LocalCluster) -> Iterator[Settings]:
    with scratch_namespace(redis_cluster.url) as ns:
        yield Settings(redis_url=redis_cluster.url, namespace=ns, flush_interval_ms=2)


def test_cluster_urls_map_to_redis_py_seed_urls() -> None:
    assert cluster_seed_url("redis+cluster://10.0.0.1:7000") == "redis://10.0.0.1:7000"
    assert cluster_seed_url("rediss+cluster://u:p@h:7000/0") == "rediss://u:p@h:7000/0"
    assert cluster_seed_url("REDIS+CLUSTER://h:7000") == "redis://h:7000"
    assert cluster_seed_url("redis://h:6379/0") is None
    assert cluster_seed_url("unix:///tmp/redis.sock") is None


def test_a_cluster_url_gives_a_cluster_client_whose_partitions_spread_over_the_primaries(
    redis_cluster: LocalCluster, cluster_settings: Settings
) -> None:
    client = sync_client(cluster_settings.effective_redis_url)
    try:
        assert isinstance(client, redis.cluster.RedisCluster)
        assert cluster_settings.partition_count == 16
        keys = Keys(cluster_settings.namespace)
        owners = set()
        for partition in range(cluster_settings.partition_count):
            stream = keys.stream(partition)
            client.xadd(stream, {"e": b"x"})
            owner = redis_cluster.owner_of_slot(client.keyslot(stream))
            owners.add(owner.port)
            direct = owner.client()
            try:
                assert direct.xlen(stream) == 1  # the key lives on the slot's primary
            finally:
                direct.close()
        assert len(owners) == 3
    finally:
        client.close()


def _library_on(node_client: redis.Redis) -> bool:
    listed = node_client.function_list(functions.LIBRARY_NAME)
    return len(listed) == 1


def test_the_library_is_loaded_on_every_primary_and_reaches_the_replicas(
    redis_cluster: LocalCluster,
) -> None:
    client = sync_client(redis_cluster.url)
    try:
        functions.load(client)
        assert functions.load(client) is False  # already there everywhere: nothing to do
        for primary in redis_cluster.primaries():
            direct = primary.client()
            try:
                assert _library_on(direct)
                direct.execute_command("WAIT", 1, 5000)
            finally:
                direct.close()
            replica = redis_cluster.replica_of(primary).client()
            try:
                assert _library_on(replica)
            finally:
                replica.close()
    finally:
        client.close()


def _started(trace_id: str) -> schemas.TraceStarted:
    now = schemas.now_ms()
    return schemas.TraceStarted(
        trace_id=trace_id, event_id=schemas.new_event_id(now), emitted_at_ms=now,
        experiment_id="1", timestamp_ms=now, name=None, client_request_id=None,
        metadata={}, tags={"k": "v"},
    )  # fmt: skip


async def test_a_fold_that_meets_a_primary_without_the_library_loads_it_there_and_retries(
    redis_cluster: LocalCluster, cluster_settings: Settings
) -> None:
    keys = Keys(cluster_settings.namespace)
    client = async_client(cluster_settings.effective_redis_url)
    assert isinstance(client, redis.asyncio.cluster.RedisCluster)
    try:
        await functions.load_async(client)
        partition = 5
        stream = keys.stream(partition)
        owner = redis_cluster.owner_of_slot(client.keyslot(stream))
        direct = owner.client()
        try:
            # A primary that never had it: a new node given slots, or one FLUSHed.
            direct.function_delete(functions.LIBRARY_NAME)
            assert not _library_on(direct)
            entry_id = await client.xadd(stream, {"e": schemas.encode(_started("t-1"))})
            await client.xgroup_create(stream, "g", id="0")
            await client.xreadgroup("g", "c", {stream: ">"})
            result = await functions.apply_batch_async(
                client, keys, partition, "g", [(entry_id, _started("t-1"))]
            )
            assert result == functions.BatchResult(applied=1, dead_lettered=0, acked=1)
            assert _library_on(direct)
            assert await client.hget(keys.trace_ids(partition), "t-1") == b"1"
        finally:
            direct.close()
    finally:
        await client.aclose()


def _other_primary(cluster: LocalCluster, slot: int) -> ClusterNode:
    owner = cluster.owner_of_slot(slot)
    return next(node for node in cluster.primaries() if node is not owner)


def test_a_producer_writes_through_a_slot_migration_following_ask_and_moved(
    redis_cluster: LocalCluster, cluster_settings: Settings
) -> None:
    settings = cluster_settings.replace(partitions=4, producer_batch_size=50)
    keys = Keys(settings.namespace)
    client = sync_client(settings.effective_redis_url)
    assert isinstance(client, redis.cluster.RedisCluster)
    trace = next(f"tr-{i}" for i in range(100) if partition_of(f"tr-{i}", 4) == 2)
    slot = client.keyslot(keys.stream(2))
    stop = threading.Event()
    sent = 0
    steps: list[tuple[str, int]] = []

    def produce() -> None:
        nonlocal sent
        with TagProducer(settings) as producer:
            while not stop.is_set():
                producer.set_tags(trace, {"seq": str(sent)})
                producer.set_tags(f"other-{sent % 9}", {"seq": str(sent)})
                sent += 1
                if sent % 20 == 0:
                    time.sleep(0.002)

    writer = threading.Thread(target=produce)
    writer.start()
    try:
        wait_until(lambda: sent > 200)
        redis_cluster.migrate_slot(
            slot,
            _other_primary(redis_cluster, slot),
            last=[keys.stream(2), keys.dead_letters(2)],
            pause_s=0.3,
            on_step=lambda name: steps.append((name, sent)),
        )
        written_at_end = sent
        wait_until(lambda: sent > written_at_end + 200)
    finally:
        stop.set()
        writer.join()
    # Events were written in every phase of the migration: MIGRATING (the source still
    # has the stream), after the stream moved (ASK), after SETSLOT NODE (MOVED).
    counts = [n for _, n in steps]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), steps
    seqs = [
        int(event.tags["seq"])
        for _, _, event in read_log(client, settings.namespace)
        if isinstance(event, schemas.TagsSet) and event.trace_id == trace
    ]
    assert seqs == list(range(sent))  # each exactly once, in call order
    client.close()


def test_a_command_list_is_cut_into_units_routed_by_their_first_key() -> None:
    commands: list[tuple[object, ...]] = [
        ("HSETNX", "ns:meta", "partitions", 4),
        ("TIME",),
        ("MULTI",), ("XADD", "ns:{p01}:log", "*", "e", b"1"),
        ("XADD", "ns:{p01}:log", "*", "e", b"2"), ("EXEC",), ("WAIT", 1, 1000),
        ("MULTI",), ("XADD", "ns:{p02}:log", "*", "e", b"3"), ("EXEC",),
        ("XRANGE", "ns:{p03}:log", "-", "+"),
    ]  # fmt: skip
    assert units_of(commands) == [
        Unit(0, 1, "ns:meta"),
        Unit(1, 2, "ns:meta"),  # TIME goes where the command before it went
        Unit(2, 7, "ns:{p01}:log"),  # the transaction and the WAIT after it
        Unit(7, 10, "ns:{p02}:log"),
        Unit(10, 11, "ns:{p03}:log"),
    ]
