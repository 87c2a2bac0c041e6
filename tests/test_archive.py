"""The archiver against a real Redis and real stores (a directory, moto's S3 server): the
archive + tail round trip, the safe trim (pending, lagging and dead consumers, unarchived
entries, retention), crashes at every step (a real subprocess, SIGKILLed), store outages,
and status."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.support.archive import MotoServer
from tests.support.helpers import wait_until
from tracetags import Settings, TagProducer, functions, schemas
from tracetags.archive import archive_once, manifest, open_store, read_partition
from tracetags.archive.archiver import LOCK_TTL_S, PAUSE_ENV
from tracetags.archive.trim import trim
from tracetags.client import Client
from tracetags.consumer import decode_entries
from tracetags.errors import DecodeError
from tracetags.keys import Keys

GROUP = "tracetags-fold"


def id_tuple(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def fold_all(r: redis.Redis, keys: Keys, partition: int, group: str = GROUP) -> int:
    """Fold every undelivered entry of the partition the way the consumer does."""
    stream = keys.stream(partition)
    with contextlib.suppress(redis.ResponseError):
        r.xgroup_create(stream, group, "0", mkstream=True)
    folded = 0
    while True:
        reply: Any = r.xreadgroup(group, "folder", {stream: ">"}, count=500)
        if not reply or not reply[0][1]:
            return folded
        entries = reply[0][1]
        functions.apply_batch(r, keys, partition, group, decode_entries(entries))
        folded += len(entries)


def log_model(r: redis.Redis, keys: Keys, partition: int) -> list[tuple[str, Any]]:
    """Every entry of the stream now, as the archive reader yields them."""
    out = []
    for raw_id, fields in r.xrange(keys.stream(partition)):
        payload: Any = fields.get(b"e")
        try:
            item: Any = schemas.decode(payload)
        except (DecodeError, TypeError):
            item = payload
        out.append((raw_id.decode(), item))
    return out


def tail(r: redis.Redis, keys: Keys, partition: int) -> list[str]:
    return [raw.decode() for raw, _ in r.xrange(keys.stream(partition))]


def produce(settings: Settings, traces: int, start: int = 0) -> None:
    producer = TagProducer(settings)
    for i in range(start, start + traces):
        trace_id = f"tr-{i:05d}"
        tags = {"env": "prod", "user": f"u{i % 7}"}
        producer.trace_started(trace_id, experiment_id="1", timestamp_ms=1_000 + i, name="chat",
                               tags=tags, metadata={"r": "eu"})  # fmt: skip
        producer.set_tags(trace_id, {"model": "v2"})
        if i % 3 == 0:
            producer.delete_tags(trace_id, ["user"])
        producer.trace_finished(trace_id, experiment_id="1", timestamp_ms=1_000 + i,
                                execution_time_ms=i, status="OK" if i % 5 else "ERROR")  # fmt: skip
    producer.close()


@pytest.fixture(params=["file", "s3"])
def archived_settings(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Settings:
    url = (
        f"file://{tmp_path}/archive"
        if request.param == "file"
        else (request.getfixturevalue("s3_url"))
    )
    return settings.replace(archive_url=url, log_retention="0", archive_max_rows=300)


# --- round trip ---------------------------------------------------------------------------


def test_archive_plus_tail_is_the_whole_log_and_only_folded_entries_leave(
    archived_settings: Settings, r: redis.Redis
) -> None:
    settings = archived_settings.replace(partitions=2)
    keys = Keys(settings.namespace)
    produce(settings, 200)
    r.xadd(keys.stream(0), {"e": b"\xc1 not msgpack"})  # poison: dead-lettered, archived raw
    for p in (0, 1):
        fold_all(r, keys, p)
    produce(settings, 50, start=200)  # written, not folded: must stay in the stream
    model = {p: log_model(r, keys, p) for p in (0, 1)}
    folded_up_to = {p: id_tuple(r.xinfo_groups(keys.stream(p))[0]["last-delivered-id"])
                    for p in (0, 1)}  # fmt: skip

    reports = archive_once(settings)

    for p in (0, 1):
        archived = list(read_partition(settings, settings.namespace, p))
        left = tail(r, keys, p)
        assert [i for i, _ in archived] == sorted({i for i, _ in archived}, key=id_tuple)
        assert all(id_tuple(i) <= folded_up_to[p] for i, _ in archived)
        assert len(archived) == sum(1 for i, _ in model[p] if id_tuple(i) <= folded_up_to[p])
        # Archive + tail == the log, with nothing twice.
        merged = dict(archived)
        merged.update((i, item) for i, item in model[p] if i in set(left))
        assert sorted(merged.items(), key=lambda kv: id_tuple(kv[0])) == model[p]
        assert not set(left) & set(merged) - set(left) - {i for i, _ in archived}
        # retention 0 and everything folded acknowledged: only unfolded entries stay.
        assert left == [i for i, _ in model[p] if id_tuple(i) > folded_up_to[p]]
    assert sum(rep.segments_written for rep in reports) >= 3  # 300 rows per segment
    assert any(
        isinstance(item, bytes) for _, item in read_partition(settings, settings.namespace, 0)
    )

    # Fold the rest, archive again: the archive grows, the stream empties, nothing doubles.
    for p in (0, 1):
        fold_all(r, keys, p)
    archive_once(settings)
    for p in (0, 1):
        assert list(read_partition(settings, settings.namespace, p)) == model[p]
        assert tail(r, keys, p) == []


def test_entries_pending_in_the_fold_group_are_not_archived_yet(
    archived_settings: Settings, r: redis.Redis
) -> None:
    settings = archived_settings
    keys = Keys(settings.namespace)
    stream = keys.stream(0)
    produce(settings, 10)
    fold_all(r, keys, 0)
    produce(settings, 10, start=10)
    reply: Any = r.xreadgroup(GROUP, "crashed", {stream: ">"}, count=5)  # read, never acked
    fold_all(r, keys, 0)  # the rest is folded after them
    pending = [raw.decode() for raw, _ in reply[0][1]]
    model = log_model(r, keys, 0)
    (report,) = archive_once(settings)
    archived = [i for i, _ in read_partition(settings, settings.namespace, 0)]
    assert archived and id_tuple(archived[-1]) < id_tuple(pending[0])
    assert report.held == "archive" and tail(r, keys, 0)[0] == pending[0]
    r.xack(stream, GROUP, *pending)  # folded at last (the consumer would reclaim them)
    archive_once(settings)
    assert tail(r, keys, 0) == []
    assert list(read_partition(settings, settings.namespace, 0)) == model


def test_one_archiver_per_partition(archived_settings: Settings, r: redis.Redis) -> None:
    from redis.lock import Lock

    keys = Keys(archived_settings.namespace)
    produce(archived_settings, 5)
    fold_all(r, keys, 0)
    other = Lock(r, keys.archive_lock(0), timeout=30)
    assert other.acquire(blocking=False)
    (report,) = archive_once(archived_settings)
    assert report.locked_out and report.archived == 0 and len(tail(r, keys, 0)) == 17
    other.release()
    (report,) = archive_once(archived_settings)
    assert not report.locked_out and report.archived == 17


def test_status_shows_the_archive_per_partition(
    archived_settings: Settings, r: redis.Redis
) -> None:
    settings = archived_settings.replace(log_retention="1h")
    keys = Keys(settings.namespace)
    produce(settings, 30)
    fold_all(r, keys, 0)
    archive_once(settings)
    with Client(settings) as client:
        status = client.status()
    row = status.partitions[0]
    assert row.archive is not None
    assert row.archive.archived_up_to == tail(r, keys, 0)[-1]
    assert row.archive.segments == 1 and row.archive.archive_bytes > 0
    assert row.archive.held_back == "retention"
    assert "live retention" in row.archive.held_back_text
    assert row.stream_length == 100 and (row.stream_bytes or 0) > 0
    assert status.archive_url == settings.archive_url and not status.log_unbounded


def test_cli_status_shows_the_archive_table(archived_settings: Settings, r: redis.Redis) -> None:
    settings = archived_settings.replace(log_retention="1h")
    produce(settings, 10)
    fold_all(r, Keys(settings.namespace), 0)
    archive_once(settings)
    env = {**os.environ, "TRACETAGS_REDIS_URL": settings.effective_redis_url,
           "TRACETAGS_NAMESPACE": settings.namespace,
           "TRACETAGS_ARCHIVE_URL": settings.archive_url or ""}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "tracetags.cli", "status"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [[c.strip() for c in ln.strip().strip("│").split("│")]
            for ln in done.stdout.splitlines() if ln.startswith("│")]  # fmt: skip
    (cells,) = (row for row in rows if len(row) == 8 and row[0] == "0")  # archive table
    assert cells[1] == "34" and cells[3] == tail(r, Keys(settings.namespace), 0)[-1]
    assert cells[4] == "1" and cells[6].endswith("s ago")
    assert cells[7].startswith("live retention")
    done = subprocess.run([sys.executable, "-m", "tracetags.cli", "status", "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    row = json.loads(done.stdout)["partitions"][0]
    assert row["archive"]["segments"] == 1 and row["archive"]["held_back"] == "retention"
    assert row["stream_bytes"] > 0


def test_status_says_the_log_is_unbounded_without_an_archive(settings: Settings) -> None:
    produce(settings, 1)
    with Client(settings) as client:
        status = client.status()
    assert status.archive_url is None and status.log_unbounded
    env = {**os.environ, "TRACETAGS_REDIS_URL": settings.effective_redis_url,
           "TRACETAGS_NAMESPACE": settings.namespace}  # fmt: skip
    env.pop("TRACETAGS_ARCHIVE_URL", None)
    done = subprocess.run([sys.executable, "-m", "tracetags.cli", "status"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the log is unbounded" in done.stdout


# --- the safe trim --------------------------------------------------------------------------


def _stream_of(r: redis.Redis, keys: Keys, n: int) -> list[str]:
    stream = keys.stream(0)
    return [r.xadd(stream, {"e": b"x"}).decode() for _ in range(n)]


def test_trim_stops_at_a_pending_entry_of_a_dead_consumer(r: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    ids = _stream_of(r, keys, 10)
    stream = keys.stream(0)
    r.xgroup_create(stream, GROUP, "0")
    r.xreadgroup(GROUP, "dead", {stream: ">"}, count=3)  # reads 3, dies, never acks
    r.xreadgroup(GROUP, "alive", {stream: ">"})
    r.xack(stream, GROUP, *ids[3:])
    r.xack(stream, GROUP, ids[0])
    r.zadd(keys.archive_marks(0), {ids[-1]: 0})  # everything archived long ago
    result = trim(r, keys, 0, retention_ms=0)
    assert (result.trimmed, result.min_id, result.held, result.detail) == (1, ids[1], "pending",
                                                                             GROUP)  # fmt: skip
    assert tail(r, keys, 0) == ids[1:]


def test_trim_waits_for_a_lagging_second_group(r: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    ids = _stream_of(r, keys, 10)
    stream = keys.stream(0)
    r.xgroup_create(stream, GROUP, "0")
    r.xgroup_create(stream, "analytics", "0")
    r.xreadgroup(GROUP, "c", {stream: ">"})
    r.xack(stream, GROUP, *ids)
    r.xreadgroup("analytics", "c", {stream: ">"}, count=4)
    r.xack(stream, "analytics", *ids[:4])
    r.zadd(keys.archive_marks(0), {ids[-1]: 0})
    result = trim(r, keys, 0, retention_ms=0)
    assert (result.held, result.detail, result.min_id) == ("undelivered", "analytics", ids[4])
    assert tail(r, keys, 0) == ids[4:]


def test_trim_keeps_what_is_not_archived_and_what_is_in_retention(
    r: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    ids = _stream_of(r, keys, 10)
    stream = keys.stream(0)
    r.xgroup_create(stream, GROUP, "$")  # everything delivered and acknowledged
    assert trim(r, keys, 0, retention_ms=0).held == "archive"  # nothing archived
    assert tail(r, keys, 0) == ids
    now = int(time.time() * 1000)
    r.zadd(keys.archive_marks(0), {ids[2]: now - 120_000, ids[6]: now})
    result = trim(r, keys, 0, retention_ms=60_000)  # ids[6] archived just now
    assert (result.trimmed, result.held) == (3, "retention")
    assert tail(r, keys, 0) == ids[3:]
    result = trim(r, keys, 0, retention_ms=0)
    assert (result.trimmed, result.held) == (4, "archive")
    assert tail(r, keys, 0) == ids[7:]
    assert r.zrange(keys.archive_marks(0), 0, -1) == [ids[6].encode()]


@st.composite
def trim_cases(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 30))
    groups = []
    for _ in range(draw(st.integers(0, 3))):
        delivered = draw(st.integers(0, n))
        acked = draw(st.sets(st.integers(0, max(0, delivered - 1)), max_size=delivered))
        groups.append((delivered, acked))
    marks = draw(st.lists(st.tuples(st.integers(0, n - 1), st.booleans()), max_size=3))
    return {"n": n, "groups": groups, "marks": marks}


@hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=trim_cases())
def test_trim_never_passes_an_entry_some_group_or_the_archive_still_needs(
    r: redis.Redis, namespace: str, case: dict[str, Any]
) -> None:
    keys = Keys(f"{namespace}-{time.monotonic_ns()}")
    stream = keys.stream(0)
    ids = _stream_of(r, keys, case["n"])
    must_keep: set[int] = set()
    for g, (delivered, acked) in enumerate(case["groups"]):
        r.xgroup_create(stream, f"g{g}", "0")
        if delivered:
            r.xreadgroup(f"g{g}", "c", {stream: ">"}, count=delivered)
        if acked:
            r.xack(stream, f"g{g}", *(ids[i] for i in acked))
        pending = [i for i in range(delivered) if i not in acked]
        first_kept = min([*pending, delivered])
        must_keep |= set(range(first_kept, case["n"]))
    now = int(time.time() * 1000)
    marks = dict(case["marks"])  # a mark recorded again keeps its last time
    usable = [i for i, old in marks.items() if old]
    for i, old in marks.items():
        r.zadd(keys.archive_marks(0), {ids[i]: now - 3_600_000 if old else now + 3_600_000})
    archived_to = max(usable, default=-1)
    must_keep |= set(range(archived_to + 1, case["n"]))
    result = trim(r, keys, 0, retention_ms=60_000)
    left = tail(r, keys, 0)
    # Safe: everything that must stay stayed; maximal: nothing else did.
    assert left == [ids[i] for i in sorted(must_keep)]
    assert result.trimmed == case["n"] - len(left)
    r.delete(stream, keys.archive_marks(0))


# --- crashes ---------------------------------------------------------------------------------


def _archive_subprocess(settings: Settings, pause_at: str | None) -> subprocess.Popen[str]:
    env = {**os.environ, "TRACETAGS_REDIS_URL": settings.effective_redis_url,
           "TRACETAGS_NAMESPACE": settings.namespace,
           "TRACETAGS_ARCHIVE_URL": settings.archive_url or "",
           "TRACETAGS_LOG_RETENTION": settings.log_retention,
           "TRACETAGS_ARCHIVE_MAX_ROWS": str(settings.archive_max_rows)}  # fmt: skip
    if pause_at:
        env[PAUSE_ENV] = pause_at
    return subprocess.Popen([sys.executable, "-m", "tracetags.cli", "archive"], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip


def _kill_at(settings: Settings, step: str) -> None:
    proc = _archive_subprocess(settings, step)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if f"archiver paused at {step}" in line:
            break
        assert time.monotonic() < deadline
    else:
        raise AssertionError(f"the archiver exited before {step}: {proc.wait()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("step", ["before_upload", "before_manifest", "before_mark"])
def test_an_archiver_killed_at_any_step_loses_and_duplicates_nothing(
    archived_settings: Settings, r: redis.Redis, step: str
) -> None:
    settings = archived_settings.replace(archive_max_rows=50)
    keys = Keys(settings.namespace)
    produce(settings, 60)
    fold_all(r, keys, 0)
    model = log_model(r, keys, 0)
    archive_once(settings.replace(archive_max_rows=100), max_segments=1)  # before the crash
    before = list(read_partition(settings, settings.namespace, 0))
    assert len(before) == 100

    _kill_at(settings, step)

    # Visible archive: the segment of the killed run exists only if its manifest entry does.
    visible = list(read_partition(settings, settings.namespace, 0))
    assert visible == (model[:150] if step == "before_mark" else before)
    # Nothing was trimmed past what the manifest and Redis both know.
    assert tail(r, keys, 0)[0] == model[100][0]
    store = open_store(settings)
    assert store is not None
    orphans = manifest.orphans(
        store, settings.namespace, 0, manifest.list_visible(store, settings.namespace, 0)
    )
    assert len(orphans) == (step == "before_manifest")

    # The killed archiver's lock holds the partition until it expires (LOCK_TTL_S).
    proc = _archive_subprocess(settings, None)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "another archiver is running" in out, (out, err)
    wait_until(lambda: not r.exists(keys.archive_lock(0)), timeout=LOCK_TTL_S + 5)
    proc = _archive_subprocess(settings, None)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert ("1 orphaned segment(s) removed" in out) == (step == "before_manifest"), out
    assert list(read_partition(settings, settings.namespace, 0)) == model
    assert tail(r, keys, 0) == []
    with Client(settings) as client:
        archive = client.status().partitions[0].archive
    assert archive is not None and archive.archived_up_to == model[-1][0]
    assert archive.segments == 1 + (len(model) - 100 + 49) // 50


# --- outages ---------------------------------------------------------------------------------


def _fold_and_model(settings: Settings, r: redis.Redis, traces: int = 40) -> list[tuple[str, Any]]:
    keys = Keys(settings.namespace)
    produce(settings, traces)
    fold_all(r, keys, 0)
    return log_model(r, keys, 0)


def test_an_s3_outage_loses_nothing_and_the_archiver_catches_up(
    settings: Settings, r: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = MotoServer(tmp_path).start()
    try:
        server.make_bucket("outage")
        settings = settings.replace(archive_url=server.bucket_url("outage"), log_retention="0")
        keys = Keys(settings.namespace)
        model = _fold_and_model(settings, r)
        server.stop()
        caplog.set_level(logging.INFO, logger="tracetags.archive")
        for _ in range(2):
            (report,) = archive_once(settings)
            assert report.error is not None and "cannot" in report.error
            assert report.trimmed == 0
        assert tail(r, keys, 0) == [i for i, _ in model]  # the tail grows; nothing is lost
        with Client(settings) as client:
            archive = client.status().partitions[0].archive
        assert archive is not None and archive.error is not None
        assert archive.held_back_text.startswith("archive failures: ")
        failing = [rec for rec in caplog.records if "archiving fails" in rec.getMessage()]
        assert len(failing) == 1  # one line when it starts, not one per attempt

        server.start()  # moto keeps its buckets in memory: the restarted one is empty
        server.make_bucket("outage")
        (report,) = archive_once(settings)
        assert report.error is None and report.archived == len(model)
        assert list(read_partition(settings, settings.namespace, 0)) == model
        assert tail(r, keys, 0) == []
        assert any("works again" in rec.getMessage() for rec in caplog.records)
        with Client(settings) as client:
            archive = client.status().partitions[0].archive
        assert archive is not None and archive.error is None
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 512 KiB tmpfs this test may fill and make read-only (needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        message = f"cannot mount a tmpfs (root needed): {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_a_full_or_read_only_disk_loses_nothing_and_the_archiver_catches_up(
    settings: Settings, r: redis.Redis, small_disk: Path, fault: str
) -> None:
    settings = settings.replace(archive_url=f"file://{small_disk}/archive", log_retention="0")
    keys = Keys(settings.namespace)
    model = _fold_and_model(settings, r, traces=300)
    filler = small_disk / "filler"
    if fault == "disk full":
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    (report,) = archive_once(settings)
    assert report.error is not None
    assert ("No space left" in report.error) == (fault == "disk full")
    assert ("Read-only file system" in report.error) == (fault == "read-only")
    assert tail(r, keys, 0) == [i for i, _ in model]
    if fault == "disk full":
        filler.unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    (report,) = archive_once(settings)
    assert report.error is None
    assert list(read_partition(settings, settings.namespace, 0)) == model
    assert tail(r, keys, 0) == []


# --- everything at once ---------------------------------------------------------------------


async def test_archiving_while_producing_and_folding_keeps_every_event_in_order(
    settings: Settings, tmp_path: Path, r: redis.Redis
) -> None:
    """The real consumer folds and serve's archiver loop archives and trims (retention 0,
    every 200 ms) while a producer writes; archive + tail hold every event once, in order."""
    import asyncio
    import threading

    from tracetags.archive.archiver import Archiver
    from tracetags.consumer import create_app

    settings = settings.replace(
        archive_url=f"file://{tmp_path}/archive", log_retention="0", archive_interval="200ms",
        archive_max_rows=500, partitions=2,
    )  # fmt: skip
    keys = Keys(settings.namespace)
    archiver = Archiver(settings)
    runner = threading.Thread(target=archiver.run, daemon=True)
    app = create_app(settings, name="archive-test")
    await app.start()
    runner.start()
    expected: dict[str, list[tuple[str, dict[str, str]]]] = {}
    try:
        producer = TagProducer(settings)
        for i in range(1_500):
            trace_id = f"tr-{i % 150:03d}"
            tags = {"n": str(i)}
            producer.set_tags(trace_id, tags)
            expected.setdefault(trace_id, []).append(("tags_set", tags))
            if i % 100 == 0:
                await asyncio.sleep(0.05)
        with Client(settings) as client:
            await asyncio.to_thread(client.wait_applied, producer.flush(), 60)
        producer.close()
        segments_while_running = sum(
            int(r.hget(keys.archive_state(p), "segments") or 0) for p in (0, 1)
        )
    finally:
        await app.stop()
        archiver.stop()
        runner.join(30)
    archive_once(settings)
    seen: dict[str, list[tuple[str, dict[str, str]]]] = {}
    ids: list[tuple[int, str]] = []
    for p in (0, 1):
        rows = list(read_partition(settings, settings.namespace, p))
        rows += log_model(r, keys, p)
        ids += [(p, i) for i, _ in rows]
        for _, event in rows:
            seen.setdefault(event.trace_id, []).append(("tags_set", event.tags))
    assert len(ids) == len(set(ids)) == 1_500
    assert seen == expected
    assert segments_while_running >= 2  # the loop archived during the run, not only at the end


@st.composite
def lifecycles(draw: st.DrawFn) -> list[tuple[str, int]]:
    steps = st.one_of(
        st.tuples(st.just("write"), st.integers(1, 40)),
        st.tuples(st.just("read"), st.integers(1, 30)),  # delivered to the fold, not acked
        st.tuples(st.just("ack"), st.integers(1, 30)),  # oldest pending acknowledged
        st.tuples(st.just("other_read"), st.integers(1, 30)),  # a second group reads
        st.tuples(st.just("other_ack"), st.integers(1, 30)),  # and acknowledges
        st.tuples(st.just("archive"), st.integers(1, 50)),  # max rows per segment
    )
    return draw(st.lists(steps, min_size=1, max_size=16))


@hsettings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=lifecycles())
@example(steps=[("write", 10), ("read", 10), ("ack", 10), ("other_read", 5), ("archive", 50)])
@example(steps=[("write", 10), ("read", 10), ("ack", 10), ("other_read", 3), ("other_ack", 3),
                ("archive", 4), ("write", 2), ("archive", 50)])  # fmt: skip
def test_any_interleaving_of_writes_folds_and_archive_runs_keeps_the_log_whole(
    r: redis.Redis, namespace: str, tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, int]],
) -> None:  # fmt: skip
    """Archive + tail is always the whole log, the archive holds only entries folded
    before it ran, and the tail keeps everything pending or undelivered in any group."""
    ns = f"{namespace}-{time.monotonic_ns()}"
    url = f"file://{tmp_path_factory.mktemp('lifecycle')}"
    host = r.connection_pool.connection_kwargs
    settings = Settings(redis_url=f"redis://{host['host']}:{host['port']}/0", namespace=ns,
                        archive_url=url, log_retention="0")  # fmt: skip
    keys = Keys(ns)
    stream = keys.stream(0)
    r.hset(keys.meta, "partitions", 1)
    r.xgroup_create(stream, GROUP, "0", mkstream=True)
    r.xgroup_create(stream, "other", "0")
    model: list[tuple[str, Any]] = []
    n = 0
    for op, k in steps:
        if op == "write":
            for _ in range(k):
                event = schemas.TagsSet(trace_id=f"tr-{n % 7}", event_id=n.to_bytes(16, "big"),
                                        emitted_at_ms=n, tags={"n": str(n)})  # fmt: skip
                entry_id = r.xadd(stream, {"e": schemas.encode(event)}).decode()
                model.append((entry_id, event))
                n += 1
        elif op == "read":
            r.xreadgroup(GROUP, "c", {stream: ">"}, count=k)
        elif op in ("ack", "other_ack"):
            group_name = GROUP if op == "ack" else "other"
            pending: Any = r.xpending_range(stream, group_name, "-", "+", count=k)
            if pending:
                r.xack(stream, group_name, *(p["message_id"] for p in pending))
        elif op == "other_read":
            r.xreadgroup("other", "c", {stream: ">"}, count=k)
        else:
            info: Any = r.xinfo_groups(stream)
            fold = next(g for g in info if g["name"] == GROUP.encode())
            first_pending: Any = r.xpending_range(stream, GROUP, "-", "+", count=1)
            (report,) = archive_once(settings.replace(archive_max_rows=k))
            assert report.error is None
            archived = [i for i, _ in read_partition(settings, ns, 0)]
            if archived:
                assert id_tuple(archived[-1]) <= id_tuple(fold["last-delivered-id"])
                if first_pending:
                    assert id_tuple(archived[-1]) < id_tuple(first_pending[0]["message_id"])
        # Invariants after every step.
        left = tail(r, keys, 0)
        archived_rows = list(read_partition(settings, ns, 0))
        merged = {i: item for i, item in archived_rows}
        assert len(merged) == len(archived_rows)
        merged.update((i, item) for i, item in model if i in set(left))
        assert sorted(merged.items(), key=lambda kv: id_tuple(kv[0])) == model
        for group in r.xinfo_groups(stream):
            oldest: Any = r.xpending_range(stream, group["name"], "-", "+", count=1)
            keep_from = [id_tuple(oldest[0]["message_id"])] if oldest else []
            after = [i for i, _ in model if id_tuple(i) > id_tuple(group["last-delivered-id"])]
            keep_from += [id_tuple(after[0])] if after else []
            if keep_from:
                must = [i for i, _ in model if id_tuple(i) >= min(keep_from)]
                assert set(must) <= set(left)
    r.delete(stream, keys.meta, keys.archive_state(0), keys.archive_marks(0))


def test_the_readme_duckdb_query_reads_the_archive(
    settings: Settings, r: redis.Redis, tmp_path: Path
) -> None:
    """The README's DuckDB query, run as printed (but for the archive's root), over segments
    the archiver wrote: the archive is plain Parquet with real columns."""
    import duckdb

    settings = settings.replace(archive_url=f"file://{tmp_path}", log_retention="0")
    keys = Keys(settings.namespace)
    produce(settings, 30)
    fold_all(r, keys, 0)
    archive_once(settings)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    query = readme.split("```sql\n", 1)[1].split("```", 1)[0]
    query = query.replace(".tracetags/archive/tracetags/", f"{tmp_path}/{settings.namespace}/")
    query = query.replace("'environment'", "'env'")  # produce() tags env
    rows = duckdb.sql(query).fetchall()
    expected = []
    for entry_id, item in read_partition(settings, settings.namespace, 0):
        tags = getattr(item, "tags", {})
        if "env" in tags:
            ms, seq = (int(part) for part in entry_id.split("-"))
            kind = type(item).__struct_config__.tag
            expected.append(((ms, seq), (item.trace_id, ms, kind, tags["env"])))
    expected.sort(key=lambda pair: pair[0])
    assert rows == [row for _, row in expected[:10]]
    assert len(rows) == 10


def test_the_serve_loop_trims_when_retention_passes_not_only_at_its_runs(
    settings: Settings, tmp_path: Path, r: redis.Redis
) -> None:
    """Archive runs every 30 s, retention 1 s: the entries go ~1 s after the first run
    archived them, not at the second run."""
    import threading

    from tracetags.archive.archiver import Archiver

    settings = settings.replace(archive_url=f"file://{tmp_path}/archive", log_retention="1s",
                                archive_interval="30s")  # fmt: skip
    keys = Keys(settings.namespace)
    produce(settings, 20)
    fold_all(r, keys, 0)
    archiver = Archiver(settings)
    runner = threading.Thread(target=archiver.run, daemon=True)
    started = time.monotonic()
    runner.start()
    try:
        wait_until(lambda: r.hget(keys.archive_state(0), "archived") is not None, timeout=10)
        assert r.xlen(keys.stream(0)) == 67  # archived, still in its live retention
        wait_until(lambda: r.xlen(keys.stream(0)) == 0, timeout=10)
        assert time.monotonic() - started < 10
    finally:
        archiver.stop()
        runner.join(30)
