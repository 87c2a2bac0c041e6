"""What a one-trace lookup needs of each visible segment, read once per process and kept in
a bounded cache: the manifest entry, the Parquet footer (each row group's trace_id
min/max) and the row groups' bloom filters on trace_id.

Why the cache stays correct: everything in it is immutable for its key.  A manifest entry
is cached under its object name and listed size, a segment's footer and filters under its
object name and the sha256 its manifest entry records.  Compaction never changes an
object: it writes a new segment and entry (new names) and later deletes the superseded
ones, which then fall out of the listing (and, unused, out of the LRU).  A segment rewritten
under the same name after a crash holds the same rows (segments are deterministic for
their id range); if its bytes differed, its sha256 would too, and the key would miss.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracetags.archive import bloom, manifest
from tracetags.archive.manifest import ManifestEntry, SegmentRange
from tracetags.archive.store import LocalStore, S3Store
from tracetags.errors import ArchiveCorruptError

Store = LocalStore | S3Store

#: Bytes of footers and bloom filters kept per process (about 1 B per archived row:
#: 64 MiB covers ~60M archived events; beyond, the least recently used segments'
#: footers are read again, ~1 ms each).
CACHE_BYTES: Final = 64 << 20
#: Manifest entries kept per process (~300 B each).
CACHE_ENTRIES: Final = 100_000


class SegmentIndex:
    """One segment's footer, row-group trace_id ranges and bloom filters."""

    __slots__ = ("blooms", "cost", "entry", "groups", "highs", "lows", "metadata", "unknown")

    def __init__(self, entry: ManifestEntry, source: pa.NativeFile) -> None:
        self.entry = entry
        try:
            size = source.size()
            if size != entry.bytes:
                raise ArchiveCorruptError(
                    f"segment {entry.segment} has {size} bytes, its manifest entry says "
                    f"{entry.bytes}"
                )
            self.metadata = pq.ParquetFile(source).metadata
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ArchiveCorruptError(f"segment {entry.segment}: unreadable footer: {exc}") from exc
        column = self.metadata.schema.names.index("trace_id")
        #: The row groups with trace_id statistics, their minimums and maximums (rising:
        #: the rows are sorted by trace).
        self.groups: list[int] = []
        self.lows: list[str] = []
        self.highs: list[str] = []
        #: Row groups without trace_id statistics: always read.
        self.unknown: list[int] = []
        spans: list[tuple[int, int]] = []
        for i in range(self.metadata.num_row_groups):
            chunk = self.metadata.row_group(i).column(column)
            stats = chunk.statistics
            if stats is not None and stats.has_min_max:
                self.groups.append(i)
                self.lows.append(stats.min)
                self.highs.append(stats.max)
            elif stats is None or stats.null_count != self.metadata.row_group(i).num_rows:
                self.unknown.append(i)
            # (An all-null group holds only undecodable entries: no trace.)
            offset, length = chunk.bloom_filter_offset, chunk.bloom_filter_length
            spans.append((offset, length) if offset is not None and length else (-1, 0))
        self.blooms: list[bytes | None] = self._read_blooms(source, spans)
        self.cost = self.metadata.serialized_size + 64 * len(spans)
        self.cost += sum(len(b) for b in self.blooms if b is not None)

    def _read_blooms(
        self, source: pa.NativeFile, spans: list[tuple[int, int]]
    ) -> list[bytes | None]:
        """Every row group's filter, in one read (the writer puts them together, before the
        footer)."""
        present = [(o, n) for o, n in spans if o >= 0]
        if not present:
            return [None] * len(spans)
        start = min(o for o, _ in present)
        end = max(o + n for o, n in present)
        try:
            block = source.read_at(end - start, start)
        except (pa.ArrowException, OSError) as exc:
            raise ArchiveCorruptError(f"segment {self.entry.segment}: {exc}") from exc
        out: list[bytes | None] = []
        for offset, length in spans:
            if offset < 0:
                out.append(None)
            else:
                out.append(bloom.bitset(block[offset - start : offset - start + length]))
        return out

    def candidates(self, trace_id: str, hashed: int) -> list[int]:
        """The row groups that may hold ``trace_id`` (its range, then its bloom filter)."""
        # Sorted rows: the groups' ranges rise, so the matching ones are adjacent.
        ranged = self.unknown[:]
        j = bisect.bisect_left(self.highs, trace_id)
        while j < len(self.lows) and self.lows[j] <= trace_id:
            ranged.append(self.groups[j])
            j += 1
        groups = []
        for i in sorted(ranged):
            bits = self.blooms[i]
            if bits is None or bloom.might_contain(bits, hashed):
                groups.append(i)
        return groups

    def read(self, source: pa.NativeFile, groups: list[int], trace_id: str) -> pa.Table:
        """The rows of ``trace_id`` in the row groups ``groups``."""
        try:
            table = pq.ParquetFile(source, metadata=self.metadata).read_row_groups(
                groups, use_threads=False
            )
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ArchiveCorruptError(f"segment {self.entry.segment}: {exc}") from exc
        return table.filter(pc.equal(table.column("trace_id"), trace_id))


class IndexCache:
    """LRU caches of manifest entries and segment indexes, shared by the threads of one
    process."""

    def __init__(self, max_bytes: int = CACHE_BYTES, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, int], ManifestEntry] = OrderedDict()
        self._segments: OrderedDict[tuple[str, str, str], SegmentIndex] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def entry(self, store: Store, r: SegmentRange) -> ManifestEntry:
        key = (store.url, r.manifest_name, r.size)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        entry = manifest.read_entry(store, r.manifest_name)
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry

    def segment(self, store: Store, entry: ManifestEntry) -> SegmentIndex:
        key = (store.url, entry.segment, entry.sha256)
        with self._lock:
            found = self._segments.get(key)
            if found is not None:
                self._segments.move_to_end(key)
                return found
        with store.open_input(entry.segment) as source:
            index = SegmentIndex(entry, source)
        with self._lock:
            if key not in self._segments:
                self._segments[key] = index
                self._bytes += index.cost
            while self._bytes > self.max_bytes and len(self._segments) > 1:
                _, old = self._segments.popitem(last=False)
                self._bytes -= old.cost
        return index

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._segments.clear()
            self._bytes = 0

    @property
    def size(self) -> tuple[int, int]:
        """``(segments, bytes)`` cached."""
        return len(self._segments), self._bytes


#: The process's cache.
CACHE: Final = IndexCache()
