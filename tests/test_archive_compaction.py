"""One trace's archived entries without a scan (read_trace: manifest trace ranges, row-group
min/max, Parquet bloom filters read by our own code) and compaction (the one-step manifest
swap, grace, crashes at each step), on a local directory and on S3 (moto)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.support.helpers import drop_namespace, wait_until
from tracetags import consumer, functions, schemas
from tracetags.archive import archive_once, bloom, manifest, read_partition, store_from_url
from tracetags.archive import replay as replaying
from tracetags.archive.archiver import PAUSE_ENV
from tracetags.archive.compaction import compact, compact_partition, plan, retire_superseded
from tracetags.archive.index import CACHE, IndexCache
from tracetags.archive.reader import read_trace
from tracetags.archive.segments import Row, write_segment
from tracetags.archive.store import LocalStore, S3Store
from tracetags.client import Client
from tracetags.keys import Keys, partition_of
from tracetags.schemas import TagsDeleted, TagsSet, TraceStarted, entry_text, parse_entry_id
from tracetags.settings import Settings

NS = "arch"
GROUP = "tracetags-fold"


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStore | S3Store:
    url = (
        f"file://{tmp_path}/archive"
        if request.param == "file"
        else request.getfixturevalue("s3_url")
    )
    return store_from_url(url)


def make_log(seed: int, events: int, traces: int, garbage: float = 0.01) -> list[Row]:
    """A log of ``events`` entries on ``traces`` traces, ids rising (a few per ms)."""
    rng = random.Random(seed)
    ids = [f"tr-{rng.getrandbits(48):012x}" for _ in range(traces)]
    ms = 1_780_000_000_000
    out: list[Row] = []
    for n in range(events):
        ms += rng.choice([0, 0, 1, 7])
        entry_id = f"{ms}-{n}"
        if rng.random() < garbage:
            out.append((entry_id, b"\xc1 not msgpack"))
            continue
        common: dict[str, Any] = {"trace_id": rng.choice(ids), "event_id": os.urandom(16),
                                  "emitted_at_ms": ms}  # fmt: skip
        kind = rng.random()
        if kind < 0.2:
            event: schemas.Event = TraceStarted(
                experiment_id="1", timestamp_ms=ms, tags={"env": "prod"}, **common
            )
        elif kind < 0.85:
            event = TagsSet(tags={rng.choice("abc"): str(n)}, **common)
        else:
            event = TagsDeleted(keys=[rng.choice("abc")], **common)
        out.append((entry_id, event))
    return out


def publish_segments(store: Any, log: list[Row], sizes: list[int], partition: int = 0) -> None:
    """``log`` as consecutive segments of the given sizes (cycled), as the archiver writes
    them."""
    start = 0
    i = 0
    while start < len(log):
        chunk = log[start : start + sizes[i % len(sizes)]]
        first, last = parse_entry_id(chunk[0][0]), parse_entry_id(chunk[-1][0])
        manifest.publish(store, NS, partition, first, last, len(chunk), write_segment(chunk), 1)
        start += len(chunk)
        i += 1


def trace_histories(log: list[Row]) -> Callable[[str], list[Row]]:
    """``history(trace_id)``: the log's entries of the trace, in log order (the log is read
    once, not once per trace)."""
    grouped: dict[str, list[Row]] = defaultdict(list)
    for entry_id, event in log:
        if not isinstance(event, bytes):
            grouped[event.trace_id].append((entry_id, event))
    return lambda trace_id: grouped.get(trace_id, [])


def trace_ids(log: list[Row]) -> list[str]:
    return sorted({e.trace_id for _, e in log if not isinstance(e, bytes)})


# --- the bloom filters ------------------------------------------------------------------


def test_xxh64_matches_the_reference_vectors() -> None:
    assert bloom.xxh64(b"") == 0xEF46DB3751D8E999
    assert bloom.xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert bloom.xxh64(b"abc") == 0x44BC2CF5AD770999
    assert bloom.xxh64(b"Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1


def test_the_writers_bloom_filters_hold_every_trace_and_few_others() -> None:
    log = make_log(seed=3, events=30_000, traces=9_000, garbage=0)
    data = write_segment(log)
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    column = metadata.schema.names.index("trace_id")
    assert metadata.num_row_groups > 5
    rng = random.Random(4)
    false_positives = probes = 0
    table = pq.read_table(pa.BufferReader(data), columns=["trace_id"])
    start = 0
    for g in range(metadata.num_row_groups):
        chunk = metadata.row_group(g).column(column)
        bits = bloom.bitset(data[chunk.bloom_filter_offset :][: chunk.bloom_filter_length])
        assert bits is not None
        rows = metadata.row_group(g).num_rows
        held = set(table.column(0).slice(start, rows).to_pylist())
        start += rows
        for trace_id in held:  # no false negative, ever
            assert bloom.might_contain(bits, bloom.xxh64(trace_id.encode()))
        for _ in range(500):
            absent = f"tr-{rng.getrandbits(64):016x}"
            probes += 1
            false_positives += bloom.might_contain(bits, bloom.xxh64(absent.encode()))
    # The writer's target is 1 %; the filters are sized for the group's distinct ids.
    assert false_positives / probes < 0.03


# --- read_trace -------------------------------------------------------------------------


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10**6),
    events=st.integers(1, 3_000),
    sizes=st.lists(st.integers(1, 900), min_size=1, max_size=4),
    cut=st.floats(0, 1),
)
def test_read_trace_equals_the_full_scan_filtered(
    tmp_path_factory: pytest.TempPathFactory, seed: int, events: int, sizes: list[int], cut: float
) -> None:
    store = LocalStore(tmp_path_factory.mktemp("a"))
    log = make_log(seed, events, traces=max(1, events // 4))
    publish_segments(store, log, sizes)
    until_ms = parse_entry_id(log[int(cut * (len(log) - 1))][0])[0]
    history = trace_histories(log)
    for trace_id in [*trace_ids(log)[:40], "tr-absent", "", "zzz"]:
        assert list(read_trace(store, NS, 0, trace_id)) == history(trace_id)
        expected = [(i, e) for i, e in history(trace_id) if parse_entry_id(i)[0] <= until_ms]
        assert list(read_trace(store, NS, 0, trace_id, until_ms=until_ms)) == expected


def test_read_trace_reads_only_the_row_groups_that_may_hold_the_trace(
    store: LocalStore | S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make_log(seed=5, events=40_000, traces=12_000)
    publish_segments(store, log, [10_000])
    read: list[list[int]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(self: pq.ParquetFile, groups: list[int], *args: Any, **kwargs: Any) -> pa.Table:
        read.append(list(groups))
        return original(self, groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    ids = trace_ids(log)
    history = trace_histories(log)
    for trace_id in ids[:30]:
        found = list(read_trace(store, NS, 0, trace_id))
        assert found == history(trace_id)
    # Each trace: at most one group per segment it is in (plus rare false positives), of
    # 3 groups per segment.
    assert sum(len(g) for g in read) <= 30 * 4 * 1.2
    read.clear()
    rng = random.Random(1)
    for _ in range(200):
        assert list(read_trace(store, NS, 0, f"tr-{rng.getrandbits(48):012x}x")) == []
    assert sum(len(g) for g in read) <= 200 * 4 * 0.05  # bloom filters: ~1 % per group


def test_read_trace_of_segments_from_before_the_trace_bounds_and_row_groups(
    tmp_path: Path,
) -> None:
    """A manifest entry without trace_min/trace_max and a segment written as one row group
    (the layout of the first archive version) are read the same."""
    store = LocalStore(tmp_path)
    log = make_log(seed=6, events=2_000, traces=300)
    publish_segments(store, log, [700])
    first = manifest.list_visible(store, NS, 0)[0]
    entry = manifest.read_entry(store, first.manifest_name)
    old = msgspec.json.decode(msgspec.json.encode(entry))
    del old["trace_min"], old["trace_max"], old["compacted_from"]
    store.put(first.manifest_name, msgspec.json.encode(old))
    assert manifest.read_entry(store, first.manifest_name).trace_min is None
    # Rewrite the second segment as one row group, as the first layout did.
    second = manifest.list_visible(store, NS, 0)[1]
    entry = manifest.read_entry(store, second.manifest_name)
    table = pq.read_table(pa.BufferReader(store.get(entry.segment)))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=1 << 20, store_schema=False)
    data = sink.getvalue().to_pybytes()
    manifest.publish(store, NS, 0, second.first, second.last, entry.rows, data, 1)
    CACHE.clear()
    history = trace_histories(log)
    for trace_id in trace_ids(log):
        assert list(read_trace(store, NS, 0, trace_id)) == history(trace_id)


def test_the_cache_is_bounded_and_keyed_by_content(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    log = make_log(seed=7, events=6_000, traces=900)
    publish_segments(store, log, [1_000])
    cache = IndexCache(max_bytes=1)  # room for one segment
    visible = manifest.list_visible(store, NS, 0)
    for r in visible:
        cache.segment(store, cache.entry(store, r))
    assert cache.size[0] == 1
    # A segment rewritten with other bytes under the same name is another key.
    r = visible[0]
    entry = cache.entry(store, r)
    index = cache.segment(store, entry)
    other = log[:500]
    manifest.publish(store, NS, 0, r.first, r.last, 500, write_segment(other), 1)
    relisted = manifest.list_visible(store, NS, 0)[0]
    fresh = cache.entry(store, relisted)
    assert fresh.sha256 != entry.sha256 and cache.segment(store, fresh) is not index


def test_ids_held_twice_are_returned_once(tmp_path: Path) -> None:
    """Overlapping segments (two archivers after a lost lock) hold some ids twice."""
    store = LocalStore(tmp_path)
    log = make_log(seed=8, events=1_500, traces=100)
    for lo, hi in ((0, 900), (600, 1_500)):
        chunk = log[lo:hi]
        first, last = parse_entry_id(chunk[0][0]), parse_entry_id(chunk[-1][0])
        manifest.publish(store, NS, 0, first, last, len(chunk), write_segment(chunk), 1)
    assert list(read_partition(store, NS, 0)) == log
    history = trace_histories(log)
    for trace_id in trace_ids(log):
        assert list(read_trace(store, NS, 0, trace_id)) == history(trace_id)
    report = compact_partition(store, NS, 0, target_rows=10_000, grace_ms=0, full=True)
    assert report.written == 1 and report.rows == len(log)
    assert list(read_partition(store, NS, 0)) == log
    for trace_id in trace_ids(log):
        assert list(read_trace(store, NS, 0, trace_id)) == history(trace_id)


# --- the manifest's supersession --------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20)), max_size=30))
def test_no_visible_range_holds_another_and_every_hidden_one_is_held(
    spans: list[tuple[int, int]],
) -> None:
    ranges = {
        (a, a + n): manifest.SegmentRange((a, 0), (a + n, 0), f"x/manifest/{a}-0_{a + n}-0.json")
        for a, n in spans
    }
    ordered = sorted(ranges.values(), key=lambda r: (r.first, (-r.last[0], -r.last[1])))
    visible, hidden = manifest.split_superseded(ordered)
    for a in visible:
        assert not any(b is not a and b.first <= a.first and a.last <= b.last for b in visible)
    for r, holder in hidden:
        assert holder in visible and holder.first <= r.first and r.last <= holder.last
    assert len(visible) + len(hidden) == len(ranges)


# --- compaction -------------------------------------------------------------------------


def _entries(store: Any) -> list[tuple[manifest.SegmentRange, manifest.ManifestEntry]]:
    return [(r, manifest.read_entry(store, r.manifest_name))
            for r in manifest.list_visible(store, NS, 0)]  # fmt: skip


def test_the_plan_merges_runs_of_small_segments_and_spares_a_growing_one(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    log = make_log(seed=9, events=2_000, traces=200, garbage=0)
    # One of 400 rows, 10 of 10, one of 600 (not small: >= target / 2, but below it), 3 of 10.
    publish_segments(store, log[:400], [400])
    publish_segments(store, log[400:500], [10])
    publish_segments(store, log[500:1_100], [600])
    publish_segments(store, log[1_100:1_130], [10])
    visible = _entries(store)
    # The 400 would hold more than half of a group with the ten small ones: they merge
    # alone; the last three are too few.
    assert [[e.rows for _, e in g] for g in plan(visible, target_rows=1_000)] == [[10] * 10]
    full = plan(visible, target_rows=1_000, full=True)
    assert [[e.rows for _, e in g] for g in full] == [[400] + [10] * 10, [600] + [10] * 3]
    assert [r.first for r, _ in full[0]] == [r.first for r, _ in visible[:11]]
    assert plan(visible, target_rows=0) == []
    # Segments of varying sizes still merge.
    sizes = [97, 150, 40, 301] * 5
    items = [(visible[0][0], msgspec.structs.replace(visible[0][1], rows=n)) for n in sizes]
    assert [len(g) for g in plan(items, target_rows=2_000)] == [13, 7]


@pytest.mark.parametrize("full", [False, True])
def test_compaction_keeps_every_entry_and_every_trace_history(
    store: LocalStore | S3Store, full: bool
) -> None:
    log = make_log(seed=10, events=6_000, traces=700)
    publish_segments(store, log, [97, 150, 40, 301])
    before = list(read_partition(store, NS, 0))
    assert before == log
    ids = trace_ids(log)
    report = compact_partition(store, NS, 0, target_rows=2_000, grace_ms=60_000, full=full)
    assert report.written >= 1 and report.merged > report.written
    assert list(read_partition(store, NS, 0)) == log
    # Every trace on a local store; on moto (slow) a sample.
    history = trace_histories(log)
    for trace_id in ids if isinstance(store, LocalStore) else ids[::10]:
        assert list(read_trace(store, NS, 0, trace_id)) == history(trace_id)
    # Within the grace period the replaced segments stay, superseded (not visible).
    entries = manifest.list_entries(store, NS, 0)
    visible, hidden = manifest.split_superseded(entries)
    assert len(hidden) == report.merged and len(visible) == report.segments
    assert retire_superseded(store, entries, schemas.now_ms(), 60_000) == 0
    assert retire_superseded(store, entries, schemas.now_ms() + 60_000, 60_000) == report.merged
    assert len(manifest.list_entries(store, NS, 0)) == report.segments
    segs = store.list(f"{manifest.partition_dir(NS, 0)}/segments")
    assert len(segs) == report.segments
    assert list(read_partition(store, NS, 0)) == log
    for trace_id in ids[::7]:
        assert list(read_trace(store, NS, 0, trace_id)) == history(trace_id)


def test_a_reader_mid_read_survives_the_removal_of_what_it_listed(tmp_path: Path) -> None:
    """Grace 0: the segments a reader listed are removed while it reads; it lists again and
    continues in the segment that replaced them, nothing lost or read twice."""
    store = LocalStore(tmp_path)
    log = make_log(seed=11, events=3_000, traces=300)
    publish_segments(store, log, [300])
    reading = read_partition(store, NS, 0)
    got = [next(reading) for _ in range(450)]  # inside the second segment
    compact_partition(store, NS, 0, target_rows=100_000, grace_ms=0, full=True)
    assert len(manifest.list_entries(store, NS, 0)) == 1
    got.extend(reading)
    assert got == log


class FailingStore(LocalStore):
    """Fails the n-th delete (a crash in the middle of removing superseded segments)."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.deletes = 0
        self.fail_at = fail_at

    def delete(self, name: str) -> None:
        self.deletes += 1
        if self.deletes == self.fail_at:
            raise OSError("injected")
        super().delete(name)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failure_while_removing_superseded_segments_loses_nothing(
    tmp_path: Path, fail_at: int
) -> None:
    store = FailingStore(tmp_path, fail_at)
    log = make_log(seed=12, events=2_000, traces=200)
    publish_segments(store, log, [250])
    with pytest.raises(OSError, match="injected"):
        compact_partition(store, NS, 0, target_rows=100_000, grace_ms=0, full=True)
    assert list(read_partition(store, NS, 0)) == log
    history = trace_histories(log)
    for trace_id in trace_ids(log)[::5]:
        assert list(read_trace(store, NS, 0, trace_id)) == history(trace_id)
    report = compact_partition(store, NS, 0, target_rows=100_000, grace_ms=0, full=True)
    assert report.written == 0
    assert len(manifest.list_entries(store, NS, 0)) == 1
    assert len(store.list(f"{manifest.partition_dir(NS, 0)}/segments")) == 1
    assert list(read_partition(store, NS, 0)) == log


# --- crashes of a real compaction process -----------------------------------------------


def _compact_subprocess(
    settings: Settings, pause_at: str | None, *args: str
) -> subprocess.Popen[str]:
    env = {**os.environ, "TRACETAGS_REDIS_URL": settings.effective_redis_url,
           "TRACETAGS_NAMESPACE": settings.namespace,
           "TRACETAGS_ARCHIVE_URL": settings.archive_url or "",
           "TRACETAGS_ARCHIVE_COMPACT_ROWS": str(settings.archive_compact_rows),
           "TRACETAGS_ARCHIVE_COMPACT_GRACE": settings.archive_compact_grace}  # fmt: skip
    if pause_at:
        env[PAUSE_ENV] = pause_at
    command = [sys.executable, "-m", "tracetags.cli", "archive", "compact", *args]
    return subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
def archived(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path, r: redis.Redis
) -> Iterator[tuple[Settings, list[Row]]]:
    """A namespace with one partition whose archive is 12 segments of a random log."""
    url = (
        f"file://{tmp_path}/archive"
        if request.param == "file"
        else request.getfixturevalue("s3_url")
    )
    settings = settings.replace(
        archive_url=url, archive_compact_rows=3_000, archive_compact_grace="0"
    )
    r.hset(Keys(settings.namespace).meta, mapping={"partitions": 1, "created_ms": 1})
    store = store_from_url(url)
    log = make_log(seed=13, events=2_400, traces=250)
    start = 0
    for _ in range(12):
        chunk = log[start : start + 200]
        first, last = parse_entry_id(chunk[0][0]), parse_entry_id(chunk[-1][0])
        manifest.publish(store, settings.namespace, 0, first, last, 200, write_segment(chunk), 1)
        start += 200
    yield settings, log


@pytest.mark.parametrize("archived", ["file", "s3"], indirect=True)
@pytest.mark.parametrize(
    "step", ["compact_before_upload", "compact_before_manifest", "compact_before_retire"]
)
def test_a_compaction_killed_at_any_step_loses_and_duplicates_nothing(
    archived: tuple[Settings, list[Row]], r: redis.Redis, step: str
) -> None:
    settings, log = archived
    store = store_from_url(settings.archive_url or "")
    ns = settings.namespace
    proc = _compact_subprocess(settings, step)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if f"archiver paused at {step}" in line:
            break
        assert time.monotonic() < deadline
    else:
        raise AssertionError(f"compaction exited before {step}: {proc.wait()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # Whatever step it died at, readers see every entry once.
    assert list(read_partition(store, ns, 0)) == log
    ids = trace_ids(log)
    history = trace_histories(log)
    for trace_id in ids[::3]:
        assert list(read_trace(store, ns, 0, trace_id)) == history(trace_id)
    visible = manifest.list_visible(store, ns, 0)
    entries = manifest.list_entries(store, ns, 0)
    orphans = manifest.orphans(store, ns, 0, entries)
    if step == "compact_before_retire":
        assert len(visible) == 1 and len(entries) == 12 + 1 and not orphans
    else:
        assert len(visible) == len(entries) == 12
        assert len(orphans) == (step == "compact_before_manifest")

    # The killed run's lock expires; the next run finishes the work.
    r.delete(Keys(ns).archive_lock(0))
    proc = _compact_subprocess(settings, None)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert list(read_partition(store, ns, 0)) == log
    for trace_id in ids if isinstance(store, LocalStore) else ids[::4]:
        assert list(read_trace(store, ns, 0, trace_id)) == history(trace_id)
    entries = manifest.list_entries(store, ns, 0)
    assert manifest.split_superseded(entries)[1] == []
    assert manifest.orphans(store, ns, 0, entries) == []
    segments = store.list(f"{manifest.partition_dir(ns, 0)}/segments")
    assert len(segments) == len(entries) < 12


@pytest.mark.parametrize("archived", ["file"], indirect=True)
def test_compaction_waits_for_the_partition_lock(
    archived: tuple[Settings, list[Row]], r: redis.Redis
) -> None:
    settings, _ = archived
    r.set(Keys(settings.namespace).archive_lock(0), "someone", px=5_000)
    (report,) = compact(settings)
    assert report.locked_out and report.written == 0
    proc = _compact_subprocess(settings, None)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "an archiver is running; skipped" in out


@pytest.mark.parametrize("archived", ["file"], indirect=True)
def test_the_cli_compacts_and_shows_what_it_did(
    archived: tuple[Settings, list[Row]], r: redis.Redis
) -> None:
    settings, _ = archived
    proc = _compact_subprocess(settings, None, "--full")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "partition 0: 12 segments compacted into 1 (2400 rows), 12 superseded removed, " \
        "1 visible" in out, out  # fmt: skip
    with Client(settings) as client:
        archive = client.status().partitions[0].archive
    assert archive is not None and archive.segments == 1


# --- history, replay and digest across compaction (real archiver, real Redis) ------------


def _produce_and_fold(r: redis.Redis, namespace: str, seed: int, events: int) -> None:
    rng = random.Random(seed)
    keys = Keys(namespace)
    r.hset(keys.meta, mapping={"partitions": 2, "created_ms": 1})
    for p in range(2):
        r.xgroup_create(keys.stream(p), GROUP, id="0", mkstream=True)
    log = make_log(seed, events, traces=400)
    pipe = r.pipeline(transaction=False)
    for entry_id, event in log:
        trace = event.trace_id if not isinstance(event, bytes) else f"g{rng.random()}"
        payload = event if isinstance(event, bytes) else schemas.encode(event)
        pipe.xadd(keys.stream(partition_of(trace, 2)), {schemas.ENTRY_FIELD: payload},
                  id=entry_id)  # fmt: skip
    pipe.execute()
    for p in range(2):
        while True:
            reply: Any = r.xreadgroup(GROUP, "c1", {keys.stream(p): ">"}, count=300)
            if not reply or not reply[0][1]:
                break
            items = consumer.decode_entries(reply[0][1])
            functions.apply_batch(r, keys, p, GROUP, items)


def test_history_replay_and_digest_are_unchanged_by_compaction(
    settings: Settings, r: redis.Redis, tmp_path: Path
) -> None:
    settings = settings.replace(
        archive_url=f"file://{tmp_path}/archive", log_retention="0", archive_max_rows=150,
        archive_compact_rows=1_000, archive_compact_grace="1h",
    )  # fmt: skip
    ns = settings.namespace
    _produce_and_fold(r, ns, seed=14, events=4_000)
    reports = archive_once(settings)
    assert all(rep.segments_written > 8 for rep in reports)
    store = store_from_url(settings.archive_url or "")

    def snapshot() -> tuple[Any, ...]:
        parts = [list(read_partition(store, ns, p)) for p in range(2)]
        histories = {
            (p, t): list(read_trace(store, ns, p, t))
            for p in range(2)
            for t in {e.trace_id for _, e in parts[p] if not isinstance(e, bytes)}
        }
        into = f"{ns}-replayed"
        try:
            replaying.replay(settings, settings.replace(namespace=into))
            with Client(settings.replace(namespace=into)) as client:
                digest = client.digest()
        finally:
            drop_namespace(r, into)
        return parts, histories, digest

    before = snapshot()
    with Client(settings) as client:
        live = client.digest()
    assert (before[2].digest, before[2].partitions) == (live.digest, live.partitions)
    counts = [sum(len(manifest.list_visible(store, ns, p)) for p in range(2))]
    for full in (False, True):
        # 14 segments of 150 rows per partition: groups of 6 (900 rows, under the target
        # of 1000), then --full merges the last two into one.
        assert all(rep.written for rep in compact(settings, full=full))
        after = snapshot()
        assert after[:2] == before[:2]
        assert (after[2].digest, after[2].partitions) == (live.digest, live.partitions)
        counts.append(sum(len(manifest.list_visible(store, ns, p)) for p in range(2)))
    assert counts[0] > counts[1] > counts[2]
    # Later archive runs append after the compacted segment as before.
    assert archive_once(settings)[0].archived == 0
    assert [entry_text(manifest.archived_up_to(manifest.list_visible(store, ns, p)) or (0, 0))
            for p in range(2)] == [rep.archived_up_to for rep in reports]  # fmt: skip


@pytest.mark.parametrize("archived", ["file"], indirect=True)
def test_the_serve_loop_compacts_between_its_archive_runs(
    archived: tuple[Settings, list[Row]], r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    from tracetags.archive.archiver import Archiver

    settings, log = archived
    store = store_from_url(settings.archive_url or "")
    archiver = Archiver(settings.replace(archive_interval="200ms"))
    runner = threading.Thread(target=archiver.run, daemon=True)
    caplog.set_level("INFO", logger="tracetags.archive")
    runner.start()
    try:
        wait_until(lambda: len(manifest.list_entries(store, settings.namespace, 0)) == 1)
    finally:
        archiver.stop()
        runner.join(30)
    assert list(read_partition(store, settings.namespace, 0)) == log
    assert "compacted 12 segments into 1 (2400 rows), 12 superseded removed" in caplog.text
