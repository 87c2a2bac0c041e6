"""The manifest: which segments of a partition are visible.  A segment is written first and
becomes visible only when its manifest entry (id range, rows, size, sha256) is written after
it (meta-last), so a crash between the two leaves an orphan, never a half-visible segment.

Layout under the store's root, per namespace and partition::

    <namespace>/p<NN>/segments/<first id>_<last id>.parquet
    <namespace>/p<NN>/manifest/<first id>_<last id>.json

Ids are entry ids ``ms-seq``.  The manifest's names alone give every range (one listing);
an entry is read for its checksum when its segment is.

Compaction (:mod:`tracetags.archive.compaction`) replaces several segments by one covering
their whole id range, in one step: the new entry is one object written after its segment,
and an entry whose range lies inside another entry's range is **superseded** (not visible).
A segment holds every entry of the stream in its id range, so the covering one holds all the
superseded one does; superseded entries and their segments are removed later.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from tracetags.archive.segments import EntryId
from tracetags.archive.store import LocalStore, S3Store
from tracetags.errors import ArchiveCorruptError
from tracetags.schemas import entry_text, parse_entry_id

Store = LocalStore | S3Store
MANIFEST_FORMAT: Final = 1


class ManifestEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One visible segment."""

    format: int = MANIFEST_FORMAT
    partition: int
    first_id: str
    last_id: str
    rows: int
    bytes: int
    sha256: str
    #: The segment's object name (relative to the store's root).
    segment: str
    created_ms: int
    #: The smallest and largest trace id in the segment (None: none, or an entry written
    #: before these were recorded; readers then take them from the segment's footer).
    trace_min: str | None = None
    trace_max: str | None = None
    #: The range stems of the segments this one replaced (compaction), oldest first.
    compacted_from: tuple[str, ...] = ()


class SegmentRange(msgspec.Struct, frozen=True):
    """A visible segment as the manifest listing names it."""

    first: EntryId
    last: EntryId
    #: The manifest entry's object name.
    manifest_name: str
    #: The manifest entry's size in bytes, as listed.
    size: int = 0


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(ManifestEntry)


def partition_dir(namespace: str, partition: int) -> str:
    return f"{namespace}/p{partition:02d}"


def range_stem(first: EntryId, last: EntryId) -> str:
    return f"{entry_text(first)}_{entry_text(last)}"


def segment_name(namespace: str, partition: int, first: EntryId, last: EntryId) -> str:
    return f"{partition_dir(namespace, partition)}/segments/{range_stem(first, last)}.parquet"


def manifest_name(namespace: str, partition: int, first: EntryId, last: EntryId) -> str:
    return f"{partition_dir(namespace, partition)}/manifest/{range_stem(first, last)}.json"


def parse_stem(name: str) -> tuple[EntryId, EntryId] | None:
    """The id range of a segment or manifest object name; None for a foreign name."""
    stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
    first, sep, last = stem.partition("_")
    try:
        return (parse_entry_id(first), parse_entry_id(last)) if sep else None
    except ValueError:
        return None


def list_entries(store: Store, namespace: str, partition: int) -> list[SegmentRange]:
    """Every manifest entry of the partition (visible or superseded), by first entry id,
    longest range first among equal firsts."""
    ranges = []
    for obj in store.list(f"{partition_dir(namespace, partition)}/manifest"):
        if not obj.name.endswith(".json"):
            continue
        parsed = parse_stem(obj.name)
        if parsed is not None:
            ranges.append(SegmentRange(parsed[0], parsed[1], obj.name, obj.size))
    ranges.sort(key=lambda r: (r.first, (-r.last[0], -r.last[1])))
    return ranges


def split_superseded(
    ranges: list[SegmentRange],
) -> tuple[list[SegmentRange], list[tuple[SegmentRange, SegmentRange]]]:
    """``(visible, [(superseded, a visible range holding it), ...])`` of ``ranges`` in
    :func:`list_entries` order: a range inside another one's is superseded."""
    visible: list[SegmentRange] = []
    hidden: list[tuple[SegmentRange, SegmentRange]] = []
    # In list order every earlier range starts at or before this one: it is inside one of
    # them exactly when it ends at or before the furthest end so far.
    widest: SegmentRange | None = None
    for r in ranges:
        if widest is not None and r.last <= widest.last:
            hidden.append((r, widest))
            continue
        visible.append(r)
        widest = r
    return visible, hidden


def list_visible(store: Store, namespace: str, partition: int) -> list[SegmentRange]:
    """The partition's visible segments, by first entry id (one listing: superseded ones
    left out)."""
    return split_superseded(list_entries(store, namespace, partition))[0]


def archived_up_to(ranges: list[SegmentRange]) -> EntryId | None:
    """The last entry id the visible segments hold (None: nothing archived)."""
    return max((r.last for r in ranges), default=None)


def read_entry(store: Store, name: str) -> ManifestEntry:
    try:
        return _DECODER.decode(store.get(name))
    except msgspec.DecodeError as exc:
        raise ArchiveCorruptError(f"manifest entry {name} does not parse: {exc}") from exc


def read_segment_bytes(store: Store, entry: ManifestEntry) -> bytes:
    """A visible segment's bytes, checked against its manifest entry (size and sha256)."""
    data = store.get(entry.segment)
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ArchiveCorruptError(
            f"segment {entry.segment} does not match its manifest entry "
            f"({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}..., expected "
            f"{entry.bytes} bytes, {entry.sha256[:12]}...)"
        )
    return data


def publish(
    store: Store,
    namespace: str,
    partition: int,
    first: EntryId,
    last: EntryId,
    rows: int,
    data: bytes,
    now_ms: int,
    *,
    before_manifest: object = None,
    compacted_from: tuple[str, ...] = (),
) -> ManifestEntry:
    """Write the segment, then its manifest entry (meta-last); return the entry."""
    segment = segment_name(namespace, partition, first, last)
    low, high = trace_bounds(data)
    store.put(segment, data)
    if callable(before_manifest):
        before_manifest()
    entry = ManifestEntry(
        partition=partition,
        first_id=entry_text(first),
        last_id=entry_text(last),
        rows=rows,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        segment=segment,
        created_ms=now_ms,
        trace_min=low,
        trace_max=high,
        compacted_from=compacted_from,
    )
    store.put(manifest_name(namespace, partition, first, last), _ENCODER.encode(entry))
    return entry


def trace_bounds(data: bytes) -> tuple[str | None, str | None]:
    """The smallest and largest trace id of a segment, from its footer's statistics."""
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    column = metadata.schema.names.index("trace_id")
    lows, highs = [], []
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(column).statistics
        if stats is not None and stats.has_min_max:
            lows.append(stats.min)
            highs.append(stats.max)
    return (min(lows), max(highs)) if lows else (None, None)


def retire(store: Store, superseded: SegmentRange) -> None:
    """Remove a superseded entry, then its segment (a crash in between leaves an orphan,
    which the archiver removes)."""
    store.delete(superseded.manifest_name)
    store.delete(segment_name_of(superseded))


def segment_name_of(r: SegmentRange) -> str:
    """The segment object of a manifest entry's range."""
    directory = r.manifest_name.rsplit("/manifest/", 1)[0]
    return f"{directory}/segments/{range_stem(r.first, r.last)}.parquet"


def orphans(store: Store, namespace: str, partition: int, ranges: list[SegmentRange]) -> list[str]:
    """Segment objects that no manifest entry in ``ranges`` names (left by a crash between
    the segment's upload and its entry); pass every entry (:func:`list_entries`), or a
    superseded segment still within its grace period is taken for one."""
    visible = {range_stem(r.first, r.last) for r in ranges}
    found = []
    for obj in store.list(f"{partition_dir(namespace, partition)}/segments"):
        parsed = parse_stem(obj.name)
        if parsed is not None and range_stem(*parsed) not in visible:
            found.append(obj.name)
    return found
