"""The probe: the cheap reads (one pipeline per query) that size a query's terms per partition.

Distinct-zset scores, ZCOUNT, HLEN and key-set sizes: never the traces.  A LIKE reads the
distinct values it may match (or only counts them, for a page that seeks them itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tracetags.keys import Keys
from tracetags.query.ast import OrderKey
from tracetags.query.logical import (
    LConst,
    LIdMatch,
    LIds,
    LMatch,
    LogicalNode,
    LPresent,
    LRange,
    LValues,
    leaves,
    order_index,
    order_zset,
)

__all__ = [
    "ID_SAMPLE",
    "MatchedCount",
    "MatchedValues",
    "Probe",
    "SampledIds",
    "SampledValues",
    "probe_commands",
    "reply_text",
    "sampled_ids",
    "sizes_only",
    "values_sample",
]

#: Trace ids a probe samples (HRANDFIELD) to estimate how many match a pattern that
#: tt_query can test on each candidate's id instead of the client reading every id.
ID_SAMPLE = 256
#: ... which it does when the sample says at least this many traces of the partition match:
#: a test costs ~3 us a candidate in Lua, reading an id in the client ~1 us, and a walk
#: fills a page of 100 after ~100 / share candidates, so testing pays off from ~300 matches
#: (then it tests a few thousand candidates at most, where reading every id reads them all).
TEST_MIN_MATCHES = 300


@dataclass
class Probe:
    """The sizing reads of one partition: which pipeline replies belong to which leaf."""

    partition: int
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    slots: dict[int, int] = field(default_factory=dict)  # id(leaf) -> reply index
    #: cards plan entries: [key set, its distinct zset] (tt_query sums the zset's scores
    #: when it has few values, else SCARD over the chunks)
    card_keys: list[list[str]] = field(default_factory=list)
    order_distinct_slot: int | None = None  # reply index of ZCARD of the order key's values
    time_bounds_slot: int | None = None  # reply index of ZCARD of tsx (newest-first pages)
    id_order_slot: int | None = None  # reply index of ZCARD of the ids' byte order (ri)
    listed: bool = False  # patterns' values listed, never sampled (probe_commands)


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
    #: Extrapolated from part of the key's values (a dense lead over a key without the
    #: byte-order index): sizes for the planner, not exact counts.
    estimated: bool = False


class SampledIds(NamedTuple):
    """A probe's reply for a request_id pattern tt_query tests itself on each candidate: a
    random sample of the partition's ``{id: number}`` with enough matches, ``hits`` of them
    matching (or every id, when the partition holds at most :data:`ID_SAMPLE`)."""

    ids: dict[Any, Any]
    hits: int


class SampledValues(NamedTuple):
    """A probe's reply for a tag, metadata or client_request_id pattern over more values
    than one window, which tt_query tests itself on each candidate's register: the traces
    expected to match, from a sample of the key's values weighted by their counts."""

    expected: float
    hits: int
    sampled: int
    values: int


def values_sample(
    sampled: list[Any],
    values: int,
    predicate: Any,
    negated: bool,
    min_matches: float = TEST_MIN_MATCHES,
) -> SampledValues | None:
    """The sample (ZRANDMEMBER WITHSCORES, flat) as :class:`SampledValues` when testing each
    candidate pays (at least ``min_matches`` expected), else None."""
    pairs = list(zip(sampled[::2], sampled[1::2], strict=True))
    if not pairs:
        return None
    matching = [float(score) for v, score in pairs if predicate(reply_text(v)) != negated]
    hits, weight = len(matching), sum(matching)
    expected = weight / len(pairs) * values
    if expected < min_matches:
        return None
    return SampledValues(expected, hits, len(pairs), values)


def sampled_ids(sample: dict[Any, Any], predicate: Any, total: int) -> SampledIds | None:
    """The sample as :class:`SampledIds` when testing each candidate's id (an M leaf) beats
    reading every id, by the sample's share of matches (:data:`TEST_MIN_MATCHES`), or when it
    is every id of the partition (physical() then decides exactly from it); else None."""
    hits = sum(1 for trace_id in sample if predicate(reply_text(trace_id)))
    if len(sample) >= total or total * hits / len(sample) >= TEST_MIN_MATCHES:
        return SampledIds(sample, hits)
    return None


def reply_text(value: bytes | str) -> str:
    """A reply string as str."""
    return value.decode() if isinstance(value, bytes) else value


def probe_commands(
    root: LogicalNode,
    keys: Keys,
    partition: int,
    order: Sequence[OrderKey] = (),
    *,
    page: bool = False,
    listed: bool = False,
) -> Probe:
    """The reads that size the leaves of ``root`` in one partition (one pipeline).

    For a ``page``, a LIKE whose values its tt_query call can seek itself
    (:attr:`LMatch.sought_in_page`) is only counted (``VALUECOUNT``), not listed.  With
    ``listed``, every pattern's matching values (or ids) are read, never sampled or only
    counted: the plan then holds no leaf that tests each candidate.
    """
    probe = Probe(partition, listed=listed)
    cmds = probe.commands
    cmds.append(("HLEN", keys.trace_ids(partition)))
    index = order_index(order[0]) if order else None
    if index is not None:
        probe.order_distinct_slot = len(cmds)
        cmds.append(("ZCARD", index.distinct(keys, partition)))
    # newest first, for the page or (second key) within the groups of a walk of values
    if any(order_zset(key) == "ts" and not key.ascending for key in order[:2]):
        probe.time_bounds_slot = len(cmds)
        cmds.append(("ZCARD", keys.time_bounds(partition)))
    if (
        page
        and order
        and (order[0].field.entity, order[0].field.key)
        == (
            "attribute",
            "request_id",
        )
    ):  # may walk the ids' byte order (id_walk.py) if the partition keeps it
        probe.id_order_slot = len(cmds)
        cmds.append(("ZCARD", keys.id_order(partition)))
    # Every id is read anyway for an id pattern the client must decide (RLIKE, a non-ASCII
    # ILIKE): then the others are decided from the same read, not sampled (an E leaf
    # intersects with E leaves in the plan; an M leaf would test thousands of candidates).
    every_id = listed or any(
        isinstance(leaf, LIdMatch) and not (leaf.lua or leaf.prefixes or leaf.suffixes)
        for leaf in leaves(root)
    )
    for leaf in leaves(root):
        if id(leaf) in probe.slots:
            continue
        if isinstance(leaf, LValues):
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("ZMSCORE", leaf.index.distinct(keys, partition), *leaf.values))
        elif isinstance(leaf, LMatch) and page and leaf.sought_in_page and not listed:
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("VALUECOUNT", leaf.index.distinct(keys, partition), leaf.lead))
        elif isinstance(leaf, LMatch):
            # The values that may match (by a LIKE's runs, an ILIKE's case variants, else
            # every value with its count, packed by tt_query); past a window of them, a
            # pattern tt_query can test itself may be sampled instead (executor._probe).
            probe.slots[id(leaf)] = len(cmds)
            runs = leaf.runs if leaf.runs is not None else ()
            lead = leaf.lead if leaf.runs is not None else ()
            alts = leaf.alts if leaf.runs is None else None
            cmds.append(("VALUES", leaf.index.distinct(keys, partition), runs, lead, alts, leaf))
        elif isinstance(leaf, LRange):
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("ZCOUNT", keys.by_score(partition, leaf.zset), leaf.lo, leaf.hi))
        elif isinstance(leaf, LIds):
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("HMGET", keys.trace_ids(partition), *leaf.ids))
        elif isinstance(leaf, LIdMatch) and (leaf.prefixes or leaf.suffixes):
            # (a dense prefix and end are then sampled when tt_query can test the pattern)
            probe.slots[id(leaf)] = len(cmds)
            sampled = leaf.predicate if leaf.lua and not every_id else None
            affixes = (leaf.prefixes or (), leaf.suffixes or ())
            cmds.append(("IDSEEK", keys.trace_ids(partition), affixes, sampled, leaf.needle))
        elif isinstance(leaf, LIdMatch) and leaf.lua and not every_id:
            probe.slots[id(leaf)] = len(cmds)
            cmds.append(("IDSAMPLE", keys.trace_ids(partition), leaf.predicate, leaf.needle))
        elif isinstance(leaf, LIdMatch):
            # every id: HGETALL builds the reply natively (reading 100k ids into Lua and
            # packing them would hold Redis's one thread several times longer); read once
            # for all such leaves
            read = next((i for i, c in enumerate(cmds) if c[0] == "HGETALL"), None)
            probe.slots[id(leaf)] = len(cmds) if read is None else read
            if read is None:
                cmds.append(("HGETALL", keys.trace_ids(partition)))
        elif isinstance(leaf, LPresent):
            key_set = leaf.index.key_set(keys, partition)
            if key_set is not None:
                probe.slots[id(leaf)] = len(probe.card_keys)
                probe.card_keys.append([key_set, leaf.index.distinct(keys, partition)])
    return probe


def sizes_only(root: LogicalNode) -> bool:
    """Whether the probe of ``root`` only sizes its terms: value sets, ranges and key presence
    (LIKE and id terms read their matching values or numbers in the probe)."""
    return all(isinstance(leaf, LValues | LRange | LPresent | LConst) for leaf in leaves(root))
