"""Pages within the call budget: a page call that would hold Redis past the budget gives up,
and the page is then found in several calls, each within the budget.

Every page call carries a deadline: a page's one call, and its steps, twice
``query_call_budget_ms`` (a collect or walk a little past the budget would else fall to a
scan), the budgeted ways' calls the budget.  tt_query checks the clock as it goes
(lua/prelude.lua, ``with_deadline``) and, past it, replies that it gave up; the
partition's page is then found in **steps** (the same plan for a few rows at a time, each
call from the previous call's last row, as a page token's next page is: the page's own
walk cut into calls), and when steps give up too (sparse matches) by one of two budgeted
ways, and the calls' pages merged:

- **value windows**: a page whose candidates come from one value leaf of many values (an
  ``IN`` list, the values a pattern matches) collects the candidates of a window of values
  per call (windows grow while calls finish, shrink when one gives up); a trace holds one
  value of a key, so the windows' matches are disjoint and their union is the page's;
- **a scan**: the traces of the partition (or of its one chunked source) are tested in
  number order from a cursor until the budget is spent; each call replies the first rows of
  its matches after the page cursor, and where the next call starts.

The calls reply their rows by order fields only; the client merges them (keeping the first
``limit``), then reads the page's hashes, a budget's worth (HASH_US each) a call.

Consistency: not a snapshot (as budgeted counts, docs/limits.md): a trace created, changed
or deleted between two calls is seen as it is when its window or chunk is reached.  A trace
met twice (its value changed between two windows) is kept once.  A row's hash is read after
the call that matched it: a trace changed since shows its new state, one deleted since is
left out of the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from tracetags import functions
from tracetags.connections import SyncClient
from tracetags.keys import Keys
from tracetags.query import budget
from tracetags.query.plan import QueryPlan, RowsPlan
from tracetags.query.strategy import PartitionPlan
from tracetags.query.strategy import _value_fields as value_fields_of

__all__ = ["HASH_US", "PAGE_DECODER", "RawTrace", "read_hashes", "row_field", "run_pages"]

RawTrace = list[str]
#: A page plan larger than this (encoded; a value leaf of ~20,000 values) is not tried in
#: one call: unpacking it alone would take much of the budget.
DIRECT_PLAN_MAX_BYTES: Final = 256 * 1024
_ENCODER: Final = msgspec.msgpack.Encoder()
#: tt_query's page reply: (rows found, the flat hash, or key row, of each row shown).
PAGE_DECODER: Final = msgspec.msgpack.Decoder(tuple[int, list[RawTrace]])
#: The walks a page plan may name: a budgeted way collects instead.
_NO_WALK: Final[dict[str, Any]] = {
    "walk": None,
    "chunk_walk": None,
    "id_walk": None,
    "id_table": False,
    "walk_values": None,
    "walk_next": None,
    "walk_budget": None,
    "density": None,
}


def run_pages(
    client: SyncClient,
    keys: Keys,
    plans: Sequence[PartitionPlan],
    order_key: Callable[[RawTrace], Any],
    budget_ms: int,
    cursor_of: Callable[[RawTrace], list[list[Any]]] | None = None,
    listed: Callable[[int], PartitionPlan | None] | None = None,
) -> list[tuple[int, list[RawTrace]]]:
    """Each partition's page reply ``(rows found, hashes shown)``: one pipelined call per
    partition with the deadline, then, for the partitions that gave up, steps (with
    ``cursor_of``: a row's position as a plan cursor), then the page planned again with
    its patterns' values listed (``listed(i)``, when it gives a plan) and else the
    budgeted ways (``order_key``: a row's sort key in the page's order)."""
    budget_us = max(1, budget_ms) * 1000
    # The one call of a page may take twice the budget (still within the longest a command
    # may hold Redis): a collect or a walk a little past the budget would else fall to
    # steps and a budgeted scan of the whole partition.
    deadline = budget.call_deadline_us(FIRST_CALL_FACTOR * budget_us)
    encoded = [
        (p.partition, _ENCODER.encode(msgspec.structs.replace(p.plan, deadline=deadline)))
        for p in plans
    ]
    # (a partition whose probe proved it holds no match is not called: one round trip less
    # for a page of nothing, say an id that does not exist)
    direct = [
        i
        for i, (_, plan) in enumerate(encoded)
        if len(plan) <= DIRECT_PLAN_MAX_BYTES and plans[i].tree.kind != "Z"
    ]
    raws = functions.query_partitions(client, keys, [encoded[i] for i in direct]) if direct else []
    replies: list[tuple[int, list[RawTrace]]] = [
        (0, []) if p.tree.kind == "Z" else (-1, []) for p in plans
    ]
    for i, raw in zip(direct, raws, strict=True):
        replies[i] = PAGE_DECODER.decode(raw)
    for i, (found, _) in enumerate(replies):
        if found >= 0:
            continue
        # A walk testing each candidate's value gave up: with few matches expected, the
        # page is planned with the values listed (value sets), whose windows are collected
        # at once (the matches may gather where the walk reaches last); with many, steps
        # first, and the listed plan's windows only if they give up too.
        few = plans[i].tree.est <= LISTED_FIRST_MAX
        other = listed(i) if listed is not None and few else None
        if other is not None and other.tree.est <= LISTED_FIRST_MAX:
            replies[i] = _budgeted_page(client, keys, other, order_key, budget_us)
            continue
        if (
            cursor_of is not None
            and len(encoded[i][1]) <= DIRECT_PLAN_MAX_BYTES
            and found != GAVE_UP_COLLECTING
        ):
            # Steps cut a walk into calls; a collect reads every candidate whatever the rows
            # asked (fewer rows only spare hashes and sorting): one step that gives up too
            # says the rest would, and a call that gave up collecting (a walk that
            # abandoned for its collect, say) is not stepped at all.
            give_ups = 1 if plans[i].strategy == "collect" else MAX_STEP_GIVE_UPS
            # (a step has the first call's deadline: a page whose walk needs a little more
            # than one call finds 16 rows a call where the budget alone would give up again
            # and leave a budgeted scan of every trace)
            replies[i] = _stepped_page(
                client, keys, plans[i], cursor_of, FIRST_CALL_FACTOR * budget_us, give_ups
            )
        if replies[i][0] < 0:
            if other is None and listed is not None and not few:
                other = listed(i)
            replies[i] = _budgeted_page(client, keys, other or plans[i], order_key, budget_us)
    return replies


#: tt_query's page reply past the deadline while collecting every candidate (-1: past it
#: elsewhere): a call for fewer rows would collect them all again.
GAVE_UP_COLLECTING: Final = -2
#: A page's one call, and each of its steps, has this many times the call budget as its
#: deadline (the budgeted ways' calls, the budget).
FIRST_CALL_FACTOR: Final = 2
#: A listed plan (see run_pages) expecting at most this many matches is collected at once,
#: before any step: a budgeted collect of value windows reads ~1,000 traces a millisecond.
LISTED_FIRST_MAX: Final = 20_000
#: The rows of a step's first call (a page that gave up in one call is then found a few
#: rows a call, from the last row's position, as the next pages of a page token are).
FIRST_STEP_ROWS: Final = 16
#: Steps end (the budgeted ways take over) after this many calls in a row give up: the
#: matches are then sparse, and each step would walk as far as the whole page.
MAX_STEP_GIVE_UPS: Final = 2


def _stepped_page(
    client: SyncClient,
    keys: Keys,
    plan: PartitionPlan,
    cursor_of: Callable[[RawTrace], list[list[Any]]],
    budget_us: int,
    max_give_ups: int = MAX_STEP_GIVE_UPS,
) -> tuple[int, list[RawTrace]]:
    """A page that gave up in one call, found in steps: each call the same plan for a few
    rows after the previous call's last row (its cursor), within the deadline.  A call
    that finds fewer rows than asked ends the page; one that gives up asks a quarter as
    many; two in a row that give up (sparse matches: a gap of non-matching traces longer
    than a call) end the steps (``(-1, [])``: the budgeted ways find the page).  The work is the
    page's own walk, cut into calls, where a budgeted scan tests every trace."""
    query = plan.plan
    limit = query.limit or 0
    shown = query.shown if query.shown is not None else limit
    rows: list[RawTrace] = []
    cursor = query.cursor
    step, gave_up = FIRST_STEP_ROWS, 0
    while len(rows) < limit:
        want = min(step, limit - len(rows))
        deadline = budget.call_deadline_us(budget_us)
        call = msgspec.structs.replace(
            query, limit=want, shown=want, cursor=cursor, deadline=deadline
        )
        (raw,) = functions.query_partitions(client, keys, [(plan.partition, _ENCODER.encode(call))])
        found, got = PAGE_DECODER.decode(raw)
        if found < 0:
            gave_up += 1
            if gave_up == max_give_ups or want == 1 or found == GAVE_UP_COLLECTING:
                return -1, []
            step = max(1, want // 4)
            continue
        gave_up = 0
        rows.extend(got)
        if found < want:
            break
        cursor = cursor_of(got[-1])
        step = min(2 * step, limit)
    return len(rows), rows[:shown]


def _budgeted_page(
    client: SyncClient,
    keys: Keys,
    plan: PartitionPlan,
    order_key: Callable[[RawTrace], Any],
    budget_us: int,
) -> tuple[int, list[RawTrace]]:
    query = plan.plan
    limit = query.limit or 0
    shown = query.shown if query.shown is not None else limit
    # Every call shows all its rows, by their order fields only: the merge decides which
    # make the page, whose hashes are read last.
    fields = value_fields_of(plan.tree, {}) or query.value_fields
    query = msgspec.structs.replace(
        query, shown=limit, deadline=None, keys_only=True, value_fields=fields, **_NO_WALK
    )
    merged = _Merged(order_key, limit)
    query = budget.resourced(query)
    if budget.windowed(query):
        _windows(client, keys, plan.partition, query, budget_us, merged)
    else:
        _scanned(client, keys, plan.partition, query, budget_us, merged)
    rows = merged.rows()
    per_call = max(50, budget_us // HASH_US)
    return len(rows), read_hashes(client, keys, plan.partition, rows[:shown], per_call)


#: Time to read one trace hash (HGETALL of a few dozen registers), in microseconds: a call
#: reads the budget's worth of the page's hashes.
HASH_US: Final = 20


def read_hashes(
    client: SyncClient, keys: Keys, partition: int, rows: Sequence[RawTrace], per_call: int
) -> list[RawTrace]:
    """The hashes of the rows (key rows: their '#' is the trace number), in one pipeline of
    calls of ``per_call``; a trace deleted since it matched is left out."""
    numbers = [int(row_field(row, "#") or 0) for row in rows]
    encoded = [
        (partition, _ENCODER.encode(RowsPlan(numbers=numbers[i : i + per_call])))
        for i in range(0, len(numbers), per_call)
    ]
    out: list[RawTrace] = []
    for raw in functions.query_partitions(client, keys, encoded):
        out.extend(hash_ for hash_ in PAGE_DECODER.decode(raw)[1] if hash_)
    return out


class _Merged:
    """The first ``limit`` key rows seen so far, in order, each trace once (rows are kept
    to twice the limit between prunings)."""

    def __init__(self, order_key: Callable[[RawTrace], Any], limit: int) -> None:
        self.order_key = order_key
        self.limit = limit
        self.kept: dict[str | None, RawTrace] = {}

    def add(self, rows: Sequence[RawTrace]) -> None:
        for row in rows:
            self.kept.setdefault(row_field(row, "i"), row)
        if len(self.kept) > 2 * self.limit:
            self.kept = {row_field(row, "i"): row for row in self.rows()}

    def rows(self) -> list[RawTrace]:
        return sorted(self.kept.values(), key=self.order_key)[: self.limit]


def _windows(
    client: SyncClient,
    keys: Keys,
    partition: int,
    query: QueryPlan,
    budget_us: int,
    merged: _Merged,
) -> None:
    """Merge the rows of the windows of the one source's values (budget.ValueWindows; a
    window of one value that still gives up, a dense one, is scanned)."""
    windows = budget.ValueWindows(query, budget.call_deadline_us(budget_us))
    for window in windows:
        (raw,) = functions.query_partitions(client, keys, [(partition, _ENCODER.encode(window))])
        found, rows = PAGE_DECODER.decode(raw)
        if found < 0:
            if windows.gave_up():
                continue
            _scanned(client, keys, partition, window, budget_us, merged)
        else:
            merged.add(rows)
        windows.finished()


def _scanned(
    client: SyncClient,
    keys: Keys,
    partition: int,
    query: QueryPlan,
    budget_us: int,
    merged: _Merged,
) -> None:
    """Merge the rows of a scan's calls, from trace number 0 until the partition is done."""
    bare = not budget.one_value_source(query.sources)
    start = 0
    while start >= 0:
        scan = budget.scan_plan(query, start, budget_us, query.value_fields, bare)
        encoded = _ENCODER.encode(scan)
        budget.check_scan_size(encoded)
        (raw,) = functions.query_partitions(client, keys, [(partition, encoded)])
        start = int(raw[0])
        merged.add(PAGE_DECODER.decode(raw[1])[1])


def row_field(row: RawTrace, name: str) -> str | None:
    for k in range(0, len(row) - 1, 2):
        if row[k] == name:
            return row[k + 1]
    return None
