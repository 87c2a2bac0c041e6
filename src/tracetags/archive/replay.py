"""Replay: rebuild a namespace's state in another namespace from its archive plus live tail.

Each partition is read in entry-id order — the archived entries first, then the stream's
tail after the last archived id — and folded by the same Function as the consumer
(``functions.apply_batch``) with the original entry ids, so every register's stamp, and
so every last-writer-wins decision, is the live fold's.  Entries that do not decode are
dead-lettered in the target, as the consumer does.

**What the target holds afterwards**: the state, the indexes, the dead letters, its
``meta`` key (the source's partition count) and its replay record (``keys.replay_progress``:
source, ``--until`` and the last replayed entry id of each partition).  Its **log stays
empty**: the history stays where it is (the source's archive and tail), and the target's
own log starts with whatever is produced into it later.  ``--resume`` continues after the
recorded ids, so a second run catches the target up with what the source received since.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import msgspec

from tracetags import functions, schemas, topology
from tracetags.archive import manifest
from tracetags.archive.reader import read_partition
from tracetags.archive.store import LocalStore, S3Store, open_store
from tracetags.connections import SyncClient, sync_client
from tracetags.consumer import decode_entries
from tracetags.errors import (
    DecodeError,
    FoldError,
    LogGapError,
    ReplayTargetError,
    ValidationError,
)
from tracetags.functions import BatchItem, BatchResult, DeadLetter
from tracetags.keys import Keys
from tracetags.schemas import entry_text, parse_entry_id
from tracetags.settings import Settings

EntryId = schemas.EntryPosition
#: The largest sequence number of an entry id: ``--until <ms>`` takes every entry of that ms.
MAX_SEQ: Final = 2**64 - 1
_ENTRY_ID_RE: Final = re.compile(r"(\d+)-(\d+)")


def parse_until(value: str | int | None) -> EntryId | None:
    """``--until``: an entry id ``ms-seq`` (inclusive), epoch milliseconds, or an ISO-8601
    time (a time without an offset is UTC); a time means every entry of the log's clock
    (the ms of the entry id) up to and including that millisecond."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value, MAX_SEQ)
    text = value.strip()
    match = _ENTRY_ID_RE.fullmatch(text)
    if match:
        return int(match[1]), int(match[2])
    if text.isdigit():
        return (int(text), MAX_SEQ)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"--until {value!r} is neither an entry id (ms-seq), epoch milliseconds nor an "
            "ISO-8601 time (2026-12-06T01:30:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return ((when - epoch) // _ONE_MS, MAX_SEQ)


_ONE_MS: Final = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


# --- sources ------------------------------------------------------------------------------


class ArchiveReader(Protocol):
    """The archived entries of a namespace (tracetags.archive's reader behind it)."""

    def entries(
        self, partition: int, after: str | None, until_ms: int | None
    ) -> Iterable[tuple[str, schemas.Event | bytes]]:
        """Every archived entry of ``partition`` after ``after`` (exclusive; None: from the
        start) up to ``until_ms`` (inclusive), in entry-id order: the decoded event, or the
        raw payload of an entry that does not decode."""
        ...

    def rows(self, partition: int) -> int:
        """How many entries of ``partition`` are archived (for the progress bar)."""
        ...


class NoArchive:
    """A namespace whose log is not archived: its whole history is the stream."""

    def entries(
        self, partition: int, after: str | None, until_ms: int | None
    ) -> Iterable[tuple[str, schemas.Event | bytes]]:
        return ()

    def rows(self, partition: int) -> int:
        return 0


class StoreArchive:
    """A namespace's archive in a store (``file://`` or ``s3://``): the segments its manifest
    makes visible, read by :func:`tracetags.archive.read_partition`."""

    def __init__(self, store: LocalStore | S3Store, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        self._rows: dict[int, int] = {}

    def entries(
        self, partition: int, after: str | None, until_ms: int | None
    ) -> Iterable[tuple[str, schemas.Event | bytes]]:
        return read_partition(self.store, self.namespace, partition, after=after, until_ms=until_ms)

    def rows(self, partition: int) -> int:
        """The rows of the partition's visible segments (their manifest entries), read once
        per replay: one small object per segment."""
        if partition not in self._rows:
            visible = manifest.list_visible(self.store, self.namespace, partition)
            self._rows[partition] = sum(
                manifest.read_entry(self.store, segment.manifest_name).rows for segment in visible
            )
        return self._rows[partition]


def archive_of(settings: Settings) -> ArchiveReader:
    """The archive of ``settings``' namespace (its ``archive_url``, or the embedded
    default), or :class:`NoArchive` when archiving is off."""
    store = open_store(settings)
    return NoArchive() if store is None else StoreArchive(store, settings.namespace)


def archived_item(entry_id: str, entry: schemas.Event | bytes) -> BatchItem:
    """An archived entry as the fold takes it: a raw payload is decoded again (it is
    dead-lettered with the reason the consumer gave, unless this version reads it)."""
    if not isinstance(entry, bytes):
        return (entry_id, entry)
    try:
        return (entry_id, schemas.decode(entry))
    except DecodeError as exc:
        return (entry_id, DeadLetter(entry, str(exc)))


# --- counts and progress ------------------------------------------------------------------


class PartitionCounts(msgspec.Struct, kw_only=True):
    partition: int
    #: Entries read from the archive / from the stream's tail, in this run.
    from_archive: int = 0
    from_tail: int = 0
    #: Entries a source yielded again (an id at or before one already replayed): skipped.
    duplicates: int = 0
    #: Dead letters not written again on --resume (the target has them from the killed run).
    dead_letters_kept: int = 0
    applied: int = 0
    dead_lettered: int = 0
    batches: int = 0
    #: Replayed after this entry id (--resume), or None from the start.
    resumed_after: str | None = None
    #: The last entry id replayed (None: the partition had nothing to replay).
    last_id: str | None = None


class ReplayResult(msgspec.Struct, kw_only=True):
    source: str
    target: str
    until: str | None
    partitions: list[PartitionCounts]
    seconds: float

    @property
    def entries(self) -> int:
        return sum(p.from_archive + p.from_tail for p in self.partitions)

    @property
    def applied(self) -> int:
        return sum(p.applied for p in self.partitions)

    @property
    def dead_lettered(self) -> int:
        return sum(p.dead_lettered for p in self.partitions)

    @property
    def events_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Progress:
    """What ``on_progress`` is told after every batch."""

    partition: int
    #: Entries replayed so far in this run (every partition).
    done: int
    #: The best known total of this run: archived rows plus stream length of the partitions
    #: still to go (an upper bound: archived entries still in the stream count twice until
    #: the replay reaches them), corrected as each partition ends.
    total: int


# --- the replay ---------------------------------------------------------------------------


def replay(
    source: Settings,
    target: Settings,
    *,
    until: str | int | None = None,
    partitions: Sequence[int] | None = None,
    resume: bool = False,
    archive: ArchiveReader | None = None,
    on_progress: Callable[[Progress], object] | None = None,
    batch_size: int | None = None,
) -> ReplayResult:
    """Fold ``source``'s archive and live tail into ``target``'s namespace (another
    namespace, on the same Redis or another) and return what it did.

    ``until`` (see :func:`parse_until`) stops at that point of the log's clock: the target
    then holds the state as it was then.  ``partitions`` limits the replay to some
    partitions (the target's partition count is the source's all the same).  The target must
    be empty — or hold only partitions of an earlier replay of the same source that this
    call does not touch — unless ``resume``, which continues each partition after the last
    entry id recorded in the target.  ``archive`` defaults to the source settings' archive
    (:func:`archive_of`; pass :class:`NoArchive` to read the stream only).
    ``on_progress`` is called after every batch.

    Raises ReplayTargetError (a ValueError) for a target it must not write to, LogGapError
    when entries were trimmed from the stream and are not in ``archive``, and the archive's
    ArchiveStoreError / ArchiveCorruptError when it cannot be read.
    """
    started = time.monotonic()
    if source.namespace == target.namespace and (
        source.effective_redis_url == target.effective_redis_url
    ):
        raise ReplayTargetError("the target is the source: replay into another namespace")
    bound = parse_until(until)
    archive = archive_of(source) if archive is None else archive
    size = batch_size or source.consumer_batch_size
    src = sync_client(source.effective_redis_url)
    dst = sync_client(target.effective_redis_url)
    try:
        src_keys, dst_keys = Keys(source.namespace), Keys(target.namespace)
        raw = src.hget(src_keys.meta, "partitions")
        if raw is None:
            raise ReplayTargetError(
                f"namespace {source.namespace!r} has no meta key: nothing was ever written to it"
            )
        count = int(raw)
        chosen = list(range(count)) if partitions is None else sorted(set(partitions))
        for p in chosen:
            if not 0 <= p < count:
                raise ReplayTargetError(
                    f"partition {p} does not exist: {source.namespace!r} has {count}"
                )
        positions = _claim_target(dst, dst_keys, source.namespace, count, chosen, bound, resume)
        totals = {p: archive.rows(p) + int(src.xlen(src_keys.stream(p))) for p in chosen}
        done = 0
        results: list[PartitionCounts] = []
        for p in chosen:
            counts = PartitionCounts(partition=p, resumed_after=positions.get(p))
            dead_floor = _last_dead_letter(dst, dst_keys, p) if p in positions else None
            reader = _PartitionReader(src, src_keys, p, archive, positions.get(p), bound, size)
            for items, origin in reader.batches(counts):
                if dead_floor is not None:
                    kept = [
                        (entry_id, item)
                        for entry_id, item in items
                        if not isinstance(item, DeadLetter) or parse_entry_id(entry_id) > dead_floor
                    ]
                    counts.dead_letters_kept += len(items) - len(kept)
                else:
                    kept = items
                result = _apply(dst, dst_keys, p, target.consumer_group, kept, dead_floor)
                last = _text(items[-1][0])
                dst.hset(dst_keys.replay_progress(), f"p{p:02d}", last)
                counts.applied += result.applied
                counts.dead_lettered += result.dead_lettered
                counts.batches += 1
                counts.last_id = last
                done += len(items)
                if origin == "archive":
                    counts.from_archive += len(items)
                else:
                    counts.from_tail += len(items)
                if on_progress is not None:
                    on_progress(Progress(p, done, max(done, sum(totals.values()))))
            totals[p] = counts.from_archive + counts.from_tail
            results.append(counts)
            if on_progress is not None:
                on_progress(Progress(p, done, max(done, sum(totals.values()))))
        dst.hset(dst_keys.replay_progress(), "finished_ms", schemas.now_ms())
        return ReplayResult(
            source=source.namespace,
            target=target.namespace,
            until=None if bound is None else entry_text(bound),
            partitions=results,
            seconds=time.monotonic() - started,
        )
    finally:
        src.close()
        dst.close()


def _claim_target(
    client: SyncClient,
    keys: Keys,
    source: str,
    count: int,
    chosen: list[int],
    bound: EntryId | None,
    resume: bool,
) -> dict[int, str]:
    """Check the target and record this replay in it; returns each chosen partition's
    resume point (absent: from the start)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.meta)
    pipe.hgetall(keys.replay_progress())
    meta, record = ({k.decode(): v.decode() for k, v in reply.items()} for reply in pipe.execute())
    name = keys.namespace
    if meta and not record:
        raise ReplayTargetError(
            f"target namespace {name!r} is not empty (it has a meta key and was not made by "
            "a replay): replay into a new namespace"
        )
    if record and record.get("source") != source:
        raise ReplayTargetError(
            f"target namespace {name!r} holds a replay of {record.get('source')!r}, "
            f"not of {source!r}"
        )
    if meta and int(meta.get("partitions", count)) != count:
        raise ReplayTargetError(
            f"target namespace {name!r} has {meta['partitions']} partitions, the source {count}"
        )
    positions = {p: record[f"p{p:02d}"] for p in chosen if f"p{p:02d}" in record}
    if not resume:
        touched = [p for p in chosen if f"p{p:02d}" in record or _has_state(client, keys, p)]
        if touched:
            raise ReplayTargetError(
                f"target namespace {name!r} is not empty (partition {touched[0]} has state): "
                "replay into a new namespace, or pass --resume to continue a replay of the "
                "same source"
            )
    else:
        untracked = [p for p in chosen if p not in positions and _has_state(client, keys, p)]
        if untracked:
            raise ReplayTargetError(
                f"cannot resume: partition {untracked[0]} of {name!r} has state but no "
                "recorded replay position"
            )
        if bound is not None:
            past = [p for p, at in positions.items() if parse_entry_id(at) > bound]
            if past:
                raise ReplayTargetError(
                    f"cannot resume with --until {entry_text(bound)}: partition {past[0]} of "
                    f"{name!r} is already replayed up to {positions[past[0]]}"
                )
    pipe = client.pipeline(transaction=False)
    pipe.hsetnx(keys.meta, "partitions", count)
    pipe.hsetnx(keys.meta, "created_ms", schemas.now_ms())
    pipe.hset(
        keys.replay_progress(),
        mapping={
            "source": source,
            "partitions": count,
            "until": "" if bound is None else entry_text(bound),
            "started_ms": schemas.now_ms(),
        },
    )
    pipe.hdel(keys.replay_progress(), "finished_ms")
    pipe.execute()
    return positions


def _has_state(client: SyncClient, keys: Keys, partition: int) -> bool:
    found: Any = client.exists(
        keys.trace_counter(partition),
        keys.trace_ids(partition),
        keys.deleted_traces(partition),
        keys.stream(partition),
        keys.dead_letters(partition),
    )
    return int(found) > 0


def _last_dead_letter(client: SyncClient, keys: Keys, partition: int) -> EntryId | None:
    """The entry id of the newest dead letter of a partition of the target: a replay
    dead-letters in entry-id order, so on --resume the ones up to it are already there."""
    newest: Any = client.xrevrange(keys.dead_letters(partition), count=1)
    if not newest:
        return None
    entry_id = newest[0][1].get(b"entry_id")
    return None if entry_id is None else parse_entry_id(entry_id)


def _apply(
    client: SyncClient,
    keys: Keys,
    partition: int,
    group: str,
    items: list[BatchItem],
    dead_floor: EntryId | None = None,
) -> BatchResult:
    """apply_batch, with the consumer's answer to a batch the Function refuses: split it
    until only the refused entries remain, and dead-letter those with the Function's error
    (unless the target has that dead letter already: ids up to ``dead_floor``)."""
    if not items:
        return BatchResult(0, 0, 0)
    try:
        return functions.apply_batch(client, keys, partition, group, items)
    except FoldError as exc:
        if len(items) == 1:
            entry_id, item = items[0]
            if dead_floor is not None and parse_entry_id(entry_id) <= dead_floor:
                return BatchResult(0, 0, 0)
            payload = item.payload if isinstance(item, DeadLetter) else schemas.encode(item)
            letter = DeadLetter(payload, f"fold refused it: {exc}")
            return functions.apply_batch(client, keys, partition, group, [(entry_id, letter)])
        middle = len(items) // 2
        first = _apply(client, keys, partition, group, items[:middle], dead_floor)
        second = _apply(client, keys, partition, group, items[middle:], dead_floor)
        return BatchResult(*(a + b for a, b in zip(first, second, strict=True)))


class _PartitionReader:
    """One partition's entries after ``after``, in entry-id order: the archive, then the
    stream's tail; back to the archive whenever the stream was trimmed past the position."""

    def __init__(
        self,
        client: SyncClient,
        keys: Keys,
        partition: int,
        archive: ArchiveReader,
        after: str | None,
        bound: EntryId | None,
        size: int,
    ) -> None:
        self.client = client
        self.stream = keys.stream(partition)
        self.partition = partition
        self.archive = archive
        self.position = parse_entry_id(after) if after is not None else None
        self.bound = bound
        self.size = size

    def _archived(self, counts: PartitionCounts) -> Iterator[list[BatchItem]]:
        after = None if self.position is None else entry_text(self.position)
        until_ms = None if self.bound is None else self.bound[0]
        batch: list[BatchItem] = []
        for entry_id, entry in self.archive.entries(self.partition, after, until_ms):
            at = parse_entry_id(entry_id)
            if self.bound is not None and at > self.bound:
                break
            if self.position is not None and at <= self.position:
                counts.duplicates += 1
                continue
            self.position = at
            batch.append(archived_item(entry_id, entry))
            if len(batch) >= self.size:
                yield batch
                batch = []
        if batch:
            yield batch

    def batches(self, counts: PartitionCounts) -> Iterator[tuple[list[BatchItem], str]]:
        end = "+" if self.bound is None else entry_text(self.bound)
        # The position at which the archive was last found to hold nothing more.
        exhausted_at: EntryId | bool | None = False
        while True:
            before = self.position
            for batch in self._archived(counts):
                yield batch, "archive"
            if self.position == before:
                exhausted_at = self.position
            if self.bound is not None and self.position is not None and self.position >= self.bound:
                return
            while True:
                start = "-" if self.position is None else "(" + entry_text(self.position)
                # One transaction: the page and the stream's trim marks are of one instant.
                pipe = topology.node_client(self.client, self.stream).pipeline(transaction=True)
                pipe.exists(self.stream)
                pipe.xinfo_stream(self.stream)
                pipe.xrange(self.stream, start, end, count=self.size)
                replies = pipe.execute(raise_on_error=False)
                if not replies[0]:
                    return  # no stream: a partition nothing was written to (or all archived)
                info, entries = replies[1], replies[2]
                if isinstance(info, Exception):
                    raise info
                if isinstance(entries, Exception):
                    raise entries
                if self._may_miss(info):
                    if exhausted_at != self.position:
                        break  # entries before the stream's first may be archived: read on
                    self._check_archived(info)
                if not entries:
                    return
                out: list[BatchItem] = []
                for entry_id, item in decode_entries(entries):
                    at = parse_entry_id(entry_id)
                    if self.position is not None and at <= self.position:
                        counts.duplicates += 1
                        continue
                    self.position = at
                    out.append((_text(entry_id), item))
                if out:
                    yield out, "tail"
                if len(entries) < self.size:
                    return

    def _may_miss(self, info: dict[str, Any]) -> bool:
        """Whether entries after the position may be gone from the stream: some were removed
        (trimmed: ``entries-added`` > ``length``; or XDELed) and the position is before the
        stream's first entry (or before the largest deleted id)."""
        position = self.position or (0, 0)
        removed = int(info["entries-added"]) - int(info["length"])
        first = parse_entry_id(info.get("recorded-first-entry-id") or b"0-0")
        deleted = parse_entry_id(info.get("max-deleted-entry-id") or b"0-0")
        return (removed > 0 and first > position) or deleted > position

    def _check_archived(self, info: dict[str, Any]) -> None:
        """The archive holds nothing after the position: fine when every entry removed from
        the stream is archived (the archiver trims only what it archived, so its rows cover
        them); otherwise removed entries are nowhere, and the replay must not go on."""
        removed = int(info["entries-added"]) - int(info["length"])
        archived = self.archive.rows(self.partition)
        if archived >= removed and parse_entry_id(info.get("max-deleted-entry-id") or b"0-0") <= (
            self.position or (0, 0)
        ):
            return
        first = (info.get("recorded-first-entry-id") or b"?").decode()
        raise LogGapError(
            f"partition {self.partition}: {removed:,} entries were removed from the stream "
            f"(it now starts at {first}) but the archive holds {archived:,} and nothing after "
            f"{'the start' if self.position is None else entry_text(self.position)}: "
            "the entries between are not in the archive (is the archive configured for this "
            "namespace?)"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
