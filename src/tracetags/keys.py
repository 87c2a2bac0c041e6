"""The only module that spells Redis keys.

Every key of a namespace ``ns`` (the Lua library builds the same shapes from the
partition prefix it is given; ``functions/`` mirrors this table):

======================================  =========  ==========================================
key                                     type       holds
======================================  =========  ==========================================
``ns:meta``                             hash       ``partitions`` (fixed at creation), ``created_ms``
``ns:{pNN}:log``                        stream     the event log of partition NN (entry field ``e``)
``ns:{pNN}:dead``                       stream     dead letters: payload, entry id, reason, time
``ns:{pNN}:tv:<enc key><enc value>``    set        traces whose tag ``key`` is ``value``
``ns:{pNN}:tk:<enc key>``               set        traces that have tag ``key``
======================================  =========  ==========================================

``{pNN}`` is a Redis Cluster hash tag: all keys of one partition live in one slot, so a
Function may touch any of them.  ``<enc s>`` is ``<byte length>:<s>`` — a length prefix
makes every concatenation of encoded strings injective, so ``a:b``=``c`` and ``a``=``b:c``
can never share a key.  The fold's per-trace and index keys are added here by the
consumer issue, always through :func:`enc`.
"""

from __future__ import annotations

import zlib
from typing import Final

META_SUFFIX: Final = "meta"


def enc(text: str) -> str:
    """Length-prefixed form of a user string: ``<utf-8 byte length>:<text>``."""
    return f"{len(text.encode())}:{text}"


def partition_of(trace_id: str, partitions: int) -> int:
    """The partition of a trace: CRC-32 of its UTF-8 id modulo ``partitions``.

    CRC-32 (zlib) is stable across processes, platforms and Python versions, unlike
    ``hash()``.
    """
    return zlib.crc32(trace_id.encode()) % partitions


class Keys:
    """Key builder for one namespace."""

    __slots__ = ("namespace", "meta")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.meta = f"{namespace}:{META_SUFFIX}"

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
