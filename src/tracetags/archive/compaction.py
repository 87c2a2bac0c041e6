"""Compaction: a partition's small segments merged into larger sorted ones, so that a
trace's history reads a few segments, not thousands.

One merge, holding the partition's archiver lock (no archive run or other compaction of the
partition runs meanwhile):

1. reads the input segments (consecutive in entry-id order; each checked against its
   manifest entry) and writes their rows as one segment sorted by (trace_id, entry id),
   named by the whole id range;
2. writes its manifest entry (meta-last): **the one atomic step**.  The new range holds
   every input's range, so from this write on readers see the new segment and not the
   inputs (:func:`tracetags.archive.manifest.split_superseded`); before it, they see only
   the inputs;
3. after ``archive_compact_grace`` (for readers that listed the inputs before step 2),
   removes each input's manifest entry, then its segment.

A crash before 2 leaves an orphaned segment (removed by the next archive run or
compaction); after 2, superseded entries that step 3 removes later.  Readers dedup ids, so
nothing is lost or read twice at any point.

Which segments merge: a segment of fewer than ``archive_compact_rows / 2`` rows is small;
from the oldest, consecutive small segments are grouped up to ``archive_compact_rows``
rows, and a group merges when it has at least :data:`MIN_INPUTS` segments and none holds
more than half its rows.  That last rule bounds the rewriting: a row is rewritten only into
a segment at least twice as large as the one it was in, so at most log2(target / first
size) times (a growing segment is not rewritten for every small one that follows it).
``full=True`` merges every group of two or more segments below the target instead (a
one-off clean-up: ``tracetags archive compact --full``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Final

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from tracetags import schemas
from tracetags.archive import manifest, state
from tracetags.archive.archiver import held, partition_lock, pause_at
from tracetags.archive.index import CACHE
from tracetags.archive.manifest import ManifestEntry, SegmentRange
from tracetags.archive.segments import EntryId, no_cyclic_gc, read_table, write_tables
from tracetags.archive.store import LocalStore, S3Store
from tracetags.connections import SyncClient, socket_options, sync_client
from tracetags.errors import ArchiveCorruptError, ArchiveStoreError
from tracetags.keys import Keys
from tracetags.log import partition_count
from tracetags.settings import Settings

log = logging.getLogger("tracetags.archive")

Store = LocalStore | S3Store
#: Fewest segments one merge takes (unless ``full``).
MIN_INPUTS: Final = 4


class CompactionReport(msgspec.Struct, kw_only=True):
    """What one compaction of one partition did."""

    partition: int
    #: Segments replaced by compacted ones (visible before, superseded now).
    merged: int = 0
    #: Compacted segments written.
    written: int = 0
    #: Rows rewritten.
    rows: int = 0
    #: Superseded segments removed after their grace period.
    retired: int = 0
    orphans_removed: int = 0
    #: Visible segments after the run.
    segments: int = 0
    #: Another archiver or compaction holds the partition's lock: nothing was done.
    locked_out: bool = False
    error: str | None = None


def plan(
    visible: list[tuple[SegmentRange, ManifestEntry]], target_rows: int, *, full: bool = False
) -> list[list[tuple[SegmentRange, ManifestEntry]]]:
    """Groups of consecutive visible segments to merge, oldest first."""
    if target_rows <= 0:
        return []
    limit = target_rows if full else target_rows // 2
    groups: list[list[tuple[SegmentRange, ManifestEntry]]] = []
    run: list[tuple[SegmentRange, ManifestEntry]] = []
    for item in [*visible, None]:
        if item is not None and item[1].rows < limit:
            run.append(item)
            continue
        i = 0
        while i < len(run):
            j, rows = i, 0
            while j < len(run) and rows + run[j][1].rows <= target_rows:
                rows += run[j][1].rows
                j += 1
            group = run[i:j]
            largest = max((e.rows for _, e in group), default=0)
            if len(group) >= 2 and (full or (len(group) >= MIN_INPUTS and 2 * largest <= rows)):
                groups.append(group)
                i = j
            else:
                i += 1
        run = []
    return groups


def _merged(tables: list[pa.Table], ranges: list[SegmentRange]) -> pa.Table:
    """The inputs' rows, each entry id once (ranges overlap only after a lost lock)."""
    table = pa.concat_tables(tables)
    if all(a.last < b.first for a, b in itertools.pairwise(ranges)):
        return table
    table = table.sort_by([("entry_ms", "ascending"), ("entry_seq", "ascending")])
    ms, seq = table.column("entry_ms"), table.column("entry_seq")
    changed = pc.or_(
        pc.not_equal(ms.slice(1), ms.slice(0, len(ms) - 1)),
        pc.not_equal(seq.slice(1), seq.slice(0, len(seq) - 1)),
    )
    keep = pa.concat_arrays([pa.array([True]), *changed.chunks]) if len(ms) else changed
    return table.filter(keep)


def merge(
    store: Store, namespace: str, partition: int,
    group: list[tuple[SegmentRange, ManifestEntry]], now_ms: int,
    *, guard: Callable[[], None] | None = None,
) -> ManifestEntry:  # fmt: skip
    """Write the group's rows as one segment, then its manifest entry (the step that makes
    it visible and the group superseded); return the new entry."""
    ranges = [r for r, _ in group]
    with no_cyclic_gc():
        tables = [read_table(manifest.read_segment_bytes(store, entry)) for _, entry in group]
        table = _merged(tables, ranges)
        del tables
        pause_at("compact_before_upload")
        data = write_tables([table])
    first: EntryId = min(r.first for r in ranges)
    last: EntryId = max(r.last for r in ranges)

    def before_manifest() -> None:
        pause_at("compact_before_manifest")
        if guard is not None:
            guard()

    return manifest.publish(
        store, namespace, partition, first, last, table.num_rows, data, now_ms,
        before_manifest=before_manifest,
        compacted_from=tuple(manifest.range_stem(r.first, r.last) for r in ranges),
    )  # fmt: skip


def retire_superseded(store: Store, entries: list[SegmentRange], now_ms: int, grace_ms: int) -> int:
    """Remove the superseded entries (and segments) whose replacement has been visible
    for ``grace_ms``; return how many."""
    removed = 0
    for hidden, holder in manifest.split_superseded(entries)[1]:
        if now_ms - CACHE.entry(store, holder).created_ms < grace_ms:
            continue
        manifest.retire(store, hidden)
        removed += 1
    return removed


def compact_partition(
    store: Store, namespace: str, partition: int, *, target_rows: int, grace_ms: int,
    full: bool = False, max_merges: int | None = None,
    guard: Callable[[], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> CompactionReport:  # fmt: skip
    """Compact one partition's archive (see the module docstring).  The caller holds the
    partition's lock (:func:`compact`) or knows nothing else writes it (a benchmark);
    ``guard`` raises to stop a merge from publishing (the lock was lost).
    ``on_progress(rows, total rows planned)`` after each merge."""
    report = CompactionReport(partition=partition)
    entries = manifest.list_entries(store, namespace, partition)
    for name in manifest.orphans(store, namespace, partition, entries):
        log.info("partition %d: removing orphaned segment %s", partition, name)
        store.delete(name)
        report.orphans_removed += 1
    report.retired += retire_superseded(store, entries, schemas.now_ms(), grace_ms)
    visible = manifest.list_visible(store, namespace, partition)
    groups = plan([(r, CACHE.entry(store, r)) for r in visible], target_rows, full=full)
    groups = groups[:max_merges]
    total = sum(e.rows for group in groups for _, e in group)
    for group in groups:
        entry = merge(store, namespace, partition, group, schemas.now_ms(), guard=guard)
        # A merge's Arrow buffers (~0.7 KB per row) go back to the system, not to the
        # allocator's cache: the archiver process lives on between merges.
        pa.default_memory_pool().release_unused()
        report.written += 1
        report.merged += len(group)
        report.rows += entry.rows
        if on_progress is not None:
            on_progress(entry.rows, total)
    pause_at("compact_before_retire")
    if grace_ms == 0 and groups:
        entries = manifest.list_entries(store, namespace, partition)
        report.retired += retire_superseded(store, entries, schemas.now_ms(), 0)
    report.segments = len(manifest.list_visible(store, namespace, partition))
    return report


def compact(
    settings: Settings, *, partition: int | None = None, full: bool = False,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> list[CompactionReport]:  # fmt: skip
    """Compact every partition's archive (or one), each holding its archiver lock;
    ``on_progress(partition, rows, total rows planned)`` after each merge.  Store failures
    are reported per partition, not raised.  Raises ConfigError when no archive is
    configured."""
    from tracetags.archive.reader import _store

    store = _store(settings)
    client = sync_client(settings.effective_redis_url, **socket_options(settings))
    keys = Keys(settings.namespace)
    try:
        partitions = [partition] if partition is not None else range(partition_count(client, keys))
        reports = []
        for p in partitions:
            progress = (
                (lambda rows, total, p=p: on_progress(p, rows, total))
                if on_progress is not None
                else None
            )
            reports.append(
                compact_locked(client, store, settings, p, full=full, on_progress=progress)
            )
        return reports
    finally:
        client.close()


def compact_locked(
    client: SyncClient, store: Store, settings: Settings, partition: int, *,
    full: bool = False, max_merges: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> CompactionReport:  # fmt: skip
    """:func:`compact_partition` holding the partition's archiver lock; the status cache
    (segments, bytes) is updated after it."""
    keys = Keys(settings.namespace)
    lock = partition_lock(client, keys, partition)

    def guard() -> None:
        if not lock.owned():
            raise ArchiveStoreError(f"partition {partition}: the archive lock was lost")

    with held(lock, partition) as owned:
        if not owned:
            return CompactionReport(partition=partition, locked_out=True)
        try:
            report = compact_partition(
                store, settings.namespace, partition,
                target_rows=settings.archive_compact_rows,
                grace_ms=settings.archive_compact_grace_ms, full=full,
                max_merges=max_merges, guard=guard, on_progress=on_progress,
            )  # fmt: skip
        except (ArchiveStoreError, ArchiveCorruptError) as exc:
            log.error("partition %d: compaction failed: %s", partition, exc)
            return CompactionReport(partition=partition, error=str(exc))
        directory = f"{manifest.partition_dir(settings.namespace, partition)}/segments"
        client.hset(
            keys.archive_state(partition),
            mapping={
                state.SEGMENTS: report.segments,
                state.BYTES: sum(o.size for o in store.list(directory)),
            },
        )
        return report
