"""The consumer: a FastStream ``RedisBroker`` app that folds every partition's stream.

One batch ``StreamSub`` per partition in the consumer group; each batch is decoded and
validated in Python and applied, with its XACK, by one Redis Function call.  A reclaim task
per partition folds entries other consumers left pending (XAUTOCLAIM) and dead-letters
entries delivered too often.  ``faststream run tracetags.consumer:app`` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import redis
import redis.asyncio
import redis.asyncio.cluster
from faststream import AckPolicy, FastStream, StreamMessage
from faststream.redis import RedisBroker, RedisClusterBroker, StreamSub
from faststream.redis.parser.binary import BinaryMessageFormatV1
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from tracetags import functions, redis_errors, schemas
from tracetags.client import HEARTBEAT_MS, HEARTBEAT_TTL_MS, consumer_client_name
from tracetags.connections import AsyncClient, async_client, cluster_seed_url, socket_options
from tracetags.errors import DecodeError, FoldError, LibraryVersionError
from tracetags.functions import BatchItem, BatchResult, DeadLetter
from tracetags.keys import Keys
from tracetags.limits import DEFAULT_EVENT_LIMITS, EventLimits, over_limit, split_batch
from tracetags.settings import Settings

log = logging.getLogger("tracetags.consumer")

#: Field FastStream's publisher puts its envelope in.
FASTSTREAM_FIELD: Final = b"__data__"
#: How long a subscriber blocks in XREADGROUP waiting for entries.
POLL_MS: Final = 100
#: This consumer's own pending entries idle this long are stuck (their XREADGROUP reply was
#: lost with a dropped connection): they are folded again without waiting for claim_idle_ms.
#: Entries in hand (being folded, or waiting out a condition) are never taken for stuck.
OWN_STUCK_MS: Final = 500
#: Backoff while a transient condition lasts (OOM, READONLY, LOADING, lost connection...):
#: exponential from the first, jittered, capped; Redis being back is seen within the cap.
BACKOFF_FIRST_S: Final = 0.05
BACKOFF_CAP_S: Final = 0.5
#: A consumer holds entries it waits to fold; it re-claims them this often (XCLAIM JUSTID:
#: idle time reset, delivery count unchanged), so that no other consumer takes a live
#: consumer's entries for a dead one's and counts a delivery.
HOLD_REFRESH_S: Final = 1.0
#: How long a stopping consumer may spend folding entries a cut-short read left pending.
DRAIN_TIMEOUT_S: Final = 5.0
#: A group consumer with nothing pending and idle this long (and at least twice
#: claim_idle_ms) is removed from the group: a live one reads every POLL_MS.
DEAD_CONSUMER_IDLE_MS: Final = 10_000
_MSGPACK_TYPES: Final = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


def decode_fields(
    fields: Mapping[bytes, bytes], limits: EventLimits = DEFAULT_EVENT_LIMITS
) -> schemas.Event | DeadLetter:
    """One stream entry as an event, or as a dead letter with the reason it is not one
    (undecodable, or over one of ``limits``: another publisher may skip the producer's check).

    Two shapes are folded: our own (field ``e``, msgpack) and FastStream's publisher
    envelope (field ``__data__``; its body JSON or msgpack, by content-type or by sniffing).
    """
    payload = fields.get(schemas.ENTRY_FIELD)
    if payload is not None:
        try:
            event = schemas.decode(payload)
        except DecodeError as exc:
            return DeadLetter(payload, str(exc))
        reason = over_limit(event, len(payload), limits)
        return event if reason is None else DeadLetter(payload, reason)
    envelope = fields.get(FASTSTREAM_FIELD)
    if envelope is not None:
        body, headers = BinaryMessageFormatV1.parse(envelope)
        content_type = str(headers.get("content-type", ""))
        try:
            if content_type in _MSGPACK_TYPES or (not content_type and body[:1] != b"{"):
                event = schemas.decode(body)
            else:
                event = schemas.decode_json(body)
        except DecodeError as exc:
            return DeadLetter(envelope, f"FastStream message: {exc}")
        reason = over_limit(event, len(body), limits)
        return event if reason is None else DeadLetter(envelope, f"FastStream message: {reason}")
    flat = b"\n".join(b"%s=%s" % (k, v) for k, v in fields.items())
    return DeadLetter(flat, "entry has neither field 'e' (tracetags) nor '__data__' (FastStream)")


def decode_entries(
    entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]],
    limits: EventLimits = DEFAULT_EVENT_LIMITS,
) -> list[BatchItem]:
    return [(entry_id, decode_fields(fields, limits)) for entry_id, fields in entries]


def consumer_name() -> str:
    """Unique per process: host, pid and a random suffix (a restarted pid is a new name)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class FoldStats(msgspec.Struct, kw_only=True):
    batches: int = 0
    applied: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    failures: int = 0
    #: Fold attempts that met a transient condition and were retried after a backoff.
    transient_retries: int = 0
    #: Consumer names removed from the group (dead, nothing left pending).
    consumers_removed: int = 0


class Folder:
    """Applies decoded batches of one namespace, with retries and poison isolation."""

    def __init__(self, settings: Settings, client: AsyncClient) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.group = settings.consumer_group
        self.client = client
        self.stats = FoldStats()
        self.limits = EventLimits.of(settings)
        self.partitions = 0
        #: The transient condition the fold is waiting out (None while folds succeed).
        self.condition: str | None = None
        self._condition_since = 0.0
        #: Entry ids this consumer holds (being folded, or waiting out a condition): its
        #: own-stuck reclaim must not take them.
        self.in_hand: set[Any] = set()
        #: Wall-clock time the fold call in flight started (0.0: none); serve's watchdog.
        self.call_started = 0.0

    def transient(self, error: BaseException, what: str) -> None:
        """Note a transient failure: one log line when a condition starts, none after."""
        name = redis_errors.condition(error)
        self.stats.transient_retries += 1
        if self.condition is None:
            self._condition_since = time.monotonic()
            log.warning(
                "%s: Redis refuses for now (%s: %s); entries stay pending, retrying with backoff",
                what,
                name,
                error,
            )
        elif self.condition != name:
            log.warning("%s: the condition is now %s (%s)", what, name, error)
        self.condition = name

    def recovered(self) -> None:
        if self.condition is not None:
            log.info(
                "Redis answers again: folding resumed (%s lasted %.1f s, %d retries)",
                self.condition,
                time.monotonic() - self._condition_since,
                self.stats.transient_retries,
            )
            self.condition = None

    async def apply_patiently(
        self, partition: int, items: list[BatchItem], stopping: asyncio.Event, consumer: str
    ) -> BatchResult | None:
        """:meth:`apply`, waiting out transient conditions (backoff with jitter, capped,
        reset on success) while holding the entries; None when ``stopping`` ended the wait
        (the entries stay pending for this or another consumer)."""
        ids: list[Any] = [entry_id for entry_id, _ in items]
        self.in_hand.update(ids)
        stream = self.keys.stream(partition)
        # Refreshed well within claim_idle_ms, so another consumer never finds them idle.
        refresh_s = min(HOLD_REFRESH_S, self.settings.claim_idle_ms / 3000)
        try:
            delay = BACKOFF_FIRST_S
            refreshed = time.monotonic()
            while True:
                self.call_started = time.time()
                try:
                    if self.settings.history_index:
                        await self.index(partition, items)
                    result = await self.apply(partition, items)
                except redis_errors.FAILURES as exc:
                    if redis_errors.is_poison(exc):
                        raise
                    self.transient(exc, f"fold of partition {partition}")
                else:
                    self.recovered()
                    return result
                finally:
                    self.call_started = 0.0
                pause = min(delay * random.uniform(0.5, 1.0), refresh_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), pause)
                if stopping.is_set():
                    return None
                delay = min(delay * 2, BACKOFF_CAP_S)
                if time.monotonic() - refreshed >= refresh_s:
                    refreshed = time.monotonic()
                    with contextlib.suppress(*redis_errors.FAILURES):
                        await self.client.xclaim(stream, self.group, consumer, 0, ids, justid=True)
        finally:
            self.in_hand.difference_update(ids)

    async def index(self, partition: int, items: list[BatchItem]) -> None:
        """Append each entry id to its trace's history index (see tracetags.history), before
        the fold: an entry is indexed before it is acknowledged, and one indexed twice (a
        retry, a redelivery) is read once."""
        ids: dict[str, list[str]] = {}
        for entry_id, item in items:
            if type(item) is not DeadLetter:
                ids.setdefault(item.trace_id, []).append(_text(entry_id))  # type: ignore[union-attr]
        if not ids:
            return
        await functions.index_batch_async(
            self.client, self.keys, partition, ids, self.settings.history_index_ttl_ms
        )

    async def apply(self, partition: int, items: list[BatchItem]) -> BatchResult:
        """Fold ``items`` in calls of at most ``fold_max_keys`` keys each (no call holds
        Redis long), in order."""
        runs = split_batch(items, self.limits)
        if len(runs) == 1:
            return await self._apply_run(partition, items)
        total = BatchResult(0, 0, 0)
        for run in runs:
            done = await self._apply_run(partition, list(run))
            total = BatchResult(*(a + b for a, b in zip(total, done, strict=True)))
        return total

    async def _apply_run(self, partition: int, items: list[BatchItem]) -> BatchResult:
        """Fold ``items``; a batch the Function refuses is split so that only the entries
        it refuses on their own are dead-lettered (with the Function's error)."""
        max_tags = self.limits.max_tags_per_trace
        try:
            result = await functions.apply_batch_async(
                self.client, self.keys, partition, self.group, items, max_tags
            )
        except FoldError as exc:
            self.stats.failures += 1
            if len(items) == 1:
                entry_id, item = items[0]
                payload = schemas.encode(item) if not isinstance(item, DeadLetter) else item.payload
                log.error(
                    "entry %s of partition %d refused by the fold: %s",
                    _text(entry_id),
                    partition,
                    exc,
                )
                result = await functions.apply_batch_async(
                    self.client,
                    self.keys,
                    partition,
                    self.group,
                    [(entry_id, DeadLetter(payload, f"fold refused it: {exc}"))],
                    max_tags,
                )
            else:
                middle = len(items) // 2
                first = await self._apply_run(partition, items[:middle])
                second = await self._apply_run(partition, items[middle:])
                return BatchResult(*(a + b for a, b in zip(first, second, strict=True)))
        self.stats.batches += 1
        self.stats.applied += result.applied
        self.stats.dead_lettered += result.dead_lettered
        if result.dead_lettered:
            for entry_id, item in items:
                if isinstance(item, DeadLetter):
                    log.warning(
                        "partition %d: entry %s dead-lettered: %s",
                        partition,
                        _text(entry_id),
                        item.reason,
                    )
        return result

    async def prepare(self) -> int:
        """Make the namespace ready: partition count, Function library, groups at ``0``.

        FastStream would create a missing group at ``$`` and so skip every event written
        before the first start; creating it here at ``0`` (MKSTREAM) folds the whole log.
        """
        meta = self.keys.meta
        pipe = self.client.pipeline(transaction=False)
        pipe.hsetnx(meta, "partitions", self.settings.partition_count)
        pipe.hsetnx(meta, "created_ms", schemas.now_ms())
        pipe.hget(meta, "partitions")
        partitions = int((await pipe.execute())[2])
        await functions.load_async(self.client)
        for partition in range(partitions):
            await self.ensure_group(partition)
            read = await functions.ensure_time_bounds_async(self.client, self.keys, partition)
            if read:
                log.info(
                    "partition %d: made its chunks' time bounds from %d traces (folded by an"
                    " older version)",
                    partition,
                    read,
                )
            fields = self.settings.lookup_fields
            traces = await self.client.hlen(self.keys.trace_ids(partition))

            def building(field: str, partition: int = partition, traces: int = traces) -> None:
                log.info(
                    "partition %d: building the lookup fingerprints of %s for %d traces"
                    " (~4.5 s per million)",
                    partition,
                    field,
                    traces,
                )

            built = await functions.ensure_lookups_async(
                self.client, self.keys, partition, fields, building
            )
            for field, calls in built.items():
                log.info(
                    "partition %d: built the lookup fingerprints of %s (%d chunks of 512 traces)",
                    partition,
                    field,
                    calls * functions.LOOKUP_BUILD_CHUNKS,
                )
        self.partitions = partitions
        return partitions

    async def ensure_group(self, partition: int) -> bool:
        """Create the stream and group if missing; True when it had to."""
        try:
            await self.client.xgroup_create(
                self.keys.stream(partition), self.group, id="0", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def reclaim(
        self, partition: int, consumer: str, stopping: asyncio.Event | None = None
    ) -> int:
        """Fold entries left pending: this consumer's own after ``OWN_STUCK_MS`` (a reply
        lost with a dropped connection leaves them there), anyone's after ``claim_idle_ms``
        (XAUTOCLAIM); entries delivered more than ``max_deliveries`` times are dead-lettered.
        Returns how many entries it claimed."""
        stopping = stopping or asyncio.Event()
        stream = self.keys.stream(partition)
        claimed_total = await self._reclaim_own(partition, consumer, stopping)
        start = "0-0"
        while True:
            reply = await self.client.xautoclaim(
                stream,
                self.group,
                consumer,
                self.settings.claim_idle_ms,
                start,
                count=self.settings.consumer_batch_size,
            )
            start, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:  # trimmed away while pending: nothing left to fold, just ack them
                await self.client.xack(stream, self.group, *deleted)
            if entries:
                claimed_total += len(entries)
                items = await self._limit_deliveries(stream, entries)
                if await self.apply_patiently(partition, items, stopping, consumer) is None:
                    break
            if _text(start) == "0-0":
                break
        self.stats.reclaimed += claimed_total
        await self._remove_dead_consumers(stream)
        return claimed_total

    async def _remove_dead_consumers(self, stream: str) -> None:
        """Remove group consumers of processes that are gone, once their entries were
        claimed: nothing pending, no read for long, no fold connection, no heartbeat."""
        consumers: Any = await self.client.xinfo_consumers(stream, self.group)
        idle_ms = max(DEAD_CONSUMER_IDLE_MS, 2 * self.settings.claim_idle_ms)
        idle = [c for c in consumers if int(c["pending"]) == 0 and int(c["idle"]) > idle_ms]
        if not idle:
            return
        # Only a process that is gone (no open fold connection, no recent heartbeat): a
        # live one could read between XINFO and DELCONSUMER, whose entries would leave
        # the pending list with it.
        alive: set[str] = set()
        prefix = consumer_client_name(self.settings, "")
        with contextlib.suppress(redis.ResponseError):
            clients: Any = await self._clients_of(stream)
            alive |= {str(c["name"])[len(prefix) :] for c in clients
                      if str(c.get("name", "")).startswith(prefix)}  # fmt: skip
        since = schemas.now_ms() - HEARTBEAT_TTL_MS
        beating: Any = await self.client.zrangebyscore(self.keys.consumers, since, "+inf")
        alive |= {_text(name) for name in beating}
        for info in idle:
            if _text(info["name"]) not in alive:
                removed = await self.client.xgroup_delconsumer(stream, self.group, info["name"])
                if int(removed) == 0:
                    self.stats.consumers_removed += 1
                    log.info("removed dead consumer %s from the group", _text(info["name"]))

    async def _clients_of(self, stream: str) -> Any:
        """CLIENT LIST of the node that holds ``stream`` (the fold calls of its partition
        go there, so a live consumer's fold connection is listed there)."""
        client = self.client
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            node = client.get_node_from_key(stream)
            return await client.client_list(target_nodes=node)
        return await client.client_list()

    async def _reclaim_own(self, partition: int, consumer: str, stopping: asyncio.Event) -> int:
        idle = min(OWN_STUCK_MS, self.settings.claim_idle_ms)
        return await self._fold_own(partition, consumer, idle, stopping)

    async def drain_own(self, partition: int, consumer: str) -> int:
        """Fold every entry still pending for ``consumer``, however briefly: run once the
        subscribers have stopped, so that a read cut short by the shutdown (its entries
        delivered but never handed to the handler) is folded before the process exits."""
        total = 0
        while folded := await self._fold_own(partition, consumer, 0, asyncio.Event()):
            total += folded
        return total

    async def _fold_own(
        self, partition: int, consumer: str, idle: int, stopping: asyncio.Event
    ) -> int:
        stream = self.keys.stream(partition)
        pending = await self.client.xpending_range(
            stream, self.group, min="-", max="+", count=self.settings.consumer_batch_size,
            consumername=consumer, idle=idle,
        )  # fmt: skip
        ids: list[Any] = [p["message_id"] for p in pending if p["message_id"] not in self.in_hand]
        if not ids:
            return 0
        # JUSTID: the delivery count stays as it was. These entries are this live process's
        # own (a reply lost with a cut connection, a read cut short by a shutdown): no
        # consumer died on them, so taking them again is no delivery toward max_deliveries.
        # A claim without JUSTID would count one each time, and a few cuts in a row (each
        # losing a claim's reply) would dead-letter valid entries.
        claimed: Any = await self.client.xclaim(stream, self.group, consumer, idle, ids,
                                                justid=True)  # fmt: skip
        if not claimed:
            return 0
        entries = await self._read_entries(stream, claimed)
        # An entry trimmed away while pending (Redis < 7 still lists it; 7.0 drops it from
        # the PEL itself): nothing to fold, just ack it.
        gone = [e[0] for e in entries if e[1] is None]
        if gone:
            await self.client.xack(stream, self.group, *gone)
        present = [(entry_id, fields) for entry_id, fields in entries if fields is not None]
        if present:
            items = await self._limit_deliveries(stream, present)
            await self.apply_patiently(partition, items, stopping, consumer)
        return len(claimed)

    async def _read_entries(
        self, stream: str, ids: list[Any]
    ) -> list[tuple[Any, dict[bytes, bytes] | None]]:
        """The entries ``ids`` (ascending) of ``stream`` in one round trip; None for one no
        longer in the stream."""
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(stream, entry_id, entry_id, count=1)
        found: list[Any] = await pipe.execute()
        return [(entry_id, rows[0][1] if rows else None)
                for entry_id, rows in zip(ids, found, strict=True)]  # fmt: skip

    async def _limit_deliveries(
        self, stream: str, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> list[BatchItem]:
        pending = await self.client.xpending_range(
            stream, self.group, min=entries[0][0], max=entries[-1][0], count=len(entries) * 4
        )
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        items = decode_entries(entries, self.limits)
        limit = self.settings.max_deliveries
        out: list[BatchItem] = []
        for entry_id, item in items:
            times = deliveries.get(entry_id, 1)
            if times > limit and not isinstance(item, DeadLetter):
                reason = (
                    f"delivered {times} times without being applied (limit "
                    f"{limit}): the consumers that took it died or failed"
                )
                log.error("entry %s: %s", _text(entry_id), reason)
                item = DeadLetter(schemas.encode(item), reason)
            out.append((entry_id, item))
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def fold_client(settings: Settings, consumer: str | None = None) -> AsyncClient:
    """The connection the fold calls go through (a ``RedisCluster`` on a cluster: each call
    goes to its partition's primary).  redis-py reconnects once at once (a pooled connection
    the server closed while idle); longer trouble is waited out, logged and counted by
    :meth:`Folder.apply_patiently`.  Named after the consumer, so that ``status`` sees it
    alive even where the heartbeat (a write) cannot be written."""
    return async_client(
        settings.effective_redis_url,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), 1),
        health_check_interval=30,
        client_name=None if consumer is None else consumer_client_name(settings, consumer),
        **socket_options(settings),
    )


class WaitOutRefusals(Retry):
    """redis-py's retry, plus: an error reply naming a transient condition (MISCONF, BUSY,
    ...; redis-py has no class of its own for most) is retried on the same connection after
    a backoff.  FastStream's subscriber would otherwise restart its read at once, for as long
    as the condition lasts (under MISCONF even its PING is refused: thousands a second)."""

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        async def patiently() -> Any:
            delay = BACKOFF_FIRST_S
            while True:
                try:
                    return await do()
                except redis.ResponseError as exc:
                    if redis_errors.condition(exc) not in redis_errors.TRANSIENT_CODES:
                        raise
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_CAP_S)

        return await super().call_with_retry(patiently, fail, *args, **kwargs)


#: Attempts of a broker read on a cluster, BACKOFF_CAP_S apart at most: ~10 s.
CLUSTER_READ_RETRIES: Final = 20

#: redis-py errors the broker's reads retry on their own (with backoff, for ever): a read
#: failing on them would make FastStream's subscriber sleep 5 s before the next one.
BROKER_RETRY_ON: Final[list[type[Exception]]] = [
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
]


def prepare_namespace(settings: Settings) -> int:
    """What every consumer does at start, once (partitions, library, groups, lookups), for
    ``tracetags serve`` to find out before it says it folds: a refusal (credentials, ACL,
    TLS trust, a newer library) raises its tracetags error here instead of a worker
    restarting for ever.  Returns the partition count."""

    async def run() -> int:
        client = fold_client(settings)
        try:
            return await Folder(settings, client).prepare()
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except redis_errors.FAILURES as exc:
        mapped = redis_errors.library_error(exc, settings.effective_redis_url)
        if mapped is None:
            raise
        raise mapped from None


def make_broker(settings: Settings) -> RedisBroker:
    """The FastStream broker: ``RedisBroker``, or ``RedisClusterBroker`` for a cluster URL
    (seeded by the node the URL names; its reads go to each stream's primary)."""
    backoff = ExponentialWithJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_FIRST_S)
    common: dict[str, Any] = {
        "graceful_timeout": 30.0,
        "log_level": logging.DEBUG,
        "logger": logging.getLogger("tracetags.faststream"),
        "retry_on_error": BROKER_RETRY_ON,
        **socket_options(settings, timeout_s=max(settings.socket_timeout_ms / 1000, 1.0)),
    }
    seed = cluster_seed_url(settings.effective_redis_url)
    if seed is None:
        return RedisBroker(
            settings.effective_redis_url, retry=WaitOutRefusals(backoff, -1), **common
        )
    # The cluster client runs its own retry loop (refreshing the slot table between
    # attempts) for as many attempts as the Retry allows, so a bounded count that outlasts
    # a failover (node timeout + election, a few seconds) instead of "for ever".
    return RedisClusterBroker(seed, retry=Retry(backoff, CLUSTER_READ_RETRIES), **common)


def create_app(
    settings: Settings | None = None, *, name: str | None = None, watch: Any = None
) -> FastStream:
    """A FastStream app that folds ``settings``' namespace (from the env when None);
    ``watch`` (a shared array from ``tracetags serve``) gets its liveness for the watchdog."""
    settings = settings or Settings.from_env()
    consumer = name or consumer_name()
    # Per-batch "Received/Processed" lines at DEBUG: at INFO they would flood the log.
    # FastStream's own access logger writes to stdout with a handler of its own; ours goes
    # through logging like every other tracetags log (stderr under ``tracetags serve``), so
    # stdout stays clean for a command's data.
    broker = make_broker(settings)
    app = FastStream(broker)
    client = fold_client(settings, consumer)
    folder = Folder(settings, client)
    tasks: list[asyncio.Task[None]] = []

    def subscribe(partition: int) -> None:
        # async: FastStream runs a sync parser or decoder in its thread pool (two thread hops
        # per batch), and these do no I/O.
        async def parse(raw: Any) -> StreamMessage[Any]:
            ids = raw["message_ids"]
            return StreamMessage(
                raw_message=raw, body=b"",
                message_id=_text(ids[0]) if ids else None,
                correlation_id=_text(ids[0]) if ids else None,
            )  # fmt: skip

        async def decode(message: StreamMessage[Any]) -> Any:
            raw = message.raw_message
            entries = list(zip(raw["message_ids"], raw["data"], strict=True))
            return decode_entries(entries, folder.limits)

        async def handle(items: Any) -> None:
            await folder.apply_patiently(partition, items, stopping, consumer)

        stream = StreamSub(
            folder.keys.stream(partition), group=settings.consumer_group, consumer=consumer,
            batch=True, max_records=settings.consumer_batch_size, polling_interval=POLL_MS,
        )  # fmt: skip
        broker.subscriber(
            stream=stream, parser=parse, decoder=decode, ack_policy=AckPolicy.MANUAL,
            title=f"tracetags fold p{partition:02d}",
        )(handle)  # fmt: skip

    stopping = asyncio.Event()

    async def reclaim_loop(partition: int) -> None:
        interval = min(max(settings.claim_idle_ms / 2000, 0.05), 0.5)
        while not stopping.is_set():
            try:
                await folder.reclaim(partition, consumer, stopping)
                folder.recovered()  # an idle consumer sees the end of a condition too
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    with contextlib.suppress(*redis_errors.FAILURES):
                        await folder.ensure_group(partition)
                else:
                    folder.transient(exc, f"reclaim of partition {partition}")
            except redis_errors.FAILURES as exc:
                folder.transient(exc, f"reclaim of partition {partition}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)

    async def watch_ticker() -> None:
        while not stopping.is_set():
            watch[0] = time.time()
            watch[1] = folder.call_started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)

    async def heartbeat() -> None:
        while not stopping.is_set():
            now = schemas.now_ms()
            try:
                pipe = client.pipeline(transaction=False)
                pipe.zadd(folder.keys.consumers, {consumer: now})
                pipe.zremrangebyscore(folder.keys.consumers, "-inf", now - 60 * HEARTBEAT_TTL_MS)
                await pipe.execute()
            except redis_errors.FAILURES as exc:
                # Liveness still shows through the fold connection's name (CLIENT LIST).
                log.debug("heartbeat failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), HEARTBEAT_MS / 1000)
        with contextlib.suppress(*redis_errors.FAILURES, TimeoutError):
            await asyncio.wait_for(client.zrem(folder.keys.consumers, consumer), 1.0)

    @app.on_startup
    async def start() -> None:
        delay = BACKOFF_FIRST_S
        while True:  # a consumer started while Redis refuses waits, as a running one does
            try:
                partitions = await folder.prepare()
                break
            except LibraryVersionError as exc:
                log.error("tracetags consumer cannot start: %s", exc)
                raise
            except redis_errors.FAILURES as exc:
                if redis_errors.is_refused(exc):
                    # Credentials, ACL, TLS trust: waiting will not end it; say so and stop.
                    refusal = redis_errors.library_error(exc, settings.effective_redis_url)
                    assert refusal is not None
                    log.error("tracetags consumer cannot start: %s", refusal)
                    raise refusal from None
                folder.transient(exc, "start")
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_CAP_S)
        folder.recovered()
        for partition in range(partitions):
            subscribe(partition)
        log.info(
            "tracetags consumer %s folding %d partitions of %r",
            consumer,
            partitions,
            settings.namespace,
        )

    @app.after_startup
    async def start_reclaiming() -> None:
        stopping.clear()
        # The objects of the imports and the app live as long as the process: out of the
        # collector's reach, a full collection walks only what the fold allocates, instead
        # of stopping the fold while it walks them all.
        if settings.consumer_gc_freeze:
            gc.freeze()
        tasks.append(asyncio.create_task(heartbeat()))
        if watch is not None:
            tasks.append(asyncio.create_task(watch_ticker()))
        for partition in range(folder.partitions):
            tasks.append(asyncio.create_task(reclaim_loop(partition)))

    @app.on_shutdown
    async def stop_reclaiming() -> None:
        # Runs before the broker stops: each reclaim task finishes the batch in hand.
        stopping.set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=30.0)
            for task in late:
                task.cancel()
        tasks.clear()

    @app.after_shutdown
    async def close() -> None:
        # After the broker stopped, so the subscribers' last batches could still fold; a
        # read the stop cut short left its entries pending for this consumer: fold them.
        async def drain() -> None:
            for partition in range(folder.partitions):
                if held := await folder.drain_own(partition, consumer):
                    log.info("partition %d: folded %d entries a stopped read had taken",
                             partition, held)  # fmt: skip

        try:  # one deadline for all partitions, well within the supervisor's grace period
            if folder.condition is not None:
                raise TimeoutError(f"Redis refuses for now ({folder.condition})")
            await asyncio.wait_for(drain(), DRAIN_TIMEOUT_S)
        except (*redis_errors.FAILURES, TimeoutError) as exc:
            log.warning("could not fold this consumer's pending entries before stopping "
                        "(%r); another consumer will claim them", exc)  # fmt: skip
        await client.aclose()
        log.info(
            "tracetags consumer %s stopped (%s)",
            consumer,
            msgspec.json.encode(folder.stats).decode(),
        )

    return app


def __getattr__(name: str) -> Any:
    # ``faststream run tracetags.consumer:app``: built on first access, so that importing
    # this module reads no environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
