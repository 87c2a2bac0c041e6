"""Archive segments: written and read back exactly (hypothesis), their columns, the
manifest's meta-last visibility and the reader, on a local directory and on S3 (moto)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracetags import schemas
from tracetags.archive import manifest, read_partition, segments, store_from_url
from tracetags.archive.store import LocalStore
from tracetags.errors import ArchiveCorruptError
from tracetags.schemas import TagsDeleted, TagsSet, TraceDeleted, TraceFinished, TraceStarted

keys = st.sampled_from(["env", "model_version", "user_id", "a b", "x/y", "é", "k:1", "n-2"])
values = st.text(max_size=30)
maps = st.dictionaries(keys, values, max_size=4)
texts = st.text(min_size=1, max_size=20)
millis = st.integers(min_value=0, max_value=2**62)
optional = st.none() | st.text(max_size=12)


@st.composite
def events(draw: st.DrawFn) -> schemas.Event | bytes:
    common: dict[str, Any] = {
        "trace_id": draw(st.sampled_from(["tr-1", "tr-2", "trace ü"]) | texts),
        "event_id": draw(st.binary(min_size=16, max_size=16)),
        "emitted_at_ms": draw(millis),
        "source": draw(st.none() | st.sampled_from(["cli:alice", "etl@host-1", "undo:x/y"])),
    }
    kind = draw(st.sampled_from(["S", "F", "T", "D", "X", "raw"]))
    if kind == "S":
        return TraceStarted(
            experiment_id=draw(texts), timestamp_ms=draw(millis), name=draw(optional),
            client_request_id=draw(optional), metadata=draw(maps), tags=draw(maps), **common,
        )  # fmt: skip
    if kind == "F":
        return TraceFinished(
            experiment_id=draw(texts), timestamp_ms=draw(millis),
            execution_time_ms=draw(millis), status=draw(st.sampled_from(schemas.TRACE_STATES)),
            name=draw(optional), client_request_id=draw(optional), metadata=draw(maps),
            tags=draw(maps), **common,
        )  # fmt: skip
    if kind == "T":
        return TagsSet(tags=draw(maps), **common)
    if kind == "D":
        return TagsDeleted(keys=draw(st.lists(keys, max_size=4)), **common)
    if kind == "X":
        return TraceDeleted(**common)
    return draw(st.binary(max_size=40))


@st.composite
def logs(draw: st.DrawFn) -> list[segments.Row]:
    items = draw(st.lists(events(), min_size=1, max_size=40))
    ms = draw(st.integers(min_value=0, max_value=2**50))
    rows: list[segments.Row] = []
    for item in items:
        step = draw(st.sampled_from([(0, 1), (1, 0), (7, 0)]))
        ms += step[0]
        seq = 0 if step[0] else (int(rows[-1][0].split("-")[1]) + 1 if rows else 0)
        rows.append((f"{ms}-{seq}", item))
    return rows


@settings(max_examples=300, deadline=None)
@given(logs())
def test_a_segment_reads_back_exactly_the_rows_written(rows: list[segments.Row]) -> None:
    data = segments.write_segment(rows)
    back = segments.read_segment(data)
    assert back == rows
    for (_, written), (_, read) in zip(rows, back, strict=True):
        assert type(read) is type(written)
        if not isinstance(written, bytes):
            assert schemas.encode(read) == schemas.encode(written)  # type: ignore[arg-type]


def _realistic_rows() -> list[segments.Row]:
    return [
        ("1780000000000-0", TraceStarted(trace_id="tr-b", event_id=b"\x01" * 16,
            emitted_at_ms=1, experiment_id="1", timestamp_ms=5, tags={"env": "prod"})),
        ("1780000000000-1", TagsSet(trace_id="tr-a", event_id=b"\x02" * 16, emitted_at_ms=2,
            tags={"k": "v"})),
        ("1780000000001-0", b"\x93not an event"),
        ("1780000000002-0", TagsDeleted(trace_id="tr-b", event_id=b"\x03" * 16,
            emitted_at_ms=3, keys=["env"])),
    ]  # fmt: skip


def test_rows_are_sorted_by_trace_then_entry_and_columns_are_real() -> None:
    data = segments.write_segment(_realistic_rows())
    table = pq.read_table(pa.BufferReader(data))
    assert table.column("trace_id").to_pylist() == ["tr-a", "tr-b", "tr-b", None]
    assert table.column("entry_ms").to_pylist() == [
        1780000000000, 1780000000000, 1780000000002, 1780000000001
    ]  # fmt: skip
    assert table.column("type").to_pylist() == [
        "tags_set", "trace_started", "tags_deleted", None
    ]  # fmt: skip
    assert table.column("tags").to_pylist()[1] == [("env", "prod")]
    assert table.column("deleted_keys").to_pylist()[2] == ["env"]
    assert table.column("raw").to_pylist() == [None, None, None, b"\x93not an event"]
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    column = meta.row_group(0).column(table.schema.get_field_index("trace_id"))
    assert column.compression == "ZSTD"
    assert column.statistics.min == "tr-a" and column.statistics.max == "tr-b"
    # The bloom filter asked for trace_id is written (and its offset reported: pyarrow 26).
    assert column.bloom_filter_offset is not None
    other = meta.row_group(0).column(table.schema.get_field_index("event_id"))
    assert other.bloom_filter_offset is None


def test_a_segment_is_the_same_bytes_when_written_again() -> None:
    rows = _realistic_rows()
    assert segments.write_segment(rows) == segments.write_segment(list(rows))
    # Built page by page (as the archiver does), the same bytes again.
    pages = [segments.to_table(rows[:1]), segments.to_table(rows[1:3]), segments.to_table(rows[3:])]
    assert segments.write_tables(pages) == segments.write_segment(rows)


def _publish(store: LocalStore | object, namespace: str, rows: list[segments.Row]) -> None:
    data = segments.write_segment(rows)
    first = schemas.parse_entry_id(rows[0][0])
    last = schemas.parse_entry_id(rows[-1][0])
    manifest.publish(store, namespace, 0, first, last, len(rows), data, 0)  # type: ignore[arg-type]


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStore | object:
    if request.param == "file":
        return store_from_url(f"file://{tmp_path}/archive")
    return store_from_url(request.getfixturevalue("s3_url"))


def test_only_segments_with_a_manifest_entry_are_read(store: object) -> None:
    rows = _realistic_rows()
    _publish(store, "ns", rows[:2])
    # A segment uploaded without its manifest entry (a crash between the two) is invisible.
    orphan = segments.write_segment(rows[2:])
    name = manifest.segment_name("ns", 0, (1780000000001, 0), (1780000000002, 0))
    store.put(name, orphan)  # type: ignore[attr-defined]
    assert list(read_partition(store, "ns", 0)) == rows[:2]  # type: ignore[arg-type]
    visible = manifest.list_visible(store, "ns", 0)  # type: ignore[arg-type]
    assert manifest.orphans(store, "ns", 0, visible) == [name]  # type: ignore[arg-type]
    _publish(store, "ns", rows[2:])
    assert list(read_partition(store, "ns", 0)) == rows  # type: ignore[arg-type]
    assert list(read_partition(store, "ns", 0, after="1780000000000-0")) == rows[1:]  # type: ignore[arg-type]
    assert list(read_partition(store, "ns", 0, until_ms=1780000000001)) == rows[:3]  # type: ignore[arg-type]
    assert list(read_partition(store, "ns", 1)) == []  # type: ignore[arg-type]


def test_overlapping_segments_yield_each_entry_once(store: object) -> None:
    rows = _realistic_rows()
    _publish(store, "ns", rows[:3])
    _publish(store, "ns", rows[1:])
    assert list(read_partition(store, "ns", 0)) == rows  # type: ignore[arg-type]


def test_a_segment_that_differs_from_its_manifest_entry_is_refused(tmp_path: Path) -> None:
    store = store_from_url(f"file://{tmp_path}")
    rows = _realistic_rows()
    _publish(store, "ns", rows)
    (segment,) = (o.name for o in store.list("ns/p00/segments"))
    data = bytearray(store.get(segment))
    data[len(data) // 2] ^= 0xFF
    store.put(segment, bytes(data))
    with pytest.raises(ArchiveCorruptError, match="does not match its manifest entry"):
        list(read_partition(store, "ns", 0))
    assert (
        hashlib.sha256(bytes(data)).hexdigest()
        not in store.get("ns/p00/manifest/1780000000000-0_1780000000002-0.json").decode()
    )
