"""The dead-letter streams: list what could not be folded, re-queue it after a fix, purge it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import msgspec

from tracetags.connections import SyncClient
from tracetags.keys import Keys

#: FastStream's binary envelope starts with this; such payloads go back as ``__data__``.
_FASTSTREAM_MAGIC: Final = b"\x89BIN\x0d\x0a\x1a\x0a"
_PAGE: Final = 500


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    #: Id of the dead letter in ``ns:{pNN}:dead``.
    id: str
    #: Id the entry had in the log.
    entry_id: str
    reason: str
    time_ms: int
    payload: bytes


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def iter_dead_letters(
    client: SyncClient, keys: Keys, partitions: int, partition: int | None = None
) -> Iterator[DeadLetter]:
    """Every dead letter, oldest first, partition by partition."""
    for p in [partition] if partition is not None else range(partitions):
        start = "-"
        while True:
            page: Any = client.xrange(keys.dead_letters(p), start, "+", count=_PAGE)
            for raw_id, fields in page:
                yield DeadLetter(
                    partition=p,
                    id=_text(raw_id),
                    entry_id=_text(fields.get(b"entry_id", b"")),
                    reason=_text(fields.get(b"reason", b"")),
                    time_ms=int(fields.get(b"time_ms", b"0") or 0),
                    payload=fields.get(b"payload", b""),
                )
            if len(page) < _PAGE:
                break
            start = "(" + _text(page[-1][0])


def retry(client: SyncClient, keys: Keys, letters: list[DeadLetter]) -> int:
    """Put dead letters back on their partition's log (as new entries, so the fold applies
    them in their new place) and remove them from the dead-letter stream, atomically per
    letter.  Returns how many were re-queued.

    One transaction per partition: a partition's keys share a slot, a Redis Cluster runs a
    transaction only within one slot."""
    by_partition: dict[int, list[DeadLetter]] = {}
    for letter in letters:
        by_partition.setdefault(letter.partition, []).append(letter)
    for partition, listed in by_partition.items():
        pipe = client.pipeline(transaction=True)
        for letter in listed:
            field = "__data__" if letter.payload.startswith(_FASTSTREAM_MAGIC) else "e"
            pipe.xadd(keys.stream(partition), {field: letter.payload})
            pipe.xdel(keys.dead_letters(partition), letter.id)
        pipe.execute()
    return len(letters)


def purge(client: SyncClient, keys: Keys, letters: list[DeadLetter]) -> int:
    """Delete these dead letters for good; returns how many were deleted."""
    pipe = client.pipeline(transaction=False)
    for letter in letters:
        pipe.xdel(keys.dead_letters(letter.partition), letter.id)
    return sum(int(n) for n in pipe.execute())
