"""The archiver: per partition, folded entries (acknowledged by the fold's group) go into
segments (segment first, manifest entry last), their mark goes to Redis, then the stream is
trimmed as far as is safe.  The manifest is the truth: a run resumes from it, removes
orphaned segments, and loses or duplicates nothing after a crash at any step.

``archive_partition`` is one run; ``Archiver`` runs it for every partition every
``archive_interval`` (inside ``tracetags serve``), backing off while the store fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec
import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from tracetags import schemas, topology
from tracetags.archive import manifest, state
from tracetags.archive.segments import (
    EntryId,
    no_cyclic_gc,
    to_table,
    write_tables,
)
from tracetags.archive.store import LocalStore, S3Store, open_store
from tracetags.archive.trim import trim
from tracetags.connections import SyncClient, sync_client
from tracetags.errors import ArchiveCorruptError, ArchiveStoreError
from tracetags.functions import DeadLetter
from tracetags.keys import Keys
from tracetags.log import partition_count
from tracetags.schemas import entry_text, parse_entry_id
from tracetags.settings import Settings

log = logging.getLogger("tracetags.archive")

Store = LocalStore | S3Store
#: Entries read per XRANGE while filling a segment.
READ_PAGE: Final = 10_000
#: The partition lock lives this long unless its holder extends it, which a thread of the
#: run does every LOCK_TTL_S / 3: a killed archiver holds the partition for at most this.
LOCK_TTL_S: Final = 6.0
#: Between archive runs the loop trims every partition this often (one cheap tt_trim call).
TRIM_EVERY_S: Final = 1.0
#: Longest pause between attempts while the store fails.
MAX_BACKOFF_S: Final = 60.0
#: Test-only: the archiver stops (prints ``archiver paused at STEP`` to stderr and sleeps)
#: at the named step, so a test can SIGKILL it there: ``before_upload``,
#: ``before_manifest`` (segment written, manifest entry not), ``before_mark`` (manifest
#: written, Redis not told, nothing trimmed); compaction's ``compact_before_upload``,
#: ``compact_before_manifest`` and ``compact_before_retire`` (the compacted segment
#: visible, the replaced ones not removed yet).
PAUSE_ENV: Final = "TRACETAGS_ARCHIVE_TEST_PAUSE_AT"
#: The serve loop compacts each partition at most this often, at most COMPACT_MERGES merges
#: a time: a merge of 500k rows takes 2-4 s on one core, during which this loop trims no
#: other partition (one merge per 30 s still compacts 16k rows/s per partition).
COMPACT_EVERY_S: Final = 30.0
COMPACT_MERGES: Final = 1
#: Niceness the archiver process of ``tracetags serve`` adds to itself.
ARCHIVER_NICE: Final = 10


class RunReport(msgspec.Struct, kw_only=True):
    """What one run on one partition did."""

    partition: int
    #: Entries written into new segments.
    archived: int = 0
    segments_written: int = 0
    #: Orphaned segments removed (left by a crash between a segment and its entry).
    orphans_removed: int = 0
    trimmed: int = 0
    archived_up_to: str | None = None
    held: str | None = None
    held_detail: str = ""
    #: Another archiver holds the partition's lock: this run did nothing.
    locked_out: bool = False
    error: str | None = None


def partition_lock(client: SyncClient, keys: Keys, partition: int) -> Lock:
    """The lock one archiver or compaction of ``partition`` holds at a time."""
    return Lock(client, keys.archive_lock(partition), timeout=LOCK_TTL_S, thread_local=False)


@contextlib.contextmanager
def held(lock: Lock, partition: int) -> Iterator[bool]:
    """Hold ``lock`` (without waiting: yields False when another holder has it), extended
    by a thread every LOCK_TTL_S / 3 while the block runs."""
    if not lock.acquire(blocking=False):
        yield False
        return
    done = threading.Event()

    def keep() -> None:
        while not done.wait(LOCK_TTL_S / 3):
            try:
                lock.extend(LOCK_TTL_S, replace_ttl=True)
            except redis.RedisError as exc:
                # Lost (expired while Redis was unreachable): the manifest step checks
                # ownership before it publishes anything.
                log.warning("partition %d: cannot extend the archive lock: %s", partition, exc)

    keeper = threading.Thread(target=keep, daemon=True)
    keeper.start()
    try:
        yield True
    finally:
        done.set()
        keeper.join()
        if lock.owned():
            lock.release()


def pause_at(step: str) -> None:
    if os.environ.get(PAUSE_ENV) == step:
        sys.stderr.write(f"archiver paused at {step}\n")
        sys.stderr.flush()
        while True:
            time.sleep(3600)


def _decode(fields: dict[bytes, bytes]) -> schemas.Event | bytes:
    from tracetags.consumer import decode_fields

    item = decode_fields(fields)
    return item.payload if isinstance(item, DeadLetter) else item


def folded_bound(
    client: SyncClient, keys: Keys, partition: int, group: str
) -> tuple[EntryId, EntryId | None] | None:
    """``(last delivered, oldest pending or None)`` of the fold's group, read in one
    MULTI: every entry up to the first is folded except those from the second on.  None:
    the group does not exist (nothing is folded)."""
    stream = keys.stream(partition)
    pipe = topology.node_client(client, stream).pipeline(transaction=True)
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, group)
    groups, pending = pipe.execute(raise_on_error=False)
    if isinstance(groups, Exception) or isinstance(pending, Exception):
        return None
    info = next((g for g in groups if g["name"] == group.encode()), None)
    if info is None:
        return None
    last = parse_entry_id(info["last-delivered-id"])
    oldest = parse_entry_id(pending["min"]) if pending["pending"] else None
    return last, oldest


def _folded_pages(
    client: SyncClient, stream: str, after: EntryId | None, bound: tuple[EntryId, EntryId | None],
    limit: int,
) -> Iterator[list[tuple[str, dict[bytes, bytes]]]]:  # fmt: skip
    """Pages (XRANGE) of the folded entries after ``after``, ``limit`` entries at most."""
    last, oldest = bound
    start = "(" + entry_text(after) if after is not None else "-"
    left = limit
    while left > 0:
        page: Any = client.xrange(stream, start, entry_text(last), count=min(READ_PAGE, left))
        entries = [(raw_id.decode(), fields) for raw_id, fields in page]
        if oldest is not None and entries and parse_entry_id(entries[-1][0]) >= oldest:
            entries = [e for e in entries if parse_entry_id(e[0]) < oldest]
            if entries:
                yield entries
            return
        if entries:
            yield entries
        if len(page) < min(READ_PAGE, left):
            return
        left -= len(entries)
        start = "(" + entries[-1][0]


class PartitionRun:
    """One run on one partition, holding its lock."""

    def __init__(
        self, client: SyncClient, store: Store, settings: Settings, partition: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self.client = client
        self.store = store
        self.settings = settings
        self.namespace = settings.namespace
        self.keys = Keys(settings.namespace)
        self.partition = partition
        self.on_progress = on_progress
        self.report = RunReport(partition=partition)
        self.lock = partition_lock(client, self.keys, partition)

    def run(self, max_segments: int | None = None) -> RunReport:
        with held(self.lock, self.partition) as owned:
            if not owned:
                self.report.locked_out = True
                return self.report
            try:
                self._archive(max_segments)
            except (ArchiveStoreError, ArchiveCorruptError) as exc:
                self._failed(exc)
            else:
                self._recovered()
            self._trim()
        return self.report

    # --- archive ----------------------------------------------------------------------

    def _archive(self, max_segments: int | None) -> None:
        store, ns, p = self.store, self.namespace, self.partition
        entries = manifest.list_entries(store, ns, p)
        ranges = manifest.split_superseded(entries)[0]
        for name in manifest.orphans(store, ns, p, entries):
            log.info("partition %d: removing orphaned segment %s", p, name)
            store.delete(name)
            self.report.orphans_removed += 1
        archived = manifest.archived_up_to(ranges)
        segment_bytes = sum(o.size for o in store.list(f"{manifest.partition_dir(ns, p)}/segments"))
        self._reconcile(archived, len(ranges), segment_bytes)
        written = 0
        stream = self.keys.stream(p)
        while max_segments is None or written < max_segments:
            bound = folded_bound(self.client, self.keys, p, self.settings.consumer_group)
            if bound is None:
                break
            tables = []
            count = 0
            first = last = (0, 0)
            with no_cyclic_gc():
                for page in _folded_pages(
                    self.client, stream, archived, bound, self.settings.archive_max_rows
                ):
                    if not count:
                        first = parse_entry_id(page[0][0])
                    last = parse_entry_id(page[-1][0])
                    count += len(page)
                    tables.append(to_table([(i, _decode(fields)) for i, fields in page]))
                    del page
            if not count:
                break
            pause_at("before_upload")
            data = write_tables(tables)
            del tables
            manifest.publish(
                store, ns, p, first, last, count, data, schemas.now_ms(),
                before_manifest=self._before_manifest,
            )  # fmt: skip
            pause_at("before_mark")
            self._mark(last, count, len(data))
            # Trimmed segment by segment: a backlog (after an outage) frees Redis's memory as
            # it is archived, not at the end of the run.
            self._trim()
            archived = last
            written += 1
            self.report.archived += count
            self.report.segments_written += 1
            if self.on_progress is not None:
                self.on_progress(count)
        self.report.archived_up_to = entry_text(archived) if archived is not None else None

    def _before_manifest(self) -> None:
        pause_at("before_manifest")
        # A run that lost its lock (expired while it uploaded) must not publish: the new
        # holder may be removing this very segment as an orphan.
        if not self.lock.owned():
            raise LockNotOwnedError(f"partition {self.partition}: the archive lock was lost")

    def _reconcile(self, archived: EntryId | None, segments: int, segment_bytes: int) -> None:
        """Make the Redis cache and marks agree with the manifest (the truth): after a crash
        between a manifest entry and its mark, the mark is added now."""
        key = self.keys.archive_state(self.partition)
        raw: Any = self.client.hget(key, state.ARCHIVED)
        cached: bytes | None = raw
        if archived is None:
            if cached is not None:
                log.error(
                    "partition %d: Redis says the archive holds entries up to %s but the store "
                    "%s has no segment of it (was the store emptied?); archiving anew from the "
                    "stream's oldest entry",
                    self.partition, cached.decode(), self.store.url,
                )  # fmt: skip
                self.client.hdel(key, state.ARCHIVED)
            self.client.hset(key, mapping={state.SEGMENTS: 0, state.BYTES: 0})
            return
        text = entry_text(archived)
        if cached is not None and parse_entry_id(cached) > archived:
            log.error(
                "partition %d: Redis says the archive holds entries up to %s but the store %s "
                "ends at %s (segments lost from the store?)",
                self.partition, cached.decode(), self.store.url, text,
            )  # fmt: skip
        pipe = self.client.pipeline(transaction=True)
        if cached is None or parse_entry_id(cached) < archived:
            pipe.zadd(self.keys.archive_marks(self.partition), {text: schemas.now_ms()}, nx=True)
        counts: Any = {state.ARCHIVED: text, state.SEGMENTS: segments}
        counts[state.BYTES] = segment_bytes
        pipe.hset(key, mapping=counts)
        pipe.execute()

    def _mark(self, last: EntryId, rows: int, size: int) -> None:
        """Tell Redis the archive now holds everything up to ``last`` (the trim's mark)."""
        key = self.keys.archive_state(self.partition)
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.keys.archive_marks(self.partition), {entry_text(last): schemas.now_ms()})
        pipe.hset(key, state.ARCHIVED, entry_text(last))
        pipe.hincrby(key, state.SEGMENTS, 1)
        pipe.hincrby(key, state.ROWS, rows)
        pipe.hincrby(key, state.BYTES, size)
        pipe.execute()

    # --- outcome ----------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        key = self.keys.archive_state(self.partition)
        message = str(exc)
        self.report.error = message
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(key, state.ERROR_SINCE_MS, schemas.now_ms())
        pipe.hset(key, state.ERROR, message)
        started, _ = pipe.execute()
        if started:
            log.error(
                "partition %d: archiving fails (%s); nothing is trimmed past the archive, the "
                "stream's tail grows until the store is back",
                self.partition, message,
            )  # fmt: skip

    def _recovered(self) -> None:
        key = self.keys.archive_state(self.partition)
        since = self.client.hget(key, state.ERROR_SINCE_MS)
        if since is not None:
            self.client.hdel(key, state.ERROR, state.ERROR_SINCE_MS)
            log.warning(
                "partition %d: archiving works again after %.0f s of failures",
                self.partition, (schemas.now_ms() - int(since)) / 1000,
            )  # fmt: skip

    def _trim(self) -> None:
        result = trim(self.client, self.keys, self.partition, self.settings.log_retention_ms)
        self.report.trimmed += result.trimmed
        self.report.held = result.held
        self.report.held_detail = result.detail
        self.client.hset(
            self.keys.archive_state(self.partition),
            mapping={
                state.STORE: self.store.url,
                state.RUN_MS: schemas.now_ms(),
                state.HELD: result.held,
                state.HELD_DETAIL: result.detail,
            },
        )


def archive_partition(
    client: SyncClient, store: Store, settings: Settings, partition: int, *,
    max_segments: int | None = None, on_progress: Callable[[int], None] | None = None,
) -> RunReport:  # fmt: skip
    """Archive the folded entries of ``partition`` not archived yet, then trim safely.

    Does nothing (``locked_out``) while another archiver holds the partition.  Store
    failures do not raise: the report and the ``archive`` hash carry them, and the trim
    still removes what was archived before.
    """
    return PartitionRun(client, store, settings, partition, on_progress).run(max_segments)


def archive_once(
    settings: Settings, *, partition: int | None = None,
    on_progress: Callable[[int, int], None] | None = None, max_segments: int | None = None,
) -> list[RunReport]:  # fmt: skip
    """One run on every partition (or one); ``on_progress(partition, entries)`` after each
    segment; at most ``max_segments`` new segments per partition.  Raises ConfigError when
    no archive is configured."""
    from tracetags.archive.reader import _store

    store = _store(settings)
    client = sync_client(settings.effective_redis_url)
    try:
        partitions = (
            [partition]
            if partition is not None
            else range(partition_count(client, Keys(settings.namespace)))
        )
        reports = []
        for p in partitions:
            progress = (lambda n, p=p: on_progress(p, n)) if on_progress is not None else None
            reports.append(
                archive_partition(
                    client, store, settings, p, on_progress=progress, max_segments=max_segments
                )
            )
        return reports
    finally:
        client.close()


class Archiver:
    """Runs :func:`archive_partition` on every partition every ``archive_interval``; a
    partition whose store fails is retried with exponential backoff (up to a minute)."""

    def __init__(self, settings: Settings) -> None:
        store = open_store(settings)
        if store is None:
            raise ArchiveStoreError("no archive is configured: the log is unbounded")
        self.settings = settings
        self.store = store
        self.client = sync_client(settings.effective_redis_url)
        self.keys = Keys(settings.namespace)
        self.stopping = threading.Event()
        self._due: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self._compacted: dict[int, float] = {}

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        interval = self.settings.archive_interval_ms / 1000
        log.info(
            "archiver: namespace %r to %s every %s, live retention %s",
            self.settings.namespace, self.store.url, self.settings.archive_interval,
            self.settings.log_retention,
        )  # fmt: skip
        while not self.stopping.is_set():
            try:
                partitions = partition_count(self.client, self.keys)
            except redis.RedisError as exc:
                log.warning("archiver: Redis unreachable (%s); retrying", exc)
                self.stopping.wait(min(interval, 5.0))
                continue
            now = time.monotonic()
            for p in range(partitions):
                if self.stopping.is_set():
                    break
                if self._due.get(p, 0.0) > now:
                    self._trim_between_runs(p)
                    continue
                self._run(p, interval)
                now = time.monotonic()
            wake = min((self._due.get(p, now) for p in range(partitions)), default=now + interval)
            pause = min(wake - time.monotonic(), interval, TRIM_EVERY_S)
            self.stopping.wait(max(0.05, pause))
        self.client.close()

    def _trim_between_runs(self, partition: int) -> None:
        """Marks pass their retention between archive runs: trimming only at runs would keep
        entries up to a whole interval longer (the stream would hold retention plus two
        intervals of entries, not one).  ``tt_trim`` is atomic and safe on its own."""
        try:
            trim(self.client, self.keys, partition, self.settings.log_retention_ms)
        except redis.RedisError as exc:
            log.debug("archiver: partition %d: trim failed: %s", partition, exc)

    def _run(self, partition: int, interval: float) -> None:
        try:
            report = archive_partition(self.client, self.store, self.settings, partition)
        except redis.RedisError as exc:
            log.warning("archiver: partition %d: Redis error %s; retrying", partition, exc)
            self._due[partition] = time.monotonic() + min(interval, 5.0)
            return
        if report.error is not None:
            delay = min(MAX_BACKOFF_S, max(interval, self._backoff.get(partition, 0.5) * 2))
            self._backoff[partition] = delay
            self._due[partition] = time.monotonic() + delay
            return
        self._backoff.pop(partition, None)
        self._compact(partition)
        if report.archived:
            log.debug(
                "archiver: partition %d: %d entries in %d segment(s), %d trimmed (held: %s)",
                partition, report.archived, report.segments_written, report.trimmed,
                report.held or "-",
            )  # fmt: skip
        self._due[partition] = time.monotonic() + interval

    def _compact(self, partition: int) -> None:
        """Between archive runs, at most every COMPACT_EVERY_S per partition: at most
        COMPACT_MERGES merges (each holds the partition's lock for a few seconds)."""
        if self.settings.archive_compact_rows <= 0:
            return
        now = time.monotonic()
        if self._compacted.get(partition, -COMPACT_EVERY_S) + COMPACT_EVERY_S > now:
            return
        self._compacted[partition] = now
        from tracetags.archive.compaction import compact_locked

        try:
            report = compact_locked(
                self.client, self.store, self.settings, partition, max_merges=COMPACT_MERGES
            )
        except redis.RedisError as exc:
            log.warning("archiver: partition %d: compaction: Redis error %s", partition, exc)
            return
        if report.written or report.retired:
            log.info(
                "archiver: partition %d: compacted %d segments into %d (%d rows), %d "
                "superseded removed, %d visible",
                partition, report.merged, report.written, report.rows, report.retired,
                report.segments,
            )  # fmt: skip


def run_archiver_process(settings_data: dict[str, Any], log_level: int = logging.INFO) -> None:
    """The archiver process of ``tracetags serve``: runs until SIGTERM/SIGINT (it finishes
    the step in hand)."""
    import signal

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Background work with ~2x headroom over the fold: on a busy machine it yields the CPU
    # to the consumers and Redis, and catches up whenever they leave any.
    os.nice(ARCHIVER_NICE)
    settings = msgspec.convert(settings_data, Settings)
    archiver = Archiver(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: archiver.stop())
    archiver.run()
