"""Reading the event log back: decoded entries of one or every partition, in stream order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from tracetags import schemas
from tracetags.connections import SyncClient
from tracetags.errors import DecodeError
from tracetags.keys import Keys

_PAGE = 1_000


class LogEntry(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    entry_id: str
    #: The decoded event, or None when the entry does not decode (see ``error``).
    event: schemas.Event | None
    error: str | None = None


def partition_count(client: SyncClient, keys: Keys) -> int:
    """The namespace's partition count (0 when nothing was ever written to it)."""
    raw = client.hget(keys.meta, "partitions")
    return int(raw) if raw is not None else 0


def read_log(
    client: SyncClient,
    namespace: str,
    *,
    partition: int | None = None,
    start: str = "-",
    end: str = "+",
    count: int | None = None,
) -> Iterator[LogEntry]:
    """Yield the log's entries, partition by partition, paging through XRANGE."""
    keys = Keys(namespace)
    partitions = [partition] if partition is not None else range(partition_count(client, keys))
    left = count
    for p in partitions:
        cursor = start
        while left is None or left > 0:
            page = _PAGE if left is None else min(_PAGE, left)
            entries: list[Any] = client.xrange(  # type: ignore[assignment]
                keys.stream(p), cursor, end, count=page
            )
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                payload = (fields or {}).get(schemas.ENTRY_FIELD)
                try:
                    if payload is None:
                        raise DecodeError(f"entry has no field {schemas.ENTRY_FIELD.decode()!r}")
                    yield LogEntry(partition=p, entry_id=entry_id, event=schemas.decode(payload))
                except DecodeError as exc:
                    yield LogEntry(partition=p, entry_id=entry_id, event=None, error=str(exc))
            if left is not None:
                left -= len(entries)
            if len(entries) < page:
                break
            cursor = "(" + entries[-1][0].decode()
