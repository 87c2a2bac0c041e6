"""The pure-Python reference fold, and a reader that dumps a partition from Redis in its shape.

:class:`FoldModel` applies events **in stream order** with the plainest semantics (a later
event overwrites, ``tags_deleted`` leaves a stamped tombstone, ``trace_deleted`` forgets the
trace and remembers when), keeping the entry id of each register's writer.
:meth:`FoldModel.expected` spells every key the fold should leave in Redis; :func:`dump`
reads a partition back into that shape (trace numbers mapped back to trace ids) and fails on
any key, member or field it cannot account for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster

from tracetags.connections import SyncClient
from tracetags.functions import fingerprint
from tracetags.keys import (
    LEX_BUCKET,
    NAME_TAG,
    PLAIN_MAX,
    SET_CHUNK,
    Keys,
    decode_stamp,
    split_register,
)
from tracetags.schemas import (
    Event,
    TagsDeleted,
    TagsSet,
    TraceDeleted,
    TraceFinished,
    TraceStarted,
)

Stamp = tuple[int, int]
Register = tuple[Stamp, str | None]
Dump = dict[Any, Any]


def parse_entry_id(entry_id: bytes | str) -> Stamp:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


@dataclass
class TraceModel:
    seen: Stamp
    #: Hash-field name (``e s d S c``, ``t<key>``, ``m<key>``) -> (writer's stamp, value or None).
    registers: dict[str, Register] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        register = self.registers.get(name)
        return None if register is None else register[1]


def registers_of(event: Event) -> list[tuple[str, str | None]]:
    """The registers an event writes, in the order it writes them."""
    if isinstance(event, TagsSet):
        return [("t" + k, v) for k, v in event.tags.items()]
    if isinstance(event, TagsDeleted):
        return [("t" + k, None) for k in event.keys]
    if isinstance(event, TraceStarted | TraceFinished):
        out: list[tuple[str, str | None]] = [
            ("e", event.experiment_id),
            ("s", str(event.timestamp_ms)),
        ]
        if isinstance(event, TraceFinished):
            out += [("d", str(event.execution_time_ms)), ("S", event.status)]
        else:
            out.append(("S", "IN_PROGRESS"))
        if event.client_request_id is not None:
            out.append(("c", event.client_request_id))
        tags = dict(event.tags)
        if event.name is not None:
            tags[NAME_TAG] = event.name  # the name field wins over the same event's tag
        out += [("t" + k, v) for k, v in tags.items()]
        out += [("m" + k, v) for k, v in event.metadata.items()]
        return out
    raise TypeError(event)


class FoldModel:
    """State and tombstones of one partition after an in-order fold."""

    def __init__(self) -> None:
        self.traces: dict[str, TraceModel] = {}
        self.gone: dict[str, Stamp] = {}

    def apply(self, entry_id: bytes | str | Stamp, event: Event) -> None:
        stamp = entry_id if isinstance(entry_id, tuple) else parse_entry_id(entry_id)
        if isinstance(event, TraceDeleted):
            self.traces.pop(event.trace_id, None)
            self.gone[event.trace_id] = stamp
            return
        trace = self.traces.setdefault(event.trace_id, TraceModel(seen=stamp))
        trace.seen = stamp
        for name, value in registers_of(event):
            trace.registers[name] = (stamp, value)

    def expected(self, keys: Keys, partition: int) -> Dump:
        """Every key the fold should leave (besides the streams and the trace counter).

        Sets are logical (a chunked set under its unchunked name, members as trace ids);
        distinct-value zsets score each value with its number of traces.
        """
        out: Dump = {}
        sets: dict[str, set[str]] = {}
        zsets: dict[str, dict[str, float]] = {}

        def add(key: str, member: str) -> None:
            sets.setdefault(key, set()).add(member)

        def score(key: str, member: str, value: float) -> None:
            zsets.setdefault(key, {})[member] = value

        def count(key: str, member: str) -> None:
            values = zsets.setdefault(key, {})
            values[member] = values.get(member, 0.0) + 1

        p = partition
        for trace_id, trace in self.traces.items():
            out[("trace", trace_id)] = {"x": trace.seen, **trace.registers}
            add(keys.all_traces(p), trace_id)
            for name, (_, value) in trace.registers.items():
                if value is None:
                    continue
                kind, key = name[0], name[1:]
                if len(name) > 1 and kind == "t":
                    add(keys.tag_value(p, key, value), trace_id)
                    add(keys.tag_key(p, key), trace_id)
                    count(keys.tag_values(p, key), value)
                elif len(name) > 1:
                    add(keys.metadata_value(p, key, value), trace_id)
                    add(keys.metadata_key(p, key), trace_id)
                    count(keys.metadata_values(p, key), value)
                elif name == "e":
                    add(keys.experiment(p, value), trace_id)
                    count(keys.experiments(p), value)
                elif name == "S":
                    add(keys.status(p, value), trace_id)
                    count(keys.statuses(p), value)
                elif name == "c":
                    add(keys.client_request_id(p, value), trace_id)
                    count(keys.client_request_ids(p), value)
            timestamp, duration = trace.value("s"), trace.value("d")
            if timestamp is not None:
                score(keys.by_timestamp(p), trace_id, float(timestamp))
                end = int(timestamp) + int(duration or 0)
                score(keys.by_end_time(p), trace_id, float(end))
            if duration is not None:
                score(keys.by_execution_time(p), trace_id, float(duration))
        if self.traces:
            out[keys.trace_ids(p)] = frozenset(self.traces)
        if self.gone:
            out[keys.deleted_traces(p)] = dict(self.gone)
        out.update({k: frozenset(v) for k, v in sets.items()})
        out.update(zsets)
        return out


#: Value sets (plain up to PLAIN_MAX members, chunked above) and their distinct zsets.
_VALUE_SETS = ("tv", "mv", "st", "ex", "cr")
#: Always-chunked key sets (the set of all traces, ``all``, is always chunked too).
_KEY_SETS = ("tk", "mk")
_VALUE_ZSETS = ("td", "md")
_TRACE_ZSETS = ("ts", "du", "en")
_DISTINCT_OF = {"st": "std", "ex": "exd", "cr": "crd"}


def _check_id_order(
    heads: list[bytes] | None,
    buckets: dict[bytes, set[int]],
    numbers: dict[int, str],
    reverse: bool = False,
) -> None:
    """The ids' byte order (``reverse``: of their bytes reversed), when the partition keeps
    it: every live trace number in exactly the bucket whose head range [head, next head)
    holds its id, and no other number."""
    if heads is None:
        assert not buckets, "id buckets without their directory"
        return
    assert heads and heads[0] == b"", "the directory lacks the head ''"
    assert set(buckets) <= set(heads), "a bucket not in the directory"
    placed: dict[int, bytes] = {}
    for i, head in enumerate(heads):
        upper = heads[i + 1] if i + 1 < len(heads) else None
        members = buckets.get(head, set())
        assert members or head == b"", f"empty bucket {head!r} left in the directory"
        for no in members:
            assert no not in placed, f"trace number {no} in two buckets"
            placed[no] = head
            trace_id = numbers.get(no)
            assert trace_id is not None, f"bucket {head!r}: {no} is not a live trace number"
            raw = trace_id.encode()[::-1] if reverse else trace_id.encode()
            assert raw >= head and (upper is None or raw < upper), (
                f"{trace_id!r} in bucket {head!r} (next {upper!r})"
            )
    assert set(placed) == set(numbers), "live traces missing from the ids' byte order"


def _take_enc(text: bytes) -> tuple[bytes, bytes]:
    """Split ``<len>:<bytes>rest`` into (the whole encoded string, rest)."""
    length, colon, rest = text.partition(b":")
    assert colon and length.isdigit(), f"bad encoded string: {text!r}"
    n = int(length)
    assert len(rest) >= n, f"short encoded string: {text!r}"
    return text[: len(length) + 1 + n], rest[n:]


def _split_set_key(rest: str) -> tuple[str, str, int | None]:
    """A set key (after the partition prefix) as (family, logical key, chunk or None)."""
    head, _, tail = rest.partition(":")
    raw = tail.encode()
    encoded = b""
    if head == "all":
        remainder = raw if not tail else b":" + raw
        logical = "all"
    else:
        n_strings = 2 if head in ("tv", "mv") else 1
        for _ in range(n_strings):
            piece, raw = _take_enc(raw)
            encoded += piece
        remainder = raw
        logical = f"{head}:{encoded.decode()}"
    if not remainder:
        return head, logical, None
    assert remainder[:1] == b":" and remainder[1:].isdigit(), f"bad chunk suffix: {rest}"
    return head, logical, int(remainder[1:])


def _lex_part(rest: str) -> tuple[str, bytes | None] | None:
    """For a key of a byte-order index (``td:<k>:L``, ``td:<k>:L:<enc head>``, md too):
    (its distinct zset after the prefix, the bucket head or None for the directory)."""
    head, _, tail = rest.partition(":")
    encoded, remainder = _take_enc(tail.encode())
    if not remainder:
        return None
    distinct = f"{head}:{encoded.decode()}"
    if remainder == b":L":
        return distinct, None
    assert remainder.startswith(b":L:"), f"bad index key: {rest}"
    enc_head, left = _take_enc(remainder[3:])
    assert not left, f"bad bucket key: {rest}"
    return distinct, enc_head.split(b":", 1)[1]


def _check_lex(
    out: Dump, lex: dict[str, tuple[dict[bytes, None], dict[bytes, list[bytes]]]], prefix: str
) -> None:
    """Every tag/metadata distinct zset, and client_request_id's, has a byte-order index
    holding exactly its values: heads in the directory ('' first), each bucket's values in
    [head, next head), at most LEX_BUCKET of them, no bucket without a head, no head without
    a bucket but ''."""
    distinct_keys = {
        k
        for k in out
        if isinstance(k, str)
        and (k[len(prefix) + 1 :][:3] in ("td:", "md:") or k[len(prefix) + 1 :] == "crd")
    }
    stale = set(lex) - distinct_keys
    assert not stale, f"an index outlived its distinct zset: {stale}"
    for dkey in distinct_keys:
        assert dkey in lex, f"{dkey}: no byte-order index"
        directory, buckets = lex[dkey]
        heads = sorted(directory)
        assert heads and heads[0] == b"", f"{dkey}: the directory lacks the head ''"
        assert set(buckets) <= set(heads), f"{dkey}: a bucket has no head in the directory"
        indexed: list[bytes] = []
        for i, head in enumerate(heads):
            members = buckets.get(head, [])
            assert head == b"" or members, f"{dkey}: the bucket of {head!r} is empty"
            assert len(members) <= LEX_BUCKET, f"{dkey}: bucket {head!r} holds {len(members)}"
            upper = heads[i + 1] if i + 1 < len(heads) else None
            for m in members:
                assert m >= head and (upper is None or m < upper), (
                    f"{dkey}: {m!r} is outside the bucket [{head!r}, {upper!r})"
                )
            indexed.extend(members)
        expected = sorted(v.encode() for v in out[dkey])
        assert sorted(indexed) == expected, f"{dkey}: the index does not hold its values"


def _check_fingerprints(
    out: Dump,
    numbers: dict[int, str],
    lookups: dict[str, str],
    fingerprints: dict[tuple[str, int], bytes],
) -> None:
    """Every ready lookup field holds, for each trace number, the fingerprint of the trace's
    value (0 for no value, a tombstone, or a number with no live trace)."""
    for name, _ in fingerprints:
        assert name in lookups, f"fingerprints of {name}, which is not listed"
    for name, state in lookups.items():
        if state != "ready":
            continue
        expected: dict[int, int] = {}
        for no, trace_id in numbers.items():
            register = out[("trace", trace_id)].get(name)
            if register is not None and register[1] is not None:
                expected[no] = fingerprint(register[1])
        chunks = {c for (f, c) in fingerprints if f == name} | {no // SET_CHUNK for no in expected}
        for c in chunks:
            text = fingerprints.get((name, c), b"")
            for offset in range(SET_CHUNK):
                pair = text[2 * offset : 2 * offset + 2]
                got = int.from_bytes(pair, "big") if len(pair) == 2 else 0
                no = c * SET_CHUNK + offset
                assert got == expected.get(no, 0), (
                    f"lookup {name}: number {no} has fingerprint {got},"
                    f" expected {expected.get(no, 0)}"
                )


def dump(client: SyncClient, keys: Keys, partition: int) -> Dump:
    """Read every key of the namespace into :meth:`FoldModel.expected`'s shape.

    Chunked sets are read back as one logical set.  Fails (AssertionError) on a key of
    another partition or an unknown shape, on a set member that is not a live trace number,
    on a trace hash not matching the id map, on a chunk that is not an intset or holds an
    offset out of range, and on a value set whose form (plain or chunked) does not match
    its count in the distinct zset.
    """
    prefix = keys.prefix(partition)
    if isinstance(client, redis.cluster.RedisCluster):  # the partition's keys: one node
        node = client.get_node_from_key(keys.stream(partition))
        client = client.get_redis_connection(node)
    found = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in found:
        pipe.type(key)
    types = dict(zip(found, (t.decode() for t in pipe.execute()), strict=True))
    for key in found:
        assert key.startswith(prefix + ":"), f"stray key outside the partition: {key}"
        kind = types[key]
        if kind == "hash":
            pipe.hgetall(key)
        elif kind == "set":
            pipe.smembers(key)
        elif kind == "zset":
            pipe.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            pipe.get(key)
        else:
            pipe.exists(key)
    values = dict(zip(found, pipe.execute(), strict=True))

    ids_key = keys.trace_ids(partition)
    numbers: dict[int, str] = {}  # trace number -> trace id
    if ids_key in values:
        ids = {k.decode(): int(v) for k, v in values[ids_key].items()}
        numbers = {no: trace_id for trace_id, no in ids.items()}
        assert len(numbers) == len(ids), "two traces share a number"

    def trace_of(no: int) -> str:
        assert no in numbers, f"index member {no} is not a live trace number"
        return numbers[no]

    out: Dump = {}
    logical: dict[str, set[str]] = {}
    forms: dict[str, set[bool]] = {}  # logical value set -> {chunked?}
    seen_traces: set[str] = set()
    lex: dict[str, tuple[dict[bytes, None], dict[bytes, list[bytes]]]] = {}
    time_bounds: dict[int, float] | None = None
    id_heads: list[bytes] | None = None  # the ids' byte order (id_order.lua)
    id_buckets: dict[bytes, set[int]] = {}
    reversed_heads: list[bytes] | None = None  # and the reversed ids'
    reversed_buckets: dict[bytes, set[int]] = {}
    lookups: dict[str, str] = {}  # listed field -> building | ready
    fingerprints: dict[tuple[str, int], bytes] = {}  # (field, chunk) -> its string
    request_count: int | None = None
    for key, value in values.items():
        rest = key[len(prefix) + 1 :]
        head = rest.split(":", 1)[0]
        kind = types[key]
        if rest in ("log", "dead"):
            assert kind == "stream", key
        elif rest == "n":
            assert kind == "string", key
        elif rest == "cn":
            # how many live traces hold a client_request_id (partitions born with it)
            assert kind == "string", key
            request_count = int(value)
        elif rest == "ids":
            out[key] = frozenset(numbers.values())
        elif rest == "gone":
            out[key] = {k.decode(): parse_entry_id(v) for k, v in value.items()}
        elif head == "t" and kind == "hash":
            no = rest[2:]
            state = {k.decode(): v.decode() for k, v in value.items()}
            trace_id = state.pop("i")
            assert numbers.get(int(no)) == trace_id, f"{key}: id map and hash disagree"
            assert str(int(no)) == no, key
            seen_traces.add(trace_id)
            base = int(state.pop("b"))
            registers: dict[str, Any] = {"x": decode_stamp(state.pop("x"), base)}
            for name, text in state.items():
                stamp, register_value = split_register(text)
                registers[name] = (decode_stamp(stamp, base), register_value)
            out[("trace", trace_id)] = registers
        elif head in _VALUE_SETS or head in _KEY_SETS or head == "all":
            assert kind == "set", key
            family, name, chunk = _split_set_key(rest)
            members = {int(m) for m in value}
            if chunk is not None:
                encoding = client.object("encoding", key)
                assert encoding == b"intset", f"{key}: chunk is {encoding!r}, not an intset"
                assert all(0 <= m < SET_CHUNK for m in members), f"{key}: offset out of range"
                members = {chunk * SET_CHUNK + m for m in members}
            if family in _KEY_SETS or family == "all":
                assert chunk is not None, f"{key}: key sets and all are always chunked"
            forms.setdefault(name, set()).add(chunk is not None)
            logical.setdefault(f"{prefix}:{name}", set()).update(trace_of(m) for m in members)
        elif head in _VALUE_ZSETS and _lex_part(rest) is not None:
            assert kind == "zset", key
            distinct, bucket = _lex_part(rest)  # type: ignore[misc]
            assert all(s == 0 for _, s in value), f"{key}: a score is not 0"
            entry = lex.setdefault(f"{prefix}:{distinct}", ({}, {}))
            if bucket is None:
                entry[0].update((m, None) for m, _ in value)
            else:
                entry[1][bucket] = [m for m, _ in value]
        elif rest == "crd:L" or rest.startswith("crd:L:"):
            # client_request_id's byte-order index (library v11)
            assert kind == "zset", key
            assert all(s == 0 for _, s in value), f"{key}: a score is not 0"
            entry = lex.setdefault(f"{prefix}:crd", ({}, {}))
            if rest == "crd:L":
                entry[0].update((m, None) for m, _ in value)
            else:
                enc_head, left = _take_enc(rest[len("crd:L:") :].encode())
                assert not left, f"bad bucket key: {key}"
                entry[1][enc_head.split(b":", 1)[1]] = [m for m, _ in value]
        elif head in _VALUE_ZSETS or rest in ("exd", "crd", "std"):
            assert kind == "zset", key
            out[key] = {m.decode(): s for m, s in value}
        elif rest in _TRACE_ZSETS:
            assert kind == "zset", key
            out[key] = {trace_of(int(m)): s for m, s in value}
        elif rest == "lk":
            assert kind == "hash", key
            lookups = {k.decode(): v.decode() for k, v in value.items()}
            assert set(lookups.values()) <= {"building", "ready"}, f"{key}: {lookups}"
        elif head == "lf":
            assert kind == "string", key
            encoded, tail = _take_enc(rest[3:].encode())
            assert tail[:1] == b":" and tail[1:].isdigit(), key
            fingerprints[(encoded.split(b":", 1)[1].decode(), int(tail[1:]))] = value
        elif head == "hx" or rest == "hx0":
            # the consumer's history index of the live tail: part of the log, not the state
            assert kind == ("hash" if rest == "hx0" else "string"), key
        elif rest == "tsx":
            assert kind == "zset", key
            time_bounds = {int(m): s for m, s in value}
            assert time_bounds.pop(-1, None) == float("-inf"), f"{key}: no member -1 at -inf"
        elif rest in ("ri", "rr"):
            assert kind == "zset", key
            assert all(s == 0 for _, s in value), f"{key}: a score is not 0"
            if rest == "ri":
                id_heads = sorted(m for m, _ in value)
            else:
                reversed_heads = sorted(m for m, _ in value)
        elif head in ("ri", "rr"):
            assert kind == "set", key
            encoding = client.object("encoding", key)
            assert encoding == b"intset", f"{key}: bucket is {encoding!r}, not an intset"
            assert len(value) <= SET_CHUNK, f"{key}: {len(value)} members"
            encoded, tail = _take_enc(rest[3:].encode())
            assert not tail, key
            buckets = id_buckets if head == "ri" else reversed_buckets
            buckets[encoded.split(b":", 1)[1]] = {int(m) for m in value}
        else:
            raise AssertionError(f"stray key: {key} ({kind})")
    assert seen_traces == set(numbers.values()), "id map names traces without a hash"
    _check_id_order(id_heads, id_buckets, numbers)
    _check_id_order(reversed_heads, reversed_buckets, numbers, reverse=True)
    if request_count is not None:
        holding = sum(
            1
            for name, registers in out.items()
            if isinstance(name, tuple) and registers.get("c", (None, None))[1] is not None
        )
        assert request_count == holding, f"cn says {request_count}, {holding} traces hold one"
    _check_fingerprints(out, numbers, lookups, fingerprints)
    _check_lex(out, lex, prefix)
    by_time = values.get(f"{prefix}:ts")
    if by_time:
        # tsx bounds the timestamps of each chunk's traces (tt_query's chunk walk)
        assert time_bounds is not None, "traces with timestamps but no tsx"
        for member, score in by_time:
            chunk = int(member) // SET_CHUNK
            bound = time_bounds.get(chunk)
            assert bound is not None and bound >= score, (
                f"tsx bound {bound} of chunk {chunk} is below trace {int(member)}'s {score}"
            )
    for name, chunked in forms.items():
        head = name.split(":", 1)[0]
        if head not in _VALUE_SETS:
            continue
        assert len(chunked) == 1, f"{name} exists both plain and chunked"
        size = len(logical[f"{prefix}:{name}"])
        if head in ("tv", "mv"):
            encoded_key, _ = _take_enc(name[3:].encode())
            distinct = f"{prefix}:{head[0]}d:{encoded_key.decode()}"
            value = _take_enc(name[3:].encode())[1]
        else:
            distinct = f"{prefix}:{_DISTINCT_OF[head]}"
            value = name[3:].encode()
        plain_value = _take_enc(value)[0].split(b":", 1)[1].decode()
        counted = out.get(distinct, {}).get(plain_value)
        assert counted == size, f"{name}: {size} members, counted {counted} in {distinct}"
        assert chunked == {size > PLAIN_MAX}, f"{name}: wrong form for {size} members"
    out.update({k: frozenset(v) for k, v in logical.items()})
    return out
