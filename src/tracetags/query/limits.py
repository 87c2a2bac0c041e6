"""Declared limits on a filter's size: terms, OR width, IN-list length, pattern length.

Each is checked on the parsed filter, before any work in Redis, and refused with a
``FilterSemanticError`` whose caret points at the first term over the limit (docs/limits.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NoReturn

import msgspec

from tracetags.errors import FilterSemanticError
from tracetags.query.ast import And, Comparison, Expr, Not, Or
from tracetags.query.lexer import raise_at

if TYPE_CHECKING:
    from tracetags.settings import Settings

__all__ = ["DEFAULT_FILTER_LIMITS", "FilterLimits", "check_filter"]

_PATTERN_OPS: Final = frozenset({"LIKE", "ILIKE", "RLIKE", "NOT LIKE", "NOT ILIKE", "NOT RLIKE"})


class FilterLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Settings ``filter_max_terms``, ``filter_max_or_width``, ``filter_max_in_values``,
    ``filter_max_pattern_chars``."""

    max_terms: int = 500
    max_or_width: int = 500
    max_in_values: int = 10_000
    max_pattern_chars: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> FilterLimits:
        return cls(
            max_terms=settings.filter_max_terms,
            max_or_width=settings.filter_max_or_width,
            max_in_values=settings.filter_max_in_values,
            max_pattern_chars=settings.filter_max_pattern_chars,
        )


DEFAULT_FILTER_LIMITS: Final = FilterLimits()


def _first_position(expr: Expr) -> int:
    while not isinstance(expr, Comparison):
        if isinstance(expr, Not):
            if expr.position >= 0:
                return expr.position
            expr = expr.child
        else:
            expr = expr.children[0]
    return max(expr.position, 0)


def _refuse(reason: str, source: str, position: int) -> NoReturn:
    raise_at(FilterSemanticError, reason, source, position)


def check_filter(expr: Expr | None, source: str, limits: FilterLimits) -> None:
    """Raise FilterSemanticError when ``expr`` (parsed from ``source``) is over a limit."""
    if expr is None:
        return
    terms = 0
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Comparison):
            terms += 1
            if terms > limits.max_terms:
                _refuse(
                    f"Filter has more than {limits.max_terms} terms (filter_max_terms)",
                    source,
                    max(node.position, 0),
                )
            value = node.value
            if isinstance(value, tuple) and len(value) > limits.max_in_values:
                _refuse(
                    f"IN list of {len(value)} values, over the limit of"
                    f" {limits.max_in_values} (filter_max_in_values)",
                    source,
                    max(node.position, 0),
                )
            if (
                node.op in _PATTERN_OPS
                and isinstance(value, str)
                and len(value) > limits.max_pattern_chars
            ):
                _refuse(
                    f"{node.op} pattern of {len(value)} characters, over the limit of"
                    f" {limits.max_pattern_chars} (filter_max_pattern_chars)",
                    source,
                    max(node.position, 0),
                )
        elif isinstance(node, Not):
            stack.append(node.child)
        else:
            if isinstance(node, Or) and len(node.children) > limits.max_or_width:
                _refuse(
                    f"OR of {len(node.children)} terms, over the limit of"
                    f" {limits.max_or_width} (filter_max_or_width)",
                    source,
                    _first_position(node.children[limits.max_or_width]),
                )
            assert isinstance(node, And | Or)
            stack.extend(reversed(node.children))
