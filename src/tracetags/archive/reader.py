"""Reading a partition's archive back: every archived entry, in entry-id order, from the
segments the manifest makes visible."""

from __future__ import annotations

from collections.abc import Iterator

from tracetags.archive import manifest
from tracetags.archive.segments import EntryId, read_segment
from tracetags.archive.store import LocalStore, S3Store, open_store
from tracetags.errors import ConfigError
from tracetags.schemas import Event, parse_entry_id
from tracetags.settings import Settings

Store = LocalStore | S3Store


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
    differs); an id held by two segments (ranges that overlap after a lost lock) is yielded
    once.  Store failures raise :class:`~tracetags.errors.ArchiveStoreError`.
    """
    store = _store(settings_or_store)
    low: EntryId | None = parse_entry_id(after) if after is not None else None
    last: EntryId | None = low
    for segment in manifest.list_visible(store, namespace, partition):
        if low is not None and segment.last <= low:
            continue
        if until_ms is not None and segment.first[0] > until_ms:
            break
        entry = manifest.read_entry(store, segment.manifest_name)
        for entry_id, item in read_segment(manifest.read_segment_bytes(store, entry)):
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
    """Every archived entry of ``trace_id`` in ``partition`` as (entry id text, event) in
    entry-id order (``until_ms`` as in :func:`read_partition`)."""
    # The plain version: a filter over the whole partition.  The pruned one (manifest and
    # row-group statistics, the bloom filter on trace_id) replaces it.
    for entry_id, item in read_partition(
        settings_or_store, namespace, partition, until_ms=until_ms
    ):
        if not isinstance(item, bytes) and item.trace_id == trace_id:
            yield entry_id, item
