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
from tracetags.errors import QueryLimitError
from tracetags.keys import Keys
from tracetags.query.plan import QueryPlan, Spec
from tracetags.query.strategy import PartitionPlan
from tracetags.query.strategy import _value_fields as value_fields_of

__all__ = [
    "DEFAULT_CALL_BUDGET_MS",
    "SCAN_PLAN_MAX_BYTES",
    "SCAN_WORK_MIN",
    "VALUES_WINDOW",
    "ZRANGE_WINDOW",
    "ValueWindows",
    "call_deadline_us",
    "check_scan_size",
    "estimated_work",
    "one_value_source",
    "resourced",
    "rest_of_values",
    "rest_of_zrange",
    "scan_plan",
    "scanned",
    "scans",
    "windowed",
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


def one_value_source(sources: Sequence[Spec]) -> bool:
    """Whether a scan may enumerate the one source instead of every trace: a key's chunked
    set, a value leaf of a few values, or a LIKE sought by its lead (tt_query falls back to
    every trace when the values it finds are not all chunked sets)."""
    if len(sources) != 1:
        return False
    kind = sources[0][0]
    return kind in ("C", "L") or (kind == "V" and len(sources[0]) - 3 <= functions.SCAN_UNION_MAX)


def scan_plan(
    plan: QueryPlan, start: int, budget_us: int, fields: dict[str, str] | None, bare: bool
) -> QueryPlan:
    """``plan`` as one call of a scan from trace number ``start`` (``bare``: of every trace,
    testing the whole filter)."""
    if bare:
        # (with no sources tt_query tests expr: a copy as the residual would only be unpacked)
        plan = msgspec.structs.replace(plan, sources=[], residual=["A"])
    return msgspec.structs.replace(
        plan, scan=[start, budget_us], terms=None, value_fields=fields, deadline=None
    )


def call_deadline_us(budget_us: int) -> int:
    """The deadline of a call that is not budgeted by itself (a page, a window of values, a
    count or stats that is not a scan): its budget (the tests make it tiny, so that every
    such call gives up and the budgeted ways answer)."""
    return budget_us


#: A plan whose one source is a value leaf of at least this many values (an IN list, the
#: values a pattern matches) runs by windows of its values rather than by a scan of every
#: trace; the first window and the largest (windows double while calls finish).
WINDOW_MIN_VALUES: Final = 64
FIRST_WINDOW: Final = 512
MAX_WINDOW: Final = 4_096


def _many_values(spec: Spec) -> bool:
    return spec[0] == "V" and len(spec) - 3 >= WINDOW_MIN_VALUES


def windowed(plan: QueryPlan) -> bool:
    """Whether ``plan`` runs by windows of its one source's values."""
    return len(plan.sources) == 1 and _many_values(plan.sources[0])


def resourced(plan: QueryPlan) -> QueryPlan:
    """``plan`` with its filter's largest value leaf of many values as its one source when
    that leaf is a conjunct (so that it runs by windows, and no call reads all its values);
    else ``plan`` itself."""
    if windowed(plan):
        return plan
    expr = plan.expr
    children = expr[1:] if expr[0] == "&" else [expr]
    leaves = [c for c in children if _many_values(c)]
    if not leaves:
        return plan
    leaf = max(leaves, key=len)
    rest = [c for c in children if c is not leaf]
    residual = ["A"] if not rest else rest[0] if len(rest) == 1 else ["&", *rest]
    return msgspec.structs.replace(plan, sources=[leaf], residual=residual)


#: A scan's plan larger than this (its value leaves of ~30,000 values in all) would spend a
#: call's budget reading them in every call: such a filter is refused (QueryLimitError).
SCAN_PLAN_MAX_BYTES: Final = 512 * 1024


def check_scan_size(encoded: bytes) -> None:
    """Refuse a scan whose every call would spend its budget reading the plan's values."""
    if len(encoded) > SCAN_PLAN_MAX_BYTES:
        raise QueryLimitError(
            f"the filter's patterns or IN lists hold {len(encoded) // 1024:,} KB of values"
            " outside a conjunction, more than a budgeted call can read"
            f" ({SCAN_PLAN_MAX_BYTES // 1024:,} KB); narrow the patterns or split the query"
        )


class ValueWindows:
    """The windows of a plan's one value source: each window is the plan with its source
    (and filter) cut to a window of the values, run as one call with a deadline.  A trace
    holds one value of a key, so the windows' candidates are disjoint and their matches
    together are the plan's: counts add up, stats groups merge, pages merge.

    Iterate for the window plans; after each call, ``finished()``, or ``gave_up()`` (the
    window shrinks to a quarter and comes again; False for a window of one value, which
    the caller then scans, and marks finished)."""

    def __init__(self, plan: QueryPlan, deadline_us: int) -> None:
        source = plan.sources[0]
        self.head, self.values = source[:3], source[3:]
        self.plan, self.deadline_us = plan, deadline_us
        self.at, self.size, self.taken = 0, FIRST_WINDOW, 0

    def __iter__(self) -> Iterator[QueryPlan]:
        while self.at < len(self.values):
            leaf = self.head + self.values[self.at : self.at + self.size]
            self.taken = len(leaf) - 3
            yield msgspec.structs.replace(
                self.plan,
                expr=["&", leaf, self.plan.residual],
                sources=[leaf],
                terms=None,
                scan=None,
                deadline=self.deadline_us,
            )

    def finished(self) -> None:
        self.at += self.taken
        self.size = min(2 * self.size, MAX_WINDOW)

    def gave_up(self) -> bool:
        if self.taken > 1:
            self.size = max(1, self.taken // 4)
            return True
        return False


def scanned(
    client: SyncClient, keys: Keys, plans: Sequence[PartitionPlan], budget_ms: int
) -> Iterator[Any]:
    """Run ``plans`` in budgeted calls; yield each call's payload (a count, or stats rows)
    as it arrives: by windows of values (a plan whose one source is a value leaf of many
    values), else as budgeted scans, round after round, until every partition is done."""
    budget_us = max(1, budget_ms) * 1000
    scans: list[tuple[int, QueryPlan, dict[str, str] | None]] = []
    for plan in plans:
        # A value leaf of many values is tested by each candidate's register: its member
        # table would be read again by every call of the scan.
        fields = value_fields_of(plan.tree, {}) or None
        query = resourced(plan.plan)
        if not windowed(query):
            scans.append((plan.partition, query, fields))
            continue
        windows = ValueWindows(query, call_deadline_us(budget_us))
        for window in windows:
            (raw,) = functions.query_partitions(
                client, keys, [(plan.partition, _ENCODER.encode(window))]
            )
            if isinstance(raw, int) and raw == -1:
                if windows.gave_up():
                    continue
                # one value too dense for a call: scan its set
                yield from _scan_rounds(client, keys, [(plan.partition, window, fields)], budget_us)
            else:
                yield raw
            windows.finished()
    yield from _scan_rounds(client, keys, scans, budget_us)


def _scan_rounds(
    client: SyncClient,
    keys: Keys,
    plans: Sequence[tuple[int, QueryPlan, dict[str, str] | None]],
    budget_us: int,
) -> Iterator[Any]:
    cursors = {i: 0 for i in range(len(plans))}
    # A scan enumerates the plan's one source only when it is one value set (maybe a
    # chunked one); else every trace, and the sources and residual need not travel.
    bare = [not one_value_source(plan.sources) for _, plan, _ in plans]
    while cursors:
        running = sorted(cursors)
        encoded = [
            (
                plans[i][0],
                _ENCODER.encode(
                    scan_plan(plans[i][1], cursors[i], budget_us, plans[i][2], bare[i])
                ),
            )
            for i in running
        ]
        for _, plan_bytes in encoded:
            check_scan_size(plan_bytes)
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
) -> tuple[list[str | float | bool], bool]:
    """The flat [value, count, ...] of a LIKE's values from rank ``first_rank`` on, a
    VALUES_WINDOW per ``tt_query`` call (``args``: the probe's runs, lead and alts), and
    whether they are only the values starting with an alt (not every value of the key)."""
    from tracetags.query.plan import ValuesPlan

    out: list[str | float | bool] = []
    rank = first_rank
    sought = False
    while rank >= 0:
        plan = ValuesPlan(
            dkey=dkey, runs=args[0], lead=args[1], window=[rank, VALUES_WINDOW], alts=args[2]
        )
        (reply,) = functions.query_partitions(client, keys, [(partition, _ENCODER.encode(plan))])
        flag, flat, rank = _VALUES_DECODER.decode(reply)
        sought = sought or flag == 1
        out.extend(flat)
    return out, sought
