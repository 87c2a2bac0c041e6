"""Digest and verify: an order-independent fingerprint of every trace's folded state, and
the comparison of two namespaces that names the traces that differ.

A trace's hash is BLAKE2b-128 of a canonical msgpack encoding of its state: the trace id and
the sorted (register, value) pairs of its attributes, tags and metadata — what
``Client.get_trace`` shows, in the trace hash's own field names (keys.py); no stamps, no
tombstones, no trace number, no index.  A partition's digest is the sum of its traces'
hashes modulo 2**128 (a multiset hash: any order of reading gives the same sum) with its
trace count.  Traces are read by walking the partition's ``all`` index chunk by chunk,
with the HGETALLs of a round sent at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import msgspec
import redis
import redis.cluster

from tracetags.client import TraceInfo, trace_info_from_hash
from tracetags.connections import SyncClient
from tracetags.keys import SET_CHUNK, Keys, chunk_key, partition_of

DIGEST_BITS: Final = 128
_MASK: Final = (1 << DIGEST_BITS) - 1
#: Chunks of the ``all`` index read per round trip (their traces then in one more).
CHUNKS_PER_ROUND: Final = 4
_ENCODER: Final = msgspec.msgpack.Encoder()


class PartitionDigest(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    traces: int
    #: Sum of the traces' hashes mod 2**128, 32 hex digits.
    digest: str
    #: Numbers listed in the ``all`` index whose trace hash is missing or has no id (a
    #: broken state; 0 in a healthy namespace).
    broken: int = 0


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str
    partitions: list[PartitionDigest]
    #: Sum of every partition's digest mod 2**128 (independent of the partition count).
    digest: str
    traces: int


class FieldDifference(msgspec.Struct, frozen=True, kw_only=True):
    #: ``status``, ``tags.<key>``, ``metadata.<key>``, ...
    field: str
    a: str | None
    b: str | None


class TraceDifference(msgspec.Struct, frozen=True, kw_only=True):
    trace_id: str
    #: ``only in A``, ``only in B`` or ``differs``.
    kind: str
    fields: list[FieldDifference] = []


class Verification(msgspec.Struct, frozen=True, kw_only=True):
    equal: bool
    a: Digest
    b: Digest
    #: Partitions whose digests differ (every partition when the counts differ).
    partitions: list[int]
    #: The first differing traces (by trace id), at most the limit asked for.
    differences: list[TraceDifference]
    #: How many traces differ in all (in the partitions compared trace by trace).
    differing_traces: int


def trace_hash(fields: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, int]:
    """(trace id, 128-bit hash) of a trace hash given as its (field, value) pairs.

    The hash is BLAKE2b-128 of the msgpack of ``(trace id, sorted (field, value) pairs)``
    over the state's registers (``e s d S c``, ``t<key>``, ``m<key>``; see keys.py) with
    their values only: stamps, tombstones, the base and the latest stamp are left out.
    """
    trace_id: bytes | None = None
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    for field, value in fields:
        if len(field) == 1:
            if field == b"i":
                trace_id = value
                continue
            if field == b"b" or field == b"x":
                continue
        _, colon, text = value.partition(b":")
        if colon:
            append((field, text))
    pairs.sort()
    hashed = hashlib.blake2b(_ENCODER.encode((trace_id, pairs)), digest_size=16).digest()
    return trace_id, int.from_bytes(hashed, "big")


def _pairs(reply: Any) -> Iterable[tuple[bytes, bytes]]:
    """HGETALL's answer as pairs: a dict (RESP3, or redis-py's RESP2 callback) or a list."""
    if isinstance(reply, dict):
        return reply.items()
    flat = iter(reply or ())
    return zip(flat, flat, strict=True)


def iter_hashes(
    client: SyncClient, keys: Keys, partition: int
) -> Iterator[tuple[int, bytes | None, int]]:
    """Every trace of a partition as (trace number, trace id, hash), walking the ``all``
    index chunk by chunk; trace id None for a listed number whose hash is missing or has no
    id (a broken state)."""
    counter: Any = client.get(keys.trace_counter(partition))
    if counter is None:
        return
    last_chunk = int(counter) // SET_CHUNK
    every = keys.all_traces(partition)
    for first in range(0, last_chunk + 1, CHUNKS_PER_ROUND):
        chunks = range(first, min(first + CHUNKS_PER_ROUND, last_chunk + 1))
        pipe = client.pipeline(transaction=False)
        for c in chunks:
            pipe.smembers(chunk_key(every, c))
        numbers = sorted(
            c * SET_CHUNK + int(offset)
            for c, members in zip(chunks, pipe.execute(), strict=True)
            for offset in members
        )
        if not numbers:
            continue
        names = [keys.trace(partition, number).encode() for number in numbers]
        for number, reply in zip(numbers, _hgetall_many(client, names), strict=True):
            trace_id, hashed = trace_hash(_pairs(reply))
            yield number, trace_id, hashed


def _hgetall_many(client: SyncClient, names: Sequence[bytes]) -> list[Any]:
    """HGETALL of every key in one round trip.  A redis-py pipeline packs each command in
    Python (~half of a digest's time); these all have one shape, so they are packed as one
    RESP buffer and sent on a connection of the client's pool, whose replies are read back
    one by one.  A failure mid-way drops the connection (replies may be left unread)."""
    if isinstance(client, redis.cluster.RedisCluster):
        if not names:
            return []
        # The names are one partition's: one slot, one node.
        node = client.get_node_from_key(names[0])  # type: ignore[no-untyped-call]
        client = client.get_redis_connection(node)
    packed = b"".join(b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%s\r\n" % (len(n), n) for n in names)
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    try:
        connection.send_packed_command([packed])
        replies = [connection.read_response() for _ in names]
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies


def digest_partition(client: SyncClient, keys: Keys, partition: int) -> PartitionDigest:
    total = traces = broken = 0
    for _, trace_id, hashed in iter_hashes(client, keys, partition):
        if trace_id is None:
            broken += 1
            continue
        total += hashed
        traces += 1
    return PartitionDigest(
        partition=partition, traces=traces, digest=f"{total & _MASK:032x}", broken=broken
    )


def partition_count(client: SyncClient, keys: Keys) -> int:
    raw: Any = client.hget(keys.meta, "partitions")
    return 0 if raw is None else int(raw)


def digest(client: SyncClient, namespace: str, partitions: Sequence[int] | None = None) -> Digest:
    """The digest of every partition of ``namespace`` (or of ``partitions``)."""
    keys = Keys(namespace)
    chosen = range(partition_count(client, keys)) if partitions is None else partitions
    parts = [digest_partition(client, keys, p) for p in chosen]
    total = sum(int(p.digest, 16) for p in parts) & _MASK
    return Digest(
        namespace=namespace,
        partitions=parts,
        digest=f"{total:032x}",
        traces=sum(p.traces for p in parts),
    )


def trace_hashes(client: SyncClient, keys: Keys, partitions: Sequence[int]) -> dict[str, int]:
    """trace id -> hash of every trace of ``partitions``."""
    return {
        trace_id.decode(): hashed
        for p in partitions
        for _, trace_id, hashed in iter_hashes(client, keys, p)
        if trace_id is not None
    }


def get_state(client: SyncClient, keys: Keys, partitions: int, trace_id: str) -> TraceInfo | None:
    """One trace's state as Client.get_trace reads it (None: absent)."""
    partition = partition_of(trace_id, partitions)
    number: Any = client.hget(keys.trace_ids(partition), trace_id)
    if number is None:
        return None
    fields: Any = client.hgetall(keys.trace(partition, number.decode()))
    return trace_info_from_hash(fields)


def _fields(info: TraceInfo | None) -> dict[str, str | None]:
    if info is None:
        return {}
    out: dict[str, str | None] = {
        "experiment_id": info.experiment_id,
        "timestamp_ms": None if info.timestamp_ms is None else str(info.timestamp_ms),
        "execution_time_ms": (
            None if info.execution_time_ms is None else str(info.execution_time_ms)
        ),
        "status": info.status,
        "client_request_id": info.client_request_id,
    }
    out.update({f"tags.{k}": v for k, v in info.tags.items()})
    out.update({f"metadata.{k}": v for k, v in info.request_metadata.items()})
    return out


def difference(trace_id: str, a: TraceInfo | None, b: TraceInfo | None) -> TraceDifference:
    """What differs between two states of one trace (None: the trace is absent)."""
    fa, fb = _fields(a), _fields(b)
    fields = [
        FieldDifference(field=name, a=fa.get(name), b=fb.get(name))
        for name in sorted(fa.keys() | fb.keys())
        if fa.get(name) != fb.get(name)
    ]
    kind = "only in A" if b is None else "only in B" if a is None else "differs"
    return TraceDifference(trace_id=trace_id, kind=kind, fields=fields)


def verify(
    client_a: SyncClient,
    namespace_a: str,
    client_b: SyncClient,
    namespace_b: str,
    *,
    limit: int = 10,
) -> Verification:
    """Compare two namespaces' digests; where partitions differ, compare them trace by
    trace and describe the first ``limit`` differing traces (by trace id)."""
    a = digest(client_a, namespace_a)
    b = digest(client_b, namespace_b)
    if len(a.partitions) == len(b.partitions):
        differing = [
            pa.partition
            for pa, pb in zip(a.partitions, b.partitions, strict=True)
            if (pa.digest, pa.traces, pa.broken) != (pb.digest, pb.traces, pb.broken)
        ]
    else:
        differing = sorted(
            {p.partition for p in a.partitions} | {p.partition for p in b.partitions}
        )
    differences: list[TraceDifference] = []
    count = 0
    if differing:
        keys_a, keys_b = Keys(namespace_a), Keys(namespace_b)
        ha = trace_hashes(client_a, keys_a, [p for p in differing if p < len(a.partitions)])
        hb = trace_hashes(client_b, keys_b, [p for p in differing if p < len(b.partitions)])
        ids = sorted(t for t in ha.keys() | hb.keys() if ha.get(t) != hb.get(t))
        count = len(ids)
        for trace_id in ids[:limit]:
            state_a = get_state(client_a, keys_a, len(a.partitions), trace_id)
            state_b = get_state(client_b, keys_b, len(b.partitions), trace_id)
            differences.append(difference(trace_id, state_a, state_b))
    if len(a.partitions) != len(b.partitions):
        # Different partition counts spread the same traces differently: equal is then
        # decided trace by trace.
        broken = sum(p.broken for p in a.partitions) + sum(p.broken for p in b.partitions)
        equal = count == 0 and a.traces == b.traces and a.digest == b.digest and not broken
    else:
        equal = not differing
    return Verification(
        equal=equal,
        a=a,
        b=b,
        partitions=differing,
        differences=differences,
        differing_traces=count,
    )
