"""The logical rewrite: a filter AST becomes index terms that are the same for every partition.

A term names an index family (a tag or metadata key, an attribute) and what to look up in
it: values, a predicate over its distinct values, presence, a score range, trace ids.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, TypeAlias

import re2

from tracetags.keys import (
    NAME_TAG,
    SCORE_INDEXES,
    Keys,
    ScoreIndex,
    metadata_field,
    tag_field,
)
from tracetags.query import rlike
from tracetags.query.ast import And, Comparison, Expr, Not, Or, OrderKey
from tracetags.query.needle import Needle, needle_of

__all__ = [
    "PRESENCE_FIELD",
    "LAnd",
    "LConst",
    "LIdMatch",
    "LIds",
    "LMatch",
    "LNot",
    "LOr",
    "LPresent",
    "LRange",
    "LValues",
    "LogicalLeaf",
    "LogicalNode",
    "ValueIndex",
    "leaves",
    "logical",
    "lua_pattern",
    "order_index",
    "order_zset",
    "pattern_predicate",
]

IndexKind: TypeAlias = Literal["tag", "metadata", "status", "client_request_id", "experiment"]
ZsetName: TypeAlias = ScoreIndex

_TAG_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
#: The hash field of an attribute index's value (its presence is the field's).
PRESENCE_FIELD = {"status": "S", "client_request_id": "c", "experiment": "e"}


@dataclass(frozen=True)
class ValueIndex:
    """A family of value sets with a distinct-value zset: tag/metadata key or an attribute."""

    kind: IndexKind
    key: str = ""

    def distinct(self, keys: Keys, partition: int) -> str:
        if self.kind == "tag":
            return keys.tag_values(partition, self.key)
        if self.kind == "metadata":
            return keys.metadata_values(partition, self.key)
        if self.kind == "status":
            return keys.statuses(partition)
        if self.kind == "client_request_id":
            return keys.client_request_ids(partition)
        return keys.experiments(partition)

    def value_prefix(self, keys: Keys, partition: int) -> str:
        """The value-set key of value v is this prefix plus enc(v)."""
        if self.kind == "tag":
            return keys.tag_value_prefix(partition, self.key)
        if self.kind == "metadata":
            return keys.metadata_value_prefix(partition, self.key)
        if self.kind == "status":
            return keys.status_prefix(partition)
        if self.kind == "client_request_id":
            return keys.client_request_id_prefix(partition)
        return keys.experiment_prefix(partition)

    @property
    def hash_field(self) -> str:
        """The field of a trace's hash that holds this index's value (its register)."""
        if self.kind == "tag":
            return tag_field(self.key)
        if self.kind == "metadata":
            return metadata_field(self.key)
        return PRESENCE_FIELD[self.kind]

    def key_set(self, keys: Keys, partition: int) -> str | None:
        if self.kind == "tag":
            return keys.tag_key(partition, self.key)
        if self.kind == "metadata":
            return keys.metadata_key(partition, self.key)
        return None

    @property
    def label(self) -> str:
        if self.kind == "tag":
            return "name" if self.key == NAME_TAG else f"tags.{self.key}"
        if self.kind == "metadata":
            return f"metadata.{self.key}"
        return "experiment_id" if self.kind == "experiment" else self.kind


@dataclass(frozen=True)
class LValues:
    index: ValueIndex
    values: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class LMatch:
    """Values of the index for which ``predicate`` holds (negated: present and not matching)."""

    index: ValueIndex
    predicate: Callable[[str], bool] = field(compare=False)
    negated: bool
    text: str
    #: LIKE only: its runs of literal characters, the first one its start (maybe empty).
    #: A matching value starts with the first and holds the others in order, so tt_query
    #: returns only such values.
    runs: tuple[str, ...] | None = None
    #: LIKE only: the pattern up to its first ``%`` as literal runs and counts of ``_`` (any
    #: one character each): tt_query seeks the values starting so in the key's byte-order
    #: index instead of reading every value.
    lead: tuple[str | int, ...] = ()
    #: The pattern is its lead and one final ``%``: values sought by the lead all match.
    lead_is_pattern: bool = False
    #: ILIKE: its literal lead in every case variant (:func:`id_prefixes`); RLIKE: an
    #: anchored pattern's literal lead (:func:`regex_prefix`).  A matching value starts with
    #: one of them, so the probe seeks them in the byte-order index.
    alts: tuple[str, ...] | None = None
    #: LIKE and ILIKE that tt_query can test on a value itself (:func:`lua_pattern`), as an
    #: M leaf reading each candidate's register: ``[op, negated, pattern]``.
    lua: tuple[str, int, str] | None = None
    #: The literal every match holds (:func:`needle.needle_of`): a sparse pattern's values
    #: are read and narrowed by it in the client.
    needle: Needle | None = None

    @property
    def sought_in_page(self) -> bool:
        """Whether a page's tt_query can find the matching values itself (by the lead)."""
        return self.lead_is_pattern and bool(self.lead) and not self.negated


@dataclass(frozen=True)
class LPresent:
    index: ValueIndex
    text: str


@dataclass(frozen=True)
class LRange:
    zset: ZsetName
    lo: str
    hi: str
    text: str


@dataclass(frozen=True)
class LIds:
    ids: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class LIdMatch:
    predicate: Callable[[str], bool] = field(compare=False)
    text: str = ""
    #: Byte prefixes every matching id starts with (a LIKE or ILIKE's literal lead, with
    #: its case variants): the probe seeks them in the ids' byte order.  None: read all ids.
    prefixes: tuple[str, ...] | None = None
    #: Byte suffixes every matching id ends with (a LIKE or ILIKE's literal end, with its
    #: case variants): the probe seeks them in the reversed ids' byte order when they span
    #: fewer buckets than the prefixes (or those are none or dense).
    suffixes: tuple[str, ...] | None = None
    #: As :attr:`LMatch.lua`: the pattern as tt_query tests it on each candidate's id.
    lua: tuple[str, int, str] | None = None
    #: As :attr:`LMatch.needle`: a sparse pattern's ids are narrowed by it.
    needle: Needle | None = None


@dataclass(frozen=True)
class LConst:
    value: bool
    text: str


@dataclass(frozen=True)
class LAnd:
    children: tuple[LogicalNode, ...]


@dataclass(frozen=True)
class LOr:
    children: tuple[LogicalNode, ...]


@dataclass(frozen=True)
class LNot:
    child: LogicalNode


LogicalLeaf: TypeAlias = LValues | LMatch | LPresent | LRange | LIds | LIdMatch | LConst
LogicalNode: TypeAlias = LogicalLeaf | LAnd | LOr | LNot


# RLIKE runs on RE2: time linear in the value whatever the pattern (no backtracking), so no
# pattern can hang a query, and the GIL is released while it matches.  A pattern's errors
# are the caller's, not logged.  Pattern and values go in as UTF-8 bytes (RE2 still reads
# them as UTF-8: `.` is one character): the binding then skips mapping byte offsets back to
# characters, a third of the cost per value; only whether it matched is wanted.
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True


class _Compiled(Protocol):
    def search(self, text: bytes) -> object | None: ...


def _like_segment(text: str) -> re.Pattern[str]:
    """A piece of a LIKE pattern between two ``%``: literals and ``_`` (any one character),
    so a regex of fixed length without a quantifier: matching it cannot backtrack."""
    return re.compile("".join("." if ch == "_" else re.escape(ch) for ch in text), re.DOTALL)


def _like_predicate(pattern: str) -> Callable[[str], bool]:
    """SQL LIKE without a backtracking regex: the ``%``-separated segments, each of a fixed
    length, matched left to right: the first at the start, the last at the end, each one
    between at its leftmost place (which leaves the most room for the rest, so it finds a
    match when there is one).  A segment search costs at most the value's length times the
    segment's; Python's re does it at C speed, several times faster per value than RE2's
    binding, and LIKE runs over every distinct value of a key.  With one ``%`` at most, the
    whole pattern is one such regex (one ``.*`` backtracks over one position at a time)."""
    texts = pattern.split("%")
    if "_" not in pattern:  # literal runs only: str methods, several times faster than re
        if len(texts) == 1:
            return lambda v: v == pattern
        head, tail = texts[0], texts[-1]
        if len(texts) == 2:
            if not tail:
                return lambda v: v.startswith(head)
            if not head:
                return lambda v: v.endswith(tail)
            least = len(head) + len(tail)
            return lambda v: len(v) >= least and v.startswith(head) and v.endswith(tail)
        if len(texts) == 3 and not head and not tail and texts[1]:
            inner = texts[1]
            return lambda v: inner in v
    if len(texts) <= 2:
        whole = re.compile(".*".join(_like_segment(t).pattern for t in texts), re.DOTALL)
        return lambda v: whole.fullmatch(v) is not None
    first, last = _like_segment(texts[0]), _like_segment(texts[-1])
    middle = [_like_segment(t) for t in texts[1:-1] if t]
    n_first, n_last = len(texts[0]), len(texts[-1])

    def matches(value: str) -> bool:
        end = len(value) - n_last  # where the last segment must start
        if end < n_first or first.match(value) is None:
            return False
        at = n_first
        for segment in middle:
            found = segment.search(value, at, end)
            if found is None:
                return False
            at = found.end()
        return last.fullmatch(value, end) is not None

    return matches


def _never(value: str) -> bool:
    return False


def pattern_predicate(op: str, pattern: str) -> Callable[[str], bool]:
    """Whether a value matches ``pattern`` under ``op`` (LIKE, ILIKE, RLIKE; a ``NOT`` op is
    negated by the caller).  RLIKE is an unanchored RE2 search: a pattern RE2 does not
    accept (a backreference, lookaround, or anything invalid) matches nothing."""
    base = op.removeprefix("NOT ")
    if base == "LIKE":
        return _like_predicate(pattern)
    if base == "ILIKE":
        ilike = _like_predicate(pattern.lower())
        return lambda v: ilike(v.lower())
    compiled: list[_Compiled] = []

    def long_value(v: str) -> bool:  # (a simple form is always valid RE2: compiled once)
        if not compiled:
            compiled.append(re2.compile(pattern.encode(), _RE2_OPTIONS))
        return compiled[0].search(v.encode()) is not None

    simple = rlike.simple_search(pattern, long_value)
    if simple is not None:  # (decided as RE2 does, without the binding's cost per call)
        return simple
    try:
        regex: _Compiled = re2.compile(pattern.encode(), _RE2_OPTIONS)
    except (re2.error, ValueError, OverflowError):
        return _never
    literal = regex_literal(pattern)
    if literal:  # most values fail `in`, far cheaper a call than RE2's binding
        return lambda v: literal in v and regex.search(v.encode()) is not None
    return lambda v: regex.search(v.encode()) is not None


def lua_pattern(op: str, pattern: str) -> tuple[str, int, str] | None:
    """The M leaf form ``(op, negated, pattern)`` of a LIKE / ILIKE / RLIKE (NOT too) that
    tt_query's matcher (lua/pattern.lua) decides exactly as :func:`pattern_predicate`; None
    for an ILIKE whose lowered pattern is not ASCII (Lua cannot lower other characters) and
    for an RLIKE Lua's patterns cannot decide alike (:func:`rlike.lua_form`)."""
    base = op.removeprefix("NOT ")
    negated = int(op.startswith("NOT "))
    if base == "LIKE":
        return ("L", negated, pattern)
    if base == "ILIKE" and pattern.lower().isascii():
        return ("I", negated, pattern.lower())
    if base == "RLIKE":  # (a simple form is always valid RE2)
        lua = rlike.lua_form(pattern)
        return None if lua is None else ("R", negated, lua)
    return None


def _like_runs(pattern: str) -> tuple[str, ...]:
    """The runs of literal characters of a LIKE pattern: its start (empty when it starts
    with ``%`` or ``_``), then the non-empty runs after it."""
    first, *rest = re.split("[%_]", pattern)
    return (first, *(run for run in rest if run))


def _like_lead(pattern: str) -> tuple[str | int, ...]:
    """A LIKE pattern up to its first ``%``: literal runs and counts of ``_``, e.g.
    ``user_12%`` -> ``('user', 1, '12')``."""
    head = pattern.split("%", 1)[0]
    return tuple(len(piece) if piece[0] == "_" else piece for piece in re.findall("_+|[^_]+", head))


def _tag_number(text: str) -> float | None:
    return float(text) if _TAG_NUMBER.fullmatch(text) else None


_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _numeric_predicate(op: str, wanted: float) -> Callable[[str], bool]:
    compare = _NUMERIC_OPS[op]

    def predicate(value: str) -> bool:
        number = _tag_number(value)
        return number is not None and compare(number, wanted)

    return predicate


def _score(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return repr(value)


def _range(zset: ZsetName, op: str, value: float, text: str) -> LogicalNode:
    if isinstance(value, float) and math.isnan(value):
        return LConst(False, text)
    v = _score(value)
    if op == "=":
        return LRange(zset, v, v, text)
    if op == "<":
        return LRange(zset, "-inf", f"({v}", text)
    if op == "<=":
        return LRange(zset, "-inf", v, text)
    if op == ">":
        return LRange(zset, f"({v}", "+inf", text)
    if op == ">=":
        return LRange(zset, v, "+inf", text)
    return LOr((LRange(zset, "-inf", f"({v}", text), LRange(zset, f"({v}", "+inf", text)))


def _clause_text(node: Comparison) -> str:
    from tracetags.query.parser import render

    try:
        return render(node, verify=False)  # (a label: explain's, and the plan's texts)
    except ValueError:
        return f"{node.field.entity} {node.field.key!r} {node.op} {node.value!r}"


def _comparison(node: Comparison) -> LogicalNode:
    text = _clause_text(node)
    entity, key, op, value = node.field.entity, node.field.key, node.op, node.value
    if op in ("RLIKE", "NOT RLIKE") and isinstance(value, str):
        like = regex_as_like(value)
        if like is not None:  # a literal regex: the LIKE's indexes and matchers serve it
            op, value = ("LIKE" if op == "RLIKE" else "NOT LIKE"), like
    if op in ("LIKE", "NOT LIKE") and isinstance(value, str) and not ("%" in value or "_" in value):
        # a LIKE without a wildcard holds for that one value (SQL: NULL for none): = and !=
        # serve it, by the value's set or the ids hash, not a read of the key's values
        op = "=" if op == "LIKE" else "!="
    if entity == "attribute" and key in SCORE_INDEXES:
        assert isinstance(value, (int, float))
        return _range(SCORE_INDEXES[key], op, value, text)
    if _matches_any(op, value):
        # LIKE '%' holds for every present value: the key's presence, no value read (a
        # trace always has an id); NOT LIKE '%' holds for none
        if op.startswith("NOT "):
            return LConst(False, text)
        if entity == "attribute" and key == "request_id":
            return LConst(True, text)
        if entity == "attribute":
            return LPresent(ValueIndex("status" if key == "status" else "client_request_id"), text)
        return LPresent(ValueIndex("tag" if entity == "tag" else "metadata", key), text)
    if entity == "attribute" and key == "request_id":
        if op in ("=", "!=", "IN", "NOT IN"):
            ids = value if isinstance(value, tuple) else (str(value),)
            leaf = LIds(tuple(ids), text)
            return leaf if op in ("=", "IN") else LNot(leaf)
        assert isinstance(value, str)
        matched = pattern_predicate(op, value)
        lua = lua_pattern(op, value)
        if op.startswith("NOT "):
            return LIdMatch(lambda v: not matched(v), text, lua=lua)
        needle = needle_of(op, value, regex_literal(value) if op == "RLIKE" else None)
        if op == "RLIKE":
            lead, end = regex_prefix(value), regex_suffix(value)
            prefixes = None if lead is None else (lead,)
            suffixes = None if end is None else (end,)
            return LIdMatch(matched, text, prefixes, suffixes, lua=lua, needle=needle)
        return LIdMatch(
            matched, text, id_prefixes(op, value), id_suffixes(op, value), lua=lua, needle=needle
        )
    if entity == "attribute":
        index = ValueIndex("status" if key == "status" else "client_request_id")
    else:
        index = ValueIndex("tag" if entity == "tag" else "metadata", key)
    if op == "IS NULL":
        return LNot(LPresent(index, text))
    if op == "IS NOT NULL":
        return LPresent(index, text)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            return LConst(False, text)
        return LMatch(index, _numeric_predicate(op, value), False, text)
    if op == "=":
        assert isinstance(value, str)
        return LValues(index, (value,), text)
    if op == "IN":
        assert isinstance(value, tuple)
        return LValues(index, value, text)
    if op in ("!=", "NOT IN"):
        values = value if isinstance(value, tuple) else (str(value),)
        excluded = frozenset(values)
        if index.kind == "status":
            # Few distinct statuses: the complement is a short IN list.
            return LMatch(index, lambda v: v not in excluded, False, text)
        return LAnd((LPresent(index, text), LNot(LValues(index, tuple(values), text))))
    assert isinstance(value, str)
    lua = lua_pattern(op, value)
    needle = needle_of(op, value, regex_literal(value) if op == "RLIKE" else None)
    if op == "ILIKE":
        alts = id_prefixes(op, value)
        if alts is not None and len(alts) > _MAX_SEEKS:
            alts = None
        predicate = pattern_predicate(op, value)
        return LMatch(index, predicate, False, text, alts=alts, lua=lua, needle=needle)
    if op == "RLIKE":
        # an anchored literal lead: only the values starting with it are read
        lead = regex_prefix(value)
        alts = None if lead is None else (lead,)
        predicate = pattern_predicate(op, value)
        return LMatch(index, predicate, False, text, alts=alts, lua=lua, needle=needle)
    if op != "LIKE":
        return LMatch(index, pattern_predicate(op, value), op.startswith("NOT "), text, lua=lua)
    predicate = pattern_predicate(op, value)
    lead_is_pattern = value.endswith("%") and value.count("%") == 1
    return LMatch(
        index,
        predicate,
        False,
        text,
        _like_runs(value),
        _like_lead(value),
        lead_is_pattern,
        lua=lua,
        needle=needle,
    )


def _matches_any(op: str, value: object) -> bool:
    """A LIKE / ILIKE pattern of only ``%``: every value matches."""
    return (
        op.removeprefix("NOT ") in ("LIKE", "ILIKE")
        and isinstance(value, str)
        and value != ""
        and value.strip("%") == ""
    )


def logical(expr: Expr | None, experiment_ids: Sequence[str] | None) -> LogicalNode:
    """The filter (scoped to the experiments, if any) as partition-independent index terms."""
    parts: list[LogicalNode] = []
    if experiment_ids:
        ids = tuple(dict.fromkeys(experiment_ids))
        parts.append(LValues(ValueIndex("experiment"), ids, f"experiment_ids {list(ids)!r}"))
    if expr is not None:
        parts.append(_convert(expr))
    if not parts:
        return LConst(True, "every trace")
    return parts[0] if len(parts) == 1 else LAnd(tuple(parts))


def _convert(expr: Expr) -> LogicalNode:
    if isinstance(expr, Comparison):
        return _comparison(expr)
    if isinstance(expr, Not):
        return LNot(_convert(expr.child))
    if isinstance(expr, And):
        return LAnd(tuple(_convert(c) for c in expr.children))
    if isinstance(expr, Or):
        return LOr(tuple(_convert(c) for c in expr.children))
    raise TypeError(f"not a filter node: {expr!r}")


def leaves(node: LogicalNode) -> list[LogicalLeaf]:
    """The leaves of ``node``, left to right (a leaf met twice is listed twice)."""
    if isinstance(node, LAnd | LOr):
        return [leaf for child in node.children for leaf in leaves(child)]
    if isinstance(node, LNot):
        return leaves(node.child)
    return [node]


def order_index(key: OrderKey) -> ValueIndex | None:
    """The value index whose distinct zset lists the values of a string order key."""
    f = key.field
    if f.entity == "tag":
        return ValueIndex("tag", f.key)
    if f.entity == "metadata":
        return ValueIndex("metadata", f.key)
    if f.key == "status":
        return ValueIndex("status")
    if f.key == "experiment_id":
        return ValueIndex("experiment")
    return None


def order_zset(key: OrderKey) -> ZsetName | None:
    """The sorted set of traces by a numeric order key (None for any other key)."""
    if key.field.entity != "attribute":
        return None
    return SCORE_INDEXES.get(key.field.key)


#: Characters other than the ASCII pair whose ``str.lower()`` starts with the letter.
_FOLDS_TO = {"k": "\u212a", "i": "\u0130"}
_MAX_PREFIXES = 64
#: An ILIKE on a tag or metadata key seeks at most this many case variants of its lead.
_MAX_SEEKS = 16


_REGEX_META: Final = frozenset("\\.[]{}()*+?^$|")
_REPEAT: Final = re.compile(r"\{[0-9]+(,[0-9]*)?\}")


def regex_as_like(pattern: str) -> str | None:
    """The LIKE pattern that holds for exactly the values the RLIKE ``pattern`` finds, when
    the regex is literal text with optional anchors (``abc``: ``%abc%``; ``^abc``:
    ``abc%``; ``abc$``: ``%abc``; ``^abc$``: ``abc``); None for any other regex, and when
    the text holds ``%`` or ``_`` (LIKE has no escape).

    RE2's search of a literal is a substring test at any position, newlines included, as
    LIKE's ``%`` matches any run; without ``(?m)``, ``^`` and ``$`` match only at the
    value's start and end.  An escape counts as its character only for ASCII punctuation
    (``\\.``, ``\\-``); a pattern RE2 rejects keeps matching nothing."""
    body = pattern
    start = body.startswith("^")
    if start:
        body = body[1:]
    head = body[:-1]
    end = body.endswith("$") and (len(head) - len(head.rstrip("\\"))) % 2 == 0
    if end:
        body = body[:-1]
    text: list[str] = []
    at = 0
    while at < len(body):
        ch = body[at]
        if ch == "\\":
            escaped = body[at + 1 : at + 2]
            if not escaped or escaped not in string.punctuation:
                return None
            text.append(escaped)
            at += 2
            continue
        if ch in _REGEX_META or ch == "\n":
            return None
        text.append(ch)
        at += 1
    literal = "".join(text)
    if not literal or "%" in literal or "_" in literal:
        return None
    try:
        re2.compile(pattern.encode(), _RE2_OPTIONS)
    except (re2.error, ValueError, OverflowError):
        return None
    return ("" if start else "%") + literal + ("" if end else "%")


def regex_prefix(pattern: str) -> str | None:
    """The literal text every match of the RLIKE ``pattern`` starts with, when the pattern is
    anchored (``^abc...``); None when there is none or it is not certain.

    Conservative by construction: any ``|`` or ``(?`` (an alternative, a flag such as
    ``(?i)`` or ``(?m)``) gives None; the prefix ends at the first character that is not a
    literal (an escaped punctuation character is one), at the first non-ASCII character, and
    loses its last character when a quantifier that allows zero of it (``*``, ``?``, ``{``)
    follows.  An RE2 ``^`` without ``(?m)`` matches only at the start of the value."""
    if not pattern.startswith("^") or "|" in pattern or "(?" in pattern:
        return None
    out: list[str] = []
    at = 1
    while at < len(pattern):
        ch = pattern[at]
        if ch == "\\":
            escaped = pattern[at + 1 : at + 2]
            if not escaped or escaped.isalnum() or not escaped.isascii() or escaped == "\n":
                break
            out.append(escaped)
            at += 2
            continue
        if ch in _REGEX_META or not ch.isascii() or ch == "\n":
            break
        out.append(ch)
        at += 1
    if out and pattern[at : at + 1] in ("*", "?", "{"):
        out.pop()
    return "".join(out) or None


def regex_suffix(pattern: str) -> str | None:
    """The literal text every match of the RLIKE ``pattern`` ends with, when the pattern is
    anchored at its end (``[0-9]ab$``: ``ab``); None when there is none or it is not
    certain.

    Conservative as :func:`regex_prefix`: any ``|``, ``(?``, ``\\Q`` or ``[:`` gives None.
    The pattern is read forward into atoms (a character class, a ``{...}`` repeat, an
    escape with a letter or digit and the letters and digits after it (its argument, as
    in ``\\x41``), any operator, a non-ASCII character: not literal; an
    escaped ASCII punctuation character: literal), and the suffix is the run of literal
    atoms right before a final unescaped ``$`` (RE2 without ``(?m)``: the value's end)."""
    if any(bad in pattern for bad in ("|", "(?", "\\Q", "[:")):
        return None
    atoms: list[str | None] = []  # a literal character, or None
    at, end_anchor = 0, False
    while at < len(pattern):
        ch = pattern[at]
        end_anchor = False
        if ch == "\\":
            escaped = pattern[at + 1 : at + 2]
            atoms.append(escaped if escaped and escaped in string.punctuation else None)
            at += 2
            if escaped.isalnum():  # its argument too (\x41, \101): letters and digits
                while at < len(pattern) and pattern[at].isascii() and pattern[at].isalnum():
                    at += 1
        elif ch in "[{":
            close = at + 1
            if ch == "[":  # a ']' first in the class (after any '^') is one of its members
                close += pattern[close : close + 1] == "^"
                close += pattern[close : close + 1] == "]"
            while close < len(pattern) and pattern[close] != ("]" if ch == "[" else "}"):
                close += 2 if pattern[close] == "\\" else 1
            atoms.append(None)
            at = close + 1
        else:
            literal = ch not in _REGEX_META and ch.isascii() and ch != "\n"
            atoms.append(ch if literal else None)
            end_anchor = ch == "$"
            at += 1
    if not end_anchor:
        return None
    tail: list[str] = []
    for atom in reversed(atoms[:-1]):
        if atom is None:
            break
        tail.append(atom)
    return "".join(reversed(tail)) or None


def regex_literal(pattern: str) -> str | None:
    """The longest run of literal text every match of the RLIKE ``pattern`` contains, or
    None when none is certain: the client tests it (``in``, at C speed) before RE2.

    Conservative: any ``|``, ``(?``, ``\\Q``, ``[:`` or escape with an argument
    (``\\x41``, ``\\p{L}``) gives None; runs are read outside groups and character
    classes only; a run ends at any operator, and loses its last character when a
    quantifier that allows zero of it follows."""
    if any(bad in pattern for bad in ("|", "(?", "\\Q", "[:")):
        return None
    runs: list[str] = []
    run: list[str] = []
    depth = 0
    at = 0

    def end(drop_last: bool = False) -> None:
        if drop_last and run:
            run.pop()
        if run:
            runs.append("".join(run))
        run.clear()

    while at < len(pattern):
        ch = pattern[at]
        if ch == "[":  # a class: skip it (a first ']' or '^]' is a member)
            end()
            at += 1
            if pattern[at : at + 1] == "^":
                at += 1
            if pattern[at : at + 1] == "]":
                at += 1
            while at < len(pattern) and pattern[at] != "]":
                at += 2 if pattern[at] == "\\" else 1
            at += 1
            continue
        if ch == "\\":
            escaped = pattern[at + 1 : at + 2]
            if escaped.isalnum() and escaped not in "dDwWsSbBAz":
                return None  # \x41, \p{L}, \123...: an escape with an argument
            if depth == 0 and escaped and not escaped.isalnum() and escaped.isascii():
                run.append(escaped)
            else:
                end()
            at += 2
        elif ch in "*?{":
            end(drop_last=True)
            repeat = _REPEAT.match(pattern, at) if ch == "{" else None
            at = repeat.end() if repeat else at + 1
        elif ch in _REGEX_META:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth = max(0, depth - 1)
            end()
            at += 1
        else:
            if depth == 0:
                run.append(ch)
            at += 1
    end()
    return max(runs, key=len) if runs else None


def id_prefixes(op: str, pattern: str) -> tuple[str, ...] | None:
    """The byte prefixes a trace id matching ``LIKE``/``ILIKE`` ``pattern`` must start with
    (its literal lead; for ILIKE every case variant, Unicode folding included), or None
    when there is no lead, it holds non-ASCII characters, or it has too many variants."""
    if op not in ("LIKE", "ILIKE"):
        return None
    return _case_variants(op, re.split("[%_]", pattern, maxsplit=1)[0])


def id_suffixes(op: str, pattern: str) -> tuple[str, ...] | None:
    """The byte suffixes a trace id matching ``LIKE``/``ILIKE`` ``pattern`` must end with
    (its literal end after a wildcard, in every case variant for ILIKE), or None as for
    :func:`id_prefixes` (a pattern without a wildcard is its own prefix)."""
    if op not in ("LIKE", "ILIKE"):
        return None
    cut = max(pattern.rfind("%"), pattern.rfind("_"))
    return None if cut < 0 else _case_variants(op, pattern[cut + 1 :])


def _case_variants(op: str, literal: str) -> tuple[str, ...] | None:
    if not literal or not literal.isascii():
        return None
    if op == "LIKE":
        return (literal,)
    variants = [""]
    for ch in literal.lower():
        options = [ch, ch.upper()] if ch.isalpha() else [ch]
        if ch in _FOLDS_TO:
            options.append(_FOLDS_TO[ch])
        variants = [p + o for p in variants for o in options]
        if len(variants) > _MAX_PREFIXES:
            return None
    return tuple(variants)
