"""The safe trim: ``tt_trim`` (functions/trim.lua) computes the first entry that must stay
(archived and past the live retention, acknowledged by every group, delivered to every
group) and trims before it with XTRIM MINID, in one atomic call."""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import redis

from tracetags import functions
from tracetags.keys import Keys

TRIM_FUNCTION: Final = "tt_trim"
#: Entries one tt_trim call may remove (~a few ms of Redis's time): the archiver calls again
#: while the answer is ``limit``.
TRIM_MAX_ENTRIES: Final = 50_000


class TrimResult(NamedTuple):
    trimmed: int
    #: The first entry kept ('' when the stream is empty or missing).
    min_id: str
    #: What stops the trim there: '', retention, archive, pending, undelivered, limit.
    held: str
    #: The group for pending / undelivered.
    detail: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def trim_once(
    client: redis.Redis, keys: Keys, partition: int, retention_ms: int,
    max_entries: int = TRIM_MAX_ENTRIES,
) -> TrimResult:  # fmt: skip
    """One ``tt_trim`` call (loads the library when the server lacks it)."""
    argv = (keys.stream(partition), keys.archive_marks(partition), retention_ms, max_entries)
    try:
        reply: Any = client.fcall(TRIM_FUNCTION, 2, *argv)
    except redis.ResponseError as exc:
        if "function not found" not in str(exc).lower():
            raise
        functions.load(client)
        reply = client.fcall(TRIM_FUNCTION, 2, *argv)
    return TrimResult(int(reply[0]), _text(reply[1]), _text(reply[2]), _text(reply[3]))


def trim(client: redis.Redis, keys: Keys, partition: int, retention_ms: int) -> TrimResult:
    """Trim as far as is safe, in calls of at most :data:`TRIM_MAX_ENTRIES` entries; the
    result sums the trimmed entries and tells where and why it stopped."""
    total = 0
    while True:
        result = trim_once(client, keys, partition, retention_ms)
        total += result.trimmed
        if result.held != "limit" or result.trimmed == 0:
            return result._replace(trimmed=total)
