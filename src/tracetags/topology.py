"""Where a namespace's partitions live: all on the one Redis, or on a Redis Cluster on the
primary serving each partition's slot (every key of partition NN carries the hash tag
``{pNN}``, so the partition is one slot: the keyslot of its stream's key)."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
import redis.cluster
from redis.crc import key_slot

from tracetags.connections import SyncClient
from tracetags.keys import Keys


@dataclass(frozen=True)
class Node:
    """One Redis holding partitions (on a cluster, a primary by its slot table; a primary
    serving no partition of the namespace is listed too, with none)."""

    #: ``host:port`` (or the socket path of a single Redis on a Unix socket).
    address: str
    #: A client of this node alone (a cluster's client for its connection pool).
    client: redis.Redis
    partitions: list[int] = field(default_factory=list)
    #: The slot of each of ``partitions`` (None on a single Redis).
    slots: dict[int, int] = field(default_factory=dict)


def partition_slot(keys: Keys, partition: int) -> int:
    """The cluster slot of a partition's keys (the CRC16 of ``pNN`` mod 16384)."""
    return key_slot(keys.stream(partition).encode())


def address_of(client: redis.Redis) -> str:
    """``host:port`` of a single-node client (its socket path for a Unix socket)."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def nodes(client: SyncClient, keys: Keys, partitions: int) -> list[Node]:
    """The nodes holding partitions 0 .. partitions-1, by address, each with its partitions
    in order.  On a cluster the slot table is the client's (redis-py refreshes it when a
    reply says MOVED); primaries holding none of them are listed last, with none."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return [Node(address_of(client), client, list(range(partitions)))]
    by_name: dict[str, Node] = {}
    for partition in range(partitions):
        slot = partition_slot(keys, partition)
        primary = client.nodes_manager.get_node_from_slot(slot)
        node = by_name.get(primary.name)
        if node is None:
            node = by_name[primary.name] = Node(
                primary.name,
                client.get_redis_connection(primary),
            )
        node.partitions.append(partition)
        node.slots[partition] = slot
    holding = sorted(by_name.values(), key=lambda n: n.partitions[0])
    idle = [
        Node(primary.name, client.get_redis_connection(primary))
        for primary in client.get_primaries()  # type: ignore[no-untyped-call]
        if primary.name not in by_name
    ]
    return holding + sorted(idle, key=lambda n: n.address)


def node_client(client: SyncClient, key: str) -> redis.Redis:
    """A client of the node holding ``key``: ``client`` itself on one Redis, on a cluster
    the primary serving its slot.  For a ``MULTI`` whose replies are read as one Redis
    gives them (redis-py's cluster transactions leave some unparsed: XINFO's); a ``MOVED``
    meanwhile is an error to retry, not followed."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))  # type: ignore[no-untyped-call]
