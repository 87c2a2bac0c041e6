"""Pages whose filter holds one term only the client can decide (an RLIKE: RE2 runs in the
client; a non-ASCII ILIKE; a numeric comparison on a tag) over a key or the trace ids, when
that term matches many traces: rather than read every id or value of the partition to find
its matches, the rest of the filter is walked in the page's order a batch of candidates a
call, each candidate's register tested in the client, until the page is full.

A term that matches few traces is left to the usual way (every id or value read once, the
matches planned as a set): walking would test most of the partition; unless the rest of the
filter itself holds at most :data:`SPARSE_ROWS` traces, found by one call.  The probe's sample
(256 ids, or 256 values with their trace counts) tells which.  A walk that meets far fewer
matches than the sample promised stops after :data:`MAX_CANDIDATES` and the page is found
the usual way.

Consistency: as steps (query/pages.py): each call sees the state at its time, and a row's
hash is read after the call that matched it (a trace changed since shows its new state, one
deleted since is left out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import redis

from tracetags import functions
from tracetags.connections import SyncClient
from tracetags.keys import Keys, split_register
from tracetags.query import budget, pages
from tracetags.query.logical import (
    LAnd,
    LConst,
    LIdMatch,
    LMatch,
    LogicalNode,
    LValues,
    leaves,
)
from tracetags.query.probe import reply_text

__all__ = ["MAX_CANDIDATES", "MIN_SHARE", "client_term", "residual_page"]

#: The share of a partition's traces the term must match (by the sample) for a walk.
MIN_SHARE: Final = 0.05
#: Ids or values in the sample.
SAMPLE: Final = 256
#: A key of at most FEW_VALUES distinct values in every partition, of which the sample finds
#: at most FEW_MATCHED matching, is read whole by the probe (one call), which resolves the
#: term to a few value sets: no walk ('metadata.m0_6 RLIKE ...' matching 1 of 6 values is
#: one chunked set).  Many matching values stay a walk: as value sets
#: they are tested one by one, which the walk does in the page's order anyway.
FEW_VALUES: Final = 1_000
FEW_MATCHED: Final = 16
#: A partition's walk gives up past this many candidates tested (the term matched far
#: fewer of the rest's traces than the sample said).
MAX_CANDIDATES: Final = 20_000
#: A term the sample says is sparse: the rest's first candidates, one call; a rest this
#: small is the whole answer (the term tested on each), else the usual way.
SPARSE_ROWS: Final = 512
#: That one call's deadline, in microseconds.
SPARSE_BUDGET_US: Final = 2_000
#: Rows a call walks: the first call enough for the page at the sampled share (times
#: BATCH_SLACK), within these bounds; each further call twice the last.
BATCH_MIN: Final = 64
BATCH_MAX: Final = 4096
BATCH_SLACK: Final = 1.5
_ENCODER: Final = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class _Term:
    rest: LogicalNode
    field: str
    matches: Callable[[str | None], bool]
    leaf: LIdMatch | LMatch
    #: Other client-only terms beside an id term, left to the rest: the probe reads their
    #: keys' values whole, which is cheap while the keys have few (checked by _share).
    few: tuple[LMatch, ...] = ()


def _client_only(leaf: object) -> bool:
    """A term whose matches the probe finds by reading every id or value of the key."""
    if isinstance(leaf, LIdMatch):
        return leaf.lua is None and leaf.prefixes is None and leaf.suffixes is None
    if isinstance(leaf, LMatch):
        return (
            leaf.lua is None
            and leaf.runs is None
            and leaf.alts is None
            and leaf.index.kind in ("tag", "metadata", "client_request_id")
        )
    return False


def _term(root: LogicalNode) -> _Term | None:
    """The filter as (one client-only term) AND (the rest), when it has that shape."""
    children = list(root.children) if isinstance(root, LAnd) else [root]
    found = [c for c in children if _client_only(c)]
    ids = [c for c in found if isinstance(c, LIdMatch)]
    if len(found) == 1:
        leaf = found[0]
    elif len(ids) == 1:
        leaf = ids[0]  # reading every id costs far more than the values of a small key
    else:
        return None
    few = tuple(c for c in found if c is not leaf and isinstance(c, LMatch))
    others = [c for c in children if c is not leaf]
    inside = [c for c in others if all(c is not f for f in few)]
    if any(_client_only(x) for c in inside for x in leaves(c)):
        return None  # another such term inside: every id or value is read anyway
    if isinstance(leaf, LMatch) and any(
        isinstance(c, LMatch | LValues) and c.index == leaf.index for c in others
    ):
        return None  # the probe merges the terms on one key into the few values of both
    if not others:
        rest: LogicalNode = LConst(True, "every trace")
    else:
        rest = others[0] if len(others) == 1 else LAnd(tuple(others))
    assert isinstance(leaf, LIdMatch | LMatch)
    if isinstance(leaf, LIdMatch):
        test = leaf.predicate
        return _Term(rest, "i", lambda raw: raw is not None and test(raw), leaf, few)
    predicate, negated = leaf.predicate, leaf.negated

    def matches(raw: str | None) -> bool:
        if raw is None:
            return False
        value = split_register(raw)[1]
        return value is not None and predicate(value) != negated

    return _Term(rest, leaf.index.hash_field, matches, leaf)


def client_term(root: LogicalNode) -> str | None:
    """The text of the term a page of ``root`` may test in the client during a walk."""
    term = _term(root)
    return None if term is None else term.leaf.text


def _share(client: SyncClient, keys: Keys, partitions: int, term: _Term) -> tuple[float, int, int]:
    """The share of the traces the term matches, by a sample of each partition; the most
    distinct values the key has in a partition, and the most sampled values that match in
    a partition (0 and 0 for the ids; past :data:`FEW_VALUES` values when a key of the
    term's ``few`` has more)."""
    pipe = client.pipeline(transaction=False)
    leaf = term.leaf
    for p in range(partitions):
        for other in term.few:
            pipe.zcard(other.index.distinct(keys, p))
        pipe.hlen(keys.trace_ids(p))
        if isinstance(leaf, LIdMatch):
            pipe.hrandfield(keys.trace_ids(p), SAMPLE)
        else:
            dkey = leaf.index.distinct(keys, p)
            pipe.zcard(dkey)
            pipe.zrandmember(dkey, SAMPLE, withscores=True)
    replies = pipe.execute()
    traces = matched = 0.0
    most = most_hits = 0
    step = (2 if isinstance(leaf, LIdMatch) else 3) + len(term.few)
    for start in range(0, len(replies), step):
        at = start + len(term.few)
        most = max([most, *(int(n) for n in replies[start:at])])
        total = int(replies[at])
        traces += total
        if isinstance(leaf, LIdMatch):
            ids = [reply_text(i) for i in replies[at + 1] or []]
            if ids:
                matched += total * sum(1 for i in ids if leaf.predicate(i)) / len(ids)
            continue
        values, sample = int(replies[at + 1]), _pairs(replies[at + 2])
        most = max(most, values)
        if sample:
            weights = [float(s) for v, s in sample if leaf.predicate(v) != leaf.negated]
            most_hits = max(most_hits, len(weights))
            matched += sum(weights) / len(sample) * values
    return (matched / traces if traces else 0.0), most, most_hits


def _pairs(reply: Any) -> list[tuple[str, float]]:
    if not reply:
        return []
    if isinstance(reply[0], list | tuple):  # RESP3: [[value, score], ...]
        return [(reply_text(v), float(s)) for v, s in reply]
    return [(reply_text(v), float(s)) for v, s in zip(reply[::2], reply[1::2], strict=True)]


def residual_page(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    prepared: Any,
    max_results: int,
    cursor: list[list[Any]] | None,
    budget_ms: int,
    cursor_of: Callable[[pages.RawTrace], list[list[Any]]],
    make_plans: Callable[..., list[Any]],
) -> list[tuple[int, list[pages.RawTrace]]] | None:
    """Each partition's ``(matches found, hashes shown)`` for the page, walking the rest of
    the filter and testing the term in the client; None when the filter has no such term,
    the term matches few traces, or a walk gave up (then the page is found the usual way)."""
    term = _term(prepared.root)
    if term is None:
        return None
    try:
        share, values, hits = _share(client, keys, partitions, term)
    except redis.ResponseError:
        return None
    if isinstance(term.leaf, LMatch) and values <= FEW_VALUES and hits <= FEW_MATCHED:
        return None  # the probe reads every value at once: the term becomes a few value sets
    if term.few and values > FEW_VALUES:
        return None  # another term's key has many values: every value is read anyway
    need = max_results + 1
    sparse = share < MIN_SHARE
    # A sparse term: one call of SPARSE_ROWS candidates of the rest, in case the rest is
    # that small (then the whole answer); else the usual way.
    first = SPARSE_ROWS if sparse else int(need / share * BATCH_SLACK)
    cap = SPARSE_ROWS if sparse else MAX_CANDIDATES
    rest = dataclasses.replace(prepared, root=term.rest)
    plans = make_plans(rest, need, cursor)
    budget_us = max(1, budget_ms) * 1000
    if sparse:  # a rest that small is found at once; a larger one must not cost much
        budget_us = min(budget_us, SPARSE_BUDGET_US)
    out: list[tuple[int, list[pages.RawTrace]]] = []
    for plan in plans:
        got = _walk(client, keys, plan, term, need, first, budget_us, cursor_of, cap)
        if got is None:
            return None
        out.append(got)
    return out


def _walk(
    client: SyncClient,
    keys: Keys,
    plan: Any,
    term: _Term,
    need: int,
    first: int,
    budget_us: int,
    cursor_of: Callable[[pages.RawTrace], list[list[Any]]],
    cap: int,
) -> tuple[int, list[pages.RawTrace]] | None:
    query = plan.plan
    cursor = query.cursor
    batch = min(max(first, BATCH_MIN), BATCH_MAX)
    matched: list[pages.RawTrace] = []
    tested = 0
    field = term.field
    while len(matched) < need:
        call = msgspec.structs.replace(
            query,
            limit=batch,
            shown=batch,
            cursor=cursor,
            keys_only=True,
            row_fields=[field],
            deadline=budget.call_deadline_us(budget_us),
        )
        encoded = _ENCODER.encode(call)
        (raw,) = functions.query_partitions(client, keys, [(plan.partition, encoded)])
        found, rows = pages.PAGE_DECODER.decode(raw)
        if found < 0:  # past the deadline: smaller calls, or the usual way
            if batch <= BATCH_MIN or cap <= SPARSE_ROWS:
                return None  # (a sparse term's one look at the rest is over)
            batch = max(BATCH_MIN, batch // 4)
            continue
        matched.extend(row for row in rows if term.matches(pages.row_field(row, field)))
        tested += len(rows)
        if found < batch or not rows:
            break
        if tested >= cap and len(matched) < need:
            return None
        cursor = cursor_of(rows[-1])
        batch = min(batch * 2, BATCH_MAX)
    per_call = max(50, budget_us // pages.HASH_US)
    hashes = pages.read_hashes(client, keys, plan.partition, matched[: need - 1], per_call)
    # (found: one more than shown when the partition has more matches)
    return len(hashes) + (len(matched) >= need), hashes
