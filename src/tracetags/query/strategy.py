"""The strategy of one partition: how tt_query runs its physical plan, and why (for explain).

A page walks an order zset from its end, visits the chunks newest first, walks a string
order key's values, or collects and sorts the candidates, whichever the cost model
(:mod:`tracetags.query.costs`) finds cheapest; a count is known from index sizes, counted
by set algebra, or tested candidate by candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from tracetags.keys import Keys, metadata_field, tag_field
from tracetags.query import costs, group_order, id_walk
from tracetags.query.ast import OrderKey
from tracetags.query.costs import COSTS
from tracetags.query.counts import count_terms
from tracetags.query.logical import PRESENCE_FIELD, ZsetName, order_index, order_zset
from tracetags.query.physical import PNode
from tracetags.query.plan import Mode, OrderSpec, QueryPlan, Spec, Strategy

__all__ = ["PartitionPlan", "order_specs", "plan_partition"]

#: The trace-hash field and comparison kind of each orderable attribute.
_ATTRIBUTE_ORDER: dict[str, tuple[Literal["n", "s", "x"], str]] = {
    "timestamp_ms": ("n", "s"),
    "execution_time_ms": ("n", "d"),
    "end_time_ms": ("n", "E"),
    "status": ("s", "S"),
    "request_id": ("s", "i"),
    "experiment_id": ("x", "e"),
}


def order_specs(order: Sequence[OrderKey]) -> list[OrderSpec]:
    """tt_query's order specs (see :class:`~tracetags.query.plan.OrderSpec`)."""
    specs: list[OrderSpec] = []
    for key in order:
        f = key.field
        kind: Literal["n", "s", "x"]
        if f.entity == "tag":
            kind, code = "s", tag_field(f.key)
        elif f.entity == "metadata":
            kind, code = "s", metadata_field(f.key)
        else:
            kind, code = _ATTRIBUTE_ORDER[f.key]
        specs.append(OrderSpec(kind, code, 1 if key.ascending else 0))
    return specs


def _value_fields(node: PNode, out: dict[str, str]) -> dict[str, str]:
    """The hash field of each V (or L) leaf of many values in ``node``, by distinct zset."""
    values = len(node.spec) - 3 if node.kind == "V" else node.spec[5] if node.kind == "L" else 0
    if node.field is not None and values >= COSTS.register_test_min_values:
        out[node.spec[1]] = node.field
    for child in node.children:
        _value_fields(child, out)
    return out


#: A walk that has tested this many entries without a match gives up (a floor: the
#: entries of a few batches, however dense the matches were expected).
WALK_GIVE_UP_MIN: Final = 1024
#: ... or, past the floor, once it has tested the entries that should have held this many
#: matches: at the planned density, none in them has a chance of e**-8.
WALK_GIVE_UP_MATCHES: Final = 8


def _walk_give_up(scan: float, density: float, collect_cost: float) -> int:
    """The entries a walk tests without a match before it collects instead: none among
    those that should have held :data:`WALK_GIVE_UP_MATCHES` matches says the terms are
    correlated (their intersection is far smaller than the estimate, or lies far along
    the walk); and never past the collect's cost, which the walk has then spent already
    (so a correlated walk costs at most twice the collect)."""
    expected = WALK_GIVE_UP_MATCHES / max(density, 1e-9)
    return math.ceil(max(min(expected, 4 * scan, collect_cost), WALK_GIVE_UP_MIN))


def _conjuncts(tree: PNode) -> list[PNode]:
    return tree.children if tree.kind == "&" else [tree]


def _walk_range(tree: PNode, zset: ZsetName) -> PNode | None:
    """The range leaf on ``zset`` that every match must satisfy (a conjunct), if any."""
    ranges = [c for c in _conjuncts(tree) if c.kind == "R" and c.spec[1] == zset]
    return min(ranges, key=lambda c: c.est) if ranges else None


@dataclass
class PartitionPlan:
    partition: int
    total: int
    tree: PNode
    strategy: Strategy
    reason: str
    plan: QueryPlan
    exact_count: int = 0  # count mode: added to what tt_query returns (all of it for exact)


def plan_partition(
    partition: int,
    tree: PNode,
    total: int,
    *,
    mode: Mode,
    order: Sequence[OrderKey] = (),
    limit: int = 0,
    cursor: list[list[Any]] | None = None,
    group_fields: Sequence[str] = (),
    keys: Keys | None = None,
    order_distinct: int | None = None,
    time_bounds: bool = False,
    id_order: bool = False,
) -> PartitionPlan:
    """Choose how to run one partition: the tt_query plan and the reason, for explain.

    ``order_distinct`` is the number of distinct values of the first order key when it is
    a string key with a distinct zset (then ``keys`` is needed to name its sets);
    ``time_bounds`` tells that the partition keeps its chunks' time bounds (tsx);
    ``id_order`` that it keeps its trace ids' byte order (ri).
    """
    sources = tree.sources if tree.sources is not None else []
    if sources and sources[0][0] == "A":
        sources = []
    cost = tree.cost if tree.sources is not None else float(total)
    residual = tree.residual if sources and tree.residual is not None else tree.spec
    source_text = (
        "every trace" if not sources else f"{len(sources)} index source(s) of ~{cost:,.0f} traces"
    )

    def done(strategy: Strategy, reason: str, plan: QueryPlan, exact: int = 0) -> PartitionPlan:
        return PartitionPlan(partition, total, tree, strategy, reason, plan, exact)

    if mode == "count":
        plan = QueryPlan(mode=mode, expr=tree.spec, sources=sources, residual=residual)
        if tree.exact and tree.kind in ("V", "R", "E", "B", "A", "Z", "C"):
            reason = f"exact from index sizes (O(1)): {tree.est:,.0f}"
            return done("exact", reason, plan, int(tree.est))
        algebra = count_terms(tree, total)
        if algebra is not None:
            exact, remote = algebra
            if not remote:
                reason = f"exact from index sizes (set algebra, O(1)): {exact:,}"
                return done("exact", reason, plan, exact)
            plan = QueryPlan(
                mode=mode, expr=tree.spec, sources=sources, residual=residual, terms=remote
            )
            reason = (
                f"set algebra: {exact:,} from index sizes plus {len(remote)} signed"
                " conjunction(s) counted inside Redis (SINTERCARD per chunk of chunked sets;"
                " a plain set or a small range enumerated and tested)"
            )
            return done("algebra", reason, plan, exact)
        reason = f"test the candidates from {source_text} in batches inside Redis"
        return done("count", reason, plan)
    if mode == "stats":
        plan = QueryPlan(
            mode=mode, expr=tree.spec, sources=sources, residual=residual, group=list(group_fields)
        )
        reason = f"aggregate durations (ZMSCORE du) of the matches from {source_text}"
        return done("stats", reason, plan)

    specs = order_specs(order)
    value_fields = _value_fields(tree, {}) or None

    def page(
        *,
        chunk_walk: int | None = None,
        walk: list[str | int] | None = None,
        density: float | None = None,
        walk_values: tuple[str, str, Spec, float, float, int, int] | None = None,
    ) -> QueryPlan:
        return QueryPlan(
            mode=mode,
            expr=tree.spec,
            sources=sources,
            residual=residual,
            order=specs,
            limit=limit,
            time_bounds=time_bounds,  # (walks of value groups may visit chunks too)
            value_fields=value_fields,
            cursor=cursor,
            chunk_walk=chunk_walk,
            walk=walk,
            density=density,
            walk_values=walk_values,
        )

    zset = order_zset(order[0]) if order else None
    null_cursor = cursor is not None and cursor[0][0] == 0
    if zset is not None and not null_cursor:
        est = tree.est
        span = float(total)
        bounded = _walk_range(tree, zset)
        if bounded is not None:
            # Only the ranks of a conjunct range on the walked zset can match: walk them.
            span = bounded.est
        scan = span if est <= 0 else min(span, math.ceil(limit * span / est))
        # Collect grows with the candidates and matches while a walk of the same density
        # does not: a walk wins at scale even when it visits more entries than there are
        # candidates.
        from_range = any(source[0] == "R" for source in sources)
        collect_cost = costs.collect_cost(cost, est, total, from_range=from_range)
        chunk_cost = math.inf
        visits = 0.0
        if time_bounds and zset == "ts" and not order[0].ascending and cursor is None:
            chunk_cost, visits = costs.chunk_walk_cost(tree, total, limit)
        density = min(1.0, est / span) if span > 0 else 1.0
        if chunk_cost < min(scan, collect_cost):
            # Past the budget tt_query gives up and walks (or collects).
            budget = costs.chunk_walk_budget(visits)
            walk: list[str | int] | None = None
            if scan < collect_cost:
                walk = [zset, 0]
                if bounded is not None:
                    walk += bounded.spec[2:4]
            reason = (
                f"walk the chunks newest first (their time bounds): ~{est:,.0f} of {total:,}"
                f" traces match, ~{visits:,.0f} chunks expected (past {budget:,}"
                f" tt_query {'walks ts' if walk is not None else 'collects'} instead);"
                f" intersecting the chunked sets per chunk costs ~"
                f"{chunk_cost:,.0f}, against walking ~{scan:,.0f} ts entries or collecting "
                f"the {cost:,.0f} candidates from {source_text} (cost ~{collect_cost:,.0f})"
            )
            plan = page(
                chunk_walk=budget,
                walk=walk,
                density=None if walk is None else density,
            )
            if walk is not None and sources and cost < total:  # (see the walk below)
                give_up = _walk_give_up(scan, density, collect_cost)
                plan = msgspec.structs.replace(plan, walk_budget=give_up)
            return done("chunk-walk", reason, plan)
        if scan < collect_cost:
            walk = [zset, 1 if order[0].ascending else 0]
            within = ""
            if bounded is not None:
                walk += bounded.spec[2:4]
                within = f" within {bounded.text}"
            reason = (
                f"walk {zset} from the {'low' if order[0].ascending else 'high'} end{within}: "
                f"~{est:,.0f} of {total:,} traces match, so ~{scan:,.0f} entries fill "
                f"{limit} rows, cheaper than collecting the {cost:,.0f} candidates from "
                f"{source_text} (cost ~{collect_cost:,.0f})"
            )
            plan = page(walk=walk, density=density)
            if sources and cost < total:
                # Correlated terms can make the walk far longer than estimated (an empty
                # intersection walks the whole zset): past this, the collect is cheaper.
                give_up = _walk_give_up(scan, density, collect_cost)
                plan = msgspec.structs.replace(plan, walk_budget=give_up)
            return done("walk", reason, plan)
        reason = (
            f"collect and sort: ~{est:,.0f} matches expected, the smallest source gives "
            f"{cost:,.0f} candidates (cost ~{collect_cost:,.0f}), cheaper than walking "
            f"~{scan:,.0f} {zset} entries"
        )
        return done("collect", reason, page())
    if id_order and id_walk.orders_by_id(order) and not null_cursor:
        by_id = id_walk.choose(
            tree, total, limit, cost, from_range=any(s[0] == "R" for s in sources)
        )
        if by_id is not None:
            plan = msgspec.structs.replace(page(), id_walk=by_id[0], id_table=by_id[2])
            return done("walk-ids", by_id[1], plan)
    index = order_index(order[0]) if order else None
    walk_values_us = costs.walk_values_cost_us(order_distinct, limit, tree.est, total)
    table_us = costs.table_walk_cost_us(cost, order_distinct, limit, tree.est, total)
    if (
        zset is None
        and index is not None
        and keys is not None
        and order_distinct is not None
        and cost > COSTS.walk_values_page_factor * limit
    ):
        walk_ok = walk_values_us < costs.collect_by_key_us(cost) and (
            # Fewer matches expected than the page holds: the walk cannot stop early and
            # visits every group (the key's traces), where a collect reads the candidates
            # once.
            tree.est >= limit or cost > total / 4
        )
        # A walk over a table of the matches reads the candidates as a collect does, then
        # groups instead of every match's order key (and orders the matches as a collect
        # would when they turn out few): chosen when cheaper than collecting.
        # Not when the groups are large and the next order key nests a walk in each (its
        # own index orders them): the table's candidates would be collected for nothing.
        nested = group_order.walk_next(order, keys, partition)
        large = total > COSTS.table_nested_group_pages * limit * max(order_distinct, 1)
        table_ok = table_us < costs.collect_by_key_us(cost) and not (nested and large)
        table = int(table_ok and (not walk_ok or table_us < walk_values_us))
    else:
        walk_ok = table_ok = False
        nested = None
    if walk_ok or table_ok:
        assert index is not None and keys is not None and order_distinct is not None
        key_set = index.key_set(keys, partition)
        presence = ["C", key_set] if key_set is not None else ["P", PRESENCE_FIELD[index.kind]]
        dkey = index.distinct(keys, partition)
        # A trace of a visited group matches with this chance: of every trace, or of the
        # traces of the values a conjunct keeps of the walked key (a value set, or a LIKE
        # sought by tt_query: the walk skips the groups of the other values)
        pinned = next(
            (c.est for c in _conjuncts(tree) if c.kind in ("V", "L") and c.spec[1] == dkey),
            float(total),
        )
        fraction = min(1.0, tree.est / pinned) if pinned else 0.0
        walk_values = (
            dkey,
            index.value_prefix(keys, partition),
            presence,
            fraction,
            cost,
            total,
            table,
        )
        if table:
            reason = (
                f"walk the {order_distinct:,} distinct values of {index.label} in order, "
                f"each value's set looked up in a table of the matches collected from "
                f"{source_text} (nulls last), until {limit} rows: ~{table_us:,.0f} us, "
                f"cheaper than reading the order key of the {cost:,.0f} candidates "
                f"(~{costs.collect_by_key_us(cost):,.0f} us) or testing each group "
                f"(~{walk_values_us:,.0f} us)"
            )
        else:
            reason = (
                f"walk the {order_distinct:,} distinct values of {index.label} in order, "
                f"each value's set in turn (nulls last), until {limit} rows: cheaper than "
                f"sorting the {cost:,.0f} candidates from {source_text}"
            )
        plan = msgspec.structs.replace(page(walk_values=walk_values), walk_next=nested)
        if sources and cost < total and not table:
            # As a walk's: correlated terms (an empty intersection) would visit every group;
            # past this many traces visited without a match, the collect is cheaper.
            fill = limit * total / max(tree.est, 1.0)
            give_up = math.ceil(max(4 * fill, cost, 1024.0))
            plan = msgspec.structs.replace(plan, walk_budget=give_up)
        return done("walk-values", reason, plan)
    why = "the first order key has no order zset" if zset is None else "the cursor is past it"
    reason = f"collect and sort the matches from {source_text} ({why})"
    return done("collect", reason, page())
