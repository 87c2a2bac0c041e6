"""The physical plan of one partition: the logical terms resolved with the probe's replies.

Each term becomes a node of tt_query's tree (see :mod:`tracetags.query.plan`) with its
expected number of matches, and the index sources a page or count may enumerate candidates
from.  LIKE, ILIKE, RLIKE and numeric tag comparisons are decided here, in Python, over the
key's distinct values (never the traces).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tracetags.keys import PLAIN_MAX, SET_CHUNK, Keys
from tracetags.query.logical import (
    PRESENCE_FIELD,
    LAnd,
    LConst,
    LIdMatch,
    LIds,
    LMatch,
    LNot,
    LogicalNode,
    LOr,
    LPresent,
    LRange,
    LValues,
    ValueIndex,
)
from tracetags.query.needle import NEEDLE_MIN_STRINGS, needle_hits
from tracetags.query.plan import NodeKind, Spec
from tracetags.query.probe import (
    MatchedCount,
    MatchedValues,
    Probe,
    SampledIds,
    SampledValues,
    reply_text,
)

__all__ = ["BITMAP_MIN_NUMBERS", "SOUGHT_VALUES_MAX", "PNode", "describe", "physical", "reply_text"]

#: An explicit set of trace numbers larger than this is sent as a bitmap (:func:`_numbers`).
BITMAP_MIN_NUMBERS = 1024
#: Enumerating the traces without a key costs, for each chunk of the partition, an SDIFF
#: of up to 512 members: priced as this many candidates (the chunk walk's
#: ``COSTS.chunk_complement`` over ``COSTS.collect_set_candidate``; costs.py imports this
#: module, so the figure is written here).
_COMPLEMENT_CHUNK: Final = 36.0
#: A page's LIKE that is its lead and one final ``%`` matching more values than this is
#: tested on each candidate's value (an M leaf) instead of sought value by value.
SOUGHT_VALUES_MAX = 512


@dataclass
class PNode:
    """A resolved node: ``spec`` is its tt_query form; ``est`` its expected match count."""

    kind: NodeKind
    spec: Spec
    est: float
    text: str
    children: list[PNode] = field(default_factory=list)
    exact: bool = False
    sources: list[Spec] | None = None  # enumeration sources (None: not enumerable)
    cost: float = math.inf  # candidates those sources produce
    #: What a candidate from ``sources`` must still pass (the source's own test is done).
    residual: Spec | None = None
    #: V leaves: the hash field holding the value (tt_query may read it instead of sets).
    field: str | None = None
    #: V leaves of a tag or metadata key: the key's set (traces that have the key).
    key_set: str | None = None
    #: V leaves: each value's trace count (the probe's), in the spec's order.
    counts: dict[str, float] | None = None


def _leaf(kind: NodeKind, spec: Spec, est: float, text: str, *, enumerable: bool) -> PNode:
    node = PNode(kind, spec, est, text, exact=True)
    if enumerable:
        node.sources, node.cost, node.residual = [spec], est, ["A"]
    return node


def physical(
    root: LogicalNode,
    probe: Probe,
    replies: Sequence[Any],
    cards: Sequence[int],
    keys: Keys,
    *,
    fresh: bool = True,
) -> tuple[PNode, int]:
    """Resolve ``root`` for the probed partition; returns (tree, number of traces).

    With ``fresh=False`` (a reused probe of a :func:`sizes_only` root) the replies are
    estimates only: a value they do not know still goes to tt_query, which reads its set.
    """
    total = int(replies[0])
    p = probe.partition

    def resolve(node: LogicalNode) -> PNode:
        if isinstance(node, LAnd):
            return _and([resolve(c) for c in node.children], total)
        if isinstance(node, LOr):
            return _or([resolve(c) for c in node.children], total)
        if isinstance(node, LNot):
            child = resolve(node.child)
            if fresh and child.exact and child.kind in ("C", "V") and child.est >= total:
                return _leaf("Z", ["Z"], 0, f"NOT ({child.text}): every trace", enumerable=True)
            out = PNode("!", ["!", child.spec], max(0.0, total - child.est), "NOT", [child])
            out.exact = child.exact
            if child.kind == "C":
                # the traces without a key: each chunk of every trace minus the key's chunk
                # (one SDIFF a chunk, in Redis), so a key most traces hold leaves few
                cost = out.est + (total / SET_CHUNK + 1) * _COMPLEMENT_CHUNK
                if cost < total:
                    out.sources, out.residual, out.cost = [out.spec], ["A"], cost
            return out
        if isinstance(node, LConst):
            if node.value:
                return _leaf("A", ["A"], total, node.text, enumerable=True)
            return _leaf("Z", ["Z"], 0, node.text, enumerable=True)
        if isinstance(node, LValues):
            scores = replies[probe.slots[id(node)]]
            found = [
                (v, float(s or 0))
                for v, s in zip(node.values, scores, strict=True)
                if s or not fresh
            ]
            return _values(node.index, found, node.text)
        if isinstance(node, LMatch):
            reply = replies[probe.slots[id(node)]]
            if isinstance(reply, MatchedCount):  # sought again by the page's tt_query
                return _sought(node, reply)
            if isinstance(reply, SampledValues) and node.lua is not None:
                return _value_test(node, node.lua, reply)
            # every value of the key was read (no runs, not sought): a complement is exact
            full = node.runs is None and not (isinstance(reply, MatchedValues) and reply.sought)
            if isinstance(reply, MatchedValues):  # a LIKE's values, read inside tt_query
                pairs = [(reply_text(v), float(s or 0)) for v, s in reply.pairs]
                exact = reply.sought and node.lead_is_pattern
            else:  # ZRANGE WITHSCORES of the distinct zset
                pairs = [(reply_text(v), float(s)) for v, s in reply]
                exact = False
            hits = pairs if exact else [(v, s) for v, s in pairs if node.predicate(v)]
            misses: list[tuple[str, float]] = []
            if node.negated or (not exact and full and len(hits) > 64):
                hit_set = {v for v, _ in hits}
                misses = [(v, s) for v, s in pairs if v not in hit_set]
            # want: the values whose traces match; other: the rest of the key's values.
            want, other = (misses, hits) if node.negated else (hits, misses)
            if node.negated:
                if len(want) <= len(other):
                    return _values(node.index, want, node.text)
            elif exact or not full or len(want) <= max(len(other), 64):
                # (a positive match over every value of the key (no runs), most matching,
                # goes on: presence minus the few other values' sets is cheaper to test)
                return _values(node.index, want, node.text)
            key_set = node.index.key_set(keys, p)
            label = f"{node.index.label} present"
            if key_set is None:
                code = PRESENCE_FIELD[node.index.kind]
                present = _leaf("P", ["P", code], total, label, enumerable=False)
            else:
                having = sum(s for _, s in pairs)  # every trace with the key has one value
                present = _leaf("C", ["C", key_set], having, label, enumerable=True)
            if not other:
                present.est, present.exact = sum(s for _, s in want), True
                present.text = f"{node.text} [every value: {label}]"
                return present
            out = _and([present, _not(_values(node.index, other, node.text), total)], total)
            out.est = sum(s for _, s in want)
            out.exact = True
            return out
        if isinstance(node, LPresent):
            key_set = node.index.key_set(keys, p)
            if key_set is None:
                code = PRESENCE_FIELD[node.index.kind]
                leaf = _leaf(
                    "P", ["P", code], total, f"{node.index.label} present", enumerable=False
                )
                leaf.exact = False
                return leaf
            count = cards[probe.slots[id(node)]]
            return _leaf("C", ["C", key_set], count, f"{node.index.label} present", enumerable=True)
        if isinstance(node, LRange):
            count = int(replies[probe.slots[id(node)]])
            if count == 0 and fresh:
                return _leaf("Z", ["Z"], 0, f"{node.text} (no trace in range)", enumerable=True)
            spec = ["R", node.zset, node.lo, node.hi]
            return _leaf(
                "R", spec, count, f"{node.text} [{node.zset} {node.lo}..{node.hi}]", enumerable=True
            )
        if isinstance(node, LIds):
            got = replies[probe.slots[id(node)]]
            numbers = sorted({reply_text(n) for n in got if n is not None}, key=int)
            if not numbers:
                return _leaf("Z", ["Z"], 0, f"{node.text} (no such trace here)", enumerable=True)
            return _leaf("E", ["E", *numbers], len(numbers), node.text, enumerable=True)
        if isinstance(node, LIdMatch):
            mapping = replies[probe.slots[id(node)]]
            predicate = node.predicate
            if isinstance(mapping, SampledIds):
                if len(mapping.ids) < total and node.lua is not None:
                    return _id_test(node, node.lua, mapping)
                mapping = mapping.ids  # every id of the partition
            by_needle: list[int] | None = None
            if node.needle is not None and len(mapping) > NEEDLE_MIN_STRINGS:
                ids = list(mapping)
                by_needle = needle_hits(ids, node.needle, predicate)
            if by_needle is not None:
                matched = [mapping[ids[i]] for i in by_needle]
            else:
                matched = [
                    no for trace_id, no in mapping.items() if predicate(reply_text(trace_id))
                ]
            if matched and len(matched) >= total:  # every trace: nothing to enumerate
                return _leaf("A", ["A"], total, f"{node.text} (every trace)", enumerable=True)
            numbers = sorted(map(reply_text, matched), key=int)
            return _numbers(numbers, node.text)
        raise TypeError(f"not a logical node: {node!r}")

    def _id_test(node: LIdMatch, lua: tuple[str, int, str], sample: SampledIds) -> PNode:
        # its share of matches is the sample's (half a match when none of the sample does)
        n = max(len(sample.ids), 1)
        shown = f"each candidate's id tested; {sample.hits} of {n} sampled match"
        return _pattern_leaf(node.text, "i", 0, lua, total * max(sample.hits, 0.5) / n, shown)

    def _value_test(node: LMatch, lua: tuple[str, int, str], reply: SampledValues) -> PNode:
        shown = (
            f"each candidate's value tested; {reply.hits} of {reply.sampled}"
            f" sampled values of {reply.values:,} match"
        )
        return _pattern_leaf(node.text, node.index.hash_field, 1, lua, reply.expected, shown)

    def _pattern_leaf(
        text: str, field: str, stamped: int, lua: tuple[str, int, str], est: float, shown: str
    ) -> PNode:
        # An M leaf: tt_query reads each candidate's field and matches it (lua/pattern.lua).
        return PNode("M", ["M", field, stamped, *lua], min(est, total), f"{text} [{shown}]")

    def _sought(node: LMatch, reply: MatchedCount) -> PNode:
        if not reply.values:
            return _leaf("Z", ["Z"], 0, f"{node.text} (no such value here)", enumerable=True)
        if reply.values > SOUGHT_VALUES_MAX and node.lua is not None:
            # a dense lead ('c%' over thousands of values): test each candidate's value
            # rather than seek every value and test their sets
            shown = f"each candidate's value tested; {reply.values:,} values match"
            if reply.estimated:
                shown = f"each candidate's value tested; ~{reply.values:,} values match"
            leaf = _pattern_leaf(node.text, node.index.hash_field, 1, node.lua, reply.traces, shown)
            leaf.exact = not reply.estimated
            return leaf
        index = node.index
        spec = [
            "L",
            index.distinct(keys, p),
            index.value_prefix(keys, p),
            list(node.lead),
            reply.traces,
            reply.values,
        ]
        many = "s" if reply.values > 1 else ""
        shown = f"{node.text} [{reply.values} value set{many}, sought by tt_query]"
        leaf = _leaf("L", spec, reply.traces, shown, enumerable=True)
        leaf.field = index.hash_field
        return leaf

    def _values(index: ValueIndex, found: list[tuple[str, float]], text: str) -> PNode:
        # IN ('a', 'a') names a value twice: its set (and its count) must count once.
        found = list(dict(found).items())
        if not found:
            return _leaf("Z", ["Z"], 0, f"{text} (no such value here)", enumerable=True)
        spec = ["V", index.distinct(keys, p), index.value_prefix(keys, p), *(v for v, _ in found)]
        count = sum(s for _, s in found)
        shown = f"{text} [{len(found)} value set{'s' if len(found) > 1 else ''}]"
        node = _leaf("V", spec, count, shown, enumerable=True)
        node.field = index.hash_field
        node.key_set = index.key_set(keys, p)
        node.counts = dict(found)
        return node

    return resolve(root), total


def _numbers(numbers: list[str], text: str) -> PNode:
    """An E leaf of these trace numbers, or past :data:`BITMAP_MIN_NUMBERS` a B leaf: a
    bitmap of the partition's numbers, 7 bits a character (bit n % 7 of character n // 7
    set for number n: ASCII, so a msgpack str, which Redis's cmsgpack reads; it has no bin
    type), ~1/7 byte a trace instead of ~7 bytes a number in the plan and a table entry per
    call in Lua."""
    if not numbers:
        return _leaf("Z", ["Z"], 0, f"{text} (no such trace here)", enumerable=True)
    if len(numbers) <= BITMAP_MIN_NUMBERS:
        return _leaf("E", ["E", *numbers], len(numbers), text, enumerable=True)
    ints = [int(n) for n in numbers]
    bitmap = bytearray(ints[-1] // 7 + 1)
    for n in ints:
        bitmap[n // 7] |= 1 << (n % 7)
    shown = f"{text} [a bitmap of {len(numbers):,} trace numbers]"
    return _leaf("B", ["B", bitmap.decode("ascii")], len(numbers), shown, enumerable=False)


def _not(child: PNode, total: int) -> PNode:
    return PNode("!", ["!", child.spec], max(0.0, total - child.est), "NOT", [child])


def _value_key(node: PNode) -> tuple[str, str] | None:
    """(distinct zset, value prefix) of a V leaf whose values' counts are known."""
    if node.kind == "V" and node.counts is not None:
        return node.spec[1], node.spec[2]
    return None


def _bare(text: str) -> str:
    """A leaf's text without the bracketed note explain adds (``[2 value sets]``)."""
    return text.rsplit(" [", 1)[0] if text.endswith("]") else text


def _kept_values(node: PNode, keep: Collection[str], text: str) -> PNode:
    """``node`` (a V leaf) with only its values in ``keep``; Z when none is left."""
    counts = {v: n for v, n in (node.counts or {}).items() if v in keep}
    if not counts:
        return _leaf("Z", ["Z"], 0, f"{text}: no value satisfies both", enumerable=True)
    many = "s" if len(counts) > 1 else ""
    leaf = _leaf(
        "V",
        [*node.spec[:3], *counts],
        sum(counts.values()),
        f"{text} [{len(counts)} value set{many}]",
        enumerable=True,
    )
    leaf.field, leaf.key_set, leaf.counts = node.field, node.key_set, counts
    return leaf


def _merge_values(flat: list[PNode]) -> list[PNode]:
    """A conjunction's value-set leaves of one key as one leaf: a trace holds at most one
    value of a key, so ``k IN (a, b) AND k IN (b, c)`` is ``k IN (b)``, and ``k IN (a, b)
    AND NOT k IN (b)`` is ``k IN (a)`` (an empty result is found here, not by a walk)."""
    merged: dict[tuple[str, str], int] = {}  # key -> index in out of its one V leaf
    out: list[PNode] = []
    for node in flat:
        key = _value_key(node)
        at = merged.get(key) if key is not None else None
        if key is not None and at is None:
            merged[key] = len(out)
        if at is None:
            out.append(node)
            continue
        text = f"{_bare(out[at].text)} AND {_bare(node.text)}"
        out[at] = _kept_values(out[at], node.counts or {}, text)
    negated = [
        (i, merged[key])
        for i, node in enumerate(out)
        if node.kind == "!" and (key := _value_key(node.children[0])) in merged
    ]
    for i, at in negated:
        excluded = out[i].children[0]
        kept = (out[at].counts or {}).keys() - (excluded.counts or {}).keys()
        text = f"{_bare(out[at].text)} AND NOT {_bare(excluded.text)}"
        out[at] = _kept_values(out[at], kept, text)
    dropped = {i for i, _ in negated}
    return [node for i, node in enumerate(out) if i not in dropped]


#: tt_query's time to test one candidate against a leaf, in microseconds (rough: it ranks
#: a conjunction's terms): a plain set's SMISMEMBER share, a chunked set's (its chunk
#: found, then SMISMEMBER per chunk), a range's ZMSCORE, a register read (HGET).
_TEST_US: Final[dict[str, float]] = {
    "E": 0.1, "B": 0.1, "A": 0.0, "Z": 0.0, "C": 0.7, "R": 0.5, "P": 2.0, "M": 3.0, "L": 1.0,
}  # fmt: skip
_PLAIN_SET_US: Final = 0.3
_CHUNKED_SET_US: Final = 0.7
_REGISTER_US: Final = 2.0


def _test_us(node: PNode) -> float:
    """The rough time tt_query takes to test one candidate against ``node``."""
    if node.kind == "V":
        values = len(node.spec) - 3
        if node.counts is not None:
            dense = sum(1 for n in node.counts.values() if n > PLAIN_MAX)
        else:  # (counts unknown: the values' average size says)
            dense = values if node.est > PLAIN_MAX * max(values, 1) else 0
        sets = dense * _CHUNKED_SET_US + (values - dense) * _PLAIN_SET_US
        return min(sets, _REGISTER_US) if node.field is not None else sets
    if node.children:
        return sum(_test_us(c) for c in node.children)
    return _TEST_US.get(node.kind, 1.0)


def _and(children: list[PNode], total: int) -> PNode:
    flat: list[PNode] = []
    for child in children:
        flat.extend(child.children if child.kind == "&" else [child])
    flat = _merge_values(flat)
    empty = next((c for c in flat if c.kind == "Z"), None)
    if empty is not None:
        return _leaf("Z", ["Z"], 0, f"AND with an empty term ({empty.text})", enumerable=True)
    flat = [c for c in flat if c.kind != "A"] or [flat[0]]
    # A term twice is one term (`x NOT IN (...) AND x != ...` both carry `x present`):
    # each copy would be tested on every candidate.
    unique: dict[str, PNode] = {}
    for child in flat:
        unique.setdefault(repr(child.spec), child)
    flat = list(unique.values())
    if len(flat) == 1:
        return flat[0]
    fraction = 1.0
    for child in flat:
        fraction *= child.est / total if total else 0.0
    est = min(min(c.est for c in flat), total * fraction)
    node = PNode("&", ["&", *(c.spec for c in flat)], est, "AND", flat)
    drivers = [c for c in flat if c.sources is not None]

    # Test first the terms that drop the most candidates for their cost: fewer candidates
    # reach the later ones (a term all but every trace passes goes last however cheap).
    def rank(c: PNode) -> tuple[bool, float]:
        dropped = 1 - c.est / total if total else 1.0
        return c.kind == "P", _test_us(c) / max(1e-9, dropped)

    ranked = sorted(flat, key=rank)
    node.spec = ["&", *(c.spec for c in ranked)]
    if drivers:
        best = min(drivers, key=lambda c: c.cost)
        node.sources, node.cost = best.sources, best.cost
        rest = [c.spec for c in ranked if c is not best]
        if best.residual is not None and best.residual != ["A"]:
            rest.insert(0, best.residual)
        node.residual = rest[0] if len(rest) == 1 else ["&", *rest]
    return node


def _or(children: list[PNode], total: int) -> PNode:
    flat: list[PNode] = []
    for child in children:
        flat.extend(child.children if child.kind == "|" else [child])
    flat = [c for c in flat if c.kind != "Z"]
    if not flat:
        return _leaf("Z", ["Z"], 0, "OR of empty terms", enumerable=True)
    if len(flat) == 1:
        return flat[0]
    miss = 1.0
    for child in flat:
        miss *= 1 - (child.est / total if total else 0.0)
    est = max(max(c.est for c in flat), total * (1 - miss))
    node = PNode("|", ["|", *(c.spec for c in flat)], min(est, total), "OR", flat)
    cost = sum(c.cost for c in flat)
    # Enumerating the children's sources (each candidate then tested against the whole OR)
    # pays off while they produce a fraction of the candidates that testing every trace
    # costs; past that (a wide OR of broad ranges) every trace is tested once.
    if all(c.sources is not None for c in flat) and cost <= max(total, 1) * max(len(flat), 4) / 4:
        node.sources = [s for c in flat for s in (c.sources or [])]
        node.cost = cost
        node.residual = node.spec
    return node


def describe(node: PNode, indent: str = "  ") -> list[str]:
    """The tree as indented lines with estimated cardinalities."""
    mark = "" if node.exact else "~"
    line = f"{indent}{node.text}: {mark}{node.est:,.0f} traces"
    if node.kind in ("&", "|", "!"):
        line = f"{indent}{node.text} ({mark}{node.est:,.0f} traces)"
    out = [line]
    for child in node.children:
        out.extend(describe(child, indent + "  "))
    return out
