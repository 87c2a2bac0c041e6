"""The plans sent to the Redis Function ``tt_query`` (one msgpack map per partition and call).

A plan's boolean tree is made of nodes, each an array whose first element is its kind:

==============================================  ===============================================
node                                            matches
==============================================  ===============================================
``['V', dkey, vprefix, value, ...]``            traces whose value is one of the values: the
                                                value sets ``vprefix + enc(value)``, plain or
                                                chunked by their count in the distinct zset
                                                ``dkey``
``['C', key]``                                  the chunked key set ``key`` (``tk``/``mk``:
                                                traces that have the key)
``['R', zset, lo, hi]``                         traces whose score in ``<prefix>:<zset>`` is in
                                                ``lo..hi`` (Redis score syntax: ``(5``, ``-inf``)
``['E', number, ...]``                          these trace numbers
``['B', bitmap]``                                these trace numbers, as a bitmap: bit ``n % 7``
                                                of character ``n // 7`` set (many numbers)
``['P', field]``                                traces whose hash has ``field`` (an attribute
                                                is present)
``['A']`` / ``['Z']``                           every trace / none
``['L', dkey, vprefix, lead, traces, values]``  (page plans) a LIKE that is its ``lead`` and one
                                                final ``%``: tt_query seeks its values in the
                                                byte-order index of ``dkey`` and tests them as
                                                a ``V`` node; ``traces`` and ``values`` are the
                                                probe's counts
``['M', field, stamped, op, negated, pattern]``  traces whose hash ``field`` (a register when
                                                ``stamped`` is 1) matches a LIKE (``op`` ``L``)
                                                or ILIKE (``I``, ``pattern`` lowered) pattern;
                                                ``negated`` 1: holds a value that does not.
                                                Read per candidate (lua/pattern.lua)
``['&', node, ...]`` ``['|', node, ...]``       all of / any of the nodes
``['!', node]``                                 the traces of the partition that ``node`` misses
==============================================  ===============================================
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, TypeAlias

import msgspec

__all__ = [
    "CardsPlan",
    "IdsPlan",
    "LeafKind",
    "Mode",
    "NodeKind",
    "OrderSpec",
    "QueryPlan",
    "RowsPlan",
    "Spec",
    "Strategy",
    "ValuesPlan",
]

LeafKind: TypeAlias = Literal["V", "C", "R", "E", "B", "P", "A", "Z", "L", "M"]
NodeKind: TypeAlias = LeafKind | Literal["&", "|", "!"]
#: A node of the table above, as tt_query reads it (its first element is a :data:`NodeKind`).
Spec: TypeAlias = list[Any]
Mode: TypeAlias = Literal["page", "count", "stats"]
#: How a partition is run (``explain`` shows it): see :func:`strategy.plan_partition`.
Strategy: TypeAlias = Literal[
    "walk", "chunk-walk", "walk-values", "walk-ids", "collect", "exact", "count", "algebra", "stats"
]


class OrderSpec(NamedTuple):
    """One order key as tt_query compares it (a msgpack array of three)."""

    #: ``n`` numeric, ``s`` string (code point order), ``x`` experiment id (digits first,
    #: by number).
    kind: Literal["n", "s", "x"]
    #: The trace-hash field holding the key's register (``E``: end time, computed from
    #: ``s`` and ``d``).
    field: str
    #: 1 ascending, 0 descending.
    ascending: int


class QueryPlan(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A ``page``, ``count`` or ``stats`` plan of one partition (``ARGV[2]`` of tt_query).

    Fields left at their default are not sent (tt_query reads them as absent).

    - ``mode``: ``page`` (the first ``limit`` matches in order), ``count`` (how many match) or
      ``stats`` (per group: the count and the durations of the matches).
    - ``expr``: the filter as a node tree (see the module's table).
    - ``sources``: the leaves whose traces are the candidates (a union); empty: every trace.
    - ``residual``: what a candidate from ``sources`` must still pass (``expr`` without the
      test its source already made); tt_query tests ``expr`` when ``sources`` is empty.
    - ``terms`` (count): signed conjunctions of leaves, ``[sign, leaf, ...]``; the count is
      the signed sum of theirs (set algebra), instead of testing candidates of ``expr``.
    - ``group`` (stats): the trace-hash fields whose values make a group.
    - ``scan`` (count, stats, page): ``[from trace number, budget in microseconds]``: test
      the traces in number order from there until the budget is spent, and reply where the
      next call starts (query/budget.py and query/pages.py run the calls).
    - ``order`` (page): the order keys.
    - ``limit`` (page): how many matches to find.
    - ``time_bounds`` (page): the partition keeps its chunks' time bounds (``tsx``), so a
      walk of value groups may visit chunks newest first too.
    - ``value_fields`` (page): ``{distinct zset: hash field}`` of the ``V`` (or ``L``) leaves
      of many values: a walk may test those by reading the candidates' registers.
    - ``cursor`` (page): ``[1, value]`` (or ``[0]`` for a missing value) per order key: the
      page starts after this position.
    - ``chunk_walk`` (page): visit the chunks newest first by their time bounds, giving up
      past this many chunks (then ``walk`` if given, else collect).
    - ``walk`` (page): ``[zset, ascending 1|0]`` or ``[zset, asc, lo, hi]``: walk the order
      zset from one end (within ``lo..hi``, a range every match is in), testing entries.
    - ``density`` (walk): the expected fraction of walked entries that match.
    - ``walk_values`` (page): ``[dkey, vprefix, presence leaf, match fraction, candidates,
      traces, table 1|0]``: walk the distinct values of the first (string) order key in
      order, each value's set in turn, then the traces without the key; with ``table``,
      the filter's matches are collected first and each group's members looked up among
      them (lua/value_shortcuts.lua ``table_walk``).  Without it, a walk whose rows prove
      thinly spread over the groups may collect the key's traces instead (``keyed_first``
      there).
    - ``shown`` (page): how many of the ``limit`` rows to return (default all: the extra
      row only tells that a next page exists).
    - ``keys_only`` (page): a row is its order fields and ``#``, its trace number, not its
      whole hash (the client merges several calls' rows, then reads the page's hashes with
      a :class:`RowsPlan`).
    - ``row_fields`` (page, ``keys_only``): hash fields a key row holds besides its order
      fields (the registers a pattern only the client decides is tested on,
      query/residual.py).
    - ``deadline`` (page, and count or stats without ``scan``): microseconds after which
      the call gives up and replies ``[-1, []]`` (page; ``[-2, []]`` when it was collecting
      every candidate) or ``-1``; the client then runs it in
      budgeted calls (query/pages.py, query/budget.py).
    - ``id_walk`` (page, first order key ``request_id``): walk the buckets of the trace ids'
      byte order (``<prefix>:ri``) from the cursor, giving up past this many buckets (then
      collect; also when the partition has no such index).
    - ``id_table`` (with ``id_walk``): collect the matches first and look each visited
      bucket's traces up among them, instead of testing them against the filter.
    - ``walk_budget`` (walk, walk_values): once the walk has tested this many entries (a
      walk of values: the traces of the groups visited) without a single
      match, the matches are far rarer than estimated (an empty intersection of terms
      the estimate took as independent): it stops and collects from ``sources`` instead.
    - ``walk_next`` (with ``walk_values``): per order key after the first, how a large group
      of the walk is ordered by it without sorting: ``[dkey, vprefix, presence leaf]`` (a
      string key: a nested walk of its values) or ``"i"`` (request_id: the ids' byte
      order), up to the first numeric key (whose zset orders a group, as before).
    """

    mode: Mode
    expr: Spec
    sources: list[Spec]
    residual: Spec
    terms: list[list[Any]] | None = None
    group: list[str] | None = None
    scan: list[int] | None = None
    order: list[OrderSpec] | None = None
    limit: int | None = None
    time_bounds: bool = False
    value_fields: dict[str, str] | None = None
    cursor: list[list[Any]] | None = None
    chunk_walk: int | None = None
    walk: list[str | int] | None = None
    density: float | None = None
    walk_values: tuple[str, str, Spec, float, float, int, int] | None = None
    id_walk: int | None = None
    id_table: bool = False
    walk_next: list[Any] | None = None
    walk_budget: int | None = None
    shown: int | None = None
    deadline: int | None = None
    keys_only: bool = False
    row_fields: list[str] | None = None


class ValuesPlan(
    msgspec.Struct, tag_field="mode", tag="values", kw_only=True, frozen=True, omit_defaults=True
):
    """A probe's read of the distinct values of a key that a LIKE may match.

    - ``dkey``: the key's distinct zset.
    - ``runs``: the pattern's runs of literal characters, the first one its start (maybe
      empty): only values that start with it and hold the others in order are returned.
    - ``lead``: the pattern up to its first ``%``, literal runs and counts of ``_``: the
      values are sought by it in the byte-order index.
    - ``count_only``: 1 when the pattern is its lead and one final ``%``: only count the
      values and their traces.
    - ``dense_after``: with ``count_only``, over a key without the byte-order index (every
      value is read): once more than this many values match, the counts are extrapolated
      from the values read so far (the reply's third item is then 1).
    - ``window``: ``[first rank, count]``: values that are not sought are read this window
      of ranks at a time (one call never reads every value of a key of a million).
    - ``alts``: an ILIKE's literal lead in each of its case variants: only the values
      starting with one of them are returned (sought 1), when the key has its byte-order
      index; else every value (sought 0).  The client applies the exact pattern.
    - ``sample``: when the values would be read by windows and the key has more than one
      window of them, reply instead ``[2, [value, count, ...], values of the key]``: this
      many random values (ZRANDMEMBER), from which the client tells whether tt_query should
      test the pattern on each candidate (an M leaf) rather than it read every value.
    - ``beside``: with ``sample``, the pattern's AND siblings, to be sized first: ``['r',
      zset, lo, hi]`` a range, ``['v', distinct zset, value, ...]`` value sets, ``['n',
      count]`` a known bound.  When the smallest holds at most one trace per
      ``beside_per`` values of the key, the reply is the sample whatever the key's size:
      testing the pattern on those few traces beats reading the values.  That sample holds
      no more values than the smallest sibling's traces (at least 16): they bound the
      pattern's matches whatever the sample says.

    Reply: msgpack ``[sought 0|1, [value, count, ...], next window's first rank or -1]``, or
    ``[values, traces, estimated 0|1]`` with ``count_only``.
    """

    dkey: str
    runs: tuple[str, ...] | None = None
    lead: tuple[str | int, ...]
    count_only: int | None = None
    dense_after: int | None = None
    window: list[int] | None = None
    alts: tuple[str, ...] | None = None
    sample: int | None = None
    beside: list[list[str | int]] | None = None
    beside_per: int | None = None


class RowsPlan(msgspec.Struct, tag_field="mode", tag="rows", kw_only=True, frozen=True):
    """The hashes of the trace numbers ``numbers`` (the rows of a page found in several
    calls).  Reply: msgpack ``[count, [hash, ...]]``, an empty hash for a deleted trace."""

    numbers: list[int]


class IdsPlan(msgspec.Struct, tag_field="mode", tag="ids", kw_only=True, frozen=True):
    """A probe's read of the trace ids that start with one of ``prefixes`` (a request_id
    pattern's literal lead and its case variants), from the ids' byte order, or that end
    with one of ``suffixes`` (its literal end), from the reversed ids' order: whichever
    spans fewer buckets.  Reply: msgpack ``[1, [id, number, ...]]``, or ``[0]`` when both
    are dense (or the partition keeps no such order)."""

    prefixes: list[str]
    suffixes: list[str] = []


class CardsPlan(msgspec.Struct, tag_field="mode", tag="cards", kw_only=True, frozen=True):
    """A probe's sizes of chunked key sets: ``keys`` are ``[key set, its distinct zset]``
    pairs (the zset's scores summed when it has few values, else SCARD over the chunks).
    Reply: an integer per pair."""

    keys: list[list[str]]
