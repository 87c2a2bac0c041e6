"""The call budget of counts and stats: a plan whose work would hold Redis long runs as a
budgeted scan over several ``tt_query`` calls, each within ``query_call_budget_ms``.

A scan tests the traces of a partition in trace-number order (or the members of its one
chunked source), from a cursor, until the call's budget is spent; the reply carries the
next cursor.  Each round pipelines one call per unfinished partition, so no call holds Redis
for longer than the budget (plus one batch), whatever the filter or the number of traces
(docs/limits.md states the consistency: not a snapshot, each trace counted once).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

import msgspec

from tracetags import functions
from tracetags.connections import SyncClient
from tracetags.keys import Keys
from tracetags.query.plan import QueryPlan, Spec
from tracetags.query.strategy import PartitionPlan
from tracetags.query.strategy import _value_fields as value_fields_of

__all__ = [
    "DEFAULT_CALL_BUDGET_MS",
    "SCAN_WORK_MIN",
    "VALUES_WINDOW",
    "ZRANGE_WINDOW",
    "estimated_work",
    "rest_of_values",
    "rest_of_zrange",
    "scanned",
    "scans",
]

DEFAULT_CALL_BUDGET_MS: Final = 20
#: A count or stats plan expected to make at least this many leaf tests (candidates times
#: the leaves each is tested against) runs as a budgeted scan: ~0.5-1 us a test puts it at
#: the edge of one call's budget.
SCAN_WORK_MIN: Final = 30_000
#: The distinct values a pattern is matched against are read this many per call: a LIKE
#: that is not sought by its start (values tested in Lua, ~1 us each), and ILIKE, RLIKE
#: and numeric comparisons on tags (a ZRANGE WITHSCORES window).
VALUES_WINDOW: Final = 5_000
ZRANGE_WINDOW: Final = 20_000
_ENCODER: Final = msgspec.msgpack.Encoder()
_VALUES_DECODER: Final = msgspec.msgpack.Decoder(tuple[int, list[str | float | bool], int])


def _leaves(spec: Spec) -> int:
    if isinstance(spec, list) and spec and spec[0] in ("&", "|", "!"):
        return sum(_leaves(child) for child in spec[1:])
    return 1


def estimated_work(plan: PartitionPlan) -> float:
    """Leaf tests the plan's one call would make: its candidates times the leaves each is
    tested against (values of a wide IN count once: they are tested by one lookup)."""
    query = plan.plan
    candidates = plan.tree.cost if query.sources else float(plan.total)
    if candidates == float("inf"):
        candidates = float(plan.total)
    tests = _leaves(query.residual if query.sources else query.expr)
    if query.mode == "stats":
        # A match costs a stats far more than a leaf test: its duration, its group values
        # (HMGET) and its group's entry, then its row in the reply.
        tests += _STATS_MATCH * (1 + len(query.group or ()))
    return candidates * tests


#: Work units (leaf tests) of one match of a stats, and of each of its group fields.
_STATS_MATCH = 8
#: Work units of one combination of values a count by set algebra visits (a few calls).
_ALGEBRA_COMBINATION = 20


def _algebra_work(terms: list[list[Any]]) -> float:
    """A count by set algebra visits, per conjunction, every combination of the values of
    its value leaves (a LIKE of 6,000 values: 6,000 set intersections)."""
    work = 0.0
    for term in terms:
        combinations = 1.0
        for leaf in term[1:]:
            if isinstance(leaf, list) and leaf and leaf[0] == "V":
                combinations *= max(1, len(leaf) - 3)
        work += combinations * _ALGEBRA_COMBINATION
    return work


def scans(plan: PartitionPlan) -> bool:
    """Whether the plan runs as a budgeted scan: a count that tests candidates or a stats
    expected to make more than SCAN_WORK_MIN leaf tests, or a count by set algebra of as
    much work (then the scan replaces it: its exact part is not added)."""
    if plan.strategy == "algebra" and plan.plan.terms is not None:
        return _algebra_work(plan.plan.terms) >= SCAN_WORK_MIN
    return plan.strategy in ("count", "stats") and estimated_work(plan) >= SCAN_WORK_MIN


def _one_value_source(sources: Sequence[Spec]) -> bool:
    if len(sources) != 1:
        return False
    kind = sources[0][0]
    return kind == "C" or (kind == "V" and len(sources[0]) == 4)


def _scan_plan(
    plan: QueryPlan, start: int, budget_us: int, fields: dict[str, str] | None, bare: bool
) -> QueryPlan:
    if bare:
        plan = msgspec.structs.replace(plan, sources=[], residual=plan.expr)
    return msgspec.structs.replace(plan, scan=[start, budget_us], terms=None, value_fields=fields)


def scanned(
    client: SyncClient, keys: Keys, plans: Sequence[PartitionPlan], budget_ms: int
) -> Iterator[Any]:
    """Run ``plans`` as budgeted scans; yield each call's payload (a count, or stats rows)
    as it arrives, round after round, until every partition is done."""
    cursors = {i: 0 for i in range(len(plans))}
    # A value leaf of many values is tested by each candidate's register: its member table
    # would be read again by every call of the scan.
    fields = [value_fields_of(plan.tree, {}) or None for plan in plans]
    # A scan enumerates the plan's one source only when it is one value set (maybe a
    # chunked one); else every trace, and the sources and residual need not travel.
    bare = [not _one_value_source(plan.plan.sources) for plan in plans]
    budget_us = max(1, budget_ms) * 1000
    while cursors:
        running = sorted(cursors)
        encoded = [
            (
                plans[i].partition,
                _ENCODER.encode(
                    _scan_plan(plans[i].plan, cursors[i], budget_us, fields[i], bare[i])
                ),
            )
            for i in running
        ]
        replies = functions.query_partitions(client, keys, encoded)
        for i, raw in zip(running, replies, strict=True):
            next_from, payload = int(raw[0]), raw[1]
            if next_from < 0:
                del cursors[i]
            else:
                cursors[i] = next_from
            yield payload


def rest_of_zrange(client: SyncClient, key: str) -> list[Any]:
    """The (value, score) pairs of the zset ``key`` after its first ZRANGE_WINDOW, a window
    per call.  Ranks move when values come and go between calls: a value may be missed or
    read twice (the planner keeps one of each)."""
    out: list[Any] = []
    start = ZRANGE_WINDOW
    while True:
        got = client.zrange(key, start, start + ZRANGE_WINDOW - 1, withscores=True)
        out.extend(got)
        if len(got) < ZRANGE_WINDOW:
            return out
        start += ZRANGE_WINDOW


def rest_of_values(
    client: SyncClient,
    keys: Keys,
    partition: int,
    dkey: str,
    args: Sequence[Any],
    first_rank: int,
) -> list[str | float | bool]:
    """The flat [value, count, ...] of a LIKE's values from rank ``first_rank`` on, a
    VALUES_WINDOW per ``tt_query`` call (``args``: the probe's runs and lead)."""
    from tracetags.query.plan import ValuesPlan

    out: list[str | float | bool] = []
    rank = first_rank
    while rank >= 0:
        plan = ValuesPlan(dkey=dkey, runs=args[0], lead=args[1], window=[rank, VALUES_WINDOW])
        (reply,) = functions.query_partitions(client, keys, [(partition, _ENCODER.encode(plan))])
        _, flat, rank = _VALUES_DECODER.decode(reply)
        out.extend(flat)
    return out
