"""The read side: ``Client`` reads folded state (get_trace), searches, counts and aggregates
traces with MLflow filter strings (search_traces, count, stats, explain), waits for the fold
to catch up (wait_applied) and reports the health of every partition (status)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import redis
import redis.cluster

from tracetags import functions, history, redis_errors, schemas, topology
from tracetags.archive import state as archive_state
from tracetags.archive.state import ArchiveStatus
from tracetags.connections import socket_options, sync_client
from tracetags.errors import BulkWriteError, TracetagsTimeoutError
from tracetags.keys import NAME_TAG, Keys, field_label, partition_of
from tracetags.producer import Receipt, TagProducer
from tracetags.query import executor
from tracetags.query.limits import FilterLimits
from tracetags.schemas import parse_entry_id
from tracetags.settings import Settings

if TYPE_CHECKING:
    from tracetags.archive.digest import Digest

#: Consumers write a heartbeat every HEARTBEAT_MS; one silent for HEARTBEAT_TTL_MS counts as
#: gone (XINFO cannot tell: Redis 7.0 registers a consumer only once it has read an entry).
HEARTBEAT_MS = 1_000
HEARTBEAT_TTL_MS = 5_000


def consumer_client_name(settings: Settings, consumer: str) -> str:
    """The connection name a consumer's fold connection carries (``CLIENT LIST`` shows it:
    liveness that needs no write, so it holds while Redis is read-only or out of memory)."""
    return f"tracetags:{settings.namespace}:{consumer}"


# gc=False: a page makes a hundred of each, and they hold only strings, ints and dicts of
# strings (never a cycle), so the cycle collector need not track them.
class TraceInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One trace's folded state, shaped like MLflow's ``TraceInfo``."""

    trace_id: str
    experiment_id: str | None
    timestamp_ms: int | None
    execution_time_ms: int | None
    status: str | None
    client_request_id: str | None
    tags: dict[str, str]
    request_metadata: dict[str, str]

    @property
    def request_id(self) -> str:
        """MLflow 2.x name of the trace id."""
        return self.trace_id

    @property
    def name(self) -> str | None:
        """The trace name: the tag ``mlflow.traceName``."""
        return self.tags.get(NAME_TAG)

    @property
    def trace_metadata(self) -> dict[str, str]:
        """MLflow 3.x name of ``request_metadata``."""
        return self.request_metadata

    @property
    def end_time_ms(self) -> int | None:
        if self.timestamp_ms is None:
            return None
        return self.timestamp_ms + (self.execution_time_ms or 0)


class Trace(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    info: TraceInfo


class TracePage(list[Trace]):
    """One page of ``search_traces``: a list of traces; ``token`` fetches the next page
    (None when this page ends the results)."""

    token: str | None

    def __init__(self, traces: Sequence[Trace] = (), token: str | None = None) -> None:
        super().__init__(traces)
        self.token = token


class GroupStatus(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    #: The Redis holding the partition (``host:port``; on a cluster, the primary serving
    #: its slot).
    node: str | None = None
    #: The partition's cluster slot (the keyslot of its ``{pNN}`` hash tag); None on one
    #: Redis.
    slot: int | None = None
    stream_length: int
    #: Consumers registered in the group (Redis 7.0 registers one at its first read).
    consumers: int
    pending: int
    #: Entries not yet delivered to the group (None when Redis cannot tell).
    lag: int | None
    last_delivered_id: str | None
    dead_letters: int
    traces: int
    #: Keys with lookup fingerprints (``tags.user_id``) -> ``building`` | ``ready``.
    lookups: dict[str, str] = {}
    #: Redis memory of the stream, the live tail of the log (MEMORY USAGE, an estimate).
    stream_bytes: int | None = None
    #: The partition's archive as the archiver last saw it (None: never archived).
    archive: ArchiveStatus | None = None


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One Redis of the namespace: the single one, or a primary of a cluster."""

    address: str
    partitions: list[int]
    used_memory_bytes: int | None = None
    used_memory_human: str | None = None
    #: What keeps this node from taking writes (as :attr:`Status.condition`).
    condition: str | None = None
    condition_detail: str | None = None
    #: Why the node could not be read (a cluster primary down, not yet failed over): its
    #: partitions are missing from :attr:`Status.partitions`.
    error: str | None = None


#: :attr:`Status.condition` when a cluster node holding partitions does not answer.
UNREACHABLE = "UNREACHABLE"


class Status(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str
    group: str
    #: Consumers whose heartbeat is recent (they may be idle, with nothing to fold).
    live_consumers: list[str]
    partitions: list[GroupStatus]
    used_memory_bytes: int
    used_memory_human: str
    #: What keeps Redis from working normally now (``OOM``, ``READONLY``, ``MISCONF``,
    #: ``BUSY``, ``LOADING``...; see :mod:`tracetags.redis_errors`), None when it takes
    #: writes.  Under ``BUSY`` and ``LOADING`` nothing can be read: ``partitions`` is empty.
    condition: str | None = None
    #: Redis's own words for the condition.
    condition_detail: str | None = None
    #: The archive URL these settings give (TRACETAGS_ARCHIVE_URL or the embedded default).
    archive_url: str | None = None
    #: Every node and the partitions it holds (one on a single Redis).
    nodes: list[NodeStatus] = []
    #: Whether ``nodes`` are the primaries of a Redis Cluster.
    cluster: bool = False

    @property
    def log_unbounded(self) -> bool:
        """No archive is configured and no archiver ever ran: nothing trims the log."""
        return self.archive_url is None and all(p.archive is None for p in self.partitions)

    @property
    def total_pending(self) -> int:
        return sum(p.pending for p in self.partitions)

    @property
    def total_lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def consumers(self) -> int:
        """How many consumers are running (by heartbeat)."""
        return len(self.live_consumers)


def trace_info_from_fields(fields: Sequence[str]) -> TraceInfo | None:
    """Decode a trace hash given as its flat field/value list (``HGETALL`` order; layout in
    keys.py) into a TraceInfo; None when it has no trace id (the trace is gone).

    One pass, no call per field besides ``str.partition``: a page decodes 100 of these, so
    this loop is on the hot path of every search.
    """
    trace_id = experiment_id = status = client_request_id = None
    timestamp_ms = execution_time_ms = None
    tags: dict[str, str] = {}
    metadata: dict[str, str] = {}
    pairs = iter(fields)
    for field in pairs:
        raw = next(pairs)  # HGETALL gives pairs: never exhausted here
        kind = field[0]  # no field name is empty
        if kind == "t":
            _, colon, value = raw.partition(":")
            if colon:
                tags[field[1:]] = value
        elif kind == "m":
            _, colon, value = raw.partition(":")
            if colon:
                metadata[field[1:]] = value
        elif kind == "i":
            trace_id = raw
        elif len(field) == 1 and kind in "esdSc":
            _, colon, value = raw.partition(":")
            if not colon:
                continue
            if kind == "s":
                timestamp_ms = int(value)
            elif kind == "d":
                execution_time_ms = int(value)
            elif kind == "S":
                status = value
            elif kind == "e":
                experiment_id = value
            else:
                client_request_id = value
    if trace_id is None:
        return None
    return TraceInfo(
        trace_id=trace_id,
        experiment_id=experiment_id,
        timestamp_ms=timestamp_ms,
        execution_time_ms=execution_time_ms,
        status=status,
        client_request_id=client_request_id,
        tags=tags,
        request_metadata=metadata,
    )


def trace_info_from_hash(fields: Mapping[bytes, bytes]) -> TraceInfo | None:
    """Decode a trace hash (``ns:{pNN}:t:<no>`` as redis-py's HGETALL dict) into a TraceInfo."""
    flat: list[str] = []
    for field, value in fields.items():
        flat.append(field.decode())
        flat.append(value.decode())
    return trace_info_from_fields(flat)


_Method = TypeVar("_Method", bound=Callable[..., Any])
#: What ``status`` shows for a figure the ACL does not let it read.
NOT_PERMITTED = "unknown (not permitted by the ACL)"


def _reaching_redis(method: _Method) -> _Method:
    """Turn redis-py's failures to reach or use Redis into tracetags errors naming the URL
    (redacted): unreachable, wrong credentials, refused by the ACL, busy or loading
    (:func:`tracetags.redis_errors.library_error`); other errors pass unchanged."""

    @functools.wraps(method)
    def call(self: Client, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except redis_errors.FAILURES as exc:
            mapped = redis_errors.library_error(exc, self.settings.effective_redis_url)
            if mapped is None:
                raise
            raise mapped from exc

    return call  # type: ignore[return-value]


class Client:
    """Reads and administers one namespace; writes go through an internal producer.

    A call that cannot reach Redis raises RedisUnavailableError (a ConnectionError).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.keys = Keys(self.settings.namespace)
        self.redis = sync_client(self.settings.effective_redis_url, **socket_options(self.settings))
        self._partitions: int | None = None
        self._producer: TagProducer | None = None
        self._filter_limits = FilterLimits.of(self.settings)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def partitions(self) -> int:
        """The namespace's partition count (from its meta key; settings if not created yet)."""
        if self._partitions is None:
            raw = self.redis.hget(self.keys.meta, "partitions")
            if raw is None:
                return self.settings.partition_count
            self._partitions = int(raw)
        return self._partitions

    @property
    def producer(self) -> TagProducer:
        if self._producer is None:
            self._producer = TagProducer(self.settings)
        return self._producer

    # --- reads ----------------------------------------------------------------------------

    @_reaching_redis
    def get_trace(
        self, trace_id: str, *, as_of: datetime | str | int | None = None
    ) -> Trace | None:
        """The folded state of one trace, or None if it does not exist (or was deleted).

        ``as_of``: the state at that point of the log's clock instead (a datetime, an
        ISO-8601 text, epoch ms or an entry id; the entry ids' milliseconds are the clock):
        the trace's history from the archive and the live tail, folded up to it.
        """
        schemas.check_text(schemas.check_id(trace_id, "trace_id"), "trace_id")
        if as_of is not None:
            bound = history.parse_time(as_of)
            _, entries = history.trace_entries(
                self.settings, self.redis, trace_id, self.partitions, until=bound
            )
            folded = history.fold(entries).info(trace_id)
            return None if folded is None else Trace(info=folded)
        partition = partition_of(trace_id, self.partitions)
        number: Any = self.redis.hget(self.keys.trace_ids(partition), trace_id)
        if number is None:
            return None
        fields: Any = self.redis.hgetall(self.keys.trace(partition, number.decode()))
        info = trace_info_from_hash(fields)
        return None if info is None else Trace(info=info)

    # --- history (the log: archive + live tail; see tracetags.history) --------------------

    @_reaching_redis
    def trace_history(
        self,
        trace_id: str,
        *,
        key: str | None = None,
        until: datetime | str | int | None = None,
    ) -> list[history.HistoryEntry]:
        """Every event of the trace in log order (archive, then the live tail), each with
        its entry id, time, source, type and what it changed (from -> to); a change a newer
        write replaced names that write (``overwritten_by``), and an event all of whose
        changes were replaced is marked ``lost``.  ``key`` (``tags.k``, ``metadata.k``,
        ``attributes.status``): only the changes of that field.  ``until``: only the log up to
        that time (as ``as_of`` in :meth:`get_trace`)."""
        schemas.check_id(trace_id, "trace_id")
        if key is not None:
            history.register_of(key)  # a bad name fails before anything is read
        bound = history.parse_time(until)
        partition, entries = history.trace_entries(
            self.settings, self.redis, trace_id, self.partitions, until=bound
        )
        events = history.fold(entries).history(partition)
        return events if key is None else history.follow(events, key)

    @_reaching_redis
    def source_history(
        self,
        source: str,
        *,
        since: datetime | str | int | None = None,
        until: datetime | str | int | None = None,
    ) -> history.SourceReport:
        """The events ``source`` wrote (across traces) from ``since`` to ``until`` on the
        log's clock, each with what it changed (from -> to, and whether a newer write
        replaced it); ``report.count`` and ``report.trace_ids`` sum it up.  Archive segments
        outside the window are not read, and in the others only the rows of ``source``."""
        return self._source_histories(source, since, until)[0]

    def _source_histories(
        self,
        source: str,
        since: datetime | str | int | None,
        until: datetime | str | int | None,
    ) -> tuple[history.SourceReport, dict[str, list[history.HistoryEntry]]]:
        low, high = history.window(since, until)
        counts = [0, 0]
        found = history.source_entries(
            self.settings, self.redis, self.partitions, source, since=low, until=high,
            counts=counts,
        )  # fmt: skip
        entries: list[history.HistoryEntry] = []
        histories: dict[str, list[history.HistoryEntry]] = {}
        for partition, rows in sorted(found.items()):
            wanted = {entry_id for entry_id, _ in rows}
            # Each trace's whole history gives each change its value before and whether a
            # newer write replaced it.
            traces = {event.trace_id for _, event in rows}
            whole = history.entries_of(self.settings, self.redis, partition, traces)
            for trace_id, trace_rows in whole.items():
                events = history.fold(trace_rows).history(partition)
                histories[trace_id] = events
                entries.extend(e for e in events if e.entry_id in wanted)
        entries.sort(key=lambda e: (e.partition, schemas.parse_entry_id(e.entry_id)))
        report = history.SourceReport(
            source=source,
            since_ms=None if low is None else low[0],
            until_ms=None if high is None else high[0],
            entries=entries,
            segments_read=counts[0],
            segments_skipped=counts[1],
        )
        return report, histories

    @_reaching_redis
    def undo_source(
        self,
        source: str,
        *,
        since: datetime | str | int | None = None,
        until: datetime | str | int | None = None,
        apply: bool = False,
        wait: bool = True,
        timeout: float = 300.0,
    ) -> list[history.UndoStep]:
        """The reversing events of ``source``'s changes in the window: each tag it changed
        back to its value from before (deleted if it created it), unless someone changed it
        since.  A dry run unless ``apply``; then written through the producer with the
        source ``undo:<source>`` (and, with ``wait``, applied by the fold on return)."""
        _, histories = self._source_histories(source, since, until)
        low, high = history.window(since, until)
        steps = history.plan_undo(source, histories, low, high)
        if apply and any(step.set or step.delete for step in steps):
            who = history.undo_source_name(source)
            producer = self.producer
            for step in steps:
                if step.set:
                    producer.set_tags(step.trace_id, step.set, source=who)
                if step.delete:
                    producer.delete_tags(step.trace_id, step.delete, source=who)
            receipt = producer.flush(timeout)
            if wait:
                self.wait_applied(receipt, timeout)
        return steps

    # --- queries (MLflow filter strings; see FILTER-LANGUAGE.md) ---------------------------

    @_reaching_redis
    def search_traces(
        self,
        experiment_ids: Sequence[str] | None = None,
        filter_string: str | None = None,
        order_by: Sequence[str] | None = None,
        max_results: int = executor.DEFAULT_MAX_RESULTS,
        page_token: str | None = None,
    ) -> TracePage:
        """One page of the traces matching ``filter_string`` in ``experiment_ids`` (None or
        []: all), ordered by ``order_by`` then timestamp_ms DESC, request_id ASC.

        ``page.token`` fetches the next page (None on the last).  Raises FilterSyntaxError /
        FilterSemanticError / PageTokenError (all ValueError) for bad input.
        """
        prepared = executor.prepare(experiment_ids, filter_string, order_by, self._filter_limits)
        limit = executor.check_max_results(max_results)
        page = executor.search(self.redis, self.keys, self.partitions, prepared, limit, page_token)
        traces = []
        for fields in page.rows:
            info = trace_info_from_fields(fields)
            if info is not None:
                traces.append(Trace(info=info))
        return TracePage(traces, page.token)

    @_reaching_redis
    def count(
        self, filter_string: str | None = None, experiment_ids: Sequence[str] | None = None
    ) -> int:
        """How many traces match (computed inside Redis; no trace is fetched)."""
        prepared = executor.prepare(experiment_ids, filter_string, None, self._filter_limits)
        return executor.count(
            self.redis, self.keys, self.partitions, prepared, self.settings.query_call_budget_ms
        )

    @_reaching_redis
    def stats(
        self,
        filter_string: str | None = None,
        group_by: Sequence[str] = (),
        metrics: Sequence[str] | None = None,
        experiment_ids: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Per group of ``group_by`` values (tags.<k>, metadata.<k>, status, experiment_id,
        name, run_id): ``metrics`` among count, avg, min, max, p50, p95, p99 of
        execution_time_ms (None when no trace of the group has finished).  Groups are sorted
        by count, largest first; each is ``{"group": {...}, "count": ..., ...}``.
        """
        prepared = executor.prepare(experiment_ids, filter_string, None, self._filter_limits)
        return executor.stats(
            self.redis,
            self.keys,
            self.partitions,
            prepared,
            group_by,
            metrics,
            self.settings.query_call_budget_ms,
            self.settings.stats_max_groups,
        )

    @_reaching_redis
    def explain(
        self,
        filter_string: str | None = None,
        experiment_ids: Sequence[str] | None = None,
        order_by: Sequence[str] | None = None,
        max_results: int = executor.DEFAULT_MAX_RESULTS,
        page_token: str | None = None,
        *,
        count: bool = False,
    ) -> str:
        """The plan ``search_traces`` (or ``count`` with count=True) would run, per partition,
        with estimated cardinalities and why it was chosen."""
        prepared = executor.prepare(experiment_ids, filter_string, order_by, self._filter_limits)
        limit = executor.check_max_results(max_results)
        return executor.explain(
            self.redis,
            self.keys,
            self.partitions,
            prepared,
            limit,
            page_token,
            "count" if count else "page",
        )

    # --- writes (through the producer) ----------------------------------------------------

    def set_trace_tag(
        self,
        trace_id: str,
        key: str,
        value: str,
        *,
        wait: bool = False,
        timeout: float = 30.0,
        source: str | None = None,
    ) -> None:
        """Set one tag; with ``wait=True``, return only once the fold has applied it.
        ``source``: who writes (default: ``settings.source``)."""
        self.producer.set_tags(trace_id, {key: value}, source=source)
        if wait:
            self.wait_applied(self.producer.flush(timeout), timeout)

    def delete_trace_tag(
        self,
        trace_id: str,
        key: str,
        *,
        wait: bool = False,
        timeout: float = 30.0,
        source: str | None = None,
    ) -> None:
        """Delete one tag; with ``wait=True``, return only once the fold has applied it."""
        self.producer.delete_tags(trace_id, [key], source=source)
        if wait:
            self.wait_applied(self.producer.flush(timeout), timeout)

    @_reaching_redis
    def matching_ids(
        self,
        filter_string: str | None,
        experiment_ids: Sequence[str] | None = None,
        *,
        page_size: int = 5_000,
    ) -> list[str]:
        """The ids of every trace matching now (a snapshot, walked page by page)."""
        ids: list[str] = []
        token: str | None = None
        while True:
            page = self.search_traces(experiment_ids, filter_string, None, page_size, token)
            ids.extend(trace.info.trace_id for trace in page)
            token = page.token
            if token is None:
                return ids

    @_reaching_redis
    def set_tags_where(
        self,
        filter_string: str | None,
        tags: Mapping[str, str],
        experiment_ids: Sequence[str] | None = None,
        *,
        wait: bool = False,
        timeout: float = 300.0,
        progress: Callable[[int, int], None] | None = None,
        source: str | None = None,
    ) -> int:
        """Set ``tags`` on every trace matching ``filter_string`` now; returns how many.

        The matches are taken as a snapshot first, so a tag that changes the filter's answer
        does not make the walk skip or repeat traces.  ``progress(done, total)`` is called as
        it goes; with ``wait=True`` it returns once the fold has applied every change.
        """
        checked = dict(schemas.check_mapping(tags, "tag", allow_empty=False))
        who = None if source is None else schemas.check_source(source)
        return self._bulk(filter_string, experiment_ids,
                          lambda producer, trace_id: producer.set_tags(trace_id, checked,
                                                                       source=who),
                          wait, timeout, progress)  # fmt: skip

    @_reaching_redis
    def delete_tags_where(
        self,
        filter_string: str | None,
        keys: Sequence[str],
        experiment_ids: Sequence[str] | None = None,
        *,
        wait: bool = False,
        timeout: float = 300.0,
        progress: Callable[[int, int], None] | None = None,
        source: str | None = None,
    ) -> int:
        """Delete tag ``keys`` from every trace matching ``filter_string`` now; returns how
        many traces it touched (see :meth:`set_tags_where`)."""
        checked = schemas.check_keys(keys, "tag")
        who = None if source is None else schemas.check_source(source)
        return self._bulk(filter_string, experiment_ids,
                          lambda producer, trace_id: producer.delete_tags(trace_id, checked,
                                                                          source=who),
                          wait, timeout, progress)  # fmt: skip

    def _bulk(
        self,
        filter_string: str | None,
        experiment_ids: Sequence[str] | None,
        action: Callable[[TagProducer, str], None],
        wait: bool,
        timeout: float,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        """Write one event per match through a producer of its own that blocks when its
        buffer is full (backpressure) and never drops; return how many were written, or
        raise :class:`BulkWriteError` naming the shortfall."""
        ids = self.matching_ids(filter_string, experiment_ids)
        total = len(ids)
        if not total:
            return 0
        block_ms = min(self.settings.overflow_timeout_ms, max(1, int(timeout * 1000)))
        settings = self.settings.replace(overflow="block", overflow_timeout_ms=block_ms)
        producer = TagProducer(settings)
        try:
            for done, trace_id in enumerate(ids, 1):
                action(producer, trace_id)
                if progress is not None and (done % 1_000 == 0 or done == total):
                    progress(done, total)
            receipt = producer.flush(timeout)
        except TracetagsTimeoutError as exc:
            producer.close(0)
            written = producer.stats().sent
            raise BulkWriteError(
                f"wrote {written} of {total} events, then gave up: {exc}",
                written=written,
                total=total,
            ) from exc
        producer.close(timeout)
        stats = producer.stats()
        if stats.sent != total or stats.dropped:
            raise BulkWriteError(
                f"wrote {stats.sent} of {total} events ({stats.dropped} dropped; last error: "
                f"{stats.last_error or 'none'})",
                written=stats.sent,
                total=total,
            )
        if wait:
            self.wait_applied(receipt, timeout)
        return stats.sent

    # --- the fold's progress --------------------------------------------------------------

    @_reaching_redis
    def is_applied(self, receipt: Receipt) -> bool:
        """Whether every entry up to each of the receipt's positions has been folded
        (applied or dead-lettered) by the consumer group."""
        group = self.settings.consumer_group.encode()
        for partition, position in receipt.positions.items():
            stream = self.keys.stream(partition)
            try:
                groups: Any = self.redis.xinfo_groups(stream)
            except redis.ResponseError:
                return False
            info = next((g for g in groups if g["name"] == group), None)
            if info is None or parse_entry_id(info["last-delivered-id"]) < parse_entry_id(position):
                return False
            pending: Any = self.redis.xpending_range(stream, group, min="-", max=position, count=1)
            if pending:
                return False
        return True

    @_reaching_redis
    def wait_applied(self, receipt: Receipt, timeout: float = 30.0) -> None:
        """Block until :meth:`is_applied` (a read barrier for a producer's receipt)."""
        if receipt.namespace != self.settings.namespace:
            raise ValueError(
                f"receipt is for namespace {receipt.namespace!r}, "
                f"this client reads {self.settings.namespace!r}"
            )
        deadline = time.monotonic() + timeout
        delay = 0.002
        while not self.is_applied(receipt):
            if time.monotonic() > deadline:
                raise TracetagsTimeoutError(
                    f"the fold did not reach {receipt.positions} within {timeout:g}s "
                    "(is a consumer running? see `tracetags status`)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @_reaching_redis
    def drop_lookup(self, key: str) -> int:
        """Stop keeping the lookup fingerprints of ``key`` (``tags.<k>`` or ``metadata.<k>``)
        and delete them in every partition; returns how many partitions had them.

        A consumer whose ``lookup_keys`` still names the key builds them again at its start.
        Raises ConfigError for a key of another form.
        """
        field = self.settings.replace(lookup_keys=(key,)).lookup_fields[0]
        functions.ensure_loaded(self.redis)
        dropped = 0
        for partition in range(self.partitions):
            lookups = self.keys.lookups(partition)
            dropped += int(self.redis.hexists(lookups, field))
            functions.drop_lookup(self.redis, self.keys, partition, field)
        return dropped

    @_reaching_redis
    def digest(self, partitions: Sequence[int] | None = None) -> Digest:
        """An order-independent digest of every trace's folded state, per partition (see
        :mod:`tracetags.archive.digest`): equal digests mean equal tags, metadata and
        attributes of equal sets of traces."""
        from tracetags.archive.digest import digest

        return digest(self.redis, self.settings.namespace, partitions)

    @_reaching_redis
    def status(self) -> Status:
        """Per partition: stream length, consumers, pending, lag, dead letters, traces, and
        the node holding it; Redis memory; and the condition that keeps Redis from taking
        writes, if any (the rest is read wherever reads work).  On a cluster every primary
        is read on its own: one that does not answer is reported (condition
        ``UNREACHABLE``) and the others' partitions are still shown."""
        cluster = isinstance(self.redis, redis.cluster.RedisCluster)
        checked = None
        if not isinstance(self.redis, redis.cluster.RedisCluster):
            # Asked first: under BUSY or LOADING even the partition count cannot be read.
            checked = self._write_condition(self.redis, 0)
            if checked[0] in ("BUSY", "LOADING"):
                return Status(
                    namespace=self.settings.namespace,
                    group=self.settings.consumer_group,
                    live_consumers=[],
                    partitions=[],
                    used_memory_bytes=0,
                    used_memory_human="?",
                    condition=checked[0],
                    condition_detail=checked[1],
                )
        try:
            partitions = self.partitions
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            if not cluster:
                raise
            partitions = self.settings.partition_count  # the meta key's primary is down
        rows: list[GroupStatus] = []
        node_rows: list[NodeStatus] = []
        connected: set[str] = set()
        for node in topology.nodes(self.redis, self.keys, partitions):
            try:
                node_status, node_partitions, node_consumers = self._node_status(node, checked)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not cluster:
                    raise
                node_status = NodeStatus(
                    address=node.address, partitions=node.partitions, error=str(exc)
                )
                node_partitions, node_consumers = [], set()
            node_rows.append(node_status)
            rows.extend(node_partitions)
            connected |= node_consumers
        condition, detail = None, None
        troubled = next((n for n in node_rows if n.condition or n.error), None)
        if troubled is not None:
            condition = troubled.condition or UNREACHABLE
            detail = troubled.condition_detail or troubled.error
            if cluster:
                detail = f"node {troubled.address}: {detail}"
        alive_since = schemas.now_ms() - HEARTBEAT_TTL_MS
        try:
            live: Any = self.redis.zrangebyscore(self.keys.consumers, alive_since, "+inf")
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            if not cluster:
                raise
            live = []  # the heartbeats' node is down: the connections alone tell
        used = sum(n.used_memory_bytes or 0 for n in node_rows)
        return Status(
            namespace=self.settings.namespace,
            group=self.settings.consumer_group,
            live_consumers=sorted({name.decode() for name in live} | connected),
            partitions=sorted(rows, key=lambda row: row.partition),
            used_memory_bytes=used,
            used_memory_human=(
                _human_bytes(used) if cluster else (node_rows[0].used_memory_human or "?")
            ),
            archive_url=self.settings.archive_location,
            condition=condition,
            condition_detail=detail,
            nodes=node_rows,
            cluster=cluster,
        )

    def _node_status(
        self, node: topology.Node, checked: tuple[str | None, str | None] | None = None
    ) -> tuple[NodeStatus, list[GroupStatus], set[str]]:
        """One node's status, its partitions' rows and the consumers connected to it
        (``checked``: its write condition, when already asked)."""
        first = node.partitions[0] if node.partitions else None
        condition, detail = checked or self._write_condition(node.client, first)
        if condition in ("BUSY", "LOADING"):
            return (
                NodeStatus(
                    address=node.address,
                    partitions=node.partitions,
                    condition=condition,
                    condition_detail=detail,
                ),
                [],
                set(),
            )
        group = self.settings.consumer_group.encode()
        rows: list[GroupStatus] = []
        for partition in node.partitions:
            stream = self.keys.stream(partition)
            pipe = node.client.pipeline(transaction=False)
            pipe.xlen(stream)
            pipe.xlen(self.keys.dead_letters(partition))
            pipe.hlen(self.keys.trace_ids(partition))
            pipe.hgetall(self.keys.lookups(partition))
            pipe.hgetall(self.keys.archive_state(partition))
            length, dead, traces, lookups, archived = pipe.execute()
            stream_bytes = self._allowed(functools.partial(node.client.memory_usage, stream))
            try:
                groups: Any = node.client.xinfo_groups(stream)
            except redis.ResponseError:
                groups = []
            info = next((g for g in groups if g["name"] == group), None)
            rows.append(
                GroupStatus(
                    partition=partition,
                    node=node.address,
                    slot=node.slots.get(partition),
                    stream_length=int(length),
                    consumers=int(info["consumers"]) if info else 0,
                    pending=int(info["pending"]) if info else 0,
                    lag=(
                        int(info["lag"])
                        if info and info.get("lag") is not None
                        else (int(length) if info is None else None)
                    ),
                    last_delivered_id=(info["last-delivered-id"].decode() if info else None),
                    dead_letters=int(dead),
                    traces=int(traces),
                    lookups={
                        field_label(f.decode()): state.decode() for f, state in lookups.items()
                    },
                    stream_bytes=int(stream_bytes) if stream_bytes is not None else None,
                    archive=archive_state.from_hash(archived) if archived else None,
                )
            )
        memory: Any = self._allowed(lambda: node.client.info("memory")) or {}
        node_status = NodeStatus(
            address=node.address,
            partitions=node.partitions,
            used_memory_bytes=int(memory.get("used_memory", 0)),
            used_memory_human=str(memory.get("used_memory_human", NOT_PERMITTED)),
            condition=condition,
            condition_detail=detail,
        )
        return node_status, rows, self._connected_consumers(node.client)

    @staticmethod
    def _allowed(read: Callable[[], Any]) -> Any:
        """``read()``, or None when the ACL denies it (``status`` shows what it can read)."""
        try:
            return read()
        except redis.exceptions.NoPermissionError:
            return None

    def _write_condition(
        self, client: redis.Redis, partition: int | None
    ) -> tuple[str | None, str | None]:
        """Whether a node would take a write now, asked without writing: an XADD to the
        stream of one of its partitions queued in a transaction that is then discarded.
        (The condition's name, Redis's words; no verdict for a node holding no partition.)"""
        if partition is None:
            return None, None
        pipe = client.pipeline(transaction=False)
        stream = self.keys.stream(partition)
        pipe.execute_command("MULTI")  # type: ignore[no-untyped-call]
        pipe.execute_command("XADD", stream, "*", schemas.ENTRY_FIELD, b"")  # type: ignore[no-untyped-call]
        pipe.execute_command("DISCARD")  # type: ignore[no-untyped-call]
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.exceptions.BusyLoadingError as exc:
            return "LOADING", str(exc)
        refused = next((r for r in replies if isinstance(r, Exception)), None)
        if refused is None or isinstance(refused, redis.exceptions.NoPermissionError):
            return None, None  # (a read-only ACL user cannot ask this way: no verdict)
        if isinstance(refused, redis.ConnectionError | redis.TimeoutError) and not isinstance(
            refused, redis.exceptions.BusyLoadingError
        ):
            raise refused
        return redis_errors.condition(refused), str(refused)

    def _connected_consumers(self, client: redis.Redis) -> set[str]:
        """Consumers whose fold connection to ``client`` is open now (its name, in CLIENT
        LIST): liveness that needs no write, for when the heartbeat cannot be written."""
        prefix = consumer_client_name(self.settings, "")
        try:
            clients: Any = client.client_list()
        except redis.ResponseError:  # CLIENT LIST denied (ACL): the heartbeat alone
            return set()
        return {
            str(c["name"])[len(prefix) :]
            for c in clients
            if str(c.get("name", "")).startswith(prefix)
        }


def _human_bytes(count: int) -> str:
    """A byte count as Redis's ``used_memory_human`` writes it (``1.25M``)."""
    size = float(count)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.2f}{unit}" if unit != "B" else f"{count}B"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
