"""Archive segments: one Parquet file (zstd) per partition and entry-id range, with the
events as real columns, rows sorted by (trace_id, entry id); written and read back exactly.

Columns (one row per stream entry):

====================  ======================  =============================================
column                type                    holds
====================  ======================  =============================================
``entry_ms``          int64                   the entry id's milliseconds
``entry_seq``         int64                   the entry id's sequence number
``type``              string (dictionary)     ``trace_started`` ... ``trace_deleted``; null
                                              for an undecodable entry (see ``raw``)
``trace_id``          string                  null for an undecodable entry
``event_id``          fixed_size_binary(16)   the event's UUIDv7
``emitted_at_ms``     int64
``experiment_id``     string                  trace_started / trace_finished
``timestamp_ms``      int64                   trace_started / trace_finished
``execution_time_ms`` int64                   trace_finished
``status``            string                  trace_finished
``name``              string                  trace_started / trace_finished, when given
``client_request_id`` string                  trace_started / trace_finished, when given
``tags``              map<string, string>     trace_started / trace_finished / tags_set
``deleted_keys``      list<string>            tags_deleted
``metadata``          map<string, string>     trace_started / trace_finished
``raw``               binary                  only for an entry that did not decode (the
                                              payload the fold dead-lettered), so nothing
                                              of the log is lost
``source``            string (dictionary)     who wrote the event, for event types that
                                              have a ``source`` field (none yet: null)
====================  ======================  =============================================

Rows go in row groups of :data:`ROW_GROUP_ROWS`, with statistics; as the rows are sorted by
trace, each row group holds a narrow trace_id range (its min/max), and each has a bloom filter
on ``trace_id`` (pyarrow >= 24 writes them; :mod:`tracetags.archive.bloom` reads them), so
one trace's rows are found by reading one row group.
The writer's output depends only on its rows and the pyarrow version, so a segment rewritten
for the same id range after a crash is the same file.
"""

from __future__ import annotations

import contextlib
import gc
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracetags import schemas
from tracetags.errors import ArchiveCorruptError
from tracetags.schemas import (
    EntryPosition,
    Event,
    TagsDeleted,
    TagsSet,
    TraceDeleted,
    TraceFinished,
    TraceStarted,
)

#: Version of the segment layout, kept in the file's key-value metadata.
SEGMENT_FORMAT: Final = "1"
_FORMAT_KEY: Final = b"tracetags.segment_format"
_SCHEMA_VERSION_KEY: Final = b"tracetags.schema_version"

_STRING_MAP: Final = pa.map_(pa.string(), pa.string())
SCHEMA: Final = pa.schema(
    [
        pa.field("entry_ms", pa.int64(), nullable=False),
        pa.field("entry_seq", pa.int64(), nullable=False),
        pa.field("type", pa.string()),
        pa.field("trace_id", pa.string()),
        pa.field("event_id", pa.binary(16)),
        pa.field("emitted_at_ms", pa.int64()),
        pa.field("experiment_id", pa.string()),
        pa.field("timestamp_ms", pa.int64()),
        pa.field("execution_time_ms", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("name", pa.string()),
        pa.field("client_request_id", pa.string()),
        pa.field("tags", _STRING_MAP),
        pa.field("deleted_keys", pa.list_(pa.string())),
        pa.field("metadata", _STRING_MAP),
        pa.field("raw", pa.binary()),
        pa.field("source", pa.string()),
    ]
)

_TYPES: Final[dict[type[Any], str]] = {
    TraceStarted: "trace_started",
    TraceFinished: "trace_finished",
    TagsSet: "tags_set",
    TagsDeleted: "tags_deleted",
    TraceDeleted: "trace_deleted",
}

# Integer columns that rise within a trace's rows compress best as deltas; the others keep
# pyarrow's dictionary encoding (few distinct values: types, statuses, experiments, tag
# keys and most tag values).
_DELTA_COLUMNS: Final = ("entry_ms", "entry_seq", "emitted_at_ms", "timestamp_ms")
_PLAIN_COLUMNS: Final = ("event_id", "execution_time_ms", "raw")
_DICTIONARY_COLUMNS: Final = tuple(
    name for name in SCHEMA.names if name not in _DELTA_COLUMNS and name not in _PLAIN_COLUMNS
)

#: Rows per row group: a trace's lookup reads (decompresses and decodes) one group, ~3 ms
#: at 4,096 rows (14 ms at 16k, 75 ms as one group of 100k); the file is 0.7 % larger
#: than with one group (per-group dictionaries, filters and footer entries).
ROW_GROUP_ROWS: Final = 4_096
#: Rows sorted, taken and written (or read back and decoded) at a time: a multiple of
#: ROW_GROUP_ROWS, so the row groups are the same as one write's.
WRITE_CHUNK_ROWS: Final = 16 * ROW_GROUP_ROWS
#: The bloom filters' target false-positive rate, per row group.
BLOOM_FPP: Final = 0.01

_EVENTS_HAVE_SOURCE: Final = "source" in TagsSet.__struct_fields__

#: Entry ids as ``(ms, seq)`` and their text ``ms-seq``.
EntryId = EntryPosition
Row = tuple[str, Event | bytes]


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic collector while a segment's rows are made or read: 100k+ fresh
    dicts and Structs (no cycles among them) make its full collections run again and again,
    at several times the cost of the work itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _map_array(maps: Sequence[dict[str, str] | None]) -> pa.Array:
    offsets = [0]
    keys: list[str] = []
    values: list[str] = []
    mask = []
    for item in maps:
        if item is None:
            mask.append(True)
        else:
            mask.append(False)
            keys.extend(item)
            values.extend(item.values())
        offsets.append(len(keys))
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array(keys, pa.string()),
        pa.array(values, pa.string()),
        type=_STRING_MAP,
        mask=pa.array(mask, pa.bool_()),
    )


def to_table(rows: Iterable[Row]) -> pa.Table:
    """The rows (entry id text, event or raw payload) as a table of :data:`SCHEMA`, in the
    order given."""
    entry_ms: list[int] = []
    entry_seq: list[int] = []
    kinds: list[str | None] = []
    trace_ids: list[str | None] = []
    event_ids: list[bytes | None] = []
    emitted: list[int | None] = []
    experiments: list[str | None] = []
    timestamps: list[int | None] = []
    durations: list[int | None] = []
    statuses: list[str | None] = []
    names: list[str | None] = []
    request_ids: list[str | None] = []
    tags: list[dict[str, str] | None] = []
    deleted: list[list[str] | None] = []
    metadata: list[dict[str, str] | None] = []
    raws: list[bytes | None] = []
    sources: list[str | None] = []
    for entry_id, item in rows:
        ms, _, seq = entry_id.partition("-")
        entry_ms.append(int(ms))
        entry_seq.append(int(seq or 0))
        cls = type(item)
        if cls is bytes:
            kinds.append(None)
            trace_ids.append(None)
            event_ids.append(None)
            emitted.append(None)
            experiments.append(None)
            timestamps.append(None)
            durations.append(None)
            statuses.append(None)
            names.append(None)
            request_ids.append(None)
            tags.append(None)
            deleted.append(None)
            metadata.append(None)
            raws.append(item)  # type: ignore[arg-type]
            sources.append(None)
            continue
        event: Any = item
        kinds.append(_TYPES[cls])
        trace_ids.append(event.trace_id)
        event_ids.append(event.event_id)
        emitted.append(event.emitted_at_ms)
        raws.append(None)
        sources.append(getattr(event, "source", None))
        if cls is TraceStarted or cls is TraceFinished:
            experiments.append(event.experiment_id)
            timestamps.append(event.timestamp_ms)
            names.append(event.name)
            request_ids.append(event.client_request_id)
            tags.append(event.tags)
            metadata.append(event.metadata)
            deleted.append(None)
            if cls is TraceFinished:
                durations.append(event.execution_time_ms)
                statuses.append(event.status)
            else:
                durations.append(None)
                statuses.append(None)
            continue
        experiments.append(None)
        timestamps.append(None)
        durations.append(None)
        statuses.append(None)
        names.append(None)
        request_ids.append(None)
        metadata.append(None)
        if cls is TagsSet:
            tags.append(event.tags)
            deleted.append(None)
        elif cls is TagsDeleted:
            tags.append(None)
            deleted.append(event.keys)
        else:
            tags.append(None)
            deleted.append(None)
    table = pa.Table.from_arrays(
        [
            pa.array(entry_ms, pa.int64()),
            pa.array(entry_seq, pa.int64()),
            pa.array(kinds, pa.string()),
            pa.array(trace_ids, pa.string()),
            pa.array(event_ids, pa.binary(16)),
            pa.array(emitted, pa.int64()),
            pa.array(experiments, pa.string()),
            pa.array(timestamps, pa.int64()),
            pa.array(durations, pa.int64()),
            pa.array(statuses, pa.string()),
            pa.array(names, pa.string()),
            pa.array(request_ids, pa.string()),
            _map_array(tags),
            pa.array(deleted, pa.list_(pa.string())),
            _map_array(metadata),
            pa.array(raws, pa.binary()),
            pa.array(sources, pa.string()),
        ],
        schema=SCHEMA,
    )
    return table


def write_segment(rows: Iterable[Row]) -> bytes:
    """The Parquet bytes of a segment holding ``rows``."""
    return write_tables([to_table(rows)])


def write_tables(tables: Sequence[pa.Table]) -> bytes:
    """The Parquet bytes of a segment holding the rows of ``tables`` (from :func:`to_table`;
    a segment built page by page keeps its rows in Arrow, ~100 B each, not as Python
    objects), sorted by (trace_id, entry id), undecodable entries last.

    The sorted rows are taken and written :data:`WRITE_CHUNK_ROWS` at a time, so a large
    segment (compaction) needs its input rows in memory once, not twice."""
    table = pa.concat_tables(tables) if len(tables) != 1 else tables[0]
    order = pc.sort_indices(
        table,
        sort_keys=[
            ("trace_id", "ascending", "at_end"),
            ("entry_ms", "ascending"),
            ("entry_seq", "ascending"),
        ],
    )
    schema = SCHEMA.with_metadata(
        {_FORMAT_KEY: SEGMENT_FORMAT.encode(), _SCHEMA_VERSION_KEY: str(schemas.SCHEMA_VERSION)}
    )
    # Sized for the trace ids a row group holds (a trace has a few rows), not its rows.
    distinct = pc.count_distinct(table.column("trace_id")).as_py()
    groups = max(1, -(-table.num_rows // ROW_GROUP_ROWS))
    ndv = max(1, -(-distinct // groups))
    sink = io.BytesIO()
    encoding = dict.fromkeys(_DELTA_COLUMNS, "DELTA_BINARY_PACKED")
    encoding.update(dict.fromkeys(_PLAIN_COLUMNS, "PLAIN"))
    with pq.ParquetWriter(
        sink,
        schema,
        compression="zstd",
        compression_level=3,
        use_dictionary=list(_DICTIONARY_COLUMNS),
        column_encoding=encoding,
        write_statistics=True,
        sorting_columns=[
            pq.SortingColumn(SCHEMA.get_field_index("trace_id"), nulls_first=False),
            pq.SortingColumn(SCHEMA.get_field_index("entry_ms")),
            pq.SortingColumn(SCHEMA.get_field_index("entry_seq")),
        ],
        bloom_filter_options={"trace_id": {"ndv": ndv, "fpp": BLOOM_FPP}},
        store_schema=False,
    ) as writer:
        for start in range(0, max(table.num_rows, 1), WRITE_CHUNK_ROWS):
            chunk = table.take(order.slice(start, WRITE_CHUNK_ROWS)).combine_chunks()
            writer.write_table(chunk, row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


def iter_segment(data: bytes) -> Iterator[list[Row]]:
    """A segment's rows in entry-id order, :data:`WRITE_CHUNK_ROWS` at a time (a segment
    of a million rows is ~1 GB as Python objects)."""
    table = read_table(data)
    order = pc.sort_indices(
        table, sort_keys=[("entry_ms", "ascending"), ("entry_seq", "ascending")]
    )
    for start in range(0, table.num_rows, WRITE_CHUNK_ROWS):
        chunk = table.take(order.slice(start, WRITE_CHUNK_ROWS))
        with no_cyclic_gc():
            yield rows_of(chunk)


def read_table(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """A segment's rows as an Arrow table (in file order: by trace, then entry id)."""
    try:
        return pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise ArchiveCorruptError(f"not a readable segment: {exc}") from exc


def _maps(column: pa.ChunkedArray) -> list[dict[str, str]]:
    """A map column as dicts ({} for null), built from its flat keys and values (pyarrow's
    ``to_pylist`` of a map makes a tuple per pair, ~3x slower)."""
    out: list[dict[str, str]] = []
    for chunk in column.chunks:
        offsets = chunk.offsets.to_pylist()
        keys = chunk.keys.to_pylist()
        values = chunk.items.to_pylist()
        start = offsets[0]
        for end in offsets[1:]:
            out.append(dict(zip(keys[start:end], values[start:end], strict=True)))
            start = end
    return out


def rows_of(table: pa.Table) -> list[Row]:
    """The rows of a segment table as ``(entry id text, event or raw payload)``, in table
    order."""
    column: dict[str, list[Any]] = {
        name: _maps(table.column(name))
        if name in ("tags", "metadata")
        else (table.column(name).to_pylist())
        for name in table.column_names
    }
    # Segments written before a column existed lack it; events that have no ``source``
    # field yet never get one.
    sources = column.get("source") if _EVENTS_HAVE_SOURCE else None
    out: list[Row] = []
    append = out.append
    for i, (ms, seq, kind) in enumerate(
        zip(column["entry_ms"], column["entry_seq"], column["type"], strict=True)
    ):
        entry_id = f"{ms}-{seq}"
        if kind is None:
            append((entry_id, column["raw"][i]))
            continue
        common: dict[str, Any] = {
            "trace_id": column["trace_id"][i],
            "event_id": column["event_id"][i],
            "emitted_at_ms": column["emitted_at_ms"][i],
        }
        if sources is not None and sources[i] is not None:
            common["source"] = sources[i]
        event: Event
        if kind == "tags_set":
            event = TagsSet(tags=column["tags"][i], **common)
        elif kind in ("trace_started", "trace_finished"):
            # The attributes both trace events carry; a finish adds duration and status.
            common.update(
                experiment_id=column["experiment_id"][i],
                timestamp_ms=column["timestamp_ms"][i],
                name=column["name"][i],
                client_request_id=column["client_request_id"][i],
                metadata=column["metadata"][i],
                tags=column["tags"][i],
            )
            if kind == "trace_started":
                event = TraceStarted(**common)
            else:
                event = TraceFinished(
                    execution_time_ms=column["execution_time_ms"][i],
                    status=column["status"][i],
                    **common,
                )
        elif kind == "tags_deleted":
            event = TagsDeleted(keys=list(column["deleted_keys"][i] or ()), **common)
        elif kind == "trace_deleted":
            event = TraceDeleted(**common)
        else:
            raise ArchiveCorruptError(f"entry {entry_id}: unknown event type {kind!r}")
        append((entry_id, event))
    return out


def read_segment(data: bytes) -> list[Row]:
    """A segment's rows in entry-id order."""
    return [row for rows in iter_segment(data) for row in rows]
