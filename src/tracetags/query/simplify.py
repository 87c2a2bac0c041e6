"""Contradictions found before any probe or walk: a conjunction that cannot match is nothing.

``tags.env = 'prod' AND tags.env = 'dev'``, ``timestamp_ms > 9 AND timestamp_ms < 5``,
``tags.k IS NULL AND tags.k = 'v'``, two different trace ids: each conjunct may match many
traces, so without this the planner would walk (or collect) them all to return nothing.
The rewrite works on the logical terms, so it holds in every partition:

- value sets of one index are intersected (a trace has one value per key);
- ranges on one score index are intersected (both bounds, open or closed);
- explicit trace ids are intersected, and decide the other terms on the trace id (a
  pattern keeps the listed ids it matches, ``!=`` / ``NOT IN`` drop theirs);
- a key's absence contradicts any value, pattern or presence term on that key (a value
  comparison never matches a missing value);
- two patterns on one key (or on the trace id) whose literal starts, or LIKE's literal ends,
  disagree (``LIKE 'ze_a%' AND LIKE 'de%'``) match no value together;
- a false constant makes the conjunction false, a true one drops out.

And one rewrite of disjunctions: terms common to every child of an ``OR`` are taken out of
it (``(a AND x) OR (b AND x)`` is ``x AND (a OR b)``; ``x OR (x AND y)`` is ``x``), so that
each is tested once per trace rather than once per child, and what is left (an ``OR`` of
ranges of one index, say) may be tested as one union.

Nothing else changes: a conjunction that can match is returned with the same terms (the
intersected ones merged), so plans and ``explain`` stay as they were.
"""

from __future__ import annotations

import re

from tracetags.query.logical import (
    LAnd,
    LConst,
    LIdMatch,
    LIds,
    LMatch,
    LNot,
    LogicalNode,
    LOr,
    LPresent,
    LRange,
    LValues,
    ValueIndex,
)

__all__ = ["simplify"]


def simplify(node: LogicalNode) -> LogicalNode:
    """``node`` with every contradictory conjunction (at any depth) replaced by false."""
    if isinstance(node, LAnd):
        return _conjunction([simplify(c) for c in node.children])
    if isinstance(node, LOr):
        return _disjunction([simplify(c) for c in node.children])
    if isinstance(node, LNot):
        return LNot(simplify(node.child))
    return node


def _disjunction(children: list[LogicalNode]) -> LogicalNode:
    flat: list[LogicalNode] = []
    for child in children:
        flat.extend(child.children if isinstance(child, LOr) else [child])
    if len(flat) < 2:
        return LOr(tuple(flat))
    terms = [c.children if isinstance(c, LAnd) else (c,) for c in flat]
    common = [t for t in dict.fromkeys(terms[0]) if all(t in other for other in terms[1:])]
    if not common:
        return LOr(tuple(flat))
    shared = set(common)
    rests = [tuple(t for t in child if t not in shared) for child in terms]
    if any(not rest for rest in rests):
        # x OR (x AND y): the child that is just the common terms holds every other one
        return _conjunction(common)
    rest = _disjunction([r[0] if len(r) == 1 else LAnd(r) for r in rests])
    return _conjunction([*common, rest])


def _bound(text: str) -> tuple[float, bool]:
    """A Redis score bound as (value, open)."""
    if text in ("-inf", "+inf"):
        return float(text), False
    if text.startswith("("):
        return float(text[1:]), True
    return float(text), False


def _tighter(a: str, b: str, low: bool) -> str:
    (va, oa), vb = _bound(a), _bound(b)[0]
    if va != vb:
        return a if (va > vb) == low else b
    return a if oa else b  # equal values: the open bound is the tighter one


def _empty_range(lo: str, hi: str) -> bool:
    (vl, ol), (vh, oh) = _bound(lo), _bound(hi)
    return vl > vh or (vl == vh and (ol or oh))


def _conjunction(children: list[LogicalNode]) -> LogicalNode:
    flat: list[LogicalNode] = []
    for child in children:
        flat.extend(child.children if isinstance(child, LAnd) else [child])
    if any(isinstance(c, LConst) and not c.value for c in flat):
        return next(c for c in flat if isinstance(c, LConst) and not c.value)
    values: dict[ValueIndex, LValues] = {}
    ranges: dict[str, LRange] = {}
    ids: LIds | None = None
    absent: set[ValueIndex] = set()
    excluded: dict[ValueIndex, set[str]] = {}  # values a NOT (k = v) rules out
    needs: set[ValueIndex] = set()  # keys some term needs present
    out: list[LogicalNode] = []
    for child in flat:
        if isinstance(child, LValues):
            known = values.get(child.index)
            if known is None:
                values[child.index] = child
                out.append(child)
                continue
            kept = tuple(v for v in known.values if v in set(child.values))
            if not kept:
                return LConst(False, f"{known.text} AND {child.text}: no value is both")
            merged = LValues(child.index, kept, f"{known.text} AND {child.text}")
            out[out.index(known)] = merged
            values[child.index] = merged
            needs.add(child.index)
        elif isinstance(child, LRange):
            seen = ranges.get(child.zset)
            if seen is None:
                ranges[child.zset] = child
                out.append(child)
                continue
            lo = _tighter(seen.lo, child.lo, True)
            hi = _tighter(seen.hi, child.hi, False)
            text = f"{seen.text} AND {child.text}"
            if _empty_range(lo, hi):
                return LConst(False, f"{text}: an empty range")
            merged_range = LRange(child.zset, lo, hi, text)
            out[out.index(seen)] = merged_range
            ranges[child.zset] = merged_range
        elif isinstance(child, LIds):
            if ids is None:
                ids = child
                out.append(child)
                continue
            wanted = set(child.ids)
            both = tuple(i for i in ids.ids if i in wanted)
            if not both:
                return LConst(False, f"{ids.text} AND {child.text}: no trace id is both")
            merged_ids = LIds(both, f"{ids.text} AND {child.text}")
            out[out.index(ids)] = merged_ids
            ids = merged_ids
        elif isinstance(child, LConst):
            continue  # true: drops out
        else:
            if isinstance(child, LNot) and isinstance(child.child, LPresent):
                absent.add(child.child.index)
            elif isinstance(child, LNot) and isinstance(child.child, LValues):
                excluded.setdefault(child.child.index, set()).update(child.child.values)
            elif isinstance(child, LPresent | LMatch):
                needs.add(child.index)
            elif isinstance(child, LAnd | LOr | LNot):
                pass
            out.append(child)
    needs.update(values)
    disjoint = _disjoint_patterns(flat)
    if disjoint is not None:
        return LConst(False, disjoint)
    clash = absent & needs
    if clash:
        index = next(iter(clash))
        return LConst(False, f"{index.label} IS NULL and a term that needs it present")
    for index, ruled_out in excluded.items():
        known = values.get(index)
        if known is not None and set(known.values) <= ruled_out:
            return LConst(False, f"{known.text}: every value is excluded by another term")
    if ids is not None:
        decided = _listed_ids(out, ids)
        if isinstance(decided, LConst):
            return decided
        out = decided
    return _pinned(out, values)


def _affixes(node: LogicalNode) -> tuple[object, tuple[str, ...], str | None] | None:
    """What every value a positive pattern term matches starts with (one of these literal
    prefixes; empty: unknown) and ends with (a literal suffix without case variants), and
    its key."""
    if isinstance(node, LIdMatch):
        id_suffix = node.suffixes[0] if node.suffixes and len(node.suffixes) == 1 else None
        if not node.prefixes and id_suffix is None:
            return None
        return "request_id", node.prefixes or (), id_suffix
    if not isinstance(node, LMatch) or node.negated:
        return None
    suffix = None
    if node.lua is not None and node.lua[0] == "L" and not node.lua[1]:
        pattern = node.lua[2]
        pieces = re.split("[%_]", pattern)
        suffix = pieces[-1] or None
    prefixes: tuple[str, ...] = ()
    if node.runs is not None and node.runs[0]:
        prefixes = (node.runs[0],)
    elif node.alts:
        prefixes = node.alts
    if not prefixes and suffix is None:
        return None
    return node.index, prefixes, suffix


def _disjoint_patterns(flat: list[LogicalNode]) -> str | None:
    """Two pattern terms on one key that no value can both match (``LIKE 'ze_a%' AND LIKE
    'de%'``: different literal starts; ``LIKE '%-1' AND LIKE '%-2'``: different literal
    ends): the reason, else None.  A trace has one value per key."""
    seen: dict[object, list[tuple[tuple[str, ...], str | None, str]]] = {}
    for child in flat:
        got = _affixes(child)
        if got is None:
            continue
        key, prefixes, suffix = got
        text = _text(child)
        for other_prefixes, other_suffix, other_text in seen.get(key, []):
            if (
                prefixes
                and other_prefixes
                and not any(
                    a.startswith(b) or b.startswith(a) for a in prefixes for b in other_prefixes
                )
            ):
                return f"{other_text} AND {text}: no value starts as both"
            if (
                suffix is not None
                and other_suffix is not None
                and not (suffix.endswith(other_suffix) or other_suffix.endswith(suffix))
            ):
                return f"{other_text} AND {text}: no value ends as both"
        seen.setdefault(key, []).append((prefixes, suffix, text))
    return None


def _listed_ids(out: list[LogicalNode], ids: LIds) -> list[LogicalNode] | LConst:
    """Terms on the trace id beside a list of ids are decided on those ids: a pattern
    (``request_id IN (...) AND request_id RLIKE '-[0-9]'``) keeps the ids it matches, ``NOT
    IN`` drops its ids; neither is sampled or read over the partition's ids."""
    kept = list(out)
    for child in out:
        if isinstance(child, LIdMatch):
            left = tuple(i for i in ids.ids if child.predicate(i))
        elif isinstance(child, LNot) and isinstance(child.child, LIds):
            gone = set(child.child.ids)
            left = tuple(i for i in ids.ids if i not in gone)
        else:
            continue
        if not left:
            return LConst(False, f"{ids.text} AND {_text(child)}: no trace id is both")
        kept.remove(child)
        narrowed = LIds(left, f"{ids.text} AND {_text(child)}")
        kept[kept.index(ids)] = narrowed
        ids = narrowed
    return kept


def _pinned(out: list[LogicalNode], values: dict[ValueIndex, LValues]) -> LogicalNode:
    """Terms on a key the conjunction pins to a few values are decided on those values: a
    pattern (``client_request_id = 'a' AND client_request_id LIKE 'b%'``) keeps the values
    it matches, presence is implied, ``!= v`` drops v; no pattern is read over the key."""
    kept = list(out)
    for child in out:
        index = getattr(child, "index", None)
        if isinstance(child, LNot) and isinstance(child.child, LValues):
            index = child.child.index
        known = values.get(index) if index is not None else None
        if known is None or isinstance(child, LValues):
            continue
        if isinstance(child, LMatch):
            left = tuple(v for v in known.values if child.predicate(v) != child.negated)
        elif isinstance(child, LNot) and isinstance(child.child, LValues):
            gone = set(child.child.values)
            left = tuple(v for v in known.values if v not in gone)
        elif isinstance(child, LPresent):
            left = known.values  # implied by the values
        else:
            continue
        if not left:
            return LConst(False, f"{known.text} AND {_text(child)}: no value is both")
        kept.remove(child)
        if left != known.values:
            narrowed = LValues(known.index, left, f"{known.text} AND {_text(child)}")
            kept[kept.index(known)] = narrowed
            values[known.index] = narrowed
    if not kept:
        return LConst(True, "every trace")
    return kept[0] if len(kept) == 1 else LAnd(tuple(kept))


def _text(node: LogicalNode) -> str:
    if isinstance(node, LNot):
        inner = _text(node.child)
        # (a != / NOT IN clause is NOT of its values, under the clause's own text)
        return inner if "!=" in inner or "NOT IN" in inner else f"NOT ({inner})"
    return str(getattr(node, "text", "…"))
