"""RLIKE patterns of a simple form (literals, character classes, ``.``, ``^`` first and
``$`` last; no quantifier, group or alternation), which Python's ``re`` decides exactly as
RE2 does at a fraction of the binding's cost a value, and which, when ASCII without ``.``
or a negated class, tt_query's Lua matches on each candidate's value (``string.find``)
exactly as RE2 does.

Without a quantifier no backtracking can run away, so ``re`` is safe on any value; RE2
still decides every other pattern.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["ITEMS_MAX", "RE_WORK_MAX", "lua_form", "simple_search"]

_PUNCT: Final = frozenset(string.punctuation)
#: Never a literal or class member of the simple form (operators, or set syntax that
#: Python's re warns about).
_OPERATORS: Final = frozenset("^|?*+(){}]")
_IN_CLASS_NEVER: Final = frozenset("\\[^&~|")
#: A simple form has at most this many items (characters, classes, '.'), and Python's re
#: decides it on values of up to RE_WORK_MAX characters over the items: its search tries
#: each start against the items, so the bound keeps its work per value as RE2's order.
ITEMS_MAX: Final = 32
RE_WORK_MAX: Final = 16_384


@dataclass(frozen=True)
class _Class:
    negated: bool
    ranges: tuple[tuple[str, str], ...]  # (first, last), a single member as (c, c)


_Item = str | _Class | None  # a literal character, a class, or None for '.'


@dataclass(frozen=True)
class _Simple:
    items: tuple[_Item, ...]
    start: bool
    end: bool


def _same_kind(lo: str, hi: str) -> bool:
    return any(
        lo in chars and hi in chars
        for chars in (string.digits, string.ascii_lowercase, string.ascii_uppercase)
    )


def _parse_class(pattern: str, at: int) -> tuple[_Class, int] | None:
    """The class opened before ``at`` and where the pattern goes on after it."""
    negated = pattern[at : at + 1] == "^"
    at += negated
    ranges: list[tuple[str, str]] = []
    while at < len(pattern) and pattern[at] != "]":
        ch = pattern[at]
        if ch in _IN_CLASS_NEVER:
            return None
        if pattern[at + 1 : at + 2] == "-" and pattern[at + 2 : at + 3] not in ("", "]"):
            hi = pattern[at + 2]
            if not (_same_kind(ch, hi) and ch <= hi):
                return None
            ranges.append((ch, hi))
            at += 3
            continue
        if ch == "-" and ranges and pattern[at + 1 : at + 2] != "]":
            return None  # ('-' only first or last)
        ranges.append((ch, ch))
        at += 1
    if at >= len(pattern) or not ranges:
        return None
    return _Class(negated, tuple(ranges)), at + 1


def _parse(pattern: str) -> _Simple | None:
    at = 1 if pattern.startswith("^") else 0
    start, end = at == 1, False
    items: list[_Item] = []
    while at < len(pattern):
        ch = pattern[at]
        if ch == "$" and at == len(pattern) - 1:
            end = True
            at += 1
        elif ch == "\\":
            escaped = pattern[at + 1 : at + 2]
            if escaped not in _PUNCT:
                return None  # (\d, \w, \b, \x41...: other meanings, or Unicode-dependent)
            items.append(escaped)
            at += 2
        elif ch == "[":
            parsed = _parse_class(pattern, at + 1)
            if parsed is None:
                return None
            item, at = parsed
            items.append(item)
        elif ch == ".":
            items.append(None)
            at += 1
        elif ch in _OPERATORS or ch == "$":
            return None
        else:
            items.append(ch)
            at += 1
    if len(items) > ITEMS_MAX:
        return None
    return _Simple(tuple(items), start, end)


def _python(simple: _Simple) -> str:
    parts = [r"\A"] if simple.start else []
    for item in simple.items:
        if item is None:
            parts.append(".")  # (as RE2's by default: any character but a newline)
        elif isinstance(item, str):
            parts.append(re.escape(item))
        else:
            members = "".join(
                re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                for lo, hi in item.ranges
            )
            parts.append(f"[{'^' if item.negated else ''}{members}]")
    if simple.end:
        parts.append(r"\Z")  # ('$' in re also matches before a final newline)
    return "".join(parts)


def simple_search(pattern: str, longer: Callable[[str], bool]) -> Callable[[str], bool] | None:
    """Whether a value holds a match of ``pattern`` (RE2's unanchored search), by Python's
    re for a value of up to :data:`RE_WORK_MAX` characters times items, else by ``longer``
    (RE2's linear search: re's search tries each start against each item); None when the
    pattern is not of the simple form."""
    simple = _parse(pattern)
    if simple is None:
        return None
    compiled = re.compile(_python(simple))
    most = RE_WORK_MAX // max(1, len(simple.items))

    def search(value: str) -> bool:
        if len(value) > most:
            return longer(value)
        return compiled.search(value) is not None

    return search


def _lua_char(ch: str) -> str:
    return ch if ch.isalnum() else f"%{ch}"


def lua_form(pattern: str) -> str | None:
    """``pattern`` as a Lua pattern that ``string.find`` matches on a value's UTF-8 bytes
    exactly where RE2 finds a match; None unless the pattern is of the simple form, ASCII
    (printable), without ``.`` or a negated class: an ASCII byte of UTF-8 is always a whole
    character, so bytes and characters then match alike."""
    simple = _parse(pattern)
    if simple is None:
        return None
    parts = ["^"] if simple.start else []
    for item in simple.items:
        if item is None or (isinstance(item, _Class) and item.negated):
            return None
        chars = [item] if isinstance(item, str) else [c for r in item.ranges for c in r]
        if not all(" " <= c <= "~" for c in chars):
            return None
        if isinstance(item, str):
            parts.append(_lua_char(item))
        else:
            members = "".join(_lua_char(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in item.ranges)
            parts.append(f"[{members}]")
    if simple.end:
        parts.append("$")
    return "".join(parts)
