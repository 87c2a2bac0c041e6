"""The safe trim: ``tt_trim`` (functions/lua/trim.lua) computes the first entry that must stay
(archived and past the live retention, acknowledged by every group, delivered to every
group) and trims before it with XTRIM MINID, in one atomic call."""

from __future__ import annotations

from typing import Any, NamedTuple

import redis

from tracetags import functions
from tracetags.connections import SyncClient
from tracetags.keys import Keys

TRIM_FUNCTION = functions.TRIM_FUNCTION


class TrimResult(NamedTuple):
    trimmed: int
    #: The first entry kept ('' when the stream is empty or missing).
    min_id: str
    #: What stops the trim there: '', retention, archive, pending, undelivered.
    held: str
    #: The group for pending / undelivered.
    detail: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def trim(client: SyncClient, keys: Keys, partition: int, retention_ms: int) -> TrimResult:
    """Trim as far as is safe (one ``tt_trim`` call): how many entries went, the first
    kept, and what stops the trim there.  The server's library is checked (and replaced if
    its code differs) once per connection pool, as for queries."""
    argv = (keys.stream(partition), keys.archive_marks(partition), retention_ms)
    functions.ensure_loaded(client)
    try:
        reply: Any = client.fcall(TRIM_FUNCTION, 2, *argv)
    except redis.ResponseError as exc:
        if "function not found" not in str(exc).lower():
            raise
        functions.load(client)
        reply = client.fcall(TRIM_FUNCTION, 2, *argv)
    return TrimResult(int(reply[0]), _text(reply[1]), _text(reply[2]), _text(reply[3]))
