"""The fire-and-forget producer: validate and encode at the call, write from a background flusher.

One sans-IO core (:class:`_Core`) owns the buffer, ordering, retries, de-duplication after an
ambiguous failure and the statistics; its flusher is a generator of I/O steps that two thin
drivers run: a thread with redis-py (:class:`TagProducer`) and an asyncio task with
redis.asyncio (:class:`AsyncTagProducer`).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, Final, NamedTuple

import msgspec
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from tracetags import redis_errors, schemas
from tracetags.cluster import AsyncRouter, SyncRouter
from tracetags.connections import (
    async_client,
    read_reply,
    read_reply_async,
    socket_options,
    sync_client,
)
from tracetags.errors import (
    BufferFullError,
    EventLimitError,
    ProducerClosedError,
    RedisRefusedError,
    RedisTlsError,
    TracetagsError,
    TracetagsTimeoutError,
    ValidationError,
)
from tracetags.keys import Keys, partition_of
from tracetags.limits import EventLimits, over_limit
from tracetags.schemas import (
    ENTRY_FIELD,
    check_id,
    check_keys,
    check_mapping,
    check_millis,
    check_optional_text,
    check_source,
    check_status,
    encode,
    new_event_id,
    now_ms,
    parse_entry_id,
)
from tracetags.settings import Settings

log = logging.getLogger("tracetags.producer")

DEFAULT_FLUSH_TIMEOUT_S: Final = 30.0
_DROP_WARNING_INTERVAL_S: Final = 10.0
# How far before the failed attempt (server clock) the de-duplication scan starts looking.
_DEDUP_CLOCK_SLACK_MS: Final = 60_000
_DEDUP_PAGE: Final = 1_000
#: While backing off, how often the flusher asks Redis whether it would take a write now:
#: buffered events go out this soon after Redis recovers, whatever the backoff had reached.
PROBE_INTERVAL_S: Final = 0.05


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """Where a producer's events landed: the last stream entry id written per partition."""

    namespace: str
    positions: dict[int, str]
    #: Events this producer dropped (buffer full, or given up at close) since the previous
    #: receipt: 0 means every event submitted before this flush was written.
    dropped: int = 0


class ProducerStats(msgspec.Struct, frozen=True, kw_only=True):
    sent: int
    buffered: int
    dropped: int
    retries: int
    last_error: str | None
    last_error_at_ms: int | None
    #: What the flusher is waiting out now (``OOM``, ``READONLY``, ``unreachable``...; see
    #: :mod:`tracetags.redis_errors`), None while writes succeed.
    condition: str | None = None


class _Pending(msgspec.Struct, frozen=True, gc=False):
    """One buffered event (a Struct: several times cheaper to make than a NamedTuple)."""

    seq: int
    trace_id: str
    event_id: bytes
    payload: bytes


class _IdOnly(msgspec.Struct):
    event_id: bytes = b""


_ID_DECODER: Final = msgspec.msgpack.Decoder(_IdOnly)


# I/O steps the core's flusher yields to its driver.
class Execute(NamedTuple):
    """Run these commands in one pipeline; send back the raw replies (as the server sent
    them: no redis-py response callbacks), a reply's error in its place, or the exception
    that cut the pipeline."""

    commands: list[tuple[Any, ...]]


class WaitForWork(NamedTuple):
    """Sleep until woken (``timeout`` None) or for at most ``timeout`` seconds."""

    timeout: float | None


class Sleep(NamedTuple):
    """Back off for ``seconds``; only closing interrupts it."""

    seconds: float


Step = Execute | WaitForWork | Sleep
Reply = list[Any] | BaseException | None


def _entry_payload(fields: Any) -> Any:
    """The event field of a stream entry as the server sent it: a flat list (RESP2) or a map."""
    if isinstance(fields, dict):
        return fields.get(ENTRY_FIELD)
    if isinstance(fields, list):
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == ENTRY_FIELD:
                return fields[i + 1]
    return None


class _Core:
    """Buffer, order, retry and de-duplication, with no I/O of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self._batch_size = settings.producer_batch_size
        self._limits = EventLimits.of(settings)
        self._buffer_size = settings.buffer_size
        self._block = settings.overflow == "block"
        self._block_timeout_s = settings.overflow_timeout_ms / 1000
        self._linger_s = settings.flush_interval_ms / 1000
        #: On a cluster, one transaction per partition (a transaction is one slot's).
        self._per_partition = settings.is_cluster
        self._wait_replicas = settings.producer_wait_replicas
        self._wait_timeout_ms = settings.producer_wait_timeout_ms
        self._backoff = ExponentialWithJitterBackoff(
            cap=settings.retry_max_ms / 1000, base=settings.retry_initial_ms / 1000
        )
        self._reset()

    def _reset(self) -> None:
        """Fresh state (also in a forked child: the parent keeps and sends its own buffer)."""
        self.lock = threading.Lock()
        self.progress = threading.Condition(self.lock)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._inflight: list[_Pending] = []
        self._seq = 0
        self._partitions: int | None = None
        self._streams: list[str] = []
        self._server_offset_ms = 0
        self._watermarks: dict[int, str] = {}
        self._positions: dict[int, str] = {}
        self._suspect_since_ms: int | None = None
        self._failures = 0
        self.closing = False
        self.abandoned = False
        self.urgent = False
        self.sent = 0
        self.dropped = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_error_at_ms: int | None = None
        self.condition: str | None = None
        #: Set while Redis refuses this producer (credentials, ACL): flush raises it at once
        #: instead of waiting for a write that an operator must first allow.
        self.refusal: TracetagsError | None = None
        self._dropped_at_receipt = 0
        self._drops_unreported = 0
        self._last_drop_warning = 0.0

    # --- call side --------------------------------------------------------------------

    def submit(self, event: schemas.Event, wake: Callable[[], None] | None = None) -> bool:
        """Buffer one validated event; True when the flusher should be woken.

        With ``overflow="block"`` and a full buffer, wakes the flusher with ``wake`` and waits
        for room (``BufferFullError`` after ``overflow_timeout_ms``); without ``wake`` (the
        asyncio flavour, whose flusher runs on the caller's own loop) it raises at once.
        """
        try:
            payload = encode(event)
        except UnicodeEncodeError:
            raise ValidationError(schemas.unencodable(event)) from None
        reason = over_limit(event, len(payload), self._limits)
        if reason is not None:
            raise EventLimitError(f"trace {event.trace_id!r}: {reason}")
        if self._block:
            self._wait_for_room(wake)
        with self.lock:
            if self.closing:
                raise ProducerClosedError("this producer is closed; create a new one")
            self._seq = seq = self._seq + 1
            queue = self._queue
            queue.append(_Pending(seq, event.trace_id, event.event_id, payload))
            n = len(queue)
            if n > self._buffer_size:
                queue.popleft()
                self.dropped += 1
                self._drops_unreported += 1
                n -= 1
                self._warn_drops()
        return n == 1 or n == self._batch_size

    def _wait_for_room(self, wake: Callable[[], None] | None) -> None:
        with self.lock:
            if len(self._queue) < self._buffer_size:
                return
            self.urgent = True
        if wake is None:
            raise BufferFullError(
                f"the producer's buffer is full ({self._buffer_size} events); "
                "await flush() before submitting more"
            )
        wake()
        with self.lock:
            room = self.progress.wait_for(
                lambda: len(self._queue) < self._buffer_size or self.closing,
                self._block_timeout_s,
            )
        if not room:
            raise BufferFullError(
                f"the producer's buffer stayed full ({self._buffer_size} events) for "
                f"{self._block_timeout_s:g}s (last error: {self.last_error or 'none'})"
            )

    def _warn_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_warning >= _DROP_WARNING_INTERVAL_S:
            self._last_drop_warning = now
            log.warning(
                "tracetags producer buffer full (%d events): dropped %d oldest events "
                "(%d in all); last error: %s",
                self._buffer_size,
                self._drops_unreported,
                self.dropped,
                self.last_error,
            )
            self._drops_unreported = 0

    def stats(self) -> ProducerStats:
        with self.lock:
            return ProducerStats(
                sent=self.sent,
                buffered=len(self._queue) + len(self._inflight),
                dropped=self.dropped,
                retries=self.retries,
                last_error=self.last_error,
                last_error_at_ms=self.last_error_at_ms,
                condition=self.condition,
            )

    def _unresolved_from(self) -> int:
        """Seq of the oldest event not yet written or dropped (``seq + 1`` when none)."""
        if self._inflight:
            return self._inflight[0].seq
        if self._queue:
            return self._queue[0].seq
        return self._seq + 1

    def flush_target(self) -> int:
        with self.lock:
            self.urgent = True
            return self._seq

    def flushed(self, target: int) -> bool:
        return self._unresolved_from() > target

    def receipt(self) -> Receipt:
        """Where events landed, and how many were dropped since the previous receipt
        (called with the lock held)."""
        dropped = self.dropped - self._dropped_at_receipt
        self._dropped_at_receipt = self.dropped
        if self._drops_unreported:
            self._last_drop_warning = 0.0
            self._warn_drops()
        return Receipt(
            namespace=self.settings.namespace, positions=dict(self._positions), dropped=dropped
        )

    def refused(self) -> TracetagsError:
        """A fresh copy of the refusal for a caller to raise."""
        refusal = self.refusal
        assert refusal is not None
        return type(refusal)(str(refusal))

    def timeout_error(self, timeout: float) -> TracetagsTimeoutError:
        with self.lock:
            left = len(self._queue) + len(self._inflight)
        return TracetagsTimeoutError(
            f"flush timed out after {timeout:g}s with {left} events still buffered "
            f"(last error: {self.last_error or 'none'})"
        )

    # --- flusher ------------------------------------------------------------------------

    def flusher(self) -> Generator[Step, Reply, None]:
        """The flusher's whole life as I/O steps: connect, then send batches in order."""
        while not self.abandoned:
            if self._partitions is None:
                reply = yield Execute(self._connect_commands())
                if not isinstance(reply, BaseException):
                    reply = next((r for r in reply or [] if isinstance(r, BaseException)), reply)
                if isinstance(reply, BaseException):
                    yield from self._failed(reply)
                    continue
                self._connected(reply or [])
                continue
            with self.lock:
                waiting = len(self._queue)
                if waiting == 0 and not self._inflight:
                    self.urgent = False
                    self.progress.notify_all()
                    if self.closing:
                        return
            if waiting == 0 and not self._inflight:
                yield WaitForWork(None)
                continue
            if waiting < self._batch_size and not self.urgent and not self._inflight:
                yield WaitForWork(self._linger_s)
            yield from self._send_all()

    def _send_all(self) -> Generator[Step, Reply, None]:
        while not self.abandoned:
            batch = self._take_batch()
            if not batch:
                return
            if self._suspect_since_ms is not None:
                ok = yield from self._drop_already_written(batch)
                if not ok:
                    return
                batch = self._inflight
                if not batch:
                    continue
            attempt_ms = now_ms()
            partitions = self._partitions_of(batch)
            groups = self._transactions(batch, partitions)
            reply = yield Execute(self._xadd_commands(batch, partitions, groups))
            if isinstance(reply, BaseException):
                if self._suspect_since_ms is None:
                    self._suspect_since_ms = attempt_ms
                yield from self._failed(reply)
                return
            assert reply is not None
            written, ambiguous = self._outcomes(len(batch), groups, reply)
            if ambiguous and self._suspect_since_ms is None:
                self._suspect_since_ms = attempt_ms
            error = self._confirm(batch, partitions, written)
            if error is not None:
                yield from self._failed(error)
                return

    def _take_batch(self) -> list[_Pending]:
        # Short work under the lock: every call waits for it, and a caller that blocks on
        # the lock then waits for the GIL too (up to the switch interval).
        with self.lock:
            if not self._inflight:
                queue = self._queue
                if len(queue) <= self._batch_size:
                    self._inflight = list(queue)
                    queue.clear()
                else:
                    popleft = queue.popleft
                    self._inflight = [popleft() for _ in range(self._batch_size)]
                if self._block:
                    self.progress.notify_all()  # room for callers waiting on a full buffer
            return self._inflight

    def _partition(self, trace_id: str) -> int:
        assert self._partitions is not None
        return partition_of(trace_id, self._partitions)

    def _partitions_of(self, batch: list[_Pending]) -> list[int] | None:
        """Each event's partition, or None when there is only one (the common case)."""
        count = self._partitions
        assert count is not None
        if count == 1:
            return None
        return [partition_of(p.trace_id, count) for p in batch]

    def _transactions(
        self, batch: list[_Pending], partitions: list[int] | None
    ) -> list[list[int]] | None:
        """The batch's events (indices, in order) of each transaction on a cluster, one per
        partition present; None on one Redis (one transaction)."""
        if not self._per_partition:
            return None
        if partitions is None:
            return [list(range(len(batch)))]
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(partitions):
            groups.setdefault(n, []).append(i)
        return list(groups.values())

    def _xadd_commands(
        self,
        batch: list[_Pending],
        partitions: list[int] | None,
        groups: list[list[int]] | None,
    ) -> list[tuple[Any, ...]]:
        # One transaction per batch (per partition on a cluster, where a transaction is one
        # slot's), so that a condition starting or ending in the middle of it (READONLY at a
        # failover, OOM, MISCONF) refuses all of a partition's events or none: a partition
        # written in part would land its later events before the refused ones are resent.
        # The flusher's Python time is taken from the callers (the GIL): keep it lean.
        if partitions is None:
            stream = self._streams[0]
            commands = [("XADD", stream, "*", ENTRY_FIELD, p.payload) for p in batch]
        else:
            streams = self._streams
            commands = [
                ("XADD", streams[n], "*", ENTRY_FIELD, p.payload)
                for p, n in zip(batch, partitions, strict=True)
            ]
        wait: list[tuple[Any, ...]] = []
        if self._wait_replicas:
            wait = [("WAIT", self._wait_replicas, self._wait_timeout_ms)]
        if groups is None:
            return [("MULTI",), *commands, ("EXEC",), *wait]
        out: list[tuple[Any, ...]] = []
        for group in groups:
            out.append(("MULTI",))
            out.extend(commands[i] for i in group)
            out.append(("EXEC",))
            out.extend(wait)
        return out

    def _outcomes(
        self, size: int, groups: list[list[int]] | None, reply: list[Any]
    ) -> tuple[list[Any], bool]:
        """Each event's reply (its entry id, or the error that kept it from landing or from
        being confirmed), and whether any transaction's fate is unknown (a lost connection:
        it may have landed; or landed without the replica acknowledgement WAIT asked for)."""
        if groups is None and not self._wait_replicas and isinstance(reply[-1], list):
            return reply[-1], False  # one transaction that ran: its replies are the events'
        ambiguous = False
        written: list[Any] = [None] * size
        pos = 0
        for group in groups or [range(size)]:  # type: ignore[list-item]
            n = len(group)
            unit = reply[pos : pos + n + 2]
            outcome = unit[-1]
            pos += n + 2
            if self._wait_replicas:
                acked = reply[pos]
                pos += 1
                if isinstance(outcome, list) and not (
                    isinstance(acked, int) and acked >= self._wait_replicas
                ):
                    ambiguous = True
                    outcome = (
                        acked
                        if isinstance(acked, BaseException)
                        else redis.ResponseError(
                            f"NOREPLICAS {acked} of {self._wait_replicas} replicas acknowledged "
                            f"the write within {self._wait_timeout_ms} ms"
                        )
                    )
            if isinstance(outcome, list):
                for i, entry in zip(group, outcome, strict=True):
                    written[i] = entry
                continue
            if isinstance(outcome, BaseException) and not isinstance(outcome, redis.ResponseError):
                ambiguous = True  # the connection was lost: it may have run
            else:
                # Refused as a whole (EXECABORT, or EXEC itself refused): nothing landed.
                # The first refused command says why (OOM, READONLY, ...).
                outcome = next((r for r in unit if isinstance(r, BaseException)), outcome)
            if not isinstance(outcome, BaseException):
                outcome = redis.ResponseError(f"EXEC answered {outcome!r}")
            for i in group:
                written[i] = outcome
        return written, ambiguous

    def _confirm(
        self, batch: list[_Pending], partitions: list[int] | None, replies: list[Any]
    ) -> BaseException | None:
        """Record written entries; keep any that failed (in order) for the next attempt, and
        return the last error (only a command's own error, such as WRONGTYPE, fails inside
        a transaction that ran)."""
        failed: list[_Pending] = []
        error: BaseException | None = None
        last: dict[int, Any] = {}
        if partitions is None:
            partitions = [0] * len(batch)
        for item, partition, reply in zip(batch, partitions, replies, strict=True):
            if isinstance(reply, BaseException):
                failed.append(item)
                error = reply
            else:
                last[partition] = reply
        for partition, reply in last.items():
            entry_id = reply.decode() if isinstance(reply, bytes) else str(reply)
            self._positions[partition] = entry_id
            self._watermarks[partition] = entry_id
        with self.lock:
            self.sent += len(batch) - len(failed)
            self._inflight = failed
            if error is None:
                self._recovered()
            self.progress.notify_all()
        return error

    def _recovered(self) -> None:
        """A write went through (called with the lock held)."""
        self._failures = 0
        self.refusal = None
        if self.condition is not None:
            log.info(
                "tracetags producer: writing again (%s is over; %d retries in all)",
                self.condition,
                self.retries,
            )
            self.condition = None

    def _failed(self, error: BaseException) -> Generator[Step, Reply, None]:
        """Back off after a failed write (exponential, jittered, capped), probing whether
        Redis would take a write every ``PROBE_INTERVAL_S`` to end the pause early."""
        name = redis_errors.condition(error)
        refusal = None
        if name in redis_errors.REFUSED_CODES:
            refusal = redis_errors.library_error(error, self.settings.effective_redis_url)
            if self.refusal is None:
                # Permanent until an operator acts: said once, loudly (before flush can
                # raise it); the events stay buffered (the overflow policy applies) and are
                # retried at the slowest pace.
                log.error(
                    "tracetags producer: %s; events stay buffered (overflow=%s) and are "
                    "retried every %g s until it is allowed",
                    refusal,
                    self.settings.overflow,
                    self.settings.retry_max_ms / 1000,
                )
        with self.lock:
            self.retries += 1
            self._failures += 1
            self._note_error(error)
            failures = self._failures
            started = self.condition is None
            self.condition = name
            self.refusal = refusal
            self.progress.notify_all()
        if started and refusal is None:
            log.warning(
                "tracetags producer: Redis refuses writes (%s: %s); events stay buffered and "
                "are retried in order",
                name,
                error,
            )
        slowest = self.settings.retry_max_ms / 1000
        pause = slowest if refusal is not None else self._backoff.compute(failures)
        deadline = time.monotonic() + pause
        while not self.abandoned:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            yield Sleep(min(PROBE_INTERVAL_S, left))
            probe = yield Execute(self._probe_commands())
            if (
                isinstance(probe, list)
                and len(probe) > 1
                and all(q == b"QUEUED" for q in probe[1::3])
            ):
                return

    def _probe_commands(self) -> list[tuple[Any, ...]]:
        # A write queued in a transaction and discarded: Redis answers QUEUED only when it
        # would run a write now (not OOM, READONLY, MISCONF, BUSY, LOADING), writing nothing.
        # On a cluster, on the node of every partition the events in flight go to.
        partitions = [0]
        if self._per_partition and self._partitions is not None:
            with self.lock:
                partitions = sorted({self._partition(p.trace_id) for p in self._inflight}) or [0]
        commands: list[tuple[Any, ...]] = []
        for n in partitions:
            commands += [("MULTI",), ("XADD", self.keys.stream(n), "*", ENTRY_FIELD, b""),
                         ("DISCARD",)]  # fmt: skip
        return commands

    def _note_error(self, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}"
        self.last_error_at_ms = schemas.now_ms()

    def _connect_commands(self) -> list[tuple[Any, ...]]:
        meta = self.keys.meta
        return [
            ("HSETNX", meta, "partitions", self.settings.partition_count),
            ("HSETNX", meta, "created_ms", schemas.now_ms()),
            ("HGET", meta, "partitions"),
            ("TIME",),
        ]

    def _connected(self, replies: list[Any]) -> None:
        partitions = int(replies[2])
        if self.settings.partitions is not None and partitions != self.settings.partitions:
            log.warning(
                "namespace %r was created with %d partitions; using that (settings say %d)",
                self.settings.namespace,
                partitions,
                self.settings.partitions,
            )
        seconds, micros = replies[3]
        self._server_offset_ms = int(seconds) * 1000 + int(micros) // 1000 - schemas.now_ms()
        self._partitions = partitions
        self._streams = [self.keys.stream(n) for n in range(partitions)]
        with self.lock:
            self._recovered()

    def _drop_already_written(self, batch: list[_Pending]) -> Generator[Step, Reply, bool]:
        """After an ambiguous failure, find which in-flight events did land, and forget them.

        A pipeline cut by a lost connection may have been applied in part; resending it
        whole would write duplicates.  The part that landed is found by event id in each
        partition's stream after the producer's watermark (its last confirmed entry), never
        earlier than a minute before the failed attempt by the server's clock.
        """
        assert self._suspect_since_ms is not None
        since_ms = self._suspect_since_ms + self._server_offset_ms - _DEDUP_CLOCK_SLACK_MS
        wanted = {p.event_id: p for p in batch}
        found: dict[bytes, tuple[int, str]] = {}
        for partition in sorted({self._partition(p.trace_id) for p in batch}):
            start = f"{max(since_ms, 0)}-0"
            mark = self._watermarks.get(partition)
            if mark is not None and parse_entry_id(mark) >= parse_entry_id(start):
                start = "(" + mark
            while True:
                reply = yield Execute(
                    [("XRANGE", self.keys.stream(partition), start, "+", "COUNT", _DEDUP_PAGE)]
                )
                if isinstance(reply, list) and isinstance(reply[0], BaseException):
                    reply = reply[0]  # its node (on a cluster) could not be asked
                if isinstance(reply, BaseException):
                    yield from self._failed(reply)
                    return False
                entries = reply[0]  # type: ignore[index]
                for raw_id, fields in entries:
                    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                    payload = _entry_payload(fields)
                    if payload is None:
                        continue
                    try:
                        event_id = _ID_DECODER.decode(payload).event_id
                    except msgspec.MsgspecError:
                        continue
                    if event_id in wanted:
                        found[event_id] = (partition, entry_id)
                if len(entries) < _DEDUP_PAGE:
                    break
                last = entries[-1][0]
                start = "(" + (last.decode() if isinstance(last, bytes) else last)
        for partition, entry_id in found.values():
            if parse_entry_id(entry_id) > parse_entry_id(self._positions.get(partition, "0-0")):
                self._positions[partition] = entry_id
                self._watermarks[partition] = entry_id
        with self.lock:
            self._inflight = [p for p in batch if p.event_id not in found]
            self.sent += len(found)
            self._suspect_since_ms = None
            self.progress.notify_all()
        if found:
            log.info("tracetags producer: %d events had landed before the failure", len(found))
        return True

    def abandon(self) -> int:
        """Give up on whatever is still buffered (close timed out); return how many."""
        with self.lock:
            self.abandoned = True
            lost = len(self._queue) + len(self._inflight)
            self.dropped += lost
            self._queue.clear()
            self._inflight = []
            self.progress.notify_all()
        return lost


class _ProducerBase:
    """The public call API, shared by both flavours; subclasses provide ``_wake``."""

    _core: _Core
    settings: Settings
    #: ``settings.effective_source``, checked once at construction.
    _default_source: str

    def _submit(self, event: schemas.Event) -> None:
        raise NotImplementedError

    def _source(self, source: str | None) -> str:
        """The call's ``source``, else the settings'."""
        return self._default_source if source is None else check_source(source)

    def trace_started(
        self,
        trace_id: str,
        *,
        experiment_id: str,
        timestamp_ms: int | None = None,
        name: str | None = None,
        client_request_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> None:
        """Record that a trace started (``timestamp_ms`` defaults to now).  ``source``: who
        writes (default: ``settings.source``), as for every write call."""
        now = now_ms()
        self._submit(
            schemas.TraceStarted(
                trace_id=check_id(trace_id, "trace_id"),
                event_id=new_event_id(now),
                emitted_at_ms=now,
                source=self._source(source),
                experiment_id=check_id(experiment_id, "experiment_id"),
                timestamp_ms=now
                if timestamp_ms is None
                else check_millis(timestamp_ms, "timestamp_ms"),
                name=check_optional_text(name, "name"),
                client_request_id=check_optional_text(client_request_id, "client_request_id"),
                metadata=check_mapping(metadata or {}, "metadata"),
                tags=check_mapping(tags or {}, "tag"),
            )
        )

    def trace_finished(
        self,
        trace_id: str,
        *,
        experiment_id: str,
        timestamp_ms: int,
        execution_time_ms: int,
        status: str = "OK",
        name: str | None = None,
        client_request_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> None:
        """Record that a trace finished: its start time, duration and final status."""
        now = now_ms()
        self._submit(
            schemas.TraceFinished(
                trace_id=check_id(trace_id, "trace_id"),
                event_id=new_event_id(now),
                emitted_at_ms=now,
                source=self._source(source),
                experiment_id=check_id(experiment_id, "experiment_id"),
                timestamp_ms=check_millis(timestamp_ms, "timestamp_ms"),
                execution_time_ms=check_millis(execution_time_ms, "execution_time_ms"),
                status=check_status(status),  # type: ignore[arg-type]
                name=check_optional_text(name, "name"),
                client_request_id=check_optional_text(client_request_id, "client_request_id"),
                metadata=check_mapping(metadata or {}, "metadata"),
                tags=check_mapping(tags or {}, "tag"),
            )
        )

    def set_tags(
        self, trace_id: str, tags: Mapping[str, str], *, source: str | None = None
    ) -> None:
        """Set one or many tags on a trace (new keys added, existing ones overwritten)."""
        now = now_ms()
        self._submit(
            schemas.TagsSet(
                trace_id=check_id(trace_id, "trace_id"),
                event_id=new_event_id(now),
                emitted_at_ms=now,
                source=self._source(source),
                tags=check_mapping(tags, "tag", allow_empty=False),
            )
        )

    def delete_tags(self, trace_id: str, keys: Iterable[str], *, source: str | None = None) -> None:
        """Delete tags from a trace (a missing key is not an error)."""
        now = now_ms()
        self._submit(
            schemas.TagsDeleted(
                trace_id=check_id(trace_id, "trace_id"),
                event_id=new_event_id(now),
                emitted_at_ms=now,
                source=self._source(source),
                keys=check_keys(keys, "tag"),
            )
        )

    def delete_trace(self, trace_id: str, *, source: str | None = None) -> None:
        """Remove a trace from the state and every index (the log keeps its history)."""
        now = now_ms()
        self._submit(
            schemas.TraceDeleted(
                trace_id=check_id(trace_id, "trace_id"),
                event_id=new_event_id(now),
                emitted_at_ms=now,
                source=self._source(source),
            )
        )

    def stats(self) -> ProducerStats:
        """Counters: sent, buffered, dropped, retries, and the last error."""
        return self._core.stats()


def _client_kwargs(settings: Settings, *, for_asyncio: bool = False) -> dict[str, Any]:
    # redis-py's own retry would resend a pipeline cut by a lost connection and so write
    # duplicates; the producer retries itself, after finding what already landed.
    return {
        "retry": (AsyncRetry if for_asyncio else Retry)(NoBackoff(), 0),
        "health_check_interval": 0,
        **socket_options(settings),
    }


_live_producers: weakref.WeakSet[TagProducer] = weakref.WeakSet()


class TagProducer(_ProducerBase):
    """Thread-safe fire-and-forget producer; a daemon thread writes to Redis.

    Calls validate and buffer, and never block on or raise for Redis; invalid input raises
    :class:`~tracetags.errors.ValidationError` at the call.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._default_source = check_source(self.settings.effective_source)
        self._core = _Core(self.settings)
        self._start_fresh()
        _live_producers.add(self)

    def _start_fresh(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._client = sync_client(
            self.settings.effective_redis_url, **_client_kwargs(self.settings)
        )
        self._router = (
            SyncRouter(self._client, reply_wait_s=self.settings.producer_reply_wait_ms / 1000)
            if isinstance(self._client, redis.cluster.RedisCluster)
            else None
        )

    def _after_fork_in_child(self) -> None:
        self._core._reset()
        self._start_fresh()

    def _submit(self, event: schemas.Event) -> None:
        if self._core.submit(event, self._wake_flusher):
            self._wake_flusher()

    def _wake_flusher(self) -> None:
        if not self._started:
            self._start_thread()
        self._wake.set()

    def _start_thread(self) -> None:
        with self._core.lock:
            if self._started:
                return
            self._started = True
            self._thread = threading.Thread(
                target=self._run, name="tracetags-producer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        steps = self._core.flusher()
        reply: Reply = None
        try:
            while True:
                step = steps.send(reply)
                reply = None
                if isinstance(step, Execute):
                    reply = self._execute(step.commands)
                elif isinstance(step, WaitForWork):
                    self._wake.wait(step.timeout)
                    self._wake.clear()
                else:
                    self._stop.wait(step.seconds)
        except StopIteration:
            pass
        except Exception:  # pragma: no cover - a bug; never let the thread die silently
            log.exception("tracetags producer flusher crashed")

    def _execute(self, commands: list[tuple[Any, ...]]) -> Reply:
        # A pipeline on a pooled connection, written out: redis-py's Pipeline spends
        # three times the Python time per command (packing, callbacks, bookkeeping), and the
        # flusher's Python time is taken from the application's threads (the GIL).
        if self._router is not None:
            return self._router.execute(commands)
        assert isinstance(self._client, redis.Redis)
        pool = self._client.connection_pool
        try:
            conn = pool.get_connection()
        except (redis.RedisError, OSError) as exc:
            return exc
        try:
            conn.send_packed_command(conn.pack_commands(commands))  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + self.settings.producer_reply_wait_ms / 1000
            return [read_reply(conn, deadline) for _ in commands]
        except (redis.RedisError, OSError) as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]
            return exc
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> Receipt:
        """Wait until every event submitted so far is written; return where they landed.

        Raises :class:`~tracetags.errors.TracetagsTimeoutError` if that takes longer than
        ``timeout`` seconds (None: wait as long as it takes).
        """
        core = self._core
        target = core.flush_target()
        if not self._started and not core.flushed(target):
            self._start_thread()
        self._wake.set()
        with core.progress:
            core.progress.wait_for(
                lambda: core.flushed(target) or core.refusal is not None, timeout
            )
            receipt = core.receipt()
        if not core.flushed(target):
            if core.refusal is not None:
                raise core.refused()
            raise core.timeout_error(timeout or 0)
        return receipt

    def close(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> None:
        """Flush (up to ``timeout``), then stop the flusher; later calls raise."""
        if self._core.closing:
            return
        try:
            self.flush(timeout)
        except (TracetagsTimeoutError, RedisRefusedError, RedisTlsError):
            lost = self._core.abandon()
            log.warning("tracetags producer closed with %d events not written", lost)
        with self._core.lock:
            self._core.closing = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._client.close()

    def __enter__(self) -> TagProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTagProducer(_ProducerBase):
    """The asyncio flavour: calls are plain (non-async) methods made on the event loop's
    thread; a task on that loop writes to Redis; ``flush`` and ``close`` are awaitable."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._default_source = check_source(self.settings.effective_source)
        self._core = _Core(self.settings)
        self._client = async_client(
            self.settings.effective_redis_url, **_client_kwargs(self.settings, for_asyncio=True)
        )
        self._router = (
            AsyncRouter(self._client, reply_wait_s=self.settings.producer_reply_wait_ms / 1000)
            if isinstance(self._client, redis.asyncio.cluster.RedisCluster)
            else None
        )
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def _submit(self, event: schemas.Event) -> None:
        wake = self._core.submit(event)
        if self._task is None:
            self._start_task()
        elif wake:
            assert self._wake is not None
            self._wake.set()

    def _start_task(self) -> None:
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tracetags-producer")

    async def _run(self) -> None:
        assert self._wake is not None and self._stop is not None and self._progress is not None
        steps = self._core.flusher()
        reply: Reply = None
        try:
            while True:
                step = steps.send(reply)
                reply = None
                if isinstance(step, Execute):
                    reply = await self._execute(step.commands)
                    self._progress.set()
                elif isinstance(step, WaitForWork):
                    self._progress.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), step.timeout)
                    self._wake.clear()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), step.seconds)
        except StopIteration:
            pass
        except Exception:  # pragma: no cover - a bug; never let the task die silently
            log.exception("tracetags producer flusher crashed")
        finally:
            self._progress.set()

    async def _execute(self, commands: list[tuple[Any, ...]]) -> Reply:
        # As TagProducer._execute: a pipeline written out on a pooled connection.
        if self._router is not None:
            return await self._router.execute(commands)
        assert isinstance(self._client, redis.asyncio.Redis)
        pool = self._client.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (redis.RedisError, OSError) as exc:
            return exc
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            deadline = time.monotonic() + self.settings.producer_reply_wait_ms / 1000
            return [await read_reply_async(conn, deadline) for _ in commands]
        except (redis.RedisError, OSError) as exc:
            await conn.disconnect()
            return exc
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> Receipt:
        """Wait until every event submitted so far is written; return where they landed."""
        core = self._core
        target = core.flush_target()
        if core.flushed(target):
            return core.receipt()
        if self._task is None:
            self._start_task()
        assert self._wake is not None and self._progress is not None
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not core.flushed(target):
            if core.refusal is not None:
                raise core.refused()
            self._progress.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise core.timeout_error(timeout or 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
        return core.receipt()

    async def close(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> None:
        """Flush (up to ``timeout``), then stop the flusher task; later calls raise."""
        if self._core.closing:
            return
        try:
            await self.flush(timeout)
        except (TracetagsTimeoutError, RedisRefusedError, RedisTlsError):
            lost = self._core.abandon()
            log.warning("tracetags producer closed with %d events not written", lost)
        with self._core.lock:
            self._core.closing = True
        if self._task is not None:
            assert self._wake is not None and self._stop is not None
            self._stop.set()
            self._wake.set()
            await self._task
        if self._router is not None:
            await self._router.aclose()
        await self._client.aclose()

    async def __aenter__(self) -> AsyncTagProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _after_fork_in_child() -> None:
    for producer in list(_live_producers):
        producer._after_fork_in_child()


def _flush_at_exit() -> None:
    for producer in list(_live_producers):
        if producer._core.closing:
            continue
        try:
            producer.close(timeout=producer.settings.atexit_flush_timeout_ms / 1000)
        except Exception:
            log.exception("tracetags producer: flush at exit failed")


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
