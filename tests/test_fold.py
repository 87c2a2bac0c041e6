"""The fold Function against the reference model: any delivery order, with duplicates, of a
real stream's entries leaves exactly the state and indexes of an in-order fold."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.model import FoldModel, dump, parse_entry_id
from tracetags import functions, schemas
from tracetags.embedded import RedisServer
from tracetags.errors import FoldArgumentsError
from tracetags.functions import BatchItem, DeadLetter, apply_batch, decode_entries
from tracetags.keys import (
    NAME_TAG,
    PLAIN_MAX,
    Keys,
    chunk_key,
    chunk_of,
    decode_stamp,
    encode_stamp,
)

GROUP = "fold-test"
BASE_MS = 1_700_000_000_000

TRACE_IDS = ["t1", "tr-ü", "a:b"]
TAG_KEYS = ["a", "a:b", "b", NAME_TAG, "ü/ß", "x y"]
VALUES = ["", "b:c", "v", "é", "1", "w" * 70]
META_KEYS = ["a", "a:b", "mlflow.sourceRun"]
OPTIONAL_TEXT = [None, "", "n:1"]

_event_ids = itertools.count()


def _common(trace_id: str) -> dict[str, object]:
    return {
        "trace_id": trace_id,
        "event_id": next(_event_ids).to_bytes(16, "big"),
        "emitted_at_ms": 1,
    }


tags_st = st.dictionaries(st.sampled_from(TAG_KEYS), st.sampled_from(VALUES), max_size=3)
meta_st = st.dictionaries(st.sampled_from(META_KEYS), st.sampled_from(VALUES), max_size=2)
trace_id_st = st.sampled_from(TRACE_IDS)


@st.composite
def events(draw: st.DrawFn) -> schemas.Event:
    kind = draw(st.sampled_from(["started", "finished", "set", "set", "deleted", "trace_deleted"]))
    trace_id = draw(trace_id_st)
    if kind == "set":
        return schemas.TagsSet(**_common(trace_id), tags=draw(tags_st))  # type: ignore[arg-type]
    if kind == "deleted":
        keys = draw(st.lists(st.sampled_from(TAG_KEYS), max_size=3))
        return schemas.TagsDeleted(**_common(trace_id), keys=keys)  # type: ignore[arg-type]
    if kind == "trace_deleted":
        return schemas.TraceDeleted(**_common(trace_id))  # type: ignore[arg-type]
    fields = {
        "experiment_id": draw(st.sampled_from(["1", "2"])),
        "timestamp_ms": draw(st.sampled_from([0, 5, BASE_MS])),
        "name": draw(st.sampled_from(OPTIONAL_TEXT)),
        "client_request_id": draw(st.sampled_from(OPTIONAL_TEXT)),
        "tags": draw(tags_st),
        "metadata": draw(meta_st),
    }
    if kind == "started":
        return schemas.TraceStarted(**_common(trace_id), **fields)  # type: ignore[arg-type]
    return schemas.TraceFinished(
        **_common(trace_id),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
        execution_time_ms=draw(st.sampled_from([0, 7, 300_000])),
        status=draw(st.sampled_from(schemas.TRACE_STATES)),
    )


# Gaps between consecutive entry ids: same ms, a seq too big for a compact stamp, a later
# ms, and a jump too far for a compact stamp (both fall back to the verbatim form).
GAPS = st.sampled_from(["seq", "seq", "ms", "ms", "seq_far", "ms_far"])


def _entry_ids(gaps: Sequence[str]) -> Iterator[str]:
    ms, seq = BASE_MS, 0
    for gap in gaps:
        if gap == "seq":
            seq += 1
        elif gap == "seq_far":
            seq += 1500
        elif gap == "ms":
            ms, seq = ms + 1 + seq % 3, 0
        else:
            ms, seq = ms + 2**43, 0
        yield f"{ms}-{seq}"


_sub_namespaces = itertools.count()


def _pending(client: redis.Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    reply: Any = client.xreadgroup(GROUP, "c1", {stream: ">"})
    return list(reply[0][1]) if reply else []


def _fresh_stream(client: redis.Redis, keys: Keys, partition: int) -> str:
    stream = keys.stream(partition)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    return stream


def _model_of(entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> FoldModel:
    model = FoldModel()
    for entry_id, fields in entries:
        try:
            event = schemas.decode(fields[schemas.ENTRY_FIELD])
        except (KeyError, ValueError):
            continue
        model.apply(entry_id, event)
    return model


# TRACETAGS_FOLD_EXAMPLES=5000 for a longer hunt than CI's.
@settings(
    max_examples=int(os.environ.get("TRACETAGS_FOLD_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    log=st.lists(st.tuples(events(), GAPS), min_size=1, max_size=24),
    partition=st.sampled_from([0, 3]),
    lookups=st.booleans(),
    data=st.data(),
)
def test_any_delivery_order_with_duplicates_equals_the_in_order_fold(
    r: redis.Redis,
    namespace: str,
    log: list[tuple[schemas.Event, str]],
    partition: int,
    lookups: bool,
    data: st.DataObject,
) -> None:
    """(With ``lookups``, some tag and metadata keys have lookup fingerprints from the start,
    which dump() checks against every trace's value.)"""
    keys = Keys(f"{namespace}:x{next(_sub_namespaces)}")
    stream = _fresh_stream(r, keys, partition)
    if lookups:
        _list_lookups(r, keys, partition, LOOKUP_FIELDS)
    pipe = r.pipeline(transaction=False)
    for (event, _), entry_id in zip(log, _entry_ids([gap for _, gap in log]), strict=True):
        pipe.xadd(stream, {schemas.ENTRY_FIELD: schemas.encode(event)}, id=entry_id)
    pipe.execute()
    entries = _pending(r, stream)
    assert len(entries) == len(log)

    n = len(entries)
    order = list(data.draw(st.permutations(range(n)), label="order"))
    for index in data.draw(st.lists(st.integers(0, n - 1), max_size=n), label="duplicates"):
        order.insert(data.draw(st.integers(0, len(order)), label="at"), index)
    sizes = data.draw(st.lists(st.integers(1, 8), min_size=1), label="batch sizes")
    delivery = [entries[i] for i in order]
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(delivery):
            break
        batch = delivery[start : start + size]
        result = apply_batch(r, keys, partition, GROUP, decode_entries(batch))
        assert result.applied == len(batch) and result.dead_lettered == 0
        start += size

    assert r.xpending(stream, GROUP)["pending"] == 0
    try:
        assert dump(r, keys, partition) == _model_of(entries).expected(keys, partition)
    finally:  # keep the keyspace small: dump() SCANs it once per example
        r.delete(*r.scan_iter(match=f"{keys.namespace}:*", count=1000))


# Register fields with lookup fingerprints in the tests that list them (':' and multi-byte
# characters in their names, a metadata key, the trace name).
LOOKUP_FIELDS = ["ta", "ta:b", "tü/ß", "t" + NAME_TAG, "ma:b"]


def _list_lookups(client: redis.Redis, keys: Keys, partition: int, fields: list[str]) -> None:
    """List fields before any trace exists: nothing to build, ready at once."""
    functions.load(client)
    lk, prefix = keys.lookups(partition), keys.prefix(partition)
    for field in fields:
        assert client.fcall("tt_lookup", 1, lk, prefix, "list", field) == b"building"
        assert client.fcall("tt_lookup", 1, lk, prefix, "build", field, 0, 4) == -1
        client.fcall("tt_lookup", 1, lk, prefix, "ready", field)


def _apply_all(
    client: redis.Redis, keys: Keys, partition: int, batch_size: int = 500
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    entries = _pending(client, keys.stream(partition))
    for start in range(0, len(entries), batch_size):
        items = decode_entries(entries[start : start + batch_size])
        apply_batch(client, keys, partition, GROUP, items)
    return entries


def _write(client: redis.Redis, stream: str, *events: schemas.Event) -> None:
    for event in events:
        client.xadd(stream, {schemas.ENTRY_FIELD: schemas.encode(event)})


def test_poison_entries_are_dead_lettered_and_the_rest_applied(
    r: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    stream = _fresh_stream(r, keys, 0)
    too_long = msgspec.msgpack.encode(
        schemas.TagsSet(**_common("t1"), tags={"k": "x" * 8001})  # type: ignore[arg-type]
    )
    wrong_schema = msgspec.msgpack.encode({"type": "tags_set", "trace_id": "t1"})
    _write(r, stream, schemas.TagsSet(**_common("t1"), tags={"k": "before"}))  # type: ignore[arg-type]
    bad_ids = [
        r.xadd(stream, {schemas.ENTRY_FIELD: b"\xc1garbage"}),
        r.xadd(stream, {schemas.ENTRY_FIELD: wrong_schema}),
        r.xadd(stream, {schemas.ENTRY_FIELD: too_long}),
        r.xadd(stream, {b"other": b"field"}),
    ]
    _write(r, stream, schemas.TagsSet(**_common("t2"), tags={"k": "after"}))  # type: ignore[arg-type]

    entries = _pending(r, stream)
    result = apply_batch(r, keys, 0, GROUP, decode_entries(entries))

    assert result == functions.BatchResult(applied=2, dead_lettered=4, acked=6)
    assert r.xpending(stream, GROUP)["pending"] == 0
    dead = r.xrange(keys.dead_letters(0))
    assert [d[1][b"entry_id"] for d in dead] == bad_ids
    assert [d[1][b"payload"] for d in dead] == [b"\xc1garbage", wrong_schema, too_long,
                                               b"other=field"]  # fmt: skip
    reasons = [d[1][b"reason"].decode() for d in dead]
    assert reasons[0].startswith("not a msgpack event")
    assert reasons[1] == "schema violation: Object missing required field `event_id`"
    assert "8000" in reasons[2] and "$.tags" in reasons[2]
    assert reasons[3] == "entry has no field 'e'"
    assert all(int(d[1][b"time_ms"]) > BASE_MS for d in dead)
    assert dump(r, keys, 0) == _model_of(entries).expected(keys, 0)
    assert r.sismember(keys.tag_value(0, "k", "after"), "2")


def test_a_trace_with_1000_tags(r: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    stream = _fresh_stream(r, keys, 0)
    tags = {f"key.{i}": f"value:{i % 7}" for i in range(1000)}
    _write(
        r,
        stream,
        schemas.TagsSet(**_common("big"), tags=tags),  # type: ignore[arg-type]
        schemas.TagsDeleted(**_common("big"), keys=[f"key.{i}" for i in range(0, 1000, 2)]),  # type: ignore[arg-type]
        schemas.TraceFinished(
            **_common("big"),  # type: ignore[arg-type]
            experiment_id="1",
            timestamp_ms=10,
            execution_time_ms=5,
            status="OK",
            tags=tags,
        ),
    )
    entries = _apply_all(r, keys, 0)
    state = dump(r, keys, 0)
    assert state == _model_of(entries).expected(keys, 0)
    chunk, offset = chunk_of(1)
    assert r.smembers(chunk_key(keys.tag_key(0, "key.999"), chunk)) == {str(offset).encode()}
    assert len(state[("trace", "big")]) == 1000 + 5  # tags, e s d S, x

    _write(r, stream, schemas.TraceDeleted(**_common("big")))  # type: ignore[arg-type]
    entries += _apply_all(r, keys, 0)
    assert dump(r, keys, 0) == _model_of(entries).expected(keys, 0)
    # the partition's bookkeeping stays: the number counter, the chunks' time bounds, the
    # directories of the ids' and the reversed ids' byte orders (their head '') and the
    # count of traces holding a client_request_id (none left)
    assert {k.decode().rsplit(":", 1)[-1] for k in r.scan_iter(f"{namespace}:*")} == {
        "log", "gone", "n", "tsx", "ri", "rr", "cn"
    }  # fmt: skip
    assert r.get(keys.request_count(0)) == b"0"


def test_tags_before_start_and_a_late_start_keeps_the_finished_status(
    r: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    stream = _fresh_stream(r, keys, 0)
    tagged = schemas.TagsSet(**_common("t"), tags={"env": "prod"})  # type: ignore[arg-type]
    started = schemas.TraceStarted(
        **_common("t"),  # type: ignore[arg-type]
        experiment_id="1",
        timestamp_ms=100,
        name="chat",
    )
    finished = schemas.TraceFinished(
        **_common("t"), experiment_id="1", timestamp_ms=100,  # type: ignore[arg-type]
        execution_time_ms=42, status="ERROR",
    )  # fmt: skip
    _write(r, stream, tagged, started, finished)
    entries = _pending(r, stream)
    first, second, third = ([e] for e in entries)
    apply_batch(r, keys, 0, GROUP, decode_entries(first))
    assert r.smembers(chunk_key(keys.all_traces(0), 0)) == {b"1"}
    assert r.hlen(keys.trace_ids(0)) == 1
    assert r.smembers(keys.tag_value(0, "env", "prod")) == {b"1"}
    assert r.zcard(keys.by_timestamp(0)) == 0  # no timestamp yet: not in the time indexes
    apply_batch(r, keys, 0, GROUP, decode_entries(third))  # finished before started
    apply_batch(r, keys, 0, GROUP, decode_entries(second))
    assert r.smembers(keys.status(0, "ERROR")) == {b"1"}
    assert not r.exists(keys.status(0, "IN_PROGRESS"))
    assert r.zscore(keys.by_end_time(0), 1) == 142
    assert r.smembers(keys.tag_value(0, NAME_TAG, "chat")) == {b"1"}
    assert dump(r, keys, 0) == _model_of(entries).expected(keys, 0)


def test_a_deletion_delivered_before_older_events_keeps_them_out(
    r: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    stream = _fresh_stream(r, keys, 0)
    _write(
        r,
        stream,
        schemas.TagsSet(**_common("t"), tags={"a": "1", "b": "2"}),  # type: ignore[arg-type]
        schemas.TraceDeleted(**_common("t")),  # type: ignore[arg-type]
        schemas.TagsSet(**_common("t"), tags={"b": "3"}),  # type: ignore[arg-type]
    )
    entries = _pending(r, stream)
    for entry in reversed(entries):
        apply_batch(r, keys, 0, GROUP, decode_entries([entry]))
    assert dump(r, keys, 0) == _model_of(entries).expected(keys, 0)
    assert not r.exists(chunk_key(keys.tag_key(0, "a"), 0))


def test_a_malformed_batch_is_refused_before_any_write(r: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    functions.load(r)  # FCALL directly below: the library must be there (run alone too)
    stream = _fresh_stream(r, keys, 0)
    _write(r, stream, schemas.TagsSet(**_common("t"), tags={"a": "1"}))  # type: ignore[arg-type]
    entries = _pending(r, stream)
    args = functions.build_args(GROUP, keys.prefix(0), decode_entries(entries))
    prefix = keys.prefix(0)

    def fcall(*argv: object, dead: str = f"{prefix}:dead") -> None:
        try:
            r.execute_command("FCALL", "tt_apply", 2, f"{prefix}:log", dead, *argv)
        except redis.ResponseError as exc:
            raise functions._fold_error(exc) from None

    batch = functions.build_batch(decode_entries(entries))
    with pytest.raises(FoldArgumentsError) as info:
        fcall(GROUP, prefix, msgspec.msgpack.encode([*batch, "extra"]))
    assert str(info.value) == "TT_BADARGS the batch has 10 values, its counts describe 9"
    assert info.value.code == "TT_BADARGS"
    with pytest.raises(FoldArgumentsError, match=r"^TT_BADARGS bad dead-letter entry id at"):
        fcall(GROUP, prefix, msgspec.msgpack.encode(batch), 0, "x", b"payload", "reason")
    batch[1] = "not-an-id"
    with pytest.raises(FoldArgumentsError, match=r"^TT_BADARGS bad entry id at batch\[2\]"):
        fcall(GROUP, prefix, msgspec.msgpack.encode(batch))
    with pytest.raises(FoldArgumentsError, match=r"^TT_BADARGS ARGV\[3\] must be a msgpack"):
        fcall(GROUP, prefix, b"\xc1")
    with pytest.raises(FoldArgumentsError, match=r"^TT_BADKEYS KEYS must be "):
        fcall(*args, dead=keys.dead_letters(1))
    assert r.xpending(stream, GROUP)["pending"] == 1
    assert not r.exists(keys.trace_ids(0))


def test_load_is_idempotent_and_apply_reloads_a_flushed_server(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    try:
        assert functions.load(client) is True
        assert functions.load(client) is False
        client.execute_command("FUNCTION", "FLUSH")
        keys = Keys("ns")
        stream = _fresh_stream(client, keys, 0)
        _write(client, stream, schemas.TagsSet(**_common("t"), tags={"a": "1"}))  # type: ignore[arg-type]
        result = apply_batch(client, keys, 0, GROUP, decode_entries(_pending(client, stream)))
        assert result.acked == 1
    finally:
        client.close()


def _older_version(number: int) -> str:
    """This library's code under an older version's name (its functions have our names)."""
    first, rest = functions.LIBRARY_CODE.split("\n", 1)
    assert first == f"#!lua name={functions.LIBRARY_NAME}"
    return f"#!lua name={functions.LIBRARY_PREFIX}{number}\n{rest}"


def test_loading_replaces_an_older_version_of_the_library(own_redis: RedisServer) -> None:
    """Function names are global: an older tracetags_vN holding tt_apply would make the load
    fail, and its fold would not keep this version's indexes, so it is deleted first."""
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.execute_command("FUNCTION", "FLUSH")
        client.function_load(_older_version(3))
        client.function_load(
            "#!lua name=someone_else\nredis.register_function('f', function() return 1 end)"
        )
        assert functions.load(client) is True
        names = sorted(
            lib[b"library_name"].decode() if isinstance(lib, dict) else lib[1].decode()
            for lib in client.function_list()
        )
        assert names == ["someone_else", functions.LIBRARY_NAME]
    finally:
        client.execute_command("FUNCTION", "FLUSH")
        client.close()


async def test_async_loading_replaces_an_older_version(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        if sync.function_list(functions.LIBRARY_NAME):
            sync.function_delete(functions.LIBRARY_NAME)
        sync.function_load(_older_version(2))
        assert await functions.load_async(client) is True
        assert functions.load(sync) is False  # the current version, and only it
        listed = sync.function_list(functions.LIBRARY_PREFIX + "*")
        assert len(listed) == 1
    finally:
        functions.load(sync)
        sync.close()
        await client.aclose()


async def test_async_twin(redis_url: str, namespace: str) -> None:
    keys = Keys(namespace)
    sync = redis.Redis.from_url(redis_url)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        stream = _fresh_stream(sync, keys, 0)
        _write(sync, stream, schemas.TagsSet(**_common("t"), tags={"a": "1"}))  # type: ignore[arg-type]
        items: list[BatchItem] = decode_entries(_pending(sync, stream))
        items.append((b"0-1", DeadLetter(b"junk", "test")))
        await functions.load_async(client)
        result = await functions.apply_batch_async(client, keys, 0, GROUP, items)
        assert result == functions.BatchResult(applied=1, dead_lettered=1, acked=1)
        assert await client.smembers(keys.tag_value(0, "a", "1")) == {b"1"}
    finally:
        sync.close()
        await client.aclose()


@given(
    ms=st.integers(0, 2**47),
    seq=st.integers(0, 2**40),
    base=st.integers(0, 2**47),
)
def test_stamps_round_trip(ms: int, seq: int, base: int) -> None:
    text = encode_stamp(ms, seq, base)
    assert decode_stamp(text, base) == (ms, seq)
    assert ":" not in text


def test_entry_ids_order_numerically_not_as_text() -> None:
    ids = ["9-0", "10-0", "10-2", "10-10", "100-1"]
    shuffled = random.sample(ids, len(ids))
    assert sorted(shuffled, key=parse_entry_id) == ids


def _deliver(
    r: redis.Redis,
    keys: Keys,
    entries: list[tuple[bytes, dict[bytes, bytes]]],
    rng: random.Random,
    *,
    shuffled: bool,
    sizes: list[int],
    check: float,
) -> None:
    """Fold entries in batches of random sizes: in order, checking the state against the
    model after a batch with probability ``check``; or shuffled with a share of duplicates
    (the state is checked by the caller, at the end)."""
    delivery = list(entries)
    if shuffled:
        delivery += rng.sample(entries, len(entries) // 3)
        rng.shuffle(delivery)
    start = 0
    while start < len(delivery):
        size = rng.choice(sizes)
        apply_batch(r, keys, 0, GROUP, decode_entries(delivery[start : start + size]))
        start += size
        if not shuffled and start < len(delivery) and rng.random() < check:
            assert dump(r, keys, 0) == _model_of(entries[:start]).expected(keys, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_sets_change_form_across_the_threshold_in_any_order(
    r: redis.Redis, namespace: str, seed: int
) -> None:
    """Value sets go plain -> chunked above PLAIN_MAX members and back below it, whatever
    the delivery order; the chunked key sets and the counts follow."""
    rng = random.Random(seed)
    keys = Keys(namespace)
    stream = _fresh_stream(r, keys, 0)
    n = PLAIN_MAX + 200
    log: list[schemas.Event] = []
    for i in range(n):
        log.append(schemas.TraceStarted(
            **_common(f"tr-{i}"), experiment_id="1", timestamp_ms=i,  # type: ignore[arg-type]
            tags={"env": "prod", "u": f"u{i % 3}"},
        ))  # fmt: skip
    for i in range(300):
        log.append(schemas.TagsSet(**_common(f"tr-{i}"), tags={"env": "dev"}))  # type: ignore[arg-type]
    for i in range(300, 400):
        log.append(schemas.TraceDeleted(**_common(f"tr-{i}")))  # type: ignore[arg-type]
    for i in range(0, 250):
        log.append(schemas.TagsDeleted(**_common(f"tr-{i}"), keys=["env"]))  # type: ignore[arg-type]
    for i in range(0, 400):
        log.append(schemas.TagsSet(**_common(f"tr-{i}"), tags={"env": "prod"}))  # type: ignore[arg-type]
    pipe = r.pipeline(transaction=False)
    for event in log:
        pipe.xadd(stream, {schemas.ENTRY_FIELD: schemas.encode(event)})
    pipe.execute()
    entries = _pending(r, stream)
    model = _model_of(entries)
    # In order, checking every prefix boundary of a few batch sizes, then shuffled with dups.
    _deliver(r, keys, entries, rng, shuffled=bool(seed), sizes=[1, 7, 50, 333], check=1.0)
    assert dump(r, keys, 0) == model.expected(keys, 0)
    prod = keys.tag_value(0, "env", "prod")
    assert not r.exists(prod) and r.exists(chunk_key(prod, 0))  # 500 + 100 members: chunked
    assert r.zscore(keys.tag_values(0, "env"), "prod") == n  # 300..399 came back as prod


def _lex_keys(client: redis.Redis, distinct: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{distinct}:L*", count=1000))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_byte_order_index_follows_values_through_splits_and_removals(
    r: redis.Redis, namespace: str, seed: int
) -> None:
    """Thousands of distinct values enter and leave a key's distinct zset, in any delivery
    order: its byte-order index (buckets of at most LEX_BUCKET) holds exactly its values at
    every checked boundary (dump() checks the index against the zset), the buckets of short
    values stay listpacks, and the index goes with the key's last value."""
    rng = random.Random(seed)
    keys = Keys(namespace)
    stream = _fresh_stream(r, keys, 0)
    alphabet = ["a", "b", "z", "A", "0", "9", "_", "%", " ", ":", "é", "ü", "\u4e2d", "~"]

    def value() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 7)))

    n = 1200
    log: list[schemas.Event] = []
    for i in range(n):
        log.append(schemas.TraceStarted(
            **_common(f"tr-{i}"), experiment_id="1", timestamp_ms=i,  # type: ignore[arg-type]
            tags={"u": f"user_{rng.randrange(900)}", "v": value()},
            metadata={"m": value() + ("x" * 70 if i % 97 == 0 else "")},
        ))  # fmt: skip
    for i in rng.sample(range(n), 500):  # new values, old ones leave
        log.append(schemas.TagsSet(**_common(f"tr-{i}"), tags={"u": f"user_{900 + i}"}))  # type: ignore[arg-type]
    for i in rng.sample(range(n), 300):
        log.append(schemas.TagsDeleted(**_common(f"tr-{i}"), keys=["u", "v"]))  # type: ignore[arg-type]
    for i in rng.sample(range(n), 200):
        log.append(schemas.TraceDeleted(**_common(f"tr-{i}")))  # type: ignore[arg-type]
    pipe = r.pipeline(transaction=False)
    for event in log:
        pipe.xadd(stream, {schemas.ENTRY_FIELD: schemas.encode(event)})
    pipe.execute()
    entries = _pending(r, stream)
    _deliver(r, keys, entries, rng, shuffled=bool(seed), sizes=[1, 30, 200, 700], check=0.3)
    assert dump(r, keys, 0) == _model_of(entries).expected(keys, 0)

    users = keys.tag_values(0, "u")
    directory = f"{users}:L"
    heads = r.zrange(directory, 0, -1)
    assert heads[0] == b"" and len(heads) > 4  # hundreds of users: the index was cut
    for key in _lex_keys(r, users):
        assert r.object("encoding", key) == b"listpack", key

    # The key's last value goes: so does its index.
    gone = [schemas.TraceDeleted(**_common(f"tr-{i}")) for i in range(n)]  # type: ignore[arg-type]
    _write(r, stream, *gone)
    _apply_all(r, keys, 0)
    assert _lex_keys(r, users) == [] and _lex_keys(r, keys.metadata_values(0, "m")) == []
    assert dump(r, keys, 0) == _model_of(_all_entries(r, stream)).expected(keys, 0)


def _all_entries(client: redis.Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    entries: Any = client.xrange(stream)
    return list(entries)


def test_data_folded_without_the_byte_order_index_gets_it_when_next_folded(
    r: redis.Redis, namespace: str
) -> None:
    """Keys folded by a version without the index (here: its keys deleted) have none until
    the fold next touches them, and then the whole index is built from the distinct zset."""
    keys = Keys(namespace)
    stream = _fresh_stream(r, keys, 0)
    _write(r, stream, *(
        schemas.TraceStarted(
            **_common(f"tr-{i}"), experiment_id="1", timestamp_ms=i,  # type: ignore[arg-type]
            tags={"u": f"user_{i % 400}", "k": "same"},
        )
        for i in range(1000)
    ))  # fmt: skip
    _apply_all(r, keys, 0)
    users = keys.tag_values(0, "u")
    before = {k: r.zrange(k, 0, -1) for k in _lex_keys(r, users)}
    assert len(before) > 4
    r.delete(*before)
    _write(r, stream, schemas.TagsSet(**_common("tr-1"), tags={"k": "other"}))  # type: ignore[arg-type]
    _apply_all(r, keys, 0)
    assert _lex_keys(r, users) == []  # "u" was not folded again: still without an index
    _write(r, stream, schemas.TagsSet(**_common("tr-2"), tags={"u": "user_2"}))  # type: ignore[arg-type]
    _apply_all(r, keys, 0)
    assert _lex_keys(r, users) == []  # user_2 existed already: the zset did not change
    _write(r, stream, schemas.TagsSet(**_common("tr-3"), tags={"u": "a new user"}))  # type: ignore[arg-type]
    _apply_all(r, keys, 0)
    assert len(_lex_keys(r, users)) > 4
    assert dump(r, keys, 0) == _model_of(_all_entries(r, stream)).expected(keys, 0)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    before=st.lists(events(), min_size=1, max_size=30),
    after=st.lists(events(), max_size=15),
)
def test_lookups_built_for_data_folded_before_them_then_kept_by_the_fold(
    r: redis.Redis,
    redis_url: str,
    namespace: str,
    before: list[schemas.Event],
    after: list[schemas.Event],
) -> None:
    """ensure_lookups_async builds the fingerprints of traces folded before the keys were
    listed (chunk by chunk, from each key's set); the fold keeps them from then on; a second
    call finds them ready and builds nothing."""
    import asyncio

    keys = Keys(f"{namespace}:b{next(_sub_namespaces)}")
    stream = _fresh_stream(r, keys, 0)
    _write(r, stream, *before)
    entries = _apply_all(r, keys, 0, batch_size=7)

    async def ensure() -> dict[str, int]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await functions.ensure_lookups_async(client, keys, 0, LOOKUP_FIELDS)
        finally:
            await client.aclose()

    built = asyncio.run(ensure())
    assert set(built) == set(LOOKUP_FIELDS)
    assert r.hgetall(keys.lookups(0)) == {f.encode(): b"ready" for f in LOOKUP_FIELDS}
    try:
        assert dump(r, keys, 0) == _model_of(entries).expected(keys, 0)
        _write(r, stream, *after)
        entries += _apply_all(r, keys, 0, batch_size=5)
        assert dump(r, keys, 0) == _model_of(entries).expected(keys, 0)
        assert asyncio.run(ensure()) == {}
    finally:
        r.delete(*r.scan_iter(match=f"{keys.namespace}:*", count=1000))


def test_tt_lookup_refuses_bad_arguments(r: redis.Redis, namespace: str) -> None:
    functions.load(r)
    keys = Keys(namespace)
    lk, prefix = keys.lookups(0), keys.prefix(0)
    for args, code in [
        (("list", "x"), "BADARGS"),  # neither t<key> nor m<key>
        (("list", "t"), "BADARGS"),
        (("build", "tuser", 0, 4), "NOTLISTED"),
        (("ready", "tuser"), "NOTLISTED"),
        (("frobnicate", "tuser"), "NOTLISTED"),
    ]:
        with pytest.raises(redis.ResponseError, match=code):
            r.fcall("tt_lookup", 1, lk, prefix, *args)
    r.fcall("tt_lookup", 1, lk, prefix, "list", "tuser")
    with pytest.raises(redis.ResponseError, match="BADARGS"):
        r.fcall("tt_lookup", 1, lk, prefix, "build", "tuser", -1, 4)
    with pytest.raises(redis.ResponseError, match="BADKEYS"):
        r.fcall("tt_lookup", 1, f"{prefix}:other", prefix, "list", "tuser")
    r.fcall("tt_lookup", 1, lk, prefix, "drop", "tuser")
    assert not r.exists(lk)
