"""Reading a partition's archive back: every archived entry, in entry-id order, from the
segments the manifest makes visible; or one trace's entries, found without a scan."""

from __future__ import annotations

from collections.abc import Iterator

from tracetags.archive import bloom, manifest
from tracetags.archive.index import CACHE
from tracetags.archive.segments import EntryId, iter_segment, no_cyclic_gc, rows_of
from tracetags.archive.store import LocalStore, S3Store, open_store
from tracetags.errors import ArchiveCorruptError, ConfigError
from tracetags.schemas import Event, parse_entry_id
from tracetags.settings import Settings

Store = LocalStore | S3Store

#: Listings a reader makes when a segment it listed vanished (compaction removed it after
#: its grace period): the segment that replaced it holds its entries.
_RELISTS = 3


def _store(settings_or_store: Settings | Store) -> Store:
    if isinstance(settings_or_store, Settings):
        store = open_store(settings_or_store)
        if store is None:
            raise ConfigError(
                "archive_url: no archive is configured (TRACETAGS_ARCHIVE_URL is unset and a "
                "Redis URL is given)"
            )
        return store
    return settings_or_store


def read_partition(
    settings_or_store: Settings | Store,
    namespace: str,
    partition: int,
    *,
    after: str | None = None,
    until_ms: int | None = None,
) -> Iterator[tuple[str, Event | bytes]]:
    """Every archived entry of ``partition`` as ``(entry id text, event)``, or ``(entry id
    text, raw payload bytes)`` for an entry that did not decode, in entry-id order.

    ``after``: only entries with an id greater than this one.  ``until_ms``: only entries
    whose id's milliseconds are ``<= until_ms``.  Each segment is checked against its
    manifest entry (size and sha256; :class:`~tracetags.errors.ArchiveCorruptError` if it
    differs); an id held by two segments (ranges that overlap after a lost lock, or a
    segment and the compacted one replacing it) is yielded once.  A segment removed by
    compaction while it was being read is replaced by the one that superseded it.  Store
    failures raise :class:`~tracetags.errors.ArchiveStoreError`.
    """
    store = _store(settings_or_store)
    last: EntryId | None = parse_entry_id(after) if after is not None else None
    relists = 0
    while True:
        try:
            yield from _read_from(store, namespace, partition, last, until_ms)
            return
        except _Vanished as exc:
            last = exc.last
            relists += 1
            if relists > _RELISTS:
                raise ArchiveCorruptError(
                    f"archive {store.url}: segment {exc.name} is listed but missing"
                ) from None


class _Vanished(Exception):
    def __init__(self, name: str, last: EntryId | None) -> None:
        super().__init__(name)
        self.name = name
        self.last = last


def _read_from(
    store: Store, namespace: str, partition: int, low: EntryId | None, until_ms: int | None
) -> Iterator[tuple[str, Event | bytes]]:
    last = low
    for segment in manifest.list_visible(store, namespace, partition):
        if low is not None and segment.last <= low:
            continue
        if until_ms is not None and segment.first[0] > until_ms:
            break
        try:
            entry = manifest.read_entry(store, segment.manifest_name)
            data = manifest.read_segment_bytes(store, entry)
        except FileNotFoundError:
            raise _Vanished(segment.manifest_name, last) from None
        for rows in iter_segment(data):
            for entry_id, item in rows:
                key = parse_entry_id(entry_id)
                if last is not None and key <= last:
                    continue
                if until_ms is not None and key[0] > until_ms:
                    return
                last = key
                yield entry_id, item


def read_trace(
    settings_or_store: Settings | Store,
    namespace: str,
    partition: int,
    trace_id: str,
    *,
    until_ms: int | None = None,
) -> Iterator[tuple[str, Event | bytes]]:
    """Every archived entry of ``trace_id`` in ``partition`` as ``(entry id text, event)``
    in entry-id order (``until_ms`` as in :func:`read_partition`).

    No scan: a segment is skipped by its manifest entry's trace_id range, then each row
    group by its trace_id min/max (the rows are sorted by trace) and its bloom filter; only
    the row groups left are read.  Manifest entries, footers and filters are cached per
    process (:mod:`tracetags.archive.index`), so a lookup costs one listing of the
    manifest plus the row groups that hold (or falsely seem to hold) the trace.  Ids held
    twice are returned once.  Reads of parts of a segment check its size against its
    manifest entry and Parquet's own structure, not its whole-file sha256
    (:func:`read_partition` does).
    """
    store = _store(settings_or_store)
    hashed = bloom.xxh64(trace_id.encode())
    for _ in range(_RELISTS):
        try:
            return iter(_lookup(store, namespace, partition, trace_id, hashed, until_ms))
        except FileNotFoundError:
            continue  # compacted away between the listing and the read: list again
    raise ArchiveCorruptError(
        f"archive {store.url}: segments of partition {partition} keep vanishing while read"
    )


def _lookup(
    store: Store, namespace: str, partition: int, trace_id: str, hashed: int, until_ms: int | None
) -> list[tuple[str, Event | bytes]]:
    found: list[tuple[EntryId, str, Event | bytes]] = []
    for segment in manifest.list_visible(store, namespace, partition):
        if until_ms is not None and segment.first[0] > until_ms:
            break
        entry = CACHE.entry(store, segment)
        low, high = entry.trace_min, entry.trace_max
        if low is not None and high is not None and not low <= trace_id <= high:
            continue
        index = CACHE.segment(store, entry)
        groups = index.candidates(trace_id, hashed)
        if not groups:
            continue
        with store.open_input(entry.segment) as source:
            table = index.read(source, groups, trace_id)
        if not table.num_rows:
            continue
        with no_cyclic_gc():
            for entry_id, item in rows_of(table):
                found.append((parse_entry_id(entry_id), entry_id, item))
    found.sort(key=lambda row: row[0])
    out: list[tuple[str, Event | bytes]] = []
    last: EntryId | None = None
    for key, entry_id, item in found:
        if key == last or (until_ms is not None and key[0] > until_ms):
            continue
        last = key
        out.append((entry_id, item))
    return out
