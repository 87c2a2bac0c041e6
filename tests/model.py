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

from tracetags.keys import NAME_TAG, Keys, decode_stamp, split_register
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
        """Every key the fold should leave (besides the streams and the trace counter)."""
        out: Dump = {}
        sets: dict[str, set[str]] = {}
        zsets: dict[str, dict[str, float]] = {}

        def add(key: str, member: str) -> None:
            sets.setdefault(key, set()).add(member)

        def score(key: str, member: str, value: float) -> None:
            zsets.setdefault(key, {})[member] = value

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
                    score(keys.tag_values(p, key), value, 0.0)
                elif len(name) > 1:
                    add(keys.metadata_value(p, key, value), trace_id)
                    add(keys.metadata_key(p, key), trace_id)
                    score(keys.metadata_values(p, key), value, 0.0)
                elif name == "e":
                    add(keys.experiment(p, value), trace_id)
                    score(keys.experiments(p), value, 0.0)
                elif name == "S":
                    add(keys.status(p, value), trace_id)
                elif name == "c":
                    add(keys.client_request_id(p, value), trace_id)
                    score(keys.client_request_ids(p), value, 0.0)
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


_SET_KINDS = ("tv", "tk", "mv", "mk", "st", "ex", "cr")
_VALUE_ZSETS = ("td", "md")
_TRACE_ZSETS = ("ts", "du", "en")


def dump(client: redis.Redis, keys: Keys, partition: int) -> Dump:
    """Read every key of the namespace into :meth:`FoldModel.expected`'s shape.

    Fails (AssertionError) on a key of another partition or an unknown shape, on a set member
    that is not a live trace number, and on a trace hash not matching the id map.
    """
    prefix = keys.prefix(partition)
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
    numbers: dict[str, str] = {}  # trace number -> trace id
    if ids_key in values:
        ids = {k.decode(): v.decode() for k, v in values[ids_key].items()}
        numbers = {no: trace_id for trace_id, no in ids.items()}
        assert len(numbers) == len(ids), "two traces share a number"

    def trace_of(member: bytes) -> str:
        no = member.decode()
        assert no in numbers, f"index member {no} is not a live trace number"
        return numbers[no]

    out: Dump = {}
    seen_traces: set[str] = set()
    for key, value in values.items():
        rest = key[len(prefix) + 1 :]
        head = rest.split(":", 1)[0]
        kind = types[key]
        if rest in ("log", "dead"):
            assert kind == "stream", key
        elif rest == "n":
            assert kind == "string", key
        elif rest == "ids":
            out[key] = frozenset(numbers.values())
        elif rest == "gone":
            out[key] = {k.decode(): parse_entry_id(v) for k, v in value.items()}
        elif head == "t" and kind == "hash":
            no = rest[2:]
            state = {k.decode(): v.decode() for k, v in value.items()}
            trace_id = state.pop("i")
            assert numbers.get(no) == trace_id, f"{key}: id map and hash disagree"
            seen_traces.add(trace_id)
            base = int(state.pop("b"))
            registers: dict[str, Any] = {"x": decode_stamp(state.pop("x"), base)}
            for name, text in state.items():
                stamp, register_value = split_register(text)
                registers[name] = (decode_stamp(stamp, base), register_value)
            out[("trace", trace_id)] = registers
        elif head in _SET_KINDS or rest == "all":
            assert kind == "set", key
            out[key] = frozenset(trace_of(m) for m in value)
        elif head in _VALUE_ZSETS or rest in ("exd", "crd"):
            assert kind == "zset", key
            out[key] = {m.decode(): s for m, s in value}
        elif rest in _TRACE_ZSETS:
            assert kind == "zset", key
            out[key] = {trace_of(m): s for m, s in value}
        else:
            raise AssertionError(f"stray key: {key} ({kind})")
    assert seen_traces == set(numbers.values()), "id map names traces without a hash"
    return out
