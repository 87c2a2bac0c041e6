"""Query planning: a filter AST becomes index operations per partition, chosen by cardinalities.

:func:`logical` turns the AST into partition-independent index terms; :func:`probe_commands`
lists the O(1)-ish reads that size them (distinct-zset scores, ZCOUNT, HLEN, key-set cards);
:func:`physical` resolves the terms of one partition (LIKE, ILIKE, RLIKE and numeric tag
comparisons are evaluated here, in Python, over the key's DISTINCT VALUES, never the traces)
and :func:`plan_partition` picks the strategy: collect-and-sort from the smallest index, or
walk the order zset from its end.  The plan is the msgpack map ``tt_query`` runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias

from tracetags.keys import NAME_TAG, PLAIN_MAX, SET_CHUNK, Keys, metadata_field, tag_field
from tracetags.query.ast import And, Comparison, Expr, Not, Or, OrderKey

__all__ = [
    "LogicalNode",
    "PartitionPlan",
    "Probe",
    "count_terms",
    "logical",
    "order_specs",
    "physical",
    "plan_partition",
    "probe_commands",
    "sizes_only",
]

IndexKind: TypeAlias = Literal["tag", "metadata", "status", "client_request_id", "experiment"]
ZsetName: TypeAlias = Literal["ts", "du", "en"]

_TAG_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NUMERIC_ZSETS: dict[str, ZsetName] = {
    "timestamp_ms": "ts",
    "execution_time_ms": "du",
    "end_time_ms": "en",
}
_PRESENCE_FIELD = {"status": "S", "client_request_id": "c", "experiment": "e"}


# --- logical terms (the same for every partition) ------------------------------------------


@dataclass(frozen=True)
class ValueIndex:
    """A family of value sets with a distinct-value zset: tag/metadata key or an attribute."""

    kind: IndexKind
    key: str = ""

    def distinct(self, keys: Keys, partition: int) -> str:
        if self.kind == "tag":
            return keys.tag_values(partition, self.key)
        if self.kind == "metadata":
            return keys.metadata_values(partition, self.key)
        if self.kind == "status":
            return keys.statuses(partition)
        if self.kind == "client_request_id":
            return keys.client_request_ids(partition)
        return keys.experiments(partition)

    def value_prefix(self, keys: Keys, partition: int) -> str:
        """The value-set key of value v is this prefix plus enc(v)."""
        if self.kind == "tag":
            return keys.tag_values(partition, self.key).replace(":td:", ":tv:", 1)
        if self.kind == "metadata":
            return keys.metadata_values(partition, self.key).replace(":md:", ":mv:", 1)
        code = {"status": "st", "client_request_id": "cr", "experiment": "ex"}[self.kind]
        return f"{keys.prefix(partition)}:{code}:"

    @property
    def hash_field(self) -> str:
        """The field of a trace's hash that holds this index's value (its register)."""
        if self.kind == "tag":
            return tag_field(self.key)
        if self.kind == "metadata":
            return metadata_field(self.key)
        return _PRESENCE_FIELD[self.kind]

    def key_set(self, keys: Keys, partition: int) -> str | None:
        if self.kind == "tag":
            return keys.tag_key(partition, self.key)
        if self.kind == "metadata":
            return keys.metadata_key(partition, self.key)
        return None

    @property
    def label(self) -> str:
        if self.kind == "tag":
            return "name" if self.key == NAME_TAG else f"tags.{self.key}"
        if self.kind == "metadata":
            return f"metadata.{self.key}"
        return "experiment_id" if self.kind == "experiment" else self.kind


@dataclass(frozen=True)
class LValues:
    index: ValueIndex
    values: tuple[str, ...]
    text: str


class MatchedValues(NamedTuple):
    """A probe's reply for a LIKE: the candidate values and their counts; ``sought`` when
    they came from the byte-order index by the pattern's start (then exactly the values
    starting like it)."""

    sought: bool
    pairs: list[tuple[Any, Any]]


class MatchedCount(NamedTuple):
    """A page probe's reply for a LIKE that is its lead and one final ``%``: how many values
    match and their traces.  The page plan then carries the pattern (an ``L`` leaf), and
    tt_query seeks the values itself."""

    values: int
    traces: int


@dataclass(frozen=True)
class LMatch:
    """Values of the index for which ``predicate`` holds (negated: present and not matching)."""

    index: ValueIndex
    predicate: Callable[[str], bool] = field(compare=False)
    negated: bool
    text: str
    #: LIKE only: its runs of literal characters, the first one its start (maybe empty).
    #: A matching value starts with the first and holds the others in order, so tt_query
    #: returns only such values.
    runs: tuple[str, ...] | None = None
    #: LIKE only: the pattern up to its first ``%`` as literal runs and counts of ``_`` (any
    #: one character each): tt_query seeks the values starting so in the key's byte-order
    #: index instead of reading every value.
    lead: tuple[str | int, ...] = ()
    #: The pattern is its lead and one final ``%``: values sought by the lead all match.
    lead_is_pattern: bool = False

    @property
    def sought_in_page(self) -> bool:
        """Whether a page's tt_query can find the matching values itself (by the lead)."""
        return self.lead_is_pattern and bool(self.lead) and not self.negated


@dataclass(frozen=True)
class LPresent:
    index: ValueIndex
    text: str


@dataclass(frozen=True)
class LRange:
    zset: ZsetName
    lo: str
    hi: str
    text: str


@dataclass(frozen=True)
class LIds:
    ids: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class LIdMatch:
    predicate: Callable[[str], bool] = field(compare=False)
    text: str = ""


@dataclass(frozen=True)
class LConst:
    value: bool
    text: str


@dataclass(frozen=True)
class LAnd:
    children: tuple[LogicalNode, ...]


@dataclass(frozen=True)
class LOr:
    children: tuple[LogicalNode, ...]


@dataclass(frozen=True)
class LNot:
    child: LogicalNode


LogicalLeaf: TypeAlias = LValues | LMatch | LPresent | LRange | LIds | LIdMatch | LConst
LogicalNode: TypeAlias = LogicalLeaf | LAnd | LOr | LNot


def _like_regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _pattern_predicate(op: str, pattern: str) -> Callable[[str], bool]:
    base = op.removeprefix("NOT ")
    if base == "LIKE":
        like = _like_regex(pattern)
        return lambda v: like.fullmatch(v) is not None
    if base == "ILIKE":
        ilike = _like_regex(pattern.lower())
        return lambda v: ilike.fullmatch(v.lower()) is not None
    try:
        regex = re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return lambda v: False  # an invalid pattern matches nothing
    return lambda v: regex.search(v) is not None


def _like_runs(pattern: str) -> tuple[str, ...]:
    """The runs of literal characters of a LIKE pattern: its start (empty when it starts
    with ``%`` or ``_``), then the non-empty runs after it."""
    first, *rest = re.split("[%_]", pattern)
    return (first, *(run for run in rest if run))


def _like_lead(pattern: str) -> tuple[str | int, ...]:
    """A LIKE pattern up to its first ``%``: literal runs and counts of ``_``, e.g.
    ``user_12%`` -> ``('user', 1, '12')``."""
    head = pattern.split("%", 1)[0]
    return tuple(len(piece) if piece[0] == "_" else piece for piece in re.findall("_+|[^_]+", head))


def _tag_number(text: str) -> float | None:
    return float(text) if _TAG_NUMBER.fullmatch(text) else None


_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _numeric_predicate(op: str, wanted: float) -> Callable[[str], bool]:
    compare = _NUMERIC_OPS[op]

    def predicate(value: str) -> bool:
        number = _tag_number(value)
        return number is not None and compare(number, wanted)

    return predicate


def _score(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return repr(value)


def _range(zset: ZsetName, op: str, value: float, text: str) -> LogicalNode:
    if isinstance(value, float) and math.isnan(value):
        return LConst(False, text)
    v = _score(value)
    if op == "=":
        return LRange(zset, v, v, text)
    if op == "<":
        return LRange(zset, "-inf", f"({v}", text)
    if op == "<=":
        return LRange(zset, "-inf", v, text)
    if op == ">":
        return LRange(zset, f"({v}", "+inf", text)
    if op == ">=":
        return LRange(zset, v, "+inf", text)
    return LOr((LRange(zset, "-inf", f"({v}", text), LRange(zset, f"({v}", "+inf", text)))


def _clause_text(node: Comparison) -> str:
    from tracetags.query.parser import render

    try:
        return render(node)
    except ValueError:
        return f"{node.field.entity} {node.field.key!r} {node.op} {node.value!r}"


def _comparison(node: Comparison) -> LogicalNode:
    text = _clause_text(node)
    entity, key, op, value = node.field.entity, node.field.key, node.op, node.value
    if entity == "attribute" and key in _NUMERIC_ZSETS:
        assert isinstance(value, (int, float))
        return _range(_NUMERIC_ZSETS[key], op, value, text)
    if entity == "attribute" and key == "request_id":
        if op in ("=", "!=", "IN", "NOT IN"):
            ids = value if isinstance(value, tuple) else (str(value),)
            leaf = LIds(tuple(ids), text)
            return leaf if op in ("=", "IN") else LNot(leaf)
        assert isinstance(value, str)
        matched = _pattern_predicate(op, value)
        if op.startswith("NOT "):
            return LIdMatch(lambda v: not matched(v), text)
        return LIdMatch(matched, text)
    if entity == "attribute":
        index = ValueIndex("status" if key == "status" else "client_request_id")
    else:
        index = ValueIndex("tag" if entity == "tag" else "metadata", key)
    if op == "IS NULL":
        return LNot(LPresent(index, text))
    if op == "IS NOT NULL":
        return LPresent(index, text)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            return LConst(False, text)
        return LMatch(index, _numeric_predicate(op, value), False, text)
    if op == "=":
        assert isinstance(value, str)
        return LValues(index, (value,), text)
    if op == "IN":
        assert isinstance(value, tuple)
        return LValues(index, value, text)
    if op in ("!=", "NOT IN"):
        values = value if isinstance(value, tuple) else (str(value),)
        excluded = frozenset(values)
        if index.kind == "status":
            # Few distinct statuses: the complement is a short IN list.
            return LMatch(index, lambda v: v not in excluded, False, text)
        return LAnd((LPresent(index, text), LNot(LValues(index, tuple(values), text))))
    assert isinstance(value, str)
    if op != "LIKE":
        return LMatch(index, _pattern_predicate(op, value), op.startswith("NOT "), text)
    predicate = _pattern_predicate(op, value)
    lead_is_pattern = value.endswith("%") and value.count("%") == 1
    return LMatch(
        index, predicate, False, text, _like_runs(value), _like_lead(value), lead_is_pattern
    )


def logical(expr: Expr | None, experiment_ids: Sequence[str] | None) -> LogicalNode:
    """The filter (scoped to the experiments, if any) as partition-independent index terms."""
    parts: list[LogicalNode] = []
    if experiment_ids:
        ids = tuple(dict.fromkeys(experiment_ids))
        parts.append(LValues(ValueIndex("experiment"), ids, f"experiment_ids {list(ids)!r}"))
    if expr is not None:
        parts.append(_convert(expr))
    if not parts:
        return LConst(True, "every trace")
    return parts[0] if len(parts) == 1 else LAnd(tuple(parts))


def _convert(expr: Expr) -> LogicalNode:
    if isinstance(expr, Comparison):
        return _comparison(expr)
    if isinstance(expr, Not):
        return LNot(_convert(expr.child))
    if isinstance(expr, And):
        return LAnd(tuple(_convert(c) for c in expr.children))
    if isinstance(expr, Or):
        return LOr(tuple(_convert(c) for c in expr.children))
    raise TypeError(f"not a filter node: {expr!r}")


def _leaves(node: LogicalNode) -> list[LogicalLeaf]:
    if isinstance(node, LAnd | LOr):
        return [leaf for child in node.children for leaf in _leaves(child)]
    if isinstance(node, LNot):
        return _leaves(node.child)
    return [node]


# --- probes --------------------------------------------------------------------------------


@dataclass
class Probe:
    """The sizing reads of one partition: which pipeline replies belong to which leaf."""

    partition: int
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    slots: dict[int, int] = field(default_factory=dict)  # id(leaf) -> reply index
    cards_slot: int | None = None
    #: cards plan entries: [key set, its distinct zset] (tt_query sums the zset's scores
    #: when it has few values, else SCARD over the chunks)
    card_keys: list[list[str]] = field(default_factory=list)
    order_index: ValueIndex | None = None
    order_distinct_slot: int | None = None  # reply index of ZCARD of the order key's values
    time_bounds_slot: int | None = None  # reply index of ZCARD of tsx (newest-first pages)


def order_index(key: OrderKey) -> ValueIndex | None:
    """The value index whose distinct zset lists the values of a string order key."""
    f = key.field
    if f.entity == "tag":
        return ValueIndex("tag", f.key)
    if f.entity == "metadata":
        return ValueIndex("metadata", f.key)
    if f.key == "status":
        return ValueIndex("status")
    if f.key == "experiment_id":
        return ValueIndex("experiment")
    return None


def probe_commands(
    root: LogicalNode,
    keys: Keys,
    partition: int,
    order: Sequence[OrderKey] = (),
    *,
    page: bool = False,
) -> Probe:
    """The reads that size the leaves of ``root`` in one partition (one pipeline).

    For a ``page``, a LIKE whose values its tt_query call can seek itself
    (:attr:`LMatch.sought_in_page`) is only counted (``VALUECOUNT``), not listed.
    """
    probe = Probe(partition)
    cmds = probe.commands
    cmds.append(("HLEN", keys.trace_ids(partition)))
    index = order_index(order[0]) if order else None
    if index is not None:
        probe.order_index = index
        probe.order_distinct_slot = len(cmds)
        cmds.append(("ZCARD", index.distinct(keys, partition)))
    # newest first, for the page or (second key) within the groups of a walk of values
    if any(_order_zset(key) == "ts" and not key.ascending for key in order[:2]):
        probe.time_bounds_slot = len(cmds)
        cmds.append(("ZCARD", keys.time_bounds(partition)))
    for leaf in _leaves(root):
        if id(leaf) in probe.slots:
            continue
        if isinstance(leaf, LValues):
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("ZMSCORE", leaf.index.distinct(keys, partition), *leaf.values))
        elif isinstance(leaf, LMatch) and page and leaf.sought_in_page:
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("VALUECOUNT", leaf.index.distinct(keys, partition), leaf.lead))
        elif isinstance(leaf, LMatch) and leaf.runs is not None:
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("VALUES", leaf.index.distinct(keys, partition), leaf.runs, leaf.lead))
        elif isinstance(leaf, LMatch):
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("ZRANGE", leaf.index.distinct(keys, partition), 0, -1, "WITHSCORES"))
        elif isinstance(leaf, LRange):
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("ZCOUNT", f"{keys.prefix(partition)}:{leaf.zset}", leaf.lo, leaf.hi))
        elif isinstance(leaf, LIds):
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("HMGET", keys.trace_ids(partition), *leaf.ids))
        elif isinstance(leaf, LIdMatch):
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("HGETALL", keys.trace_ids(partition)))
        elif isinstance(leaf, LPresent):
            key_set = leaf.index.key_set(keys, partition)
            if key_set is not None:
                probe.slots[id(leaf)] = len(probe.card_keys)
                probe.card_keys.append([key_set, leaf.index.distinct(keys, partition)])
    return probe


# --- physical plan (one partition) ---------------------------------------------------------


@dataclass
class PNode:
    """A resolved node: ``spec`` is its tt_query form; ``est`` its expected match count."""

    kind: str  # leaf kind (V C R E P A Z) or & | !
    spec: list[Any]
    est: float
    text: str
    children: list[PNode] = field(default_factory=list)
    exact: bool = False
    sources: list[list[Any]] | None = None  # enumeration sources (None: not enumerable)
    cost: float = math.inf  # candidates those sources produce
    #: What a candidate from ``sources`` must still pass (the source's own test is done).
    residual: list[Any] | None = None
    #: V leaves: the hash field holding the value (tt_query may read it instead of sets).
    field: str | None = None


def reply_text(value: bytes | str) -> str:
    """A reply string as str."""
    return value.decode() if isinstance(value, bytes) else value


def _leaf(kind: str, spec: list[Any], est: float, text: str, *, enumerable: bool) -> PNode:
    node = PNode(kind, spec, est, text, exact=True)
    if enumerable:
        node.sources, node.cost, node.residual = [spec], est, ["A"]
    return node


def sizes_only(root: LogicalNode) -> bool:
    """Whether the probe of ``root`` only sizes its terms: value sets, ranges and key presence
    (LIKE and id terms read their matching values or numbers in the probe)."""
    return all(isinstance(leaf, LValues | LRange | LPresent | LConst) for leaf in _leaves(root))


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
            out = PNode("!", ["!", child.spec], max(0.0, total - child.est), "NOT", [child])
            out.exact = child.exact
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
            if isinstance(reply, MatchedValues):  # a LIKE's values, read inside tt_query
                pairs = [(reply_text(v), float(s or 0)) for v, s in reply.pairs]
                exact = reply.sought and node.lead_is_pattern
            else:  # ZRANGE WITHSCORES of the distinct zset
                pairs = [(reply_text(v), float(s)) for v, s in reply]
                exact = False
            hits = pairs if exact else [(v, s) for v, s in pairs if node.predicate(v)]
            if not node.negated:
                return _values(node.index, hits, node.text)
            hit_set = {v for v, _ in hits}
            misses = [(v, s) for v, s in pairs if v not in hit_set]
            if len(misses) <= len(hits):
                return _values(node.index, misses, node.text)
            key_set = node.index.key_set(keys, p)
            label = f"{node.index.label} present"
            if key_set is None:
                code = _PRESENCE_FIELD[node.index.kind]
                present = _leaf("P", ["P", code], total, label, enumerable=False)
            else:
                having = sum(s for _, s in pairs)  # every trace with the key has one value
                present = _leaf("C", ["C", key_set], having, label, enumerable=True)
            matching = _values(node.index, hits, node.text)
            out = _and([present, _not(matching, total)], total)
            out.est = sum(s for _, s in misses)
            out.exact = True
            return out
        if isinstance(node, LPresent):
            key_set = node.index.key_set(keys, p)
            if key_set is None:
                code = _PRESENCE_FIELD[node.index.kind]
                leaf = _leaf(
                    "P", ["P", code], total, f"{node.index.label} present", enumerable=False
                )
                leaf.exact = False
                return leaf
            count = cards[probe.slots[id(node)]]
            return _leaf("C", ["C", key_set], count, f"{node.index.label} present", enumerable=True)
        if isinstance(node, LRange):
            count = int(replies[probe.slots[id(node)]])
            spec = ["R", node.zset, node.lo, node.hi]
            return _leaf(
                "R", spec, count, f"{node.text} [{node.zset} {node.lo}..{node.hi}]", enumerable=True
            )
        if isinstance(node, LIds):
            got = replies[probe.slots[id(node)]]
            numbers = sorted({reply_text(n) for n in got if n is not None}, key=int)
            return _leaf("E", ["E", *numbers], len(numbers), node.text, enumerable=True)
        if isinstance(node, LIdMatch):
            mapping = replies[probe.slots[id(node)]]
            numbers = sorted(
                (
                    reply_text(no)
                    for trace_id, no in mapping.items()
                    if node.predicate(reply_text(trace_id))
                ),
                key=int,
            )
            return _leaf("E", ["E", *numbers], len(numbers), node.text, enumerable=True)
        raise TypeError(f"not a logical node: {node!r}")

    def _sought(node: LMatch, reply: MatchedCount) -> PNode:
        if not reply.values:
            return _leaf("Z", ["Z"], 0, f"{node.text} (no such value here)", enumerable=True)
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
        return node

    return resolve(root), total


def _not(child: PNode, total: int) -> PNode:
    return PNode("!", ["!", child.spec], max(0.0, total - child.est), "NOT", [child])


def _and(children: list[PNode], total: int) -> PNode:
    flat: list[PNode] = []
    for child in children:
        flat.extend(child.children if child.kind == "&" else [child])
    if any(c.kind == "Z" for c in flat):
        return _leaf("Z", ["Z"], 0, "AND with an empty term", enumerable=True)
    flat = [c for c in flat if c.kind != "A"] or [flat[0]]
    if len(flat) == 1:
        return flat[0]
    fraction = 1.0
    for child in flat:
        fraction *= child.est / total if total else 0.0
    est = min(min(c.est for c in flat), total * fraction)
    node = PNode("&", ["&", *(c.spec for c in flat)], est, "AND", flat)
    drivers = [c for c in flat if c.sources is not None]
    # Test the most selective terms first: fewer candidates reach the later ones.
    ranked = sorted(flat, key=lambda c: (c.kind == "P", c.est))
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
    if all(c.sources is not None for c in flat):
        node.sources = [s for c in flat for s in (c.sources or [])]
        node.cost = sum(c.cost for c in flat)
        node.residual = node.spec
    return node


# --- counting by set algebra ------------------------------------------------------------------

Term: TypeAlias = tuple[PNode, ...]
_MAX_TERMS = 16


def _expand(node: PNode) -> list[tuple[int, Term]] | None:
    """``node`` as a signed sum of conjunctions of leaves (None: too many terms)."""
    if node.kind == "Z":
        return []
    if node.kind == "A":
        return [(1, ())]
    if node.kind == "!":
        inner = _expand(node.children[0])
        if inner is None:
            return None
        return [(1, ()), *((-sign, term) for sign, term in inner)]
    if node.kind == "&":
        out: list[tuple[int, Term]] = [(1, ())]
        for child in node.children:
            terms = _expand(child)
            if terms is None:
                return None
            out = [(a * b, x + y) for a, x in out for b, y in terms]
            if len(out) > _MAX_TERMS:
                return None
        return out
    if node.kind == "|":
        if len(node.children) > 3:
            return None
        total: list[tuple[int, Term]] = []
        n = len(node.children)
        for mask in range(1, 1 << n):
            picked = [node.children[i] for i in range(n) if mask >> i & 1]
            sign = 1 if len(picked) % 2 else -1
            part = _expand(PNode("&", [], 0.0, "AND", picked))
            if part is None:
                return None
            total.extend((sign * s, t) for s, t in part)
            if len(total) > 4 * _MAX_TERMS:
                return None
        return total
    return [(1, (node,))]


def _spec_key(spec: list[Any]) -> str:
    return repr(spec)


def _normalize(term: Term, total: int) -> Term | None:
    """Merge a conjunction's leaves: duplicates, key presence implied by a value, values of
    one key (a trace has one value per key); None when the conjunction is empty.  A value
    term holding every trace (experiment_ids naming every experiment: the counts, like the
    rest of an exact count, are the probe's) is dropped."""
    values: dict[str, PNode] = {}
    rest: dict[str, PNode] = {}
    for leaf in term:
        if leaf.kind == "Z":
            return None
        if leaf.kind == "A" or (leaf.kind == "V" and leaf.exact and total and leaf.est == total):
            continue
        if leaf.kind == "V":
            dkey = leaf.spec[1]
            seen = values.get(dkey)
            if seen is None:
                values[dkey] = leaf
            elif seen.spec != leaf.spec:
                kept = set(leaf.spec[3:])
                both = [v for v in seen.spec[3:] if v in kept]
                if not both:
                    return None
                merged = PNode("V", [*seen.spec[:3], *both], min(seen.est, leaf.est), seen.text)
                values[dkey] = merged  # not exact any more: counted in Redis
            continue
        rest.setdefault(_spec_key(leaf.spec), leaf)
    for dkey in values:
        for family, present in ((":td:", ":tk:"), (":md:", ":mk:")):
            if family in dkey:
                rest.pop(_spec_key(["C", dkey.replace(family, present, 1)]), None)
    return tuple(sorted([*values.values(), *rest.values()], key=lambda n: _spec_key(n.spec)))


def count_terms(tree: PNode, total: int) -> tuple[int, list[list[Any]]] | None:
    """Count ``tree`` as set algebra: (the part known from index sizes, the signed
    conjunctions tt_query must count), or None when the expansion is too large."""
    expanded = _expand(tree)
    if expanded is None:
        return None
    merged: dict[str, tuple[int, Term]] = {}
    for sign, term in expanded:
        normal = _normalize(term, total)
        if normal is None:
            continue
        key = "&".join(_spec_key(leaf.spec) for leaf in normal)
        before = merged.get(key, (0, normal))[0]
        merged[key] = (before + sign, normal)
    exact = 0
    remote: list[list[Any]] = []
    for sign, term in merged.values():
        if sign == 0:
            continue
        if not term:
            exact += sign * total
        elif len(term) == 1 and term[0].exact and term[0].kind in ("V", "R", "E", "C"):
            exact += sign * int(term[0].est)
        else:
            remote.append([sign, *(leaf.spec for leaf in term)])
    return exact, remote


# --- strategy --------------------------------------------------------------------------------


def order_specs(order: Sequence[OrderKey]) -> list[list[Any]]:
    """tt_query's order specs: ``[kind, hash field, asc]`` (kind n numeric, s string, x id)."""
    specs: list[list[Any]] = []
    for key in order:
        f = key.field
        if f.entity == "tag":
            kind, code = "s", tag_field(f.key)
        elif f.entity == "metadata":
            kind, code = "s", metadata_field(f.key)
        else:
            kind, code = {
                "timestamp_ms": ("n", "s"),
                "execution_time_ms": ("n", "d"),
                "end_time_ms": ("n", "E"),
                "status": ("s", "S"),
                "request_id": ("s", "i"),
                "experiment_id": ("x", "e"),
            }[f.key]
        specs.append([kind, code, 1 if key.ascending else 0])
    return specs


def _order_zset(key: OrderKey) -> ZsetName | None:
    if key.field.entity != "attribute":
        return None
    return _NUMERIC_ZSETS.get(key.field.key)


# A V leaf of this many values may be tested by reading each candidate's register
# (tt_query's member table of the values' sets costs ~3 us a set to build).
_REGISTER_TEST_MIN_VALUES = 8


def _value_fields(node: PNode, out: dict[str, str]) -> dict[str, str]:
    """The hash field of each V (or L) leaf of many values in ``node``, by distinct zset."""
    values = len(node.spec) - 3 if node.kind == "V" else node.spec[5] if node.kind == "L" else 0
    if node.field is not None and values >= _REGISTER_TEST_MIN_VALUES:
        out[node.spec[1]] = node.field
    for child in node.children:
        _value_fields(child, out)
    return out


def _walk_range(tree: PNode, zset: ZsetName) -> PNode | None:
    """The range leaf on ``zset`` that every match must satisfy (a conjunct), if any."""
    candidates = tree.children if tree.kind == "&" else [tree]
    ranges = [c for c in candidates if c.kind == "R" and c.spec[1] == zset]
    return min(ranges, key=lambda c: c.est) if ranges else None


def _chunked_conjuncts(tree: PNode) -> tuple[list[PNode], list[PNode]]:
    """The conjuncts of ``tree`` that tt_query tests as one chunked set (a single dense
    value, or a key's presence), and the others."""
    conjuncts = tree.children if tree.kind == "&" else [tree]
    chunked: list[PNode] = []
    rest: list[PNode] = []
    for node in conjuncts:
        single_dense = node.kind == "V" and len(node.spec) == 4 and node.est > PLAIN_MAX
        (chunked if single_dense or node.kind == "C" else rest).append(node)
    return chunked, rest


def _chunk_walk_cost(tree: PNode, total: int, limit: int) -> tuple[float, float]:
    """The chunk walk's cost in walked-entry units (~0.4 us), assuming that chunks hold
    traces of neighbouring times (numbers are handed out as traces are first folded): the
    chunks that hold ``limit`` matches, each one SINTER (~20) plus a test of the rest of the
    filter per candidate of the intersection and a timestamp read per survivor.  Also
    returns the chunks it expects to visit."""
    chunked, rest = _chunked_conjuncts(tree)
    if not chunked or total <= 0:
        return math.inf, 0.0
    fraction = 1.0
    for node in chunked:
        fraction *= min(1.0, node.est / total)
    density = min(1.0, tree.est / total)
    chunks = total / SET_CHUNK + 1
    visited = min(chunks, limit / max(density * SET_CHUNK, 1e-9) * 1.5 + 1)
    per_test = 2.5 if any(n.kind == "R" for n in rest) else (1.0 if rest else 0.0)
    per_chunk = 20 + SET_CHUNK * fraction * (0.3 + per_test) + SET_CHUNK * density
    return visited * per_chunk + 0.5 * limit, visited


@dataclass
class PartitionPlan:
    partition: int
    total: int
    tree: PNode
    strategy: str  # walk | chunk-walk | walk-values | collect | exact | count | algebra
    reason: str
    plan: dict[str, Any]
    exact_count: int = 0  # count mode: added to what tt_query returns (all of it for exact)


def plan_partition(
    partition: int,
    tree: PNode,
    total: int,
    *,
    mode: Literal["page", "count", "stats"],
    order: Sequence[OrderKey] = (),
    limit: int = 0,
    cursor: list[list[Any]] | None = None,
    group_fields: Sequence[str] = (),
    keys: Keys | None = None,
    order_distinct: int | None = None,
    time_bounds: bool = False,
) -> PartitionPlan:
    """Choose how to run one partition: the tt_query plan and the reason, for explain.

    ``order_distinct`` is the number of distinct values of the first order key when it is
    a string key with a distinct zset (then ``keys`` is needed to name its sets);
    ``time_bounds`` tells that the partition keeps its chunks' time bounds (tsx).
    """
    sources = tree.sources if tree.sources is not None else []
    if sources and sources[0][0] == "A":
        sources = []
    cost = tree.cost if tree.sources is not None else float(total)
    residual = tree.residual if sources and tree.residual is not None else tree.spec
    plan: dict[str, Any] = {
        "mode": mode,
        "expr": tree.spec,
        "sources": sources,
        "residual": residual,
    }
    source_text = (
        "every trace" if not sources else f"{len(sources)} index source(s) of ~{cost:,.0f} traces"
    )
    if mode == "count":
        if tree.exact and tree.kind in ("V", "R", "E", "A", "Z", "C"):
            reason = f"exact from index sizes (O(1)): {tree.est:,.0f}"
            return PartitionPlan(partition, total, tree, "exact", reason, plan, int(tree.est))
        algebra = count_terms(tree, total)
        if algebra is not None:
            exact, remote = algebra
            if not remote:
                reason = f"exact from index sizes (set algebra, O(1)): {exact:,}"
                return PartitionPlan(partition, total, tree, "exact", reason, plan, exact)
            plan["terms"] = remote
            reason = (
                f"set algebra: {exact:,} from index sizes plus {len(remote)} signed"
                " conjunction(s) counted inside Redis (SINTERCARD per chunk of chunked sets;"
                " a plain set or a small range enumerated and tested)"
            )
            return PartitionPlan(partition, total, tree, "algebra", reason, plan, exact)
        reason = f"test the candidates from {source_text} in batches inside Redis"
        return PartitionPlan(partition, total, tree, "count", reason, plan)
    if mode == "stats":
        plan["group"] = list(group_fields)
        reason = f"aggregate durations (ZMSCORE du) of the matches from {source_text}"
        return PartitionPlan(partition, total, tree, "stats", reason, plan)
    plan["order"] = order_specs(order)
    plan["limit"] = limit
    if time_bounds:
        plan["time_bounds"] = True  # (walks of value groups may visit chunks too)
    value_fields = _value_fields(tree, {})
    if value_fields:
        plan["value_fields"] = value_fields
    if cursor is not None:
        plan["cursor"] = cursor
    zset = _order_zset(order[0]) if order else None
    null_cursor = cursor is not None and cursor[0][0] == 0
    if zset is not None and not null_cursor:
        est = tree.est
        span = float(total)
        bounded = _walk_range(tree, zset)
        if bounded is not None:
            # Only the ranks of a conjunct range on the walked zset can match: walk them.
            span = bounded.est
        scan = span if est <= 0 else min(span, math.ceil(limit * span / est))
        # Cost in walked entries (~0.4 us each on the VM of benchmarks/README.md: the
        # ZRANGE reply and a lookup in the chunk intersection of the chunked terms).
        # Collecting costs per candidate ~0.3 us from sets (read and tested chunk by
        # chunk) but ~1 us from a range (its candidates scatter over every chunk, a few per
        # SMISMEMBER), a call per chunk a term touches, and ~0.9 us per match (its score
        # read by ZMSCORE, then the sort): so a walk wins at scale even when it visits
        # more entries than there are candidates.
        chunks = total / 512 + 1
        per_candidate = 2.5 if any(source[0] == "R" for source in sources) else 0.75
        collect_cost = per_candidate * cost + 2.25 * est + min(cost, chunks)
        chunk_cost = math.inf
        visits = 0.0
        if time_bounds and zset == "ts" and not order[0].ascending and cursor is None:
            chunk_cost, visits = _chunk_walk_cost(tree, total, limit)
        if chunk_cost < min(scan, collect_cost):
            # Past 3x the chunks expected, tt_query gives up and walks (or collects).
            plan["chunk_walk"] = max(8, math.ceil(3 * visits))
            if scan < collect_cost:
                plan["walk"] = [zset, 0]
                plan["density"] = min(1.0, est / span) if span > 0 else 1.0
                if bounded is not None:
                    plan["walk"] += bounded.spec[2:4]
            reason = (
                f"walk the chunks newest first (their time bounds): ~{est:,.0f} of {total:,}"
                f" traces match, ~{visits:,.0f} chunks expected (past {plan['chunk_walk']:,}"
                f" tt_query {'walks ts' if 'walk' in plan else 'collects'} instead);"
                f" intersecting the chunked sets per chunk costs ~"
                f"{chunk_cost:,.0f}, against walking ~{scan:,.0f} ts entries or collecting "
                f"the {cost:,.0f} candidates from {source_text} (cost ~{collect_cost:,.0f})"
            )
            return PartitionPlan(partition, total, tree, "chunk-walk", reason, plan)
        if scan < collect_cost:
            plan["walk"] = [zset, 1 if order[0].ascending else 0]
            plan["density"] = min(1.0, est / span) if span > 0 else 1.0
            within = ""
            if bounded is not None:
                plan["walk"] += bounded.spec[2:4]
                within = f" within {bounded.text}"
            reason = (
                f"walk {zset} from the {'low' if order[0].ascending else 'high'} end{within}: "
                f"~{est:,.0f} of {total:,} traces match, so ~{scan:,.0f} entries fill "
                f"{limit} rows, cheaper than collecting the {cost:,.0f} candidates from "
                f"{source_text} (cost ~{collect_cost:,.0f})"
            )
            return PartitionPlan(partition, total, tree, "walk", reason, plan)
        reason = (
            f"collect and sort: ~{est:,.0f} matches expected, the smallest source gives "
            f"{cost:,.0f} candidates (cost ~{collect_cost:,.0f}), cheaper than walking "
            f"~{scan:,.0f} {zset} entries"
        )
        return PartitionPlan(partition, total, tree, "collect", reason, plan)
    index = order_index(order[0]) if order else None
    # Walking the values costs reading them (~0.5 us each) and a group per value visited
    # (~30 us; ~limit * distinct / matches of them); collecting reads the key of every
    # candidate from its hash (~3 us each) before sorting.
    walk_values_us = (
        0.0
        if order_distinct is None
        else order_distinct * 0.5 + limit * order_distinct / max(tree.est, 1.0) * 30
    )
    if (
        zset is None
        and index is not None
        and keys is not None
        and order_distinct is not None
        and cost > 4 * limit
        and (order_distinct * 4 < cost or walk_values_us < 3 * cost)
    ):
        key_set = index.key_set(keys, partition)
        presence = ["C", key_set] if key_set is not None else ["P", _PRESENCE_FIELD[index.kind]]
        fraction = tree.est / total if total else 0.0
        plan["walk_values"] = [
            index.distinct(keys, partition),
            index.value_prefix(keys, partition),
            presence,
            fraction,
            cost,
            total,
        ]
        reason = (
            f"walk the {order_distinct:,} distinct values of {index.label} in order, each "
            f"value's set in turn (nulls last), until {limit} rows: cheaper than sorting the "
            f"{cost:,.0f} candidates from {source_text}"
        )
        return PartitionPlan(partition, total, tree, "walk-values", reason, plan)
    why = "the first order key has no order zset" if zset is None else "the cursor is past it"
    reason = f"collect and sort the matches from {source_text} ({why})"
    return PartitionPlan(partition, total, tree, "collect", reason, plan)


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
