"""The archive's status per partition as ``status`` shows it: the archiver's cache in Redis
(``ns:{pNN}:archive``; the store's manifest stays the truth) and why trimming is held back.
Imports nothing heavy: ``Client.status`` reads it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

#: Fields of the ``archive`` hash (keys.py's key table).
ARCHIVED: Final = "archived"
SEGMENTS: Final = "segments"
ROWS: Final = "rows"
BYTES: Final = "bytes"
RUN_MS: Final = "run_ms"
HELD: Final = "held"
HELD_DETAIL: Final = "held_detail"
ERROR: Final = "error"
ERROR_SINCE_MS: Final = "error_since_ms"
#: The store's URL the archiver writes to.
STORE: Final = "store"

#: What holds the trim back (``tt_trim``'s answer), as ``status`` words it.
HELD_REASONS: Final = {
    "": "nothing: the tail is trimmed up to the archive",
    "retention": "live retention (archived entries kept for TRACETAGS_LOG_RETENTION)",
    "archive": "entries not archived yet",
    "pending": "entries pending in group {detail}",
    "undelivered": "entries not yet delivered to group {detail} (a lagging group)",
}


class ArchiveStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One partition's archive, from the archiver's cache."""

    #: The store the archiver writes to (None: no archiver ever ran on the partition).
    store: str | None
    #: The last entry id in the archive (None: nothing archived yet).
    archived_up_to: str | None
    segments: int
    archived_rows: int
    archive_bytes: int
    #: When the archiver last ran on the partition (None: never).
    last_run_ms: int | None
    #: What stops the trim where it stops (a ``tt_trim`` reason: ``retention``,
    #: ``archive``, ``pending``, ``undelivered``; '' nothing; None: not run).
    held_back: str | None
    #: The group that holds it back, for ``pending`` / ``undelivered``.
    held_back_by: str | None
    #: The store's last failure while it lasts (None when the last run succeeded).
    error: str | None
    error_since_ms: int | None

    @property
    def held_back_text(self) -> str:
        """Why trimming stops where it does, in words (archive failures first)."""
        if self.error is not None:
            return f"archive failures: {self.error}"
        if self.held_back is None:
            return "no archive run yet"
        template = HELD_REASONS.get(self.held_back, self.held_back)
        return template.format(detail=self.held_back_by or "?")


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _int(value: bytes | None) -> int | None:
    return int(value) if value else None


def from_hash(fields: Mapping[bytes, bytes]) -> ArchiveStatus:
    """The status from the ``archive`` hash (HGETALL); empty hash: never archived."""
    get = fields.get
    return ArchiveStatus(
        store=_text(get(STORE.encode())),
        archived_up_to=_text(get(ARCHIVED.encode())),
        segments=_int(get(SEGMENTS.encode())) or 0,
        archived_rows=_int(get(ROWS.encode())) or 0,
        archive_bytes=_int(get(BYTES.encode())) or 0,
        last_run_ms=_int(get(RUN_MS.encode())),
        held_back=_text(get(HELD.encode())),
        held_back_by=_text(get(HELD_DETAIL.encode())) or None,
        error=_text(get(ERROR.encode())) or None,
        error_since_ms=_int(get(ERROR_SINCE_MS.encode())),
    )
