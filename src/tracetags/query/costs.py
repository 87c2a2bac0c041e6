"""The cost model that picks a page's strategy: one table of unit costs and the estimates
built from it (walk an order zset, visit chunks by their time bounds, walk a key's values,
or collect and sort the candidates)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from tracetags.keys import LEX_BUCKET, PLAIN_MAX, SET_CHUNK
from tracetags.query.physical import PNode

__all__ = [
    "COSTS",
    "CostTable",
    "chunk_walk_cost",
    "collect_by_key_us",
    "collect_cost",
    "table_walk_cost_us",
    "walk_values_cost_us",
]


@dataclass(frozen=True, slots=True)
class CostTable:
    """Unit costs of tt_query's ways to run a page.

    How they were measured: TIME marks (``redis.call('TIME')``) around each section of
    ``tt_query`` in a copy of the Function on a private redis-server, over the queries of
    ``benchmarks/bench_query.py`` at 100k and 1M traces; a section's time divided by the
    operations it did (entries walked, candidates tested, sets read, groups visited).
    The first group is in *walked-entry units*: the time of one walked entry of an order
    zset (its share of the ZRANGE reply and a lookup in the chunk intersection of the
    filter's chunked sets).  The walk-values group is in microseconds.  The margins
    (``*_factor``, ``*_min``) are decision thresholds, chosen, not measured.
    """

    # --- walk an order zset against collect-and-sort, in walked-entry units -------------
    #: Collecting a candidate from value or key sets (read and tested chunk by chunk).
    collect_set_candidate: float = 0.75
    #: Collecting a candidate from a range: range candidates scatter over every chunk, a
    #: few per SMISMEMBER.
    collect_range_candidate: float = 2.5
    #: Each match collected: its order score read (ZMSCORE), then the sort.
    collect_match: float = 2.25
    #: Each chunk a collect touches: one call per chunk.
    collect_chunk_call: float = 1.0

    # --- the chunk walk (newest first, chunks by their time bounds), same units ---------
    #: One chunk visited: the SINTER of the chunked sets of that chunk.
    chunk_visit: float = 20.0
    #: More for a chunk of every trace minus the excluded sets' (SDIFF over 512 members).
    chunk_complement: float = 28.0
    #: A candidate of a chunk's intersection read.
    chunk_candidate: float = 0.3
    #: Testing such a candidate against the rest of the filter when the rest holds a range
    #: (ZMSCORE) ...
    chunk_test_range: float = 2.5
    #: ... or only sets (lookups).
    chunk_test_sets: float = 1.0
    #: A match of a visited chunk (its timestamp read).
    chunk_match: float = 1.0
    #: Each row of the page (merged by time across chunks).
    chunk_row: float = 0.5
    #: Chunks expected beyond an even spread of the matches.
    chunk_overshoot_factor: float = 1.5
    #: tt_query gives up the chunk walk past this many times the chunks expected ...
    chunk_budget_factor: int = 3
    #: ... and never below this many chunks.
    chunk_budget_min: int = 8

    # --- walk a string order key's values against collect-and-sort, in microseconds -----
    #: Reading one distinct value of the order key.
    walk_value_us: float = 0.5
    #: Visiting one value's group (its set, tested and ordered) ...
    walk_group_us: float = 30.0
    #: ... and each of its traces when it is small (each member tested on the filter), or
    #: each of its chunks it reads when it is large.
    walk_trace_us: float = 1.5
    walk_chunk_us: float = 10.0
    #: Collecting: reading one candidate's order key from its hash.
    collect_key_read_us: float = 3.0
    #: Walk the values only when the candidates exceed this many times the page.
    walk_values_page_factor: int = 4
    #: A walk of values over a table of the matches: collecting a candidate into it ...
    table_candidate_us: float = 1.0
    #: ... visiting a group (its set read) ...
    table_group_us: float = 5.0
    #: ... and each trace of a visited group (looked up in the table).
    table_trace_us: float = 0.5
    #: No table when the groups average more than this many pages and the next order key
    #: nests a walk in each (lua/group_order.lua: groups of more than 4 pages).
    table_nested_group_pages: float = 4.0

    # --- walk the trace ids' byte order (request_id first), same units as a walk --------
    #: One bucket of ids visited (SMEMBERS, a call).
    id_bucket_visit: float = 20.0
    #: Traces in a bucket, on average (buckets hold 160..512).
    id_bucket_size: int = 300
    #: A match of a visited bucket: its id read (HGET) and sorted in the bucket.
    id_match: float = 2.0
    #: Collecting for request_id order reads each match's id from its hash (HGET).
    collect_id_read: float = 2.0
    #: A visited bucket's trace looked up in a table of the matches collected first.
    id_table_lookup: float = 0.2
    #: Walk the ids only when this many times cheaper: a bucket's traces are spread over
    #: every chunk (ids are random), so its tests cost more than the estimate's.
    id_walk_margin: int = 3

    # --- tests of many-valued leaves --------------------------------------------------
    #: A V leaf of at least this many values may be tested by reading each candidate's
    #: register instead of building tt_query's member table of the values' sets, or of
    #: testing each dense value's chunked set (tt_query prices each way per list of
    #: candidates: query_leaves.lua's test_by_registers).
    register_test_min_values: int = 3


COSTS: Final = CostTable()


def collect_cost(candidates: float, matches: float, total: int, *, from_range: bool) -> float:
    """Collect and sort: read and test ``candidates``, then order ``matches``."""
    chunks = total / SET_CHUNK + 1
    per_candidate = COSTS.collect_range_candidate if from_range else COSTS.collect_set_candidate
    return (
        per_candidate * candidates
        + COSTS.collect_match * matches
        + COSTS.collect_chunk_call * min(candidates, chunks)
    )


def walk_values_cost_us(distinct: int | None, limit: int, matches: float, total: int) -> float:
    """Walking a string order key's ``distinct`` values until ``limit`` rows: each value read
    from the key's byte-order index as the walk reaches it (a bucket at a time), and a group
    per value visited (``limit * distinct / matches`` of them, at least one).  A small group
    is tested trace by trace; a large (chunked) one chunk by chunk with the filter's sets,
    until its share of the page is found or its chunks are done."""
    if distinct is None:
        return 0.0
    groups = min(float(distinct), max(1.0, limit * distinct / max(matches, 1.0)))
    values = min(float(distinct), groups + LEX_BUCKET)
    size = total / max(distinct, 1)
    if size > PLAIN_MAX:
        chunks = total / SET_CHUNK + 1
        scanned = min(chunks, chunks * limit / max(matches / max(distinct, 1), 1.0))
        per_group = COSTS.walk_group_us + scanned * COSTS.walk_chunk_us
    else:
        per_group = COSTS.walk_group_us + size * COSTS.walk_trace_us
    return values * COSTS.walk_value_us + groups * per_group


def table_walk_cost_us(
    candidates: float, distinct: int | None, limit: int, matches: float, total: int
) -> float:
    """Walking a string order key's values over a table of the matches: every candidate
    collected into it, then the groups visited until ``limit`` rows, every trace of them
    looked up."""
    if distinct is None:
        return math.inf
    # (a group's set is read whole: at least one group's traces are looked up)
    groups = min(float(distinct), max(1.0, distinct * limit / max(matches, 1.0)))
    traces = total * groups / max(distinct, 1)
    return (
        candidates * COSTS.table_candidate_us
        + groups * COSTS.table_group_us
        + traces * COSTS.table_trace_us
    )


def collect_by_key_us(candidates: float) -> float:
    """Collecting the candidates and reading every match's order key from its hash (an
    order key with no zset), at worst every candidate a match."""
    return candidates * (COSTS.table_candidate_us + COSTS.collect_key_read_us)


def _one_chunked_set(node: PNode) -> bool:
    """Whether tt_query tests ``node`` as one chunked set (a single dense value, or a key's
    presence)."""
    single_dense = node.kind == "V" and len(node.spec) == 4 and node.est > PLAIN_MAX
    return single_dense or node.kind == "C"


def chunked_conjuncts(tree: PNode) -> tuple[list[PNode], list[PNode]]:
    """The conjuncts of ``tree`` that the chunk walk reads per chunk, and the others: the
    chunked sets (SINTER), or at most one and the chunked sets the filter excludes (a
    ``NOT``: SDIFF, from every trace's chunk when no chunked set is left)."""
    conjuncts = tree.children if tree.kind == "&" else [tree]
    chunked = [node for node in conjuncts if _one_chunked_set(node)]
    rest = [node for node in conjuncts if not _one_chunked_set(node)]
    if len(chunked) <= 1:
        excluded = [n for n in rest if n.kind == "!" and _one_chunked_set(n.children[0])]
        chunked += excluded
        rest = [node for node in rest if all(node is not e for e in excluded)]
    return chunked, rest


def chunk_walk_cost(tree: PNode, total: int, limit: int) -> tuple[float, float]:
    """The chunk walk's cost in walked-entry units, assuming that chunks hold traces of
    neighbouring times (numbers are handed out as traces are first folded): the chunks that
    hold ``limit`` matches, each one SINTER plus a test of the rest of the filter per
    candidate of the intersection and a timestamp read per match.  Also returns the chunks
    it expects to visit."""
    chunked, rest = chunked_conjuncts(tree)
    if not chunked or total <= 0:
        return math.inf, 0.0
    fraction = 1.0
    for node in chunked:
        fraction *= min(1.0, node.est / total)
    density = min(1.0, tree.est / total)
    chunks = total / SET_CHUNK + 1
    spread = limit / max(density * SET_CHUNK, 1e-9)
    visited = min(chunks, spread * COSTS.chunk_overshoot_factor + 1)
    if any(n.kind == "R" for n in rest):
        per_test = COSTS.chunk_test_range
    else:
        per_test = COSTS.chunk_test_sets if rest else 0.0
    # (excluded sets alone: every trace's chunk is read in full)
    visit = COSTS.chunk_visit
    if all(node.kind == "!" for node in chunked):
        visit += COSTS.chunk_complement
    per_chunk = (
        visit
        + SET_CHUNK * fraction * (COSTS.chunk_candidate + per_test)
        + SET_CHUNK * density * COSTS.chunk_match
    )
    return visited * per_chunk + COSTS.chunk_row * limit, visited


def chunk_walk_budget(visits: float) -> int:
    """The chunks tt_query may visit before it gives the chunk walk up."""
    return max(COSTS.chunk_budget_min, math.ceil(COSTS.chunk_budget_factor * visits))
