"""Pages ordered by request_id: walk the byte order of the trace ids, or collect and sort.

The fold keeps each partition's trace ids in byte order, cut into buckets of a few hundred
trace numbers (``<prefix>:ri``, see ``functions/lua/id_order.lua``).  A page whose first
order key is ``request_id`` can visit those buckets from the cursor, test each bucket's
traces against the filter and stop when the page is full, instead of reading the id of
every match and sorting them all.  It wins when the matches are dense enough that a few
buckets fill the page; a selective filter is cheaper to collect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tracetags.query import costs
from tracetags.query.ast import Field, OrderKey
from tracetags.query.costs import COSTS
from tracetags.query.physical import PNode

__all__ = ["choose", "orders_by_id"]

_REQUEST_ID = Field(entity="attribute", key="request_id")


def orders_by_id(order: Sequence[OrderKey]) -> bool:
    return bool(order) and order[0].field == _REQUEST_ID


def choose(
    tree: PNode, total: int, limit: int, candidates: float, *, from_range: bool
) -> tuple[int, str, bool] | None:
    """(bucket budget, reason, over a table) when walking the id buckets beats collecting,
    else None.  Over a table: the matches are collected first and each visited bucket's
    traces looked up among them, so only the matches the walk reaches have their id read
    (a collect reads every match's id to sort them); else each bucket's traces are tested
    against the filter."""
    if total <= 0 or tree.est <= 0:
        return None
    entries = min(float(total), limit * total / tree.est)
    buckets = entries / COSTS.id_bucket_size + 1
    walk = buckets * COSTS.id_bucket_visit + entries + min(tree.est, entries) * COSTS.id_match
    gather = costs.collect_cost(candidates, tree.est, total, from_range=from_range)
    collect = gather + COSTS.collect_id_read * tree.est
    # the matches in the buckets visited (the page, up to a bucket's worth more)
    reached = min(tree.est, buckets * COSTS.id_bucket_size * tree.est / total)
    table = (
        gather
        + buckets * COSTS.id_bucket_visit
        + entries * COSTS.id_table_lookup
        + reached * COSTS.id_match
    )
    over_table = table < walk * COSTS.id_walk_margin
    best = table if over_table else walk * COSTS.id_walk_margin
    if best >= collect:
        return None
    budget = max(8, math.ceil(3 * buckets))
    cost = table if over_table else walk
    how = (
        f"looked up among the {candidates:,.0f} candidates' matches collected first"
        if over_table
        else "tested against the filter"
    )
    reason = (
        f"walk the trace ids in byte order, bucket by bucket, each bucket's traces {how}:"
        f" ~{tree.est:,.0f} of {total:,} traces match, so ~{buckets:,.0f} bucket(s) of"
        f" ~{COSTS.id_bucket_size} fill {limit} rows (cost ~{cost:,.0f}; past"
        f" {budget} buckets tt_query collects instead), cheaper than collecting and sorting"
        f" the {candidates:,.0f} candidates by id (cost ~{collect:,.0f})"
    )
    return budget, reason, over_table
