"""Who changed what, and when: a trace's history from the archive and the live tail, its
state as of a time, one writer's changes across traces, and their undo.

The log is the record: every event of a trace, in entry-id order, from the archive's
segments (``archive.reader.read_trace``) and then the stream after them.  The history folds
those events with the fold's own rule (every tag, metadata key and attribute is a
last-writer-wins register stamped with the entry id; ``trace_deleted`` forgets the trace),
so the state it ends with is the state the fold holds, and ``as_of`` is the same fold cut
at a point of the log's clock (the entry ids' milliseconds).

Reading order (no gap, no duplicate at the seam): the archive's last entry id ``A`` is
listed first, then the stream after ``A`` is read, then the archive: an entry trimmed from
the stream in between was archived before the trim, so the second listing holds it, and an
entry found in both is kept once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import redis
import redis.cluster

from tracetags import schemas
from tracetags.connections import SyncClient
from tracetags.errors import ValidationError
from tracetags.keys import NAME_TAG, Keys, partition_of
from tracetags.schemas import (
    EntryPosition,
    Event,
    TagsDeleted,
    TagsSet,
    TraceDeleted,
    TraceFinished,
    TraceStarted,
    parse_entry_id,
)
from tracetags.settings import Settings, parse_duration_ms

#: Largest sequence number of an entry id: a bound given as a time covers its whole ms.
MAX_SEQ: Final = 2**64 - 1
_PAGE: Final = 10_000
_AGO_RE: Final = re.compile(r"\d+(?:\.\d+)?(?:ms|s|m|h|d)")
#: Up to this many traces are read one by one (by trace id); more, by one pass over the log.
_FEW: Final = 8

#: Register names of the trace hash (keys.py) as the filter language names them.
_ATTRIBUTES: Final = {
    "e": "attributes.experiment_id",
    "s": "attributes.timestamp_ms",
    "d": "attributes.execution_time_ms",
    "S": "attributes.status",
    "c": "attributes.client_request_id",
}
_REGISTERS: Final = {name: register for register, name in _ATTRIBUTES.items()}


def field_of(register: str) -> str:
    """``tags.<k>``, ``metadata.<k>`` or ``attributes.<name>`` of a register name."""
    if len(register) == 1:
        return _ATTRIBUTES[register]
    return ("tags." if register[0] == "t" else "metadata.") + register[1:]


def register_of(field: str) -> str:
    """The register name of ``tags.<k>``, ``metadata.<k>`` or ``attributes.<name>``."""
    if field in _REGISTERS:
        return _REGISTERS[field]
    for prefix, letter in (("tags.", "t"), ("metadata.", "m")):
        if field.startswith(prefix) and len(field) > len(prefix):
            return letter + schemas.check_key(field[len(prefix) :], prefix[:-1])
    raise ValidationError(
        f"--key {field!r}: expected tags.<key>, metadata.<key> or one of " + ", ".join(_REGISTERS)
    )


def registers_of(event: Event) -> list[tuple[str, str | None]]:
    """The registers an event writes, in the order the fold writes them (``trace_deleted``
    writes none: it forgets the trace)."""
    cls = type(event)
    if cls is TagsSet:
        return [("t" + k, v) for k, v in event.tags.items()]  # type: ignore[union-attr]
    if cls is TagsDeleted:
        return [("t" + k, None) for k in event.keys]  # type: ignore[union-attr]
    if cls is TraceStarted or cls is TraceFinished:
        trace: TraceStarted | TraceFinished = event  # type: ignore[assignment]
        out: list[tuple[str, str | None]] = [
            ("e", trace.experiment_id),
            ("s", str(trace.timestamp_ms)),
        ]
        if isinstance(trace, TraceFinished):
            out += [("d", str(trace.execution_time_ms)), ("S", trace.status)]
        else:
            out.append(("S", "IN_PROGRESS"))
        if trace.client_request_id is not None:
            out.append(("c", trace.client_request_id))
        tags = dict(trace.tags)
        if trace.name is not None:
            tags[NAME_TAG] = trace.name  # the name field wins over the same event's tag
        out += [("t" + k, v) for k, v in tags.items()]
        out += [("m" + k, v) for k, v in trace.metadata.items()]
        return out
    return []


# --- the history of one trace -------------------------------------------------------------


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One register an event wrote."""

    #: ``tags.<key>``, ``metadata.<key>`` or ``attributes.<name>``.
    field: str
    #: The value before the event (None: not set).
    before: str | None
    #: The value the event wrote (None: deleted).
    after: str | None
    #: Entry id of the newer write that replaced this one (None: it is the current value).
    overwritten_by: str | None = None


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a trace's history."""

    entry_id: str
    partition: int
    #: The log's clock: the entry id's milliseconds.
    time_ms: int
    #: When the writer made the event (its own clock; the log's order is the entry id's).
    emitted_at_ms: int
    type: str
    trace_id: str
    event_id: str
    source: str | None
    changes: list[Change]
    #: Every change of the event was replaced by a newer write (last-writer-wins by entry
    #: id): nothing it wrote is current.  False for an event that changed nothing.
    lost: bool = False

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ms / 1000, UTC)


_TYPE_NAMES: Final = {
    TraceStarted: "trace_started",
    TraceFinished: "trace_finished",
    TagsSet: "tags_set",
    TagsDeleted: "tags_deleted",
    TraceDeleted: "trace_deleted",
}

#: A register: (entry id of its writer, value or None for a tombstone).
Register = tuple[EntryPosition, str | None]
Entry = tuple[str, Event]


class _Folded:
    """The fold of one trace's events in entry-id order, keeping every change."""

    def __init__(self) -> None:
        self.registers: dict[str, Register] = {}
        self.exists = False
        #: (index of the entry, index of the change) of each register's current writer.
        self.writer: dict[str, tuple[int, int]] = {}
        self.entries: list[tuple[str, Event, list[dict[str, Any]]]] = []

    def apply(self, entry_id: str, event: Event) -> None:
        stamp = parse_entry_id(entry_id)
        changes: list[dict[str, Any]] = []
        at = len(self.entries)
        if type(event) is TraceDeleted:
            writes: list[tuple[str, str | None]] = [
                (name, None) for name, (_, value) in self.registers.items() if value is not None
            ]
        else:
            writes = registers_of(event)
        for name, value in writes:
            before = self.registers.get(name)
            previous = self.writer.get(name)
            if previous is not None:
                self.entries[previous[0]][2][previous[1]]["overwritten_by"] = entry_id
            changes.append(
                {"field": field_of(name), "before": None if before is None else before[1],
                 "after": value, "overwritten_by": None}
            )  # fmt: skip
            self.writer[name] = (at, len(changes) - 1)
            self.registers[name] = (stamp, value)
        if type(event) is TraceDeleted:
            # The fold forgets the trace: later writes start from nothing.
            self.registers.clear()
            self.exists = False
        else:
            self.exists = True
        self.entries.append((entry_id, event, changes))

    def history(self, partition: int) -> list[HistoryEntry]:
        out = []
        for entry_id, event, changes in self.entries:
            made = [Change(**c) for c in changes]
            out.append(
                HistoryEntry(
                    entry_id=entry_id,
                    partition=partition,
                    time_ms=parse_entry_id(entry_id)[0],
                    emitted_at_ms=event.emitted_at_ms,
                    type=_TYPE_NAMES[type(event)],
                    trace_id=event.trace_id,
                    event_id=str(uuid.UUID(bytes=event.event_id)),
                    source=event.source,
                    changes=made,
                    lost=bool(made) and all(c.overwritten_by is not None for c in made),
                )
            )
        return out

    def info(self, trace_id: str) -> Any:
        """The folded state as a :class:`~tracetags.client.TraceInfo` (None: no trace)."""
        from tracetags.client import TraceInfo

        if not self.exists:
            return None
        values = {name: value for name, (_, value) in self.registers.items() if value is not None}

        def number(name: str) -> int | None:
            return None if name not in values else int(values[name])

        return TraceInfo(
            trace_id=trace_id,
            experiment_id=values.get("e"),
            timestamp_ms=number("s"),
            execution_time_ms=number("d"),
            status=values.get("S"),
            client_request_id=values.get("c"),
            tags={n[1:]: v for n, v in values.items() if len(n) > 1 and n[0] == "t"},
            request_metadata={n[1:]: v for n, v in values.items() if len(n) > 1 and n[0] == "m"},
        )


def fold(entries: Iterable[Entry]) -> _Folded:
    """Fold a trace's entries (in entry-id order)."""
    folded = _Folded()
    for entry_id, event in entries:
        folded.apply(entry_id, event)
    return folded


def follow(history: Sequence[HistoryEntry], field: str) -> list[HistoryEntry]:
    """Only the entries that changed ``field`` (``tags.<k>``...), each with that change only."""
    register_of(field)  # validates the name
    out = []
    for entry in history:
        kept = [c for c in entry.changes if c.field == field]
        if kept:
            lost = kept[0].overwritten_by is not None
            out.append(msgspec.structs.replace(entry, changes=kept, lost=lost))
    return out


# --- reading a trace's entries ------------------------------------------------------------


def _needle(trace_id: str) -> bytes:
    """The msgpack form of the trace id: every payload of the trace holds these bytes, so a
    substring test (in C) passes over other traces' entries without decoding them."""
    return msgspec.msgpack.encode(trace_id)


def tail_entries(
    client: SyncClient,
    keys: Keys,
    partition: int,
    trace_ids: set[str],
    *,
    after: EntryPosition | None = None,
    until: EntryPosition | None = None,
    before: EntryPosition | None = None,
) -> Iterator[Entry]:
    """The stream's entries of ``trace_ids`` after ``after`` up to ``until`` and before
    ``before`` (entry ids; None: no bound), in entry-id order, by a scan.  Entries that do
    not decode are skipped (they belong to no trace)."""
    # A few traces: a substring test per payload passes over the others undecoded; many:
    # decoding each entry once is cheaper than testing every needle.
    needles = [_needle(t) for t in trace_ids] if len(trace_ids) <= _FEW else []
    one = needles[0] if len(needles) == 1 else None
    cursor = "-" if after is None else "(" + schemas.entry_text(after)
    end = "+" if until is None else _end_text(until)
    if before is not None and (until is None or before <= until):
        end = "(" + schemas.entry_text(before)
    stream = keys.stream(partition)
    field = schemas.ENTRY_FIELD
    while True:
        page: Any = client.xrange(stream, cursor, end, count=_PAGE)
        for raw_id, fields in page:
            payload = fields.get(field)
            if payload is None:
                continue
            if one is not None:
                if one not in payload:
                    continue
            elif needles and not any(n in payload for n in needles):
                continue
            try:
                event = schemas.decode(payload)
            except ValueError:
                continue
            if event.trace_id in trace_ids:
                yield raw_id.decode(), event
        if len(page) < _PAGE:
            return
        cursor = "(" + page[-1][0].decode()


def _end_text(until: EntryPosition) -> str:
    return str(until[0]) if until[1] == MAX_SEQ else schemas.entry_text(until)


#: Pending entries beyond this many: the index is not used (a scan finds them too).
_MAX_PENDING: Final = 10_000


def indexed_tail(
    settings: Settings,
    client: SyncClient,
    partition: int,
    trace_ids: set[str],
    *,
    after: EntryPosition | None = None,
    until: EntryPosition | None = None,
) -> list[Entry] | None:
    """The stream's entries of ``trace_ids`` (as :func:`tail_entries`) through the history
    index the consumer keeps (``Keys.history_index``), or None when it cannot answer.

    The index holds every entry a consumer delivered, from its start on, until it expires
    (its expiry is refreshed by every entry, so an entry younger than the expiry is there).
    So the index answers for the entries delivered to the fold group since ``max(start, now -
    expiry)``; entries before that (normally archived already) and those not delivered yet
    (the fold's lag) are scanned, and pending ones are read by id.
    """
    keys = Keys(settings.namespace)
    stream = keys.stream(partition)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.history_index_start(partition))
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, settings.consumer_group)
    ordered = sorted(trace_ids)
    for trace_id in ordered:
        pipe.get(keys.history_index(partition, trace_id))
    replies: list[Any] = pipe.execute(raise_on_error=False)
    start, groups, pending = replies[:3]
    now = _server_time(client, stream)
    if any(isinstance(r, Exception) for r in replies):
        if isinstance(groups, redis.ResponseError) and not client.exists(stream):
            return []
        return None
    if b"start" not in start:
        return None
    group = next((g for g in groups if g["name"] == settings.consumer_group.encode()), None)
    if group is None or (pending and pending["pending"] > _MAX_PENDING):
        return None
    covered = parse_entry_id(start[b"start"])
    if b"ttl_ms" in start:
        oldest = int(now[0]) * 1000 + int(now[1]) // 1000 - int(start[b"ttl_ms"]) + 1
        covered = max(covered, (oldest, 0))
    delivered = parse_entry_id(group["last-delivered-id"])
    candidates: set[EntryPosition] = set()
    for text in replies[3:]:
        if text:
            candidates.update(parse_entry_id(i) for i in text.decode().split(",") if i)
    if pending and pending["pending"]:
        held: Any = client.xpending_range(
            stream, settings.consumer_group, min="-", max="+", count=_MAX_PENDING
        )
        candidates.update(parse_entry_id(p["message_id"]) for p in held)
    low = after if after is not None else (0, 0)
    wanted = sorted(
        c for c in candidates
        if low < c and covered <= c <= delivered and (until is None or c <= until)
    )  # fmt: skip
    found: dict[EntryPosition, Entry] = {}
    # Older than the index's cover, and not delivered yet: scanned.
    if low < covered:
        for entry_id, event in tail_entries(client, keys, partition, trace_ids, after=after,
                                            until=until, before=covered):  # fmt: skip
            found[parse_entry_id(entry_id)] = (entry_id, event)
    for entry_id, event in tail_entries(client, keys, partition, trace_ids,
                                        after=max(low, delivered), until=until):  # fmt: skip
        found[parse_entry_id(entry_id)] = (entry_id, event)
    if wanted:
        fetch = client.pipeline(transaction=False)
        for position in wanted:
            text = schemas.entry_text(position)
            fetch.xrange(stream, text, text)
        for reply in fetch.execute():
            for raw_id, fields in reply:  # empty: trimmed since (then it is archived)
                payload = fields.get(schemas.ENTRY_FIELD)
                try:
                    event = schemas.decode(payload)
                except (ValueError, TypeError):
                    continue
                if event.trace_id in trace_ids:
                    found[parse_entry_id(raw_id)] = (raw_id.decode(), event)
    return [found[p] for p in sorted(found)]


def entries_of(
    settings: Settings,
    client: SyncClient,
    partition: int,
    trace_ids: set[str],
    *,
    until: EntryPosition | None = None,
) -> dict[str, list[Entry]]:
    """Every entry of each of ``trace_ids`` (all of ``partition``) in entry-id order up to
    ``until``, from the archive and the live tail (the seam rule of the module docstring)."""
    from tracetags.archive import manifest, open_store
    from tracetags.archive.reader import read_partition, read_trace

    keys = Keys(settings.namespace)
    store = open_store(settings)
    archived_to = None
    if store is not None:
        archived_to = manifest.archived_up_to(
            manifest.list_visible(store, settings.namespace, partition)
        )
    found: dict[str, dict[EntryPosition, Entry]] = {t: {} for t in trace_ids}
    tail: Iterable[Entry] | None = None
    if settings.history_index and len(trace_ids) <= _FEW:
        tail = indexed_tail(settings, client, partition, trace_ids, after=archived_to, until=until)
    if tail is None:
        tail = tail_entries(client, keys, partition, trace_ids, after=archived_to, until=until)
    for entry_id, event in tail:
        found[event.trace_id][parse_entry_id(entry_id)] = (entry_id, event)
    if store is not None:
        until_ms = None if until is None else until[0]
        archived: Iterable[tuple[str, Event | bytes]]
        if len(trace_ids) <= _FEW:
            archived = (
                row
                for trace_id in trace_ids
                for row in read_trace(
                    store, settings.namespace, partition, trace_id, until_ms=until_ms
                )
            )
        else:
            archived = read_partition(store, settings.namespace, partition, until_ms=until_ms)
        for entry_id, item in archived:
            if isinstance(item, bytes) or item.trace_id not in found:
                continue
            position = parse_entry_id(entry_id)
            if until is None or position <= until:
                found[item.trace_id].setdefault(position, (entry_id, item))
    return {t: [rows[p] for p in sorted(rows)] for t, rows in found.items()}


def _server_time(client: SyncClient, key: str) -> Any:
    """TIME of the node that holds ``key`` (a cluster pipeline cannot route a command
    without a key)."""
    if isinstance(client, redis.cluster.RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return client.execute_command("TIME", target_nodes=node)  # type: ignore[no-untyped-call]
    return client.time()


def trace_entries(
    settings: Settings,
    client: SyncClient,
    trace_id: str,
    partitions: int,
    *,
    until: EntryPosition | None = None,
) -> tuple[int, list[Entry]]:
    """(partition, every entry of ``trace_id`` in entry-id order up to ``until``) from the
    archive and the live tail."""
    partition = partition_of(trace_id, partitions)
    return partition, entries_of(settings, client, partition, {trace_id}, until=until)[trace_id]


# --- points of the log's clock ------------------------------------------------------------


def parse_time(value: datetime | str | int | None) -> EntryPosition | None:
    """A point of the log's clock: a datetime, an ISO-8601 text (UTC unless it has an
    offset), epoch milliseconds (int or digits), an entry id ``ms-seq``, or a duration ago
    (``90s``, ``15m``, ``2h``, ``7d``: this machine's clock minus it); a time covers its
    whole millisecond (every entry id of it)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (int(when.timestamp() * 1000 // 1), MAX_SEQ)
    if isinstance(value, bool):
        raise ValidationError(f"time {value!r}: expected a datetime, ISO-8601 text or epoch ms")
    if isinstance(value, int):
        if value < 0:
            raise ValidationError(f"time {value!r}: epoch milliseconds are not negative")
        return (value, MAX_SEQ)
    from tracetags.archive.replay import parse_until

    ago = _AGO_RE.fullmatch(value.strip())
    if ago is not None:
        duration = parse_duration_ms(ago[0])
        assert duration is not None
        return (max(0, schemas.now_ms() - duration), MAX_SEQ)
    bound = parse_until(value)
    assert bound is not None
    return bound


def window(
    since: datetime | str | int | None, until: datetime | str | int | None
) -> tuple[EntryPosition | None, EntryPosition | None]:
    """``(since, until)`` as entry ids, both inclusive: a time as ``since`` starts at its
    millisecond's first entry id, a time as ``until`` ends at its last."""
    low, high = parse_time(since), parse_time(until)
    if low is not None and low[1] == MAX_SEQ:
        low = (low[0], 0)
    return low, high


def time_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


# --- one writer's changes across traces ---------------------------------------------------


class SourceReport(msgspec.Struct, frozen=True, kw_only=True):
    """The changes one writer made in a window of the log's clock."""

    source: str
    since_ms: int | None
    until_ms: int | None
    #: The writer's events in the window, by partition then entry id.
    entries: list[HistoryEntry]
    #: Archive segments read (after the time bounds and the source column's statistics
    #: left the others out) and skipped.
    segments_read: int = 0
    segments_skipped: int = 0

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def trace_ids(self) -> list[str]:
        return sorted({e.trace_id for e in self.entries})


def _archived_by_source(
    store: Any,
    namespace: str,
    partition: int,
    source: str,
    since: EntryPosition | None,
    until: EntryPosition | None,
    counts: list[int],
) -> Iterator[Entry]:
    """The archived entries of ``source`` in the window.  Segments outside the window are
    not read (their id range is in the manifest's names); in the others, the small,
    dictionary-encoded ``source`` and ``entry_ms`` columns are decoded first and the rest
    only for the rows that match."""
    import pyarrow.compute as pc

    from tracetags.archive import manifest, segments

    for segment in manifest.list_visible(store, namespace, partition):
        if (since is not None and segment.last < since) or (
            until is not None and segment.first > until
        ):
            counts[1] += 1
            continue
        counts[0] += 1
        entry = manifest.read_entry(store, segment.manifest_name)
        data = manifest.read_segment_bytes(store, entry)
        head = segments.read_table(data, columns=["source", "entry_ms"])
        mask = pc.equal(head.column("source"), source)
        if since is not None:
            mask = pc.and_(mask, pc.greater_equal(head.column("entry_ms"), since[0]))
        if until is not None:
            mask = pc.and_(mask, pc.less_equal(head.column("entry_ms"), until[0]))
        mask = pc.fill_null(mask, False)
        if not pc.any(mask).as_py():
            continue
        table = segments.read_table(data).filter(mask)
        for entry_id, item in segments.rows_of(table):
            if isinstance(item, bytes):
                continue
            position = parse_entry_id(entry_id)
            if (since is None or position >= since) and (until is None or position <= until):
                yield entry_id, item


def source_entries(
    settings: Settings,
    client: SyncClient,
    partitions: int,
    source: str,
    *,
    since: EntryPosition | None = None,
    until: EntryPosition | None = None,
    counts: list[int] | None = None,
) -> dict[int, list[Entry]]:
    """Per partition, the entries ``source`` wrote in the window, in entry-id order."""
    from tracetags.archive import open_store

    schemas.check_source(source)
    store = open_store(settings)
    keys = Keys(settings.namespace)
    needle = _needle(source)
    counts = [0, 0] if counts is None else counts
    out: dict[int, list[Entry]] = {}
    for partition in range(partitions):
        found: dict[EntryPosition, Entry] = {}
        # Tail first, then the archive (the seam rule of the module docstring).
        cursor = "-" if since is None else f"{since[0]}-{since[1]}"
        end = "+" if until is None else _end_text(until)
        while True:
            page: Any = client.xrange(keys.stream(partition), cursor, end, count=_PAGE)
            for raw_id, fields in page:
                payload = fields.get(schemas.ENTRY_FIELD)
                if payload is None or needle not in payload:
                    continue
                try:
                    event = schemas.decode(payload)
                except ValueError:
                    continue
                if event.source == source:
                    found[parse_entry_id(raw_id)] = (raw_id.decode(), event)
            if len(page) < _PAGE:
                break
            cursor = "(" + page[-1][0].decode()
        if store is not None:
            for entry_id, event in _archived_by_source(
                store, settings.namespace, partition, source, since, until, counts
            ):
                found.setdefault(parse_entry_id(entry_id), (entry_id, event))
        if found:
            out[partition] = [found[p] for p in sorted(found)]
    return out


# --- undo ---------------------------------------------------------------------------------


class UndoStep(msgspec.Struct, frozen=True, kw_only=True):
    """The reversing events of one trace."""

    trace_id: str
    #: Tags to set back to their value before the writer's first change in the window.
    set: dict[str, str] = {}
    #: Tags the writer created: deleted.
    delete: list[str] = []
    #: Fields left alone, with why (changed since by another writer, not a tag, ...).
    skipped: dict[str, str] = {}


def undo_source_name(source: str) -> str:
    """The source an undo writes under: ``undo:<source>`` (cut to the length limit)."""
    return ("undo:" + source)[: schemas.MAX_SOURCE_LENGTH]


def plan_undo(
    source: str,
    histories: dict[str, list[HistoryEntry]],
    since: EntryPosition | None,
    until: EntryPosition | None,
) -> list[UndoStep]:
    """For each trace, the tag values to restore so that every tag ``source`` changed in the
    window is back at its value from before that change (or deleted if it had none).  A
    field someone else changed afterwards is left alone (it is theirs now), and so are
    metadata and attributes (no event sets them alone) and deleted traces."""
    steps = []
    for trace_id in sorted(histories):
        first: dict[str, Change] = {}
        last: dict[str, tuple[HistoryEntry, Change]] = {}
        deleted_trace = False
        for entry in histories[trace_id]:
            position = parse_entry_id(entry.entry_id)
            mine = (
                entry.source == source
                and (since is None or position >= since)
                and (until is None or position <= until)
            )
            if mine and entry.type == "trace_deleted":
                deleted_trace = True
            for change in entry.changes:
                if mine and entry.type != "trace_deleted":
                    first.setdefault(change.field, change)
                last[change.field] = (entry, change)
        to_set: dict[str, str] = {}
        to_delete: list[str] = []
        skipped: dict[str, str] = {}
        if deleted_trace:
            skipped["trace"] = "the writer deleted the trace: a deletion is not undone"
        for field, change in first.items():
            latest_entry, latest = last[field]
            if latest_entry.source not in (source, undo_source_name(source)):
                skipped[field] = f"changed since by {latest_entry.source or 'an unnamed writer'}"
                continue
            if latest_entry.type == "trace_deleted":
                skipped[field] = "the trace was deleted since"
                continue
            if not field.startswith("tags."):
                skipped[field] = "only tags are undone"
                continue
            if latest.after == change.before:
                continue
            key = field[len("tags.") :]
            if change.before is None:
                to_delete.append(key)
            else:
                to_set[key] = change.before
        if to_set or to_delete or skipped:
            steps.append(UndoStep(trace_id=trace_id, set=to_set, delete=to_delete, skipped=skipped))
    return steps
