"""The only module that spells Redis keys.

Every key of a namespace ``ns`` (the Lua library builds the same shapes from the
partition prefix it is given; ``functions/`` mirrors this table):

=========================================  =======  ================================================
key                                        type     holds
=========================================  =======  ================================================
``ns:meta``                                hash     ``partitions`` (fixed at creation),
                                                    ``created_ms``
``ns:consumers``                           zset     live consumers: name → last heartbeat (ms)
``ns:{pNN}:log``                           stream   the event log of partition NN (field ``e``)
``ns:{pNN}:dead``                          stream   dead letters: payload, entry id, reason, time
``ns:{pNN}:n``                             string   counter handing out trace numbers (INCR)
``ns:{pNN}:ids``                           hash     trace id → trace number (``<no>``)
``ns:{pNN}:t:<no>``                        hash     one trace's state (fields below)
``ns:{pNN}:gone``                          hash     trace id → entry id of its latest
                                                    ``trace_deleted`` (trace tombstone)
``ns:{pNN}:all``                           set      numbers of every trace of the partition
``ns:{pNN}:tv:<enc key><enc value>``       set      traces whose tag ``key`` is ``value``
``ns:{pNN}:tk:<enc key>``                  set      traces that have tag ``key``
``ns:{pNN}:td:<enc key>``                  zset     distinct values of tag ``key`` (score 0)
``ns:{pNN}:mv:<enc key><enc value>``       set      traces whose metadata ``key`` is ``value``
``ns:{pNN}:mk:<enc key>``                  set      traces that have metadata ``key``
``ns:{pNN}:md:<enc key>``                  zset     distinct values of metadata ``key`` (score 0)
``ns:{pNN}:st:<enc status>``               set      traces with that status
``ns:{pNN}:ex:<enc experiment_id>``        set      traces of that experiment
``ns:{pNN}:exd``                           zset     distinct experiment ids (score 0)
``ns:{pNN}:cr:<enc client_request_id>``    set      traces with that client_request_id
``ns:{pNN}:crd``                           zset     distinct client_request_ids (score 0)
``ns:{pNN}:ts``                            zset     traces by ``timestamp_ms``
``ns:{pNN}:du``                            zset     traces by ``execution_time_ms`` (finished only)
``ns:{pNN}:en``                            zset     traces by ``end_time_ms`` = timestamp_ms +
                                                    execution_time_ms (0 if missing)
=========================================  =======  ================================================

Every set and sorted set of traces holds **trace numbers** (small decimal ints from
``ns:{pNN}:n``, so sets stay intsets), never trace ids; ``ns:{pNN}:ids`` and the ``i`` field
of ``ns:{pNN}:t:<no>`` map the two ways.  A number is only meaningful inside its partition
and is never reused.  Empty sets and hashes vanish by themselves, and the fold removes a
value from a distinct-values zset when its last trace leaves the value's set, so no index
key outlives its content.  ``name`` is the tag ``mlflow.traceName`` (:data:`NAME_TAG`): the
event field and an explicit tag share one register and one set of indexes.

Fields of ``ns:{pNN}:t:<no>``: ``i`` trace id; ``b`` base ms of its stamps; ``x`` stamp of the
latest event applied (the trace exists while it is newer than its tombstone); the
attribute registers ``e`` experiment_id, ``s`` timestamp_ms, ``d`` execution_time_ms,
``S`` status, ``c`` client_request_id; ``t<key>`` per tag and ``m<key>`` per metadata key.
A register's value is ``<stamp>:<value>``, or ``<stamp>`` alone for a tombstone (deleted tag).
A stamp is the writer's entry id ``ms-seq``, stored compactly as the decimal integer
``(ms - b) * 1024 + seq`` when ``seq < 1024`` and ``|ms - b| < 2**42`` (exact in a double),
else verbatim as ``ms-seq``.  Use :func:`decode_stamp` and :func:`split_register` to read them.

``{pNN}`` is a Redis Cluster hash tag: all keys of one partition live in one slot, so a
Function may touch any of them.  ``<enc s>`` is ``<byte length>:<s>`` — a length prefix
makes every concatenation of encoded strings injective, so ``a:b``=``c`` and ``a``=``b:c``
can never share a key.
"""

from __future__ import annotations

import zlib
from typing import Final

META_SUFFIX: Final = "meta"
#: The tag that holds a trace's ``name`` (MLflow's filter ``name`` means this tag).
NAME_TAG: Final = "mlflow.traceName"
#: Compact stamps: ``(ms - base) * STAMP_SEQ_SPAN + seq``; see the key table.
STAMP_SEQ_SPAN: Final = 1024
STAMP_MAX_DELTA_MS: Final = 2**42


def enc(text: str) -> str:
    """Length-prefixed form of a user string: ``<utf-8 byte length>:<text>``."""
    return f"{len(text.encode())}:{text}"


def decode_stamp(text: str, base_ms: int) -> tuple[int, int]:
    """The entry id ``(ms, seq)`` of a stored stamp of a trace whose base is ``base_ms``."""
    ms, dash, seq = text[1:].partition("-")
    if dash:
        return int(text[0] + ms), int(seq)
    delta, seq_number = divmod(int(text), STAMP_SEQ_SPAN)
    return base_ms + delta, seq_number


def encode_stamp(ms: int, seq: int, base_ms: int) -> str:
    """The stored form of the stamp ``(ms, seq)`` for a trace with base ``base_ms``."""
    delta = ms - base_ms
    if seq < STAMP_SEQ_SPAN and -STAMP_MAX_DELTA_MS < delta < STAMP_MAX_DELTA_MS:
        return str(delta * STAMP_SEQ_SPAN + seq)
    return f"{ms}-{seq}"


def split_register(text: str) -> tuple[str, str | None]:
    """A trace-hash register ``<stamp>:<value>`` as ``(stamp, value)``; value None = tombstone."""
    stamp, colon, value = text.partition(":")
    return stamp, (value if colon else None)


def partition_of(trace_id: str, partitions: int) -> int:
    """The partition of a trace: CRC-32 of its UTF-8 id modulo ``partitions``.

    CRC-32 (zlib) is stable across processes, platforms and Python versions, unlike
    ``hash()``.
    """
    return zlib.crc32(trace_id.encode()) % partitions


class Keys:
    """Key builder for one namespace."""

    __slots__ = ("consumers", "meta", "namespace")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.meta = f"{namespace}:{META_SUFFIX}"
        self.consumers = f"{namespace}:consumers"

    def prefix(self, partition: int) -> str:
        """``ns:{pNN}`` — every key of a partition starts with it."""
        return f"{self.namespace}:{{p{partition:02d}}}"

    def stream(self, partition: int) -> str:
        return f"{self.prefix(partition)}:log"

    def dead_letters(self, partition: int) -> str:
        return f"{self.prefix(partition)}:dead"

    def tag_value(self, partition: int, key: str, value: str) -> str:
        return f"{self.prefix(partition)}:tv:{enc(key)}{enc(value)}"

    def tag_key(self, partition: int, key: str) -> str:
        return f"{self.prefix(partition)}:tk:{enc(key)}"

    # --- the fold's state and indexes (mirrored by functions/tracetags.lua) ------------

    def trace_counter(self, partition: int) -> str:
        return f"{self.prefix(partition)}:n"

    def trace_ids(self, partition: int) -> str:
        return f"{self.prefix(partition)}:ids"

    def trace(self, partition: int, number: int | str) -> str:
        return f"{self.prefix(partition)}:t:{number}"

    def deleted_traces(self, partition: int) -> str:
        return f"{self.prefix(partition)}:gone"

    def all_traces(self, partition: int) -> str:
        return f"{self.prefix(partition)}:all"

    def tag_values(self, partition: int, key: str) -> str:
        return f"{self.prefix(partition)}:td:{enc(key)}"

    def metadata_value(self, partition: int, key: str, value: str) -> str:
        return f"{self.prefix(partition)}:mv:{enc(key)}{enc(value)}"

    def metadata_key(self, partition: int, key: str) -> str:
        return f"{self.prefix(partition)}:mk:{enc(key)}"

    def metadata_values(self, partition: int, key: str) -> str:
        return f"{self.prefix(partition)}:md:{enc(key)}"

    def status(self, partition: int, status: str) -> str:
        return f"{self.prefix(partition)}:st:{enc(status)}"

    def experiment(self, partition: int, experiment_id: str) -> str:
        return f"{self.prefix(partition)}:ex:{enc(experiment_id)}"

    def experiments(self, partition: int) -> str:
        return f"{self.prefix(partition)}:exd"

    def client_request_id(self, partition: int, client_request_id: str) -> str:
        return f"{self.prefix(partition)}:cr:{enc(client_request_id)}"

    def client_request_ids(self, partition: int) -> str:
        return f"{self.prefix(partition)}:crd"

    def by_timestamp(self, partition: int) -> str:
        return f"{self.prefix(partition)}:ts"

    def by_execution_time(self, partition: int) -> str:
        return f"{self.prefix(partition)}:du"

    def by_end_time(self, partition: int) -> str:
        return f"{self.prefix(partition)}:en"
