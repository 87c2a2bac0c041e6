"""The Redis Functions library (part files under ``lua/``, assembled by ``library.py``): its
loader and typed wrappers.

``apply_batch`` folds one batch of one partition: the events are applied to the trace
state and indexes, bad entries are dead-lettered, and every entry of the batch is XACKed,
all in one ``FCALL`` (one atomic step).

ARGV of ``tt_apply`` (KEYS = the partition's stream and dead-letter stream) is ``group,
prefix, batch, max_tags_per_trace, *dead_letters`` (``max_tags_per_trace``: an event that
would leave its trace with more live tags is dead-lettered by the fold; 0: no limit).
``batch`` is one msgpack array (one argument instead of thousands is far cheaper per event,
in Python and in Redis; Lua unpacks it with cmsgpack,
which in Redis 7.0 knows no msgpack ``bin``: strings only, so entry ids go as str)::

    n_events,
    n_events x [entry_id, kind, trace_id, n_attrs, n_tags, n_meta,
                n_attrs x (code, value), n_tags x (key, value), n_meta x (key, value)]

and each dead letter is three plain arguments: ``entry_id, payload, reason`` (payloads are
arbitrary bytes, and rare).

``kind`` is ``S`` trace_started, ``F`` trace_finished, ``T`` tags_set, ``D`` tags_deleted
(its tag run holds keys only) or ``X`` trace_deleted.  Attribute codes are the trace-hash
field names of keys.py: ``e`` experiment_id, ``s`` timestamp_ms, ``d`` execution_time_ms,
``S`` status, ``c`` client_request_id; ``s`` and ``d`` go as decimal strings (Lua would
otherwise format each number, its slowest common operation).  A trace_started sets status
``IN_PROGRESS`` (a later trace_finished wins by stamp); an event's ``name`` travels as the
tag ``mlflow.traceName``, overriding that key in the same event's ``tags``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import msgspec
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tracetags.connections import AsyncClient, SyncClient, pool_of
from tracetags.errors import (
    FoldArgumentsError,
    FoldError,
    LibraryVersionError,
    QueryError,
    TracetagsTimeoutError,
)
from tracetags.functions.library import APPLY_FUNCTION as APPLY_FUNCTION
from tracetags.functions.library import FINGERPRINT_MOD, FINGERPRINT_SEED, assemble
from tracetags.functions.library import INDEX_FUNCTION as INDEX_FUNCTION
from tracetags.functions.library import LIBRARY_NAME as LIBRARY_NAME
from tracetags.functions.library import LIBRARY_PREFIX as LIBRARY_PREFIX
from tracetags.functions.library import LOOKUP_FUNCTION as LOOKUP_FUNCTION
from tracetags.functions.library import QUERY_FUNCTION as QUERY_FUNCTION
from tracetags.functions.library import SCAN_UNION_MAX as SCAN_UNION_MAX
from tracetags.functions.library import TRIM_FUNCTION as TRIM_FUNCTION
from tracetags.keys import NAME_TAG, SET_CHUNK, Keys
from tracetags.limits import DEFAULT_MAX_TAGS_PER_TRACE
from tracetags.schemas import (
    ENTRY_FIELD,
    Event,
    TagsDeleted,
    TagsSet,
    TraceDeleted,
    TraceFinished,
    TraceStarted,
    decode,
)

#: The library assembled from the part files under lua/ (see library.py).
LIBRARY: Final = assemble()
LIBRARY_CODE: Final = LIBRARY.code

_ERRORS: Final[dict[str, type[FoldError]]] = {
    "TT_BADARGS": FoldArgumentsError,
    "TT_BADKEYS": FoldArgumentsError,
}

EntryId = bytes | str
_ENCODER: Final = msgspec.msgpack.Encoder()


class DeadLetter(NamedTuple):
    """An entry the consumer could not decode: it is dead-lettered with ``reason``."""

    payload: bytes
    reason: str


class BatchResult(NamedTuple):
    """What one ``tt_apply`` call did."""

    applied: int
    dead_lettered: int
    #: Entries that were pending in the group (a redelivered duplicate is not acked twice).
    acked: int


BatchItem = tuple[EntryId, Event | DeadLetter]


# --- loading ---------------------------------------------------------------------------


def translated(exc: redis.ResponseError) -> redis.ResponseError:
    """``exc`` with each ``user_function:<line>`` of its text named by part file and line
    (``fold_trace.lua:41``): the library Redis runs is one chunk assembled from parts."""
    return type(exc)(LIBRARY.translate(str(exc)))


def _loaded_code(reply: Any) -> bytes | None:
    """The code of our library in a FUNCTION LIST reply (redis-py gives dicts or flat lists)."""
    for library in reply or ():
        if not isinstance(library, Mapping):
            library = dict(zip(library[::2], library[1::2], strict=True))
        info = {k.decode() if isinstance(k, bytes) else k: v for k, v in library.items()}
        name = info.get("library_name")
        if name in (LIBRARY_NAME, LIBRARY_NAME.encode()):
            code = info.get("library_code")
            return code.encode() if isinstance(code, str) else code
    return None


def _other_versions(reply: Any) -> list[str]:
    """Names of other versions of the library in a FUNCTION LIST reply."""
    names = []
    for library in reply or ():
        if not isinstance(library, Mapping):
            library = dict(zip(library[::2], library[1::2], strict=True))
        info = {k.decode() if isinstance(k, bytes) else k: v for k, v in library.items()}
        name = info.get("library_name")
        name = name.decode() if isinstance(name, bytes) else name
        if isinstance(name, str) and name.startswith(LIBRARY_PREFIX) and name != LIBRARY_NAME:
            names.append(name)
    return names


def library_version(name: str) -> int | None:
    """N of a library named ``tracetags_vN`` (None for any other name)."""
    number = name.removeprefix(LIBRARY_PREFIX)
    return int(number) if name != number and number.isdigit() else None


def _older_versions(names: list[str]) -> list[str]:
    """The names of ``names`` to delete before loading this version; raises
    LibraryVersionError when one is newer (a newer tracetags runs on this server)."""
    ours = library_version(LIBRARY_NAME)
    assert ours is not None
    newer = [n for n in names if (library_version(n) or 0) > ours]
    if newer:
        raise LibraryVersionError(
            f"Redis runs the Functions library {newer[0]}, newer than this tracetags's "
            f"{LIBRARY_NAME}: upgrade tracetags here. The library is shared by every "
            "namespace of the server, so an older version does not replace it."
        )
    return names


def _load_steps() -> Generator[tuple[Any, ...], Any, bool]:
    """The loading protocol as the raw commands it sends (each reply sent back in): the
    same for one Redis and for each primary of a cluster, sync or async."""
    listed = yield ("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME, "WITHCODE")
    if _loaded_code(listed) == LIBRARY_CODE.encode():
        return False
    others = _other_versions((yield ("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_PREFIX + "*")))
    for name in _older_versions(others):
        yield ("FUNCTION", "DELETE", name)
    yield ("FUNCTION", "LOAD", "REPLACE", LIBRARY_CODE)
    return True


def _run_load(execute: Callable[..., Any]) -> bool:
    steps = _load_steps()
    try:
        command = next(steps)
        while True:
            command = steps.send(execute(*command))
    except StopIteration as done:
        return bool(done.value)
    except redis.ResponseError as exc:
        raise translated(exc) from None


async def _run_load_async(execute: Callable[..., Awaitable[Any]]) -> bool:
    steps = _load_steps()
    try:
        command = next(steps)
        while True:
            command = steps.send(await execute(*command))
    except StopIteration as done:
        return bool(done.value)
    except redis.ResponseError as exc:
        raise translated(exc) from None


def load(client: SyncClient) -> bool:
    """Load the library unless the same code is already loaded; True when it was (re)loaded.

    Idempotent and safe to race: ``FUNCTION LOAD REPLACE`` swaps the library atomically.
    Another version of the library (an older ``tracetags_vN``) is deleted first: function
    names are global, and its fold would not keep this version's indexes.  A newer version
    is never replaced (:class:`~tracetags.errors.LibraryVersionError`).  Functions are not
    propagated between cluster primaries (replicas get them from their primary): on a
    cluster, it is loaded on every primary the client knows of.
    """
    if isinstance(client, redis.cluster.RedisCluster):
        loaded = False
        for node in client.get_primaries():  # type: ignore[no-untyped-call]

            def on_node(*args: Any, node: Any = node) -> Any:
                return client.execute_command(*args, target_nodes=node)  # type: ignore[no-untyped-call]

            loaded = _run_load(on_node) or loaded
        return loaded
    return _run_load(client.execute_command)


async def load_async(client: AsyncClient) -> bool:
    """:func:`load` for redis.asyncio."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        await client.initialize()
        loaded = False
        for node in client.get_primaries():

            async def on_node(*args: Any, node: Any = node) -> Any:
                return await client.execute_command(*args, target_nodes=node)

            loaded = await _run_load_async(on_node) or loaded
        return loaded
    return await _run_load_async(client.execute_command)


# --- the chunks' time bounds of partitions folded before them ---------------------------

TIME_BOUNDS_BATCH: Final = 10_000


async def ensure_time_bounds_async(client: AsyncClient, keys: Keys, partition: int) -> int:
    """Give a partition folded before ``tracetags_v4`` its chunks' time bounds (``tsx``, see
    keys.py), which newest-first pages need to visit chunks instead of walking ``ts``;
    returns how many traces it read (0: the partition had them, or has no trace yet).

    Safe while a consumer folds: ``tsx`` is made first (its marker member), so every
    timestamp the fold writes from then on raises its chunk's bound itself, and the scan of
    ``ts`` in score order then covers every trace that stays put; bounds only rise (GT).
    """
    key = keys.time_bounds(partition)
    if await client.exists(key) or not await client.exists(keys.trace_counter(partition)):
        return 0
    await client.zadd(key, {"-1": float("-inf")})
    by_time = keys.by_timestamp(partition)
    low, skip, read = "-inf", 0, 0
    while True:
        reply: Any = await client.zrange(
            by_time, low, "+inf", byscore=True, offset=skip, num=TIME_BOUNDS_BATCH, withscores=True
        )
        got: list[tuple[bytes, float]] = reply
        if not got:
            return read
        read += len(got)
        top: dict[int, float] = {}
        for member, score in got:
            chunk = int(member) // SET_CHUNK
            if score > top.get(chunk, float("-inf")):
                top[chunk] = score
        await client.zadd(key, {str(c): t for c, t in top.items()}, gt=True)
        last = got[-1][1]
        ties = sum(1 for _, score in got if score == last)
        skip = skip + len(got) if format(last, ".17g") == low else ties
        low = format(last, ".17g")


#: Chunks of SET_CHUNK trace numbers that one tt_lookup call builds: Redis runs nothing else
#: meanwhile (the fold and queries wait), so a build is many short calls.
LOOKUP_BUILD_CHUNKS: Final = 1


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def fingerprint(value: str) -> int:
    """A value's lookup fingerprint, as lookups.lua computes it (1..FINGERPRINT_MOD; 0 =
    none)."""
    h = FINGERPRINT_SEED
    for byte in value.encode():
        h = (h * 33 + byte) % FINGERPRINT_MOD
    return h + 1


async def _lookup_async(client: AsyncClient, lk: str, *argv: Any) -> Any:
    try:
        return await client.fcall(LOOKUP_FUNCTION, 1, lk, *argv)
    except redis.ResponseError as exc:
        raise translated(exc) from None


def drop_lookup(client: SyncClient, keys: Keys, partition: int, field: str) -> None:
    """Stop keeping the lookup fingerprints of ``field`` in one partition and delete them
    (the library must be loaded: :func:`ensure_loaded`)."""
    try:
        client.fcall(
            LOOKUP_FUNCTION, 1, keys.lookups(partition), keys.prefix(partition), "drop", field
        )
    except redis.ResponseError as exc:
        raise translated(exc) from None


async def ensure_lookups_async(
    client: AsyncClient,
    keys: Keys,
    partition: int,
    fields: Sequence[str],
    on_build: Callable[[str], object] | None = None,
) -> dict[str, int]:
    """Make the lookup fingerprints of ``fields`` (register fields ``t<key>`` / ``m<key>``,
    see :attr:`~tracetags.settings.Settings.lookup_keys`) ready in one partition; returns
    {field: tt_lookup build calls, each over LOOKUP_BUILD_CHUNKS chunks of SET_CHUNK trace numbers}
    for the fields it had to build.

    Safe while a consumer folds: a field is listed (``building``) before it is built, so the
    fold keeps the fingerprints of every trace it touches from then on, and the build
    reads each trace's register as it is at that moment.  A build cut short (a crash) is
    done again from the start by the next call.  Fields listed and not in ``fields`` stay
    (another consumer may list them): ``tracetags lookups drop tags.<key>`` drops one.
    ``on_build(field)`` is called before a field is built.
    """
    lk, prefix = keys.lookups(partition), keys.prefix(partition)
    listed = {_str(k): _str(v) for k, v in (await client.hgetall(lk)).items()}
    built: dict[str, int] = {}
    for field in fields:
        if listed.get(field) == "ready":
            continue
        if on_build is not None:
            on_build(field)
        await _lookup_async(client, lk, prefix, "list", field)
        chunk, calls = 0, 0
        while chunk >= 0:
            reply = await _lookup_async(
                client, lk, prefix, "build", field, chunk, LOOKUP_BUILD_CHUNKS
            )
            chunk, calls = int(reply), calls + 1
        await _lookup_async(client, lk, prefix, "ready", field)
        built[field] = calls
    return built


# --- the batch -------------------------------------------------------------------------


def decode_entries(entries: Iterable[tuple[EntryId, Mapping[bytes, bytes]]]) -> list[BatchItem]:
    """Decode raw stream entries (as XREADGROUP returns them) into events or dead letters."""
    items: list[BatchItem] = []
    append = items.append
    for entry_id, fields in entries:
        payload = fields.get(ENTRY_FIELD)
        if payload is None:
            append((entry_id, DeadLetter(_flatten(fields), "entry has no field 'e'")))
            continue
        try:
            append((entry_id, decode(payload)))
        except ValueError as exc:
            append((entry_id, DeadLetter(payload, str(exc))))
    return items


def _flatten(fields: Mapping[bytes, bytes]) -> bytes:
    """An entry without our field, kept whole as its field/value pairs joined by newlines."""
    return b"\n".join(b"%s=%s" % (k, v) for k, v in fields.items())


def build_batch(items: Iterable[BatchItem], dead: list[Any] | None = None) -> list[Any]:
    """The flat batch of ``tt_apply`` for ``items``, before msgpack (see the module docstring).

    Dead letters are appended to ``dead`` as flat triples (a fresh list when None).
    """
    args: list[Any] = [0]
    if dead is None:
        dead = []
    extend = args.extend
    n_events = 0
    for entry_id, item in items:
        cls = type(item)
        if cls is DeadLetter:
            dead.extend((entry_id, item.payload, item.reason))  # type: ignore[union-attr]
            continue
        if type(entry_id) is bytes:
            entry_id = entry_id.decode()
        if cls is TagsSet:
            tags = item.tags  # type: ignore[union-attr]
            extend((entry_id, "T", item.trace_id, 0, len(tags), 0))  # type: ignore[union-attr]
            for pair in tags.items():
                extend(pair)
        elif cls is TraceFinished or cls is TraceStarted:
            event: TraceFinished | TraceStarted = item  # type: ignore[assignment]
            tags = event.tags if event.name is None else {**event.tags, NAME_TAG: event.name}
            metadata = event.metadata
            crid = event.client_request_id
            if cls is TraceFinished:
                attrs: tuple[Any, ...] = (
                    "e", event.experiment_id, "s", str(event.timestamp_ms),
                    "d", str(event.execution_time_ms), "S", event.status,  # type: ignore[union-attr]
                )  # fmt: skip
                kind = "F"
            else:
                attrs = ("e", event.experiment_id, "s", str(event.timestamp_ms),
                         "S", "IN_PROGRESS")  # fmt: skip
                kind = "S"
            n_attrs = len(attrs) // 2
            if crid is not None:
                attrs += ("c", crid)
                n_attrs += 1
            extend((entry_id, kind, event.trace_id, n_attrs, len(tags), len(metadata)))
            extend(attrs)
            for pair in tags.items():
                extend(pair)
            for pair in metadata.items():
                extend(pair)
        elif cls is TagsDeleted:
            keys = item.keys  # type: ignore[union-attr]
            extend((entry_id, "D", item.trace_id, 0, len(keys), 0))  # type: ignore[union-attr]
            extend(keys)
        elif cls is TraceDeleted:
            extend((entry_id, "X", item.trace_id, 0, 0, 0))  # type: ignore[union-attr]
        else:
            raise TypeError(f"cannot fold {cls.__name__}: expected an event or a DeadLetter")
        n_events += 1
    args[0] = n_events
    return args


def build_args(
    group: str,
    prefix: str,
    items: Iterable[BatchItem],
    max_tags_per_trace: int = DEFAULT_MAX_TAGS_PER_TRACE,
) -> list[Any]:
    """The ARGV of ``tt_apply`` for ``items`` (0 for ``max_tags_per_trace``: no limit)."""
    dead: list[Any] = []
    batch = _ENCODER.encode(build_batch(items, dead))
    return [group, prefix, batch, max_tags_per_trace, *dead]


def _fold_error(exc: redis.ResponseError) -> Exception:
    # Redis appends where a Lua error() was raised: "... script: tt_apply, on @user_function:31."
    message = str(exc).split(" script: ", 1)[0]
    code = message.split(" ", 1)[0]
    if code.startswith("TT_"):
        return _ERRORS.get(code, FoldError)(message, code)
    return translated(exc)


def _is_missing_function(exc: redis.ResponseError) -> bool:
    return "function not found" in str(exc).lower()


def _result(reply: Sequence[int]) -> BatchResult:
    return BatchResult(int(reply[0]), int(reply[1]), int(reply[2]))


def apply_batch(
    client: SyncClient,
    keys: Keys,
    partition: int,
    group: str,
    items: Iterable[BatchItem],
    max_tags_per_trace: int = DEFAULT_MAX_TAGS_PER_TRACE,
) -> BatchResult:
    """Fold ``items`` (events and dead letters of one partition) and XACK them, atomically.

    Loads the library first if the server does not have it (a fresh or flushed Redis).
    Raises :class:`~tracetags.errors.FoldError` (nothing applied) for a malformed batch.
    """
    prefix = keys.prefix(partition)
    args = build_args(group, prefix, items, max_tags_per_trace)
    argv = (f"{prefix}:log", f"{prefix}:dead", *args)
    try:
        return _result(client.fcall(APPLY_FUNCTION, 2, *argv))
    except redis.ResponseError as exc:
        if not _is_missing_function(exc):
            raise _fold_error(exc) from None
    load(client)
    try:
        return _result(client.fcall(APPLY_FUNCTION, 2, *argv))
    except redis.ResponseError as exc:
        raise _fold_error(exc) from None


async def apply_batch_async(
    client: AsyncClient,
    keys: Keys,
    partition: int,
    group: str,
    items: Iterable[BatchItem],
    max_tags_per_trace: int = DEFAULT_MAX_TAGS_PER_TRACE,
) -> BatchResult:
    """:func:`apply_batch` for redis.asyncio."""
    prefix = keys.prefix(partition)
    args = build_args(group, prefix, items, max_tags_per_trace)
    argv = (f"{prefix}:log", f"{prefix}:dead", *args)
    try:
        return _result(await client.fcall(APPLY_FUNCTION, 2, *argv))
    except redis.ResponseError as exc:
        if not _is_missing_function(exc):
            raise _fold_error(exc) from None
    await load_async(client)
    try:
        return _result(await client.fcall(APPLY_FUNCTION, 2, *argv))
    except redis.ResponseError as exc:
        raise _fold_error(exc) from None


async def index_batch_async(
    client: AsyncClient,
    keys: Keys,
    partition: int,
    ids: Mapping[str, Sequence[str]],
    ttl_ms: int | None,
) -> None:
    """Append each trace's entry ids (``ids``: trace id -> entry ids, a batch's) to its
    history index key (``tt_index``; tracetags.history reads it).  Loads the library first
    if the server does not have it."""
    index_keys = [keys.history_index(partition, trace_id) for trace_id in ids]
    index_keys.append(keys.history_index_start(partition))
    first = next(iter(ids.values()))[0]  # a batch is in entry-id order: its first entry
    argv = ["" if ttl_ms is None else str(ttl_ms), first]
    argv += ["," + ",".join(entry_ids) for entry_ids in ids.values()]
    try:
        await client.fcall(INDEX_FUNCTION, len(index_keys), *index_keys, *argv)
        return
    except redis.ResponseError as exc:
        if not _is_missing_function(exc):
            raise
    await load_async(client)
    await client.fcall(INDEX_FUNCTION, len(index_keys), *index_keys, *argv)


# --- the query engine ------------------------------------------------------------------


def _query_error(exc: redis.ResponseError) -> QueryError:
    message = LIBRARY.translate(str(exc).split(" script: ", 1)[0])
    code = message.split(" ", 1)[0]
    return QueryError(message, code if code.startswith("TT_") else "TT_ERROR")


# Connection pools whose server was checked to run this library's code: a server that kept
# an older copy under the same library name would otherwise answer with old query code.
_verified: weakref.WeakSet[Any] = weakref.WeakSet()


def ensure_loaded(client: SyncClient) -> None:
    """Load (or replace) the library once per connection pool (per cluster client), before
    the first query."""
    pool = pool_of(client)
    if pool not in _verified:
        load(client)
        _verified.add(pool)


def queue_query(pipe: redis.client.Pipeline, keys: Keys, partition: int, plan: bytes) -> None:
    """Add a ``tt_query`` call (read only) of one partition to a pipeline run by
    :func:`execute_queries`."""
    # Two keys of the slot, one never existing: mid-migration of the slot, one of them is
    # always missing on the node asked, which then answers TRYAGAIN rather than running the
    # query over a partition half moved away.
    ids, absent = keys.trace_ids(partition), keys.absent(partition)
    pipe.fcall_ro(QUERY_FUNCTION, 2, ids, absent, keys.prefix(partition), plan)


#: How long a query waits for a cluster slot it reads to finish migrating.
MIGRATION_WAIT_S: Final = 10.0
#: Replies of a call that met a slot mid-migration (redis-py's own retries exhausted).
_MIGRATING = (redis.exceptions.TryAgainError, redis.exceptions.ClusterError)


def execute_queries(
    client: SyncClient, fill: Callable[[redis.client.Pipeline], object]
) -> list[Any]:
    """Run the pipeline ``fill`` builds: ``tt_query`` calls (:func:`queue_query`) and any
    other reads, in one round trip.  Loads the library first, and once more if the server
    lost it meanwhile.  Raises :class:`~tracetags.errors.QueryError` for an error reply (a
    plan the Function refuses), and TracetagsTimeoutError when a cluster slot it reads is
    migrated for longer than MIGRATION_WAIT_S (the tt_query calls declare a key never
    written: mid-migration they are refused, never run over half of a partition)."""
    ensure_loaded(client)
    reloaded = False
    deadline = time.monotonic() + MIGRATION_WAIT_S
    delay = 0.01
    while True:
        pipe = client.pipeline(transaction=False)
        fill(pipe)
        try:
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except _MIGRATING as exc:  # a command redis-py resent on its own, refused again
            replies = [exc]
        moving = next((r for r in replies if isinstance(r, _MIGRATING)), None)
        if moving is not None:
            # A slot being migrated: redis-py followed ASK and retried TRYAGAIN a few
            # times; a migration lasts longer (keys move in batches), so wait it out.
            if time.monotonic() > deadline:
                raise TracetagsTimeoutError(
                    f"a cluster slot the query reads was still being migrated after "
                    f"{MIGRATION_WAIT_S:g} s ({moving}); try again when the reshard is done"
                ) from moving
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
            continue
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is None:
            return replies
        if not isinstance(failed, redis.ResponseError):
            raise failed  # a node unreachable: the caller's to report
        errors = [r for r in replies if isinstance(r, redis.ResponseError)]
        if not reloaded and any(_is_missing_function(e) for e in errors):
            load(client)
            reloaded = True
            continue
        raise _query_error(errors[0]) from None


def query_partitions(
    client: SyncClient, keys: Keys, plans: Sequence[tuple[int, bytes]]
) -> list[Any]:
    """Run ``tt_query`` (read only) for each ``(partition, msgpack plan)`` in one pipeline.

    The plan format is documented at ``tt_query`` in lua/query.lua (built by
    :mod:`tracetags.query.planner`).  Loads the library first if the server lacks it.
    Raises :class:`~tracetags.errors.QueryError` when the Function refuses a plan.
    """
    if not plans:
        return []

    def fill(pipe: redis.client.Pipeline) -> None:
        for partition, plan in plans:
            queue_query(pipe, keys, partition, plan)

    return execute_queries(client, fill)
