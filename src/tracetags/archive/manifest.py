"""The manifest: which segments of a partition are visible.  A segment is written first and
becomes visible only when its manifest entry (id range, rows, size, sha256) is written after
it (meta-last), so a crash between the two leaves an orphan, never a half-visible segment.

Layout under the store's root, per namespace and partition::

    <namespace>/p<NN>/segments/<first id>_<last id>.parquet
    <namespace>/p<NN>/manifest/<first id>_<last id>.json

Ids are entry ids ``ms-seq``.  The manifest's names alone give every visible range (one
listing); an entry is read for its checksum when its segment is.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

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


class SegmentRange(msgspec.Struct, frozen=True):
    """A visible segment as the manifest listing names it."""

    first: EntryId
    last: EntryId
    #: The manifest entry's object name.
    manifest_name: str


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


def list_visible(store: Store, namespace: str, partition: int) -> list[SegmentRange]:
    """The partition's visible segments, by first entry id."""
    ranges = []
    for obj in store.list(f"{partition_dir(namespace, partition)}/manifest"):
        if not obj.name.endswith(".json"):
            continue
        parsed = parse_stem(obj.name)
        if parsed is not None:
            ranges.append(SegmentRange(parsed[0], parsed[1], obj.name))
    ranges.sort(key=lambda r: (r.first, r.last))
    return ranges


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
) -> ManifestEntry:
    """Write the segment, then its manifest entry (meta-last); return the entry."""
    segment = segment_name(namespace, partition, first, last)
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
    )
    store.put(manifest_name(namespace, partition, first, last), _ENCODER.encode(entry))
    return entry


def orphans(store: Store, namespace: str, partition: int, ranges: list[SegmentRange]) -> list[str]:
    """Segment objects that no manifest entry names (left by a crash between the segment's
    upload and its entry)."""
    visible = {range_stem(r.first, r.last) for r in ranges}
    found = []
    for obj in store.list(f"{partition_dir(namespace, partition)}/segments"):
        parsed = parse_stem(obj.name)
        if parsed is not None and range_stem(*parsed) not in visible:
            found.append(obj.name)
    return found
