"""Counting by set algebra: a count as the signed sum of conjunctions of index leaves.

Inclusion-exclusion turns NOT and OR into signed conjunctions; a conjunction of one exact
leaf is known from the probe's sizes, the others are counted inside Redis.
"""

from __future__ import annotations

from typing import TypeAlias

from tracetags.query.physical import PNode
from tracetags.query.plan import Spec

__all__ = ["count_terms"]

Term: TypeAlias = tuple[PNode, ...]
_MAX_TERMS = 16


def _expand(node: PNode) -> list[tuple[int, Term]] | None:
    """``node`` as a signed sum of conjunctions of leaves (None: too many terms)."""
    if node.kind == "Z":
        return []
    if node.kind == "A":
        return [(1, ())]
    if node.kind == "!":
        inner = _expand(node.children[0])
        if inner is None:
            return None
        return [(1, ()), *((-sign, term) for sign, term in inner)]
    if node.kind == "&":
        out: list[tuple[int, Term]] = [(1, ())]
        for child in node.children:
            terms = _expand(child)
            if terms is None:
                return None
            out = [(a * b, x + y) for a, x in out for b, y in terms]
            if len(out) > _MAX_TERMS:
                return None
        return out
    if node.kind == "|":
        if len(node.children) > 3:
            return None
        total: list[tuple[int, Term]] = []
        n = len(node.children)
        for mask in range(1, 1 << n):
            picked = [node.children[i] for i in range(n) if mask >> i & 1]
            sign = 1 if len(picked) % 2 else -1
            part = _expand(PNode("&", [], 0.0, "AND", picked))
            if part is None:
                return None
            total.extend((sign * s, t) for s, t in part)
            if len(total) > 4 * _MAX_TERMS:
                return None
        return total
    return [(1, (node,))]


def _spec_key(spec: Spec) -> str:
    return repr(spec)


def _normalize(term: Term, total: int) -> Term | None:
    """Merge a conjunction's leaves: duplicates, key presence implied by a value, values of
    one key (a trace has one value per key); None when the conjunction is empty.  A value
    term holding every trace (experiment_ids naming every experiment: the counts, like the
    rest of an exact count, are the probe's) is dropped."""
    values: dict[str, PNode] = {}
    rest: dict[str, PNode] = {}
    for leaf in term:
        if leaf.kind == "Z":
            return None
        if leaf.kind == "A" or (leaf.kind == "V" and leaf.exact and total and leaf.est == total):
            continue
        if leaf.kind == "V":
            dkey = leaf.spec[1]
            seen = values.get(dkey)
            if seen is None:
                values[dkey] = leaf
            elif seen.spec != leaf.spec:
                kept = set(leaf.spec[3:])
                both = [v for v in seen.spec[3:] if v in kept]
                if not both:
                    return None
                merged = PNode("V", [*seen.spec[:3], *both], min(seen.est, leaf.est), seen.text)
                merged.key_set = seen.key_set
                values[dkey] = merged  # not exact any more: counted in Redis
            continue
        rest.setdefault(_spec_key(leaf.spec), leaf)
    for leaf in values.values():
        if leaf.key_set is not None:
            rest.pop(_spec_key(["C", leaf.key_set]), None)
    return tuple(sorted([*values.values(), *rest.values()], key=lambda n: _spec_key(n.spec)))


def count_terms(tree: PNode, total: int) -> tuple[int, list[Spec]] | None:
    """Count ``tree`` as set algebra: (the part known from index sizes, the signed
    conjunctions tt_query must count), or None when the expansion is too large."""
    expanded = _expand(tree)
    if expanded is None:
        return None
    merged: dict[str, tuple[int, Term]] = {}
    for sign, term in expanded:
        normal = _normalize(term, total)
        if normal is None:
            continue
        key = "&".join(_spec_key(leaf.spec) for leaf in normal)
        before = merged.get(key, (0, normal))[0]
        merged[key] = (before + sign, normal)
    exact = 0
    remote: list[Spec] = []
    for sign, term in merged.values():
        if sign == 0:
            continue
        if not term:
            exact += sign * total
        elif len(term) == 1 and term[0].exact and term[0].kind in ("V", "R", "E", "C"):
            exact += sign * int(term[0].est)
        else:
            remote.append([sign, *(leaf.spec for leaf in term)])
    return exact, remote
