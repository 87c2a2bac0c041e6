"""Runs search/count/stats plans inside Redis (``tt_query``, per partition) and merges the
partitions in the client: a k-way merge by the order keys, cursor page tokens, group stats."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import heapq
import itertools
import math
import operator
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
import redis

from tracetags import functions
from tracetags.connections import SyncClient, pool_of
from tracetags.errors import FilterSemanticError, PageTokenError, QueryLimitError
from tracetags.keys import Keys, field_label, metadata_field, split_register, tag_field
from tracetags.query import budget, pages
from tracetags.query.ast import Expr, OrderKey
from tracetags.query.limits import DEFAULT_FILTER_LIMITS, FilterLimits, check_filter
from tracetags.query.logical import (
    LAnd,
    LConst,
    LIds,
    LNot,
    LogicalNode,
    LPresent,
    LRange,
    LValues,
    ValueIndex,
    logical,
    order_index,
)
from tracetags.query.needle import Needle, needle_hits, values_by_needle
from tracetags.query.pages import RawTrace
from tracetags.query.parser import (
    effective_order,
    parse_filter,
    parse_order_by,
    render,
    render_order_key,
    strip_positions,
)
from tracetags.query.physical import (
    SOUGHT_VALUES_MAX,
    PNode,
    describe,
    physical,
    reply_text,
)
from tracetags.query.plan import CardsPlan, IdsPlan, OrderSpec, ValuesPlan
from tracetags.query.probe import (
    ID_SAMPLE,
    MatchedCount,
    MatchedValues,
    Probe,
    SampledIds,
    probe_commands,
    sampled_ids,
    sizes_only,
    values_sample,
)
from tracetags.query.residual import MIN_SHARE, client_term, residual_page
from tracetags.query.simplify import simplify
from tracetags.query.strategy import PartitionPlan, order_specs, plan_partition

__all__ = [
    "DEFAULT_MAX_RESULTS",
    "MAX_RESULTS_LIMIT",
    "METRICS",
    "Page",
    "Prepared",
    "clear_caches",
    "count",
    "explain",
    "prepare",
    "search",
    "stats",
]

MAX_RESULTS_LIMIT = 50_000
#: Most groups a stats call answers (Settings.stats_max_groups); more: QueryLimitError.
DEFAULT_MAX_GROUPS = 100_000
DEFAULT_MAX_RESULTS = 100
METRICS = ("count", "avg", "min", "max", "p50", "p95", "p99")
_TOKEN_VERSION = 1
_ENCODER = msgspec.msgpack.Encoder()
#: A LIKE's candidate values: (sought by the pattern's start, [value, count, ...], the next
#: window's first rank or -1).
_VALUES_DECODER = msgspec.msgpack.Decoder(tuple[int, list[str | float | bool], int])
_IDS_DECODER = msgspec.msgpack.Decoder(list[Any])  # [1, [id, number, ...]] or [0]


@dataclass(frozen=True)
class Prepared:
    """A validated query: its AST, effective order, scope and fingerprint (for tokens)."""

    expr: Expr | None
    order: list[OrderKey]
    experiment_ids: list[str] | None
    root: LogicalNode
    fingerprint: bytes
    #: The order keys the plans sort by: ``order`` without the keys the filter pins to one
    #: value (``tags.env = 'prod'`` ordered by ``tags.env``: the same value in every row,
    #: so the key orders nothing and the next one decides), and their places in ``order``.
    plan_order: list[OrderKey] = dataclasses.field(default_factory=list)
    plan_keys: tuple[int, ...] = ()

    def plan_cursor(self, cursor: list[list[Any]] | None) -> list[list[Any]] | None:
        """A cursor of ``order`` (a page token's) as one of ``plan_order``."""
        if cursor is None or len(self.plan_keys) == len(self.order):
            return cursor
        return [cursor[i] for i in self.plan_keys]


def _check_experiment_ids(experiment_ids: Any) -> list[str] | None:
    if experiment_ids is None:
        return None
    if isinstance(experiment_ids, str | bytes) or not isinstance(experiment_ids, Sequence):
        raise FilterSemanticError(
            "experiment_ids must be a list of experiment id strings, "
            f"got {type(experiment_ids).__name__}"
        )
    out = []
    for index, item in enumerate(experiment_ids):
        if not isinstance(item, str):
            raise FilterSemanticError(
                f"experiment_ids[{index}] must be a string, got {type(item).__name__}"
            )
        out.append(item)
    return out or None


def check_max_results(max_results: Any) -> int:
    """``max_results`` as an int in 1..50000, or a clear ValueError."""
    if (
        isinstance(max_results, bool)
        or not isinstance(max_results, int)
        or not 1 <= max_results <= MAX_RESULTS_LIMIT
    ):
        raise FilterSemanticError(
            f"max_results must be an integer in 1..{MAX_RESULTS_LIMIT}, got {max_results!r}"
        )
    return max_results


#: Recently prepared queries by their inputs (parsing is pure; a page asks again and again).
_PREPARED_MAX = 256
_prepared: dict[tuple[Any, ...], Prepared] = {}


def _inputs_key(experiment_ids: Any, filter_string: Any, order_by: Any) -> tuple[Any, ...] | None:
    """A hashable key for the inputs when they are of the expected types, else None."""
    parts: list[Any] = [filter_string if filter_string is None or type(filter_string) is str else 0]
    for items in (experiment_ids, order_by):
        if items is None:
            parts.append(None)
        elif type(items) in (list, tuple) and all(type(item) is str for item in items):
            parts.append(tuple(items))
        else:
            return None
    return None if parts[0] == 0 else tuple(parts)


def prepare(
    experiment_ids: Any,
    filter_string: Any,
    order_by: Any = None,
    limits: FilterLimits = DEFAULT_FILTER_LIMITS,
) -> Prepared:
    """Parse and validate a query's inputs (FilterSyntaxError / FilterSemanticError), the
    filter's size within ``limits``."""
    key = _inputs_key(experiment_ids, filter_string, order_by)
    if key is not None:
        key = (*key, limits)
        known = _prepared.get(key)
        if known is not None:
            return known
    prepared = _prepare(experiment_ids, filter_string, order_by, limits)
    if key is not None:
        if len(_prepared) >= _PREPARED_MAX:
            _prepared.clear()
        _prepared[key] = prepared
    return prepared


def _prepare(
    experiment_ids: Any, filter_string: Any, order_by: Any, limits: FilterLimits
) -> Prepared:
    scope = _check_experiment_ids(experiment_ids)
    expr = parse_filter(filter_string)
    check_filter(expr, filter_string, limits)
    if order_by is not None and (
        isinstance(order_by, str | bytes) or not isinstance(order_by, Sequence)
    ):
        raise FilterSemanticError(
            f"order_by must be a list of strings, got {type(order_by).__name__}"
        )
    order = effective_order(parse_order_by(order_by))
    identity = [
        None if expr is None else strip_positions(expr),
        [[k.field.entity, k.field.key, k.ascending] for k in order],
        sorted(set(scope or ())),
    ]
    fingerprint = hashlib.blake2b(_ENCODER.encode(identity), digest_size=8).digest()
    root = simplify(logical(expr, scope))
    pinned = {index for c in _conjuncts(root) if (index := _pinned_index(c)) is not None}
    kept = tuple(i for i, k in enumerate(order) if order_index(k) not in pinned)
    return Prepared(expr, order, scope, root, fingerprint, [order[i] for i in kept], kept)


def _pinned_index(conjunct: LogicalNode) -> ValueIndex | None:
    """The index on which every match holds the same value (one listed value, or none at
    all: `k IS NULL`), so that ordering by it orders nothing and it leaves the order."""
    if isinstance(conjunct, LValues) and len(conjunct.values) == 1:
        return conjunct.index
    if isinstance(conjunct, LNot) and isinstance(conjunct.child, LPresent):
        return conjunct.child.index
    return None


def _conjuncts(root: LogicalNode) -> tuple[LogicalNode, ...]:
    return root.children if isinstance(root, LAnd) else (root,)


# --- probing and planning ------------------------------------------------------------------


def _probe(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    root: LogicalNode,
    order: Sequence[OrderKey] = (),
    *,
    page: bool = False,
    only: int | None = None,
    listed: bool = False,
    deferred: dict[int, list[Deferred]] | None = None,
) -> list[tuple[Probe, list[Any], list[int]]]:
    """The probe replies of each partition (``only``: of that one; ``listed``: patterns'
    values listed, see :func:`probe.probe_commands`).  With ``deferred``, a sparse pattern
    beside other terms is left to tt_query's test of each candidate instead of reading
    every value of its key, and noted in ``deferred[partition]``; see :func:`_plans`."""
    parts = range(partitions) if only is None else (only,)
    beside = set(map(id, root.children)) if isinstance(root, LAnd) else set()
    probes = [probe_commands(root, keys, p, order, page=page, listed=listed) for p in parts]

    def fill(pipe: redis.client.Pipeline) -> None:
        for probe in probes:
            for name, key, *args in probe.commands:
                if name == "ZRANGE":
                    pipe.zrange(key, 0, budget.ZRANGE_WINDOW - 1, withscores=True)
                elif name == "VALUES":
                    window = [0, budget.VALUES_WINDOW]
                    sampled = args[3].lua is not None and not probe.listed
                    alts, sample = args[2], (ID_SAMPLE if sampled else None)
                    sized = None
                    # (a pattern with a literal lead reads only the values starting so:
                    # cheaper than a sample unless the lead is dense, which is sampled)
                    led = bool(args[0] and args[0][0]) or bool(alts)
                    if sampled and not led and deferred is not None and id(args[3]) in beside:
                        sized = _sized_siblings(root, args[3], keys, probe.partition)
                    plan = ValuesPlan(
                        dkey=key, runs=args[0], lead=args[1], window=window, alts=alts,
                        sample=sample, beside=sized,
                        beside_per=DEFERRED_VALUES_PER_CANDIDATE if sized else None,
                    )  # fmt: skip
                    functions.queue_query(pipe, keys, probe.partition, _ENCODER.encode(plan))
                elif name == "VALUECOUNT":
                    plan = ValuesPlan(
                        dkey=key, lead=args[0], count_only=1, dense_after=SOUGHT_VALUES_MAX
                    )
                    functions.queue_query(pipe, keys, probe.partition, _ENCODER.encode(plan))
                elif name == "IDSEEK":
                    ids_plan = IdsPlan(prefixes=list(args[0][0]), suffixes=list(args[0][1]))
                    functions.queue_query(pipe, keys, probe.partition, _ENCODER.encode(ids_plan))
                elif name == "ZMSCORE":
                    pipe.zmscore(key, args)
                elif name == "ZCOUNT":
                    pipe.zcount(key, args[0], args[1])
                elif name == "HMGET":
                    pipe.hmget(key, args)
                elif name == "HGETALL":
                    pipe.hgetall(key)
                elif name == "IDSAMPLE":
                    pipe.hrandfield(key, ID_SAMPLE, withvalues=True)
                elif name == "ZCARD":
                    pipe.zcard(key)
                elif name == "HLEN":
                    pipe.hlen(key)
                else:
                    pipe.scard(key)
            if probe.card_keys:  # (its reply follows the probe's commands')
                cards = CardsPlan(keys=probe.card_keys)
                functions.queue_query(pipe, keys, probe.partition, _ENCODER.encode(cards))

    replies = functions.execute_queries(client, fill)
    at = 0
    for probe in probes:
        for offset, (name, key, *args) in enumerate(probe.commands):
            if name == "ZRANGE" and len(replies[at + offset]) == budget.ZRANGE_WINDOW:
                more = budget.rest_of_zrange(client, key)
                replies[at + offset] = list(dict([*replies[at + offset], *more]).items())
            elif name == "VALUES":
                sought, flat, next_rank = _VALUES_DECODER.decode(replies[at + offset])
                leaf = args[3]
                if sought == 2:  # a sample of a key of more values than a window
                    sampled = values_sample(flat, next_rank, leaf.predicate, leaf.negated)
                    if sampled is None and deferred is not None and id(leaf) in beside:
                        sampled = values_sample(flat, next_rank, leaf.predicate, leaf.negated, 0)
                        if sampled is not None:
                            later = (probe.partition, offset, key, args, sampled.values)
                            deferred.setdefault(probe.partition, []).append(later)
                    if sampled is not None:  # tested on each candidate by tt_query
                        replies[at + offset] = sampled
                        continue
                    sought, flat, next_rank = 0, [], 0  # every value is read after all
                replies[at + offset] = _matched_values(
                    client, keys, probe.partition, key, args, sought, flat, next_rank
                )
            elif name == "IDSEEK":  # {id: number}, like HGETALL of the ids hash
                found = _IDS_DECODER.decode(replies[at + offset])
                if found[0]:
                    ids = found[1]
                    replies[at + offset] = dict(zip(ids[::2], ids[1::2], strict=True))
                else:  # a dense prefix, or no id buckets: every id (or a sample)
                    total = int(replies[at])
                    replies[at + offset] = _ids_or_sample(
                        client, key, args[1], total, None, args[2]
                    )
            elif name == "IDSAMPLE":
                total = int(replies[at])
                sampled = replies[at + offset]
                replies[at + offset] = _ids_or_sample(client, key, args[0], total, sampled, args[1])
            elif name == "VALUECOUNT":
                values, traces, estimated = replies[at + offset]
                replies[at + offset] = MatchedCount(int(values), int(traces), bool(estimated))
        at += len(probe.commands) + bool(probe.card_keys)
    out: list[tuple[Probe, list[Any], list[int]]] = []
    at = 0
    for probe in probes:
        n = len(probe.commands)
        cards = [int(c) for c in replies[at + n]] if probe.card_keys else []
        out.append((probe, replies[at : at + n], cards))
        at += n + bool(probe.card_keys)
    return out


def _sized_siblings(
    root: LogicalNode, leaf: LogicalNode, keys: Keys, partition: int
) -> list[list[str | int]] | None:
    """The AND siblings of a pattern that tt_query can size in its VALUES call (ranges,
    value sets, listed ids: see :class:`ValuesPlan`), or None when there are none."""
    sized: list[list[str | int]] = []
    for sibling in _conjuncts(root):
        if sibling is leaf:
            continue
        if isinstance(sibling, LRange):
            zset = keys.by_score(partition, sibling.zset)
            sized.append(["r", zset, str(sibling.lo), str(sibling.hi)])
        elif isinstance(sibling, LValues):
            sized.append(["v", sibling.index.distinct(keys, partition), *sibling.values])
        elif isinstance(sibling, LIds):
            sized.append(["n", len(sibling.ids)])
    return sized or None


def _ids_or_sample(
    client: SyncClient,
    key: str,
    predicate: Any,
    total: int,
    sampled: Any,
    needle: Needle | None = None,
) -> SampledIds | dict[Any, Any]:
    """For a request_id pattern: a sample of the ids when tt_query can test the pattern on
    each candidate and that pays (``predicate`` set, :func:`probe.sampled_ids`), else
    every id (``{id: number}``), or only the matching ones when the pattern is sparse."""
    if predicate is not None and total > 0:
        if sampled is None:
            sampled = client.hrandfield(key, ID_SAMPLE, withvalues=True)
        sample = dict(zip(sampled[::2], sampled[1::2], strict=True))
        chosen = sampled_ids(sample, predicate, total) if sample else None
        if chosen is not None:
            return chosen
        # Few matches (by the sample): the ids alone are read (no number decoded for every
        # id), then the matches' numbers.
        ids: Any = client.hkeys(key)
        found = None if needle is None else needle_hits(ids, needle, predicate)
        if found is None:
            hits = [i for i in ids if predicate(reply_text(i))]
        else:
            hits = [ids[i] for i in found]
        if len(hits) <= len(ids) * MATCHED_IDS_MAX_SHARE:
            numbers: Any = client.hmget(key, hits) if hits else []
            return {i: n for i, n in zip(hits, numbers, strict=True) if n is not None}
    got: Any = client.hgetall(key)
    return dict(got)


#: An id pattern the sample said is sparse, matching more than this share of the ids after
#: all, has its numbers read with every id's (HGETALL) rather than by name.
MATCHED_IDS_MAX_SHARE: Final = 0.25


# A page plan whose terms are all value sets, ranges and key presence (no LIKE, no ids)
# uses the probe only to size the terms, i.e. to choose a strategy: which traces match is
# decided inside tt_query.  Such a probe is reused for a short while (one round trip less).
_PROBE_TTL_S = 2.0
Probed = list[tuple[Probe, list[Any], list[int]]]


@dataclass
class _Reused:
    """A probe kept for reuse, and the plans made from it (by page size and cursor)."""

    taken: float
    prepared: Prepared
    probed: Probed
    plans: dict[tuple[int, bytes], list[PartitionPlan]]


_probes: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], _Reused]] = (
    weakref.WeakKeyDictionary()
)


def clear_caches() -> None:
    """Forget remembered parses, probes and plans: the next query of every kind starts cold
    (``bench_query.py --cold`` times queries this way)."""
    _prepared.clear()
    _probes.clear()


def _recent_probe(
    client: SyncClient, keys: Keys, partitions: int, prepared: Prepared
) -> _Reused | None:
    entry = _probes.get(pool_of(client), {}).get((keys.namespace, partitions, id(prepared)))
    if (
        entry is None
        or entry.prepared is not prepared
        or time.monotonic() - entry.taken > _PROBE_TTL_S
    ):
        return None
    return entry


def _remember_probe(
    client: SyncClient, keys: Keys, partitions: int, prepared: Prepared, probed: Probed
) -> None:
    known = _probes.setdefault(pool_of(client), {})
    if len(known) >= _PREPARED_MAX:
        known.clear()
    known[(keys.namespace, partitions, id(prepared))] = _Reused(
        time.monotonic(), prepared, probed, {}
    )


def _plans(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    prepared: Prepared,
    mode: Literal["page", "count", "stats"],
    *,
    limit: int = 0,
    cursor: list[list[Any]] | None = None,
    group_fields: Sequence[str] = (),
    reuse_probe: bool = False,
) -> list[PartitionPlan]:
    order = prepared.plan_order if mode == "page" else ()
    reused = None
    reuse = mode == "page" and reuse_probe and sizes_only(prepared.root)
    if reuse:
        reused = _recent_probe(client, keys, partitions, prepared)
    if reused is not None:
        # Plans of a reused probe are a function of (probe, page size, cursor): kept too.
        key = (limit, _ENCODER.encode(cursor))
        known = reused.plans.get(key)
        if known is None:
            known = _make_plans(keys, prepared, reused.probed, mode, limit, cursor, (), False)
            reused.plans[key] = known
        return known
    deferred: dict[int, list[Deferred]] = {}
    page = mode == "page"
    probed = _probe(client, keys, partitions, prepared.root, order, page=page, deferred=deferred)
    if reuse:
        _remember_probe(client, keys, partitions, prepared, probed)
    plans = _make_plans(keys, prepared, probed, mode, limit, cursor, group_fields, True)
    if any(_rest_too_large(p, deferred[p.partition]) for p in plans if p.partition in deferred):
        # A sparse pattern left to tt_query's test of each candidate, beside terms that
        # hold many: its key's values are read after all (as without the deferral).
        for probe, replies, _ in probed:
            for _, offset, dkey, args, _ in deferred.get(probe.partition, []):
                replies[offset] = _matched_values(
                    client, keys, probe.partition, dkey, args, 0, [], 0
                )
        plans = _make_plans(keys, prepared, probed, mode, limit, cursor, group_fields, True)
    return plans


def _matched_values(
    client: SyncClient,
    keys: Keys,
    partition: int,
    key: str,
    args: list[Any],
    sought: int,
    flat: list[Any],
    next_rank: int,
) -> MatchedValues:
    """The values of a pattern's key that match it (a VALUES probe reply: its first window
    ``flat``, then the rest from ``next_rank`` when it is not -1)."""
    leaf = args[3]
    if next_rank >= 0 and leaf.needle is not None and not leaf.negated:
        # more windows of values to read (every value, or those starting with an alt
        # where the key has no byte-order index): only the values holding the pattern's
        # literal are tested (unless most hold it: then by windows after all)
        matched = values_by_needle(client, key, leaf.needle, leaf.predicate)
        if matched is not None:
            sought, flat, next_rank = 1, matched, -1
    if next_rank >= 0:
        more, only_sought = budget.rest_of_values(client, keys, partition, key, args, next_rank)
        flat = [*flat, *more]
        sought = sought or only_sought  # (not every value: no complement)
    pairs = list(dict(zip(flat[::2], flat[1::2], strict=True)).items())
    return MatchedValues(bool(sought), pairs)


#: A probe's sparse pattern left to tt_query's test of each candidate: (partition, the
#: VALUES command's place among the probe's, its key and args, the key's values), to read
#: its values after all (:func:`_plans`).
Deferred = tuple[int, int, str, list[Any], int]


#: A sparse pattern (by the probe's sample) ANDed with other terms is tested on each
#: candidate of those terms by tt_query (an HGET and a match, ~2.5 us) rather than found
#: by reading every value of its key (~40 ns a value) while the other terms hold at most
#: one trace per this many values of the key.
DEFERRED_VALUES_PER_CANDIDATE: Final = 60


def _rest_too_large(plan: PartitionPlan, deferred: list[Deferred]) -> bool:
    """Whether the other terms of a deferred pattern's AND hold more candidates than
    testing each of them is worth (its smallest other term sizes them)."""
    tree = plan.tree
    if tree.kind == "Z":
        return False
    values = min(later[4] for later in deferred)
    others = [c.est for c in tree.children if c.kind != "M"] if tree.kind == "&" else []
    rest = min(others) if others else float(plan.total)
    return bool(rest * DEFERRED_VALUES_PER_CANDIDATE > values)


def _make_plans(
    keys: Keys,
    prepared: Prepared,
    probed: Probed,
    mode: Literal["page", "count", "stats"],
    limit: int,
    cursor: list[list[Any]] | None,
    group_fields: Sequence[str],
    fresh: bool,
) -> list[PartitionPlan]:
    plans = []
    for probe, replies, cards in probed:
        tree, total = physical(prepared.root, probe, replies, cards, keys, fresh=fresh)
        slot = probe.order_distinct_slot
        distinct = None if slot is None else int(replies[slot])
        bounds = probe.time_bounds_slot
        time_bounds = bounds is not None and int(replies[bounds]) > 0
        id_slot = probe.id_order_slot
        id_order = id_slot is not None and int(replies[id_slot]) > 0
        plans.append(
            plan_partition(
                probe.partition,
                tree,
                total,
                mode=mode,
                order=prepared.plan_order,
                limit=limit,
                cursor=cursor,
                group_fields=group_fields,
                keys=keys,
                order_distinct=distinct,
                time_bounds=time_bounds,
                id_order=id_order,
            )
        )
    return plans


def _run(client: SyncClient, keys: Keys, plans: Sequence[PartitionPlan]) -> list[Any]:
    return functions.query_partitions(
        client, keys, [(p.partition, _ENCODER.encode(p.plan)) for p in plans]
    )


# --- ordering in the client (mirrors tt_query's comparisons) --------------------------------


def _row_values(fields: Sequence[str], specs: Sequence[OrderSpec]) -> list[Any]:
    """The order values of a trace hash given as its flat field/value list."""
    raw = dict(zip(fields[::2], fields[1::2], strict=True))

    def register(code: str) -> str | None:
        text = raw.get(code)
        if text is None:
            return None
        return text if code == "i" else split_register(text)[1]

    out: list[Any] = []
    for kind, code, _ in specs:
        if code == "E":
            start, duration = register("s"), register("d")
            out.append(None if start is None else int(start) + int(duration or 0))
            continue
        value = register(code)
        out.append(int(value) if value is not None and kind == "n" else value)
    return out


def _ascii_digits(text: str) -> bool:
    return text != "" and text.isascii() and text.isdigit()


def _base_cmp(kind: str, a: Any, b: Any) -> int:
    if a == b:
        return 0
    if kind == "x":
        ad, bd = _ascii_digits(a), _ascii_digits(b)
        if ad and bd:
            x, y = int(a), int(b)
            return 0 if x == y else (-1 if x < y else 1)
        if ad != bd:
            return -1 if ad else 1
    return -1 if a < b else 1


def _cmp_rows(specs: Sequence[OrderSpec], a: Sequence[Any], b: Sequence[Any]) -> int:
    for (kind, _, ascending), x, y in zip(specs, a, b, strict=True):
        if x is None or y is None:
            if x is None and y is None:
                continue
            return 1 if x is None else -1
        c = _base_cmp(kind, x, y)
        if c:
            return c if ascending else -c
    return 0


# --- page tokens ----------------------------------------------------------------------------


def _encode_token(fingerprint: bytes, values: list[Any]) -> str:
    payload = _ENCODER.encode([_TOKEN_VERSION, fingerprint, values])
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_token(token: Any, prepared: Prepared, specs: Sequence[OrderSpec]) -> list[list[Any]]:
    if not isinstance(token, str) or not token:
        raise PageTokenError(f"page_token must be a non-empty string, got {token!r}")
    try:
        payload = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = msgspec.msgpack.decode(payload)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise PageTokenError("page_token is malformed (not a tracetags page token)") from exc
    if (
        not isinstance(decoded, list)
        or len(decoded) != 3
        or decoded[0] != _TOKEN_VERSION
        or not isinstance(decoded[1], bytes)
        or not isinstance(decoded[2], list)
    ):
        raise PageTokenError("page_token is malformed (not a tracetags page token)")
    if decoded[1] != prepared.fingerprint:
        raise PageTokenError(
            "page_token belongs to another query: pass the same filter_string, order_by and"
            " experiment_ids as for the first page"
        )
    values = decoded[2]
    if len(values) != len(specs):
        raise PageTokenError("page_token is malformed (wrong number of sort values)")
    cursor: list[list[Any]] = []
    for (kind, _, _), value in zip(specs, values, strict=True):
        if value is None:
            cursor.append([0])
            continue
        wanted = int if kind == "n" else str
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise PageTokenError("page_token is malformed (bad sort value)")
        cursor.append([1, value])
    return cursor


# --- the public operations ------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    #: The trace hashes of the page, each as its flat field/value list (HGETALL order).
    rows: list[RawTrace]
    token: str | None


def search(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    prepared: Prepared,
    max_results: int,
    page_token: str | None = None,
    budget_ms: int = budget.DEFAULT_CALL_BUDGET_MS,
) -> Page:
    """One page: the trace hashes of up to ``max_results`` matches after the token, in order.

    Each partition returns the hashes of its first matches, read inside the Function that
    evaluated the filter (so each row is the state the filter matched), and looks for one
    match more (whether it has more); the client merges the partitions' rows in order.
    Matches spread evenly over partitions, so a partition first looks for a few more than
    its share (:func:`_first_shown`) rather than a whole page; should the merge use up a
    partition's rows while it has more, the page is not decided past that row, and that
    partition is asked again for a whole page.
    """
    specs = order_specs(prepared.order)
    token_cursor = None if page_token is None else _decode_token(page_token, prepared, specs)
    if _nothing(prepared):
        return Page([], None)
    # The plans' order (and the rows the calls return, key rows too) is plan_order's.
    cursor = prepared.plan_cursor(token_cursor)
    plan_specs = order_specs(prepared.plan_order)
    by_order = functools.cmp_to_key(functools.partial(_cmp_rows, plan_specs))

    def order_key(fields: RawTrace) -> Any:
        return by_order(_row_values(fields, plan_specs))

    def cursor_of(fields: RawTrace) -> list[list[Any]]:
        return [[0] if v is None else [1, v] for v in _row_values(fields, plan_specs)]

    def rest_plans(rest: Prepared, limit: int, at: list[list[Any]] | None) -> list[PartitionPlan]:
        return _plans(client, keys, partitions, rest, "page", limit=limit, cursor=at)

    replies = residual_page(
        client, keys, partitions, prepared, max_results, cursor, budget_ms, cursor_of, rest_plans
    )
    plans: list[PartitionPlan] = []
    if replies is None:
        plans = _plans(
            client,
            keys,
            partitions,
            prepared,
            "page",
            limit=max_results + 1,
            cursor=cursor,
            reuse_probe=True,
        )
        shown = _first_shown(max_results, len(plans))
        for plan in plans:
            # Each looks for one more match than it shows: whether it has more is all the
            # merge needs to know (one partition alone: whether a next page exists).
            plan.plan = msgspec.structs.replace(plan.plan, limit=shown + 1, shown=shown)

        def listed(index: int) -> PartitionPlan | None:
            return _listed_plan(client, keys, partitions, prepared, plans[index], cursor)

        replies = pages.run_pages(client, keys, plans, order_key, budget_ms, cursor_of, listed)
    if len(replies) == 1:
        found, rows = replies[0]
        more = found > len(rows)
    else:
        rows, taken, short = _merge(specs, replies, max_results)
        # At most once per partition: it then shows a whole page.  (A residual page shows a
        # whole page of every partition already; one short of a trace deleted meanwhile
        # ends the page there, its token going on from its last row.)
        while short is not None and plans:
            plan = plans[short]
            plan.plan = msgspec.structs.replace(plan.plan, limit=max_results + 1, shown=max_results)
            (replies[short],) = pages.run_pages(
                client, keys, [plan], order_key, budget_ms, cursor_of
            )
            rows, taken, short = _merge(specs, replies, max_results)
        # A next page exists iff some partition has a match the page did not take.
        more = any(found > n for (found, _), n in zip(replies, taken, strict=True))
    token = None
    if more:
        token = _encode_token(prepared.fingerprint, _row_values(rows[-1], specs))
    return Page(rows, token)


def _tests_each_candidate(node: PNode) -> bool:
    """Whether the tree holds a leaf that tests each candidate's value or id (an M leaf)."""
    return node.kind == "M" or any(_tests_each_candidate(c) for c in node.children)


def _listed_plan(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    prepared: Prepared,
    plan: PartitionPlan,
    cursor: list[list[Any]] | None,
) -> PartitionPlan | None:
    """For a partition whose page gave up in a walk testing each candidate's value (an M
    leaf): the same page planned with the patterns' matching values listed (value sets,
    which a collect enumerates), or None when the plan has no such leaf.  The walk's
    estimate assumed the matches spread over time; when they gather at the far end (a lead
    like 'cr-01%' over ids numbered in time), the listed values find them directly, where
    a budgeted scan would test every trace."""
    if not _tests_each_candidate(plan.tree):
        return None
    probed = _probe(
        client,
        keys,
        partitions,
        prepared.root,
        prepared.plan_order,
        page=True,
        only=plan.partition,
        listed=True,
    )
    limit = plan.plan.limit or 0
    (again,) = _make_plans(keys, prepared, probed, "page", limit, cursor, (), True)
    if _tests_each_candidate(again.tree):
        return None
    again.plan = msgspec.structs.replace(again.plan, limit=limit, shown=plan.plan.shown)
    return again


#: A partition's first answer shows its share of a page times this, plus FIRST_SHOWN_EXTRA:
#: with trace ids hashed evenly, a page of 100 over 16 partitions takes more than 2x + 4 of
#: its share from one of them about once in a thousand pages (then a second round trip).
FIRST_SHOWN_FACTOR = 2
FIRST_SHOWN_EXTRA = 4


def _first_shown(max_results: int, partitions: int) -> int:
    share = -(-max_results // partitions)
    return min(max_results, FIRST_SHOWN_FACTOR * share + FIRST_SHOWN_EXTRA)


def _merge(
    specs: Sequence[OrderSpec], replies: Sequence[tuple[int, list[RawTrace]]], max_results: int
) -> tuple[list[RawTrace], list[int], int | None]:
    """The first ``max_results`` rows of the partitions' rows in order (each partition's
    rows come in order: a k-way merge, which reads the order values of the rows it takes
    and of one more per partition), how many it took of each partition; and, when the page
    is not decided, the partition to ask for more: one whose shown rows were all taken
    while it has more matches may hold rows that come before the rest of the page."""
    by_order = functools.cmp_to_key(functools.partial(_cmp_rows, specs))

    def keyed(index: int, hashes: list[RawTrace]) -> Iterator[tuple[Any, int, RawTrace]]:
        return ((by_order(_row_values(fields, specs)), index, fields) for fields in hashes)

    streams = [keyed(i, hashes) for i, (_, hashes) in enumerate(replies)]
    taken = [0] * len(replies)
    rows: list[RawTrace] = []
    for _, index, fields in heapq.merge(*streams, key=operator.itemgetter(0)):
        rows.append(fields)
        taken[index] += 1
        if len(rows) == max_results:
            break
        found, hashes = replies[index]
        if taken[index] == len(hashes) and found > len(hashes):
            return rows, taken, index
    return rows, taken, None


def _nothing(prepared: Prepared) -> bool:
    """A filter that cannot match (a contradiction, simplify.py): no round trip at all."""
    return isinstance(prepared.root, LConst) and not prepared.root.value


def count(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    prepared: Prepared,
    budget_ms: int = budget.DEFAULT_CALL_BUDGET_MS,
) -> int:
    """How many traces match, without fetching any (a large count in budgeted calls)."""
    if _nothing(prepared):
        return 0
    plans = _plans(client, keys, partitions, prepared, "count")
    to_run = [p for p in plans if p.strategy != "exact" and not budget.scans(p)]
    replies = _run_bounded(client, keys, to_run, budget_ms)
    # A plan that gave up is scanned; the scan counts all of it (no exact part is added).
    gave_up = [p for p, reply in zip(to_run, replies, strict=True) if reply is None]
    skipped = {id(p) for p in gave_up}
    total = sum(p.exact_count for p in plans if not budget.scans(p) and id(p) not in skipped)
    total += sum(int(n) for n in replies if n is not None)
    to_scan = [p for p in plans if p.strategy != "exact" and budget.scans(p)] + gave_up
    return total + sum(int(n) for n in budget.scanned(client, keys, to_scan, budget_ms))


def _run_bounded(
    client: SyncClient, keys: Keys, plans: Sequence[PartitionPlan], budget_ms: int
) -> list[Any]:
    """The replies of count or stats plans run with the call budget as their deadline; None
    for a plan whose call gave up (the caller scans it in budgeted calls)."""
    deadline = budget.call_deadline_us(max(1, budget_ms) * 1000)
    encoded = [
        (p.partition, _ENCODER.encode(msgspec.structs.replace(p.plan, deadline=deadline)))
        for p in plans
    ]
    replies = functions.query_partitions(client, keys, encoded)
    return [None if isinstance(r, int) and r == -1 else r for r in replies]


def explain(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    prepared: Prepared,
    max_results: int = DEFAULT_MAX_RESULTS,
    page_token: str | None = None,
    mode: Literal["page", "count"] = "page",
) -> str:
    """The chosen plan of every partition, with estimated cardinalities and the reason."""
    specs = order_specs(prepared.order)
    cursor = None if page_token is None else _decode_token(page_token, prepared, specs)
    plans = _plans(
        client,
        keys,
        partitions,
        prepared,
        mode,
        limit=max_results + 1,
        cursor=prepared.plan_cursor(cursor),
    )
    lines = [
        f"{'search_traces' if mode == 'page' else 'count'}: filter {_render_filter(prepared.expr)}",
        f"  experiment_ids: {prepared.experiment_ids or 'all'}",
    ]
    if mode == "page":
        lines.append("  order: " + ", ".join(_order_text(k) for k in prepared.order))
        lines.append(f"  max_results: {max_results}{' (after a page token)' if cursor else ''}")
        term = client_term(prepared.root)
        if term is not None:
            lines.append(
                f"  {term} is decided in the client: a page samples it first and, at >= "
                f"{MIN_SHARE:.0%} of the traces, walks the rest of the filter testing it on "
                "each candidate (else, as planned below)"
            )
    pipe = client.pipeline(transaction=False)
    for plan in plans:
        pipe.hgetall(keys.lookups(plan.partition))
    listed = pipe.execute()
    for plan, lookups in zip(plans, listed, strict=True):
        lines.append(f"partition {plan.partition}: {plan.total:,} traces")
        lines.append(f"  strategy: {plan.strategy} - {plan.reason}")
        lines.append("  terms:")
        lines.extend(describe(plan.tree, "    "))
        text = reply_text
        ready = {text(field) for field, state in lookups.items() if text(state) == "ready"}
        for field in sorted(set((plan.plan.value_fields or {}).values())):
            how = (
                "2-byte lookup fingerprints, then the register of a wanted one"
                if field in ready
                else "each trace's register (HGET), or a table of the values' members"
            )
            if field not in ready and field[:1] in "tm" and len(field) > 1:
                how += f" (with {field_label(field)} in TRACETAGS_LOOKUP_KEYS: 2 bytes a trace)"
            lines.append(f"  a walk tests {field_label(field)} by {how}")
    return "\n".join(lines)


def _render_filter(expr: Expr | None) -> str:
    if expr is None:
        return "(none)"
    try:
        return repr(render(expr))
    except ValueError:
        return repr(expr)


def _order_text(key: OrderKey) -> str:
    try:
        return render_order_key(key)
    except ValueError:
        return f"{key.field.entity} {key.field.key!r} {'ASC' if key.ascending else 'DESC'}"


_GROUP_FIELDS = {"status": "S", "experiment_id": "e", "request_id": "i"}


def _group_field(text: Any, index: int) -> tuple[str, str]:
    if not isinstance(text, str):
        raise FilterSemanticError(f"group_by[{index}] must be a string, got {type(text).__name__}")
    (key,) = parse_order_by([text])
    f = key.field
    if f.entity == "tag":
        return text, tag_field(f.key)
    if f.entity == "metadata":
        return text, metadata_field(f.key)
    if f.key in _GROUP_FIELDS:
        return text, _GROUP_FIELDS[f.key]
    raise FilterSemanticError(
        f"group_by[{index}]: cannot group by the numeric attribute {f.key!r}"
        " (group by tags, metadata, status or experiment_id)"
    )


def _percentile(pairs: Sequence[tuple[int, int]], n: int, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) over (value, count)."""
    rank = q * (n - 1)
    low = math.floor(rank)

    def at(index: int) -> int:
        seen = 0
        for value, times in pairs:
            seen += times
            if index < seen:
                return value
        return pairs[-1][0]

    a = at(low)
    b = at(min(low + 1, n - 1))
    return a + (b - a) * (rank - low)


def _new_groups(
    merged: dict[tuple[str | None, ...], Any], reply: Sequence[Any]
) -> set[tuple[str | None, ...]]:
    """The groups known after merging ``reply`` (its rows' group values and ``merged``'s)."""
    out = set(merged)
    for row in reply:
        out.add(tuple(v[1].decode() if int(v[0]) else None for v in row[0]))
    return out


def stats(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    prepared: Prepared,
    group_by: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
    budget_ms: int = budget.DEFAULT_CALL_BUDGET_MS,
    max_groups: int = DEFAULT_MAX_GROUPS,
) -> list[dict[str, Any]]:
    """Count and execution_time_ms statistics of the matches, grouped by field values.

    Each partition aggregates inside Redis (durations by ZMSCORE on ``du``, group values
    by HMGET) and returns, per group, its count and its durations as sorted (value, times)
    pairs; the client merges partitions and computes avg/min/max and linear-interpolated
    percentiles.  Missing durations (unfinished traces) count but have no duration.
    """
    if isinstance(group_by, str) or not isinstance(group_by, Sequence):
        raise FilterSemanticError("group_by must be a list of strings")
    fields = [_group_field(text, i) for i, text in enumerate(group_by)]
    wanted = list(METRICS) if metrics is None else list(metrics)
    if isinstance(metrics, str) or any(m not in METRICS for m in wanted):
        raise FilterSemanticError(f"metrics must be a list drawn from {', '.join(METRICS)}")
    plans = _plans(
        client, keys, partitions, prepared, "stats", group_fields=[code for _, code in fields]
    )
    merged: dict[tuple[str | None, ...], tuple[int, Counter[int]]] = {}
    direct = [p for p in plans if not budget.scans(p)]
    answered = _run_bounded(client, keys, direct, budget_ms)
    scanned = [p for p in plans if budget.scans(p)]
    scanned += [p for p, reply in zip(direct, answered, strict=True) if reply is None]
    replies = itertools.chain(
        (r for r in answered if r is not None), budget.scanned(client, keys, scanned, budget_ms)
    )
    for reply in replies:
        if len(merged) + len(reply) > max_groups and len(_new_groups(merged, reply)) > max_groups:
            raise QueryLimitError(
                f"stats: more than {max_groups:,} groups (stats_max_groups); narrow the filter"
                " or group by fewer distinct values"
            )
        for row in reply:
            values = tuple(v[1].decode() if int(v[0]) else None for v in row[0])
            n, durations = merged.get(values, (0, Counter()))
            flat = row[2:]
            for i in range(0, len(flat), 2):
                durations[int(flat[i])] += int(flat[i + 1])
            merged[values] = (n + int(row[1]), durations)
    out: list[tuple[int, tuple[tuple[bool, str], ...], dict[str, Any]]] = []
    for values, (n, durations) in merged.items():
        pairs = sorted(durations.items())
        timed = sum(durations.values())
        computed: dict[str, Any] = {
            "count": n,
            "avg": (sum(v * c for v, c in pairs) / timed) if timed else None,
            "min": pairs[0][0] if pairs else None,
            "max": pairs[-1][0] if pairs else None,
            "p50": _percentile(pairs, timed, 0.50) if timed else None,
            "p95": _percentile(pairs, timed, 0.95) if timed else None,
            "p99": _percentile(pairs, timed, 0.99) if timed else None,
        }
        result: dict[str, Any] = {
            "group": {name: v for (name, _), v in zip(fields, values, strict=True)}
        }
        result.update({m: computed[m] for m in wanted})
        order = tuple((v is None, v or "") for v in values)
        out.append((n, order, result))
    out.sort(key=lambda item: (-item[0], item[1]))
    return [result for _, _, result in out]
