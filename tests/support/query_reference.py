"""The filter language as plain Python: a naive evaluator over a list of traces (the test oracle).

Every trace is looked at and every clause evaluated directly from FILTER-LANGUAGE.md, checked
against MLflow 3.17.2 by tests/test_query_reference.py.  Traces have the dataset shape of
mlflow_oracle.py (final state after mutations; see :func:`apply_mutations`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from tracetags.query import (
    And,
    Comparison,
    Expr,
    Field,
    Not,
    Or,
    OrderKey,
    effective_order,
    parse_filter,
    parse_order_by,
)

__all__ = [
    "MAX_RESULTS_LIMIT",
    "Dialect",
    "apply_mutations",
    "evaluate",
    "field_value",
    "fold",
    "like_match",
    "matches",
    "parse_tag_number",
    "search",
    "sort_traces",
]

Trace: TypeAlias = Mapping[str, Any]
# "unicode": tracetags (ILIKE folds all of Unicode, like MLflow on PostgreSQL).
# "sqlite": MLflow on SQLite, whose lower() folds ASCII letters only.
Dialect: TypeAlias = Literal["unicode", "sqlite"]

NAME_TAG = "mlflow.traceName"
MAX_RESULTS_LIMIT = 50_000
RESERVED_METADATA = frozenset({"mlflow.trace.tokenUsage", "mlflow.trace.cost"})
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# What "a value that parses as a number" means for numeric comparisons on tags and metadata:
# a plain decimal literal, no whitespace, no inf/nan, no digit separators.
_TAG_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


# --- the dataset ----------------------------------------------------------------------------


def apply_mutations(
    traces: Iterable[Trace], mutations: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The final state: copies of ``traces`` with each tag set/delete applied in order.

    ``name`` is the tag ``mlflow.traceName`` (a mutation of that tag renames the trace).
    Mutations of unknown traces and deletes of missing tags do nothing.
    """
    state: dict[str, dict[str, Any]] = {}
    for trace in traces:
        tags = dict(trace.get("tags") or {})
        if trace.get("name") is not None:
            tags[NAME_TAG] = trace["name"]
        state[trace["trace_id"]] = {**trace, "tags": tags, "metadata": dict(trace["metadata"])}
    for mutation in mutations:
        changed = state.get(mutation["trace_id"])
        if changed is None:
            continue
        if mutation["op"] == "set":
            changed["tags"][mutation["key"]] = mutation["value"]
        elif mutation["op"] == "delete":
            changed["tags"].pop(mutation["key"], None)
        else:
            raise ValueError(f"unknown mutation op {mutation['op']!r}")
    for trace in state.values():
        trace["name"] = trace["tags"].get(NAME_TAG)
    return list(state.values())


def field_value(trace: Trace, field: Field) -> Any:
    """The value of ``field`` on ``trace``; None when missing."""
    if field.entity == "tag":
        if field.key == NAME_TAG and NAME_TAG not in trace["tags"]:
            return trace.get("name")
        return trace["tags"].get(field.key)
    if field.entity == "metadata":
        if field.key in RESERVED_METADATA and field.key in trace["metadata"]:
            raise NotImplementedError(f"reserved metadata {field.key!r} is not modelled")
        return trace["metadata"].get(field.key)
    key = field.key
    if key == "request_id":
        return trace["trace_id"]
    if key == "end_time_ms":
        return trace["timestamp_ms"] + (trace.get("execution_time_ms") or 0)
    if key in ("timestamp_ms", "execution_time_ms", "status", "client_request_id", "experiment_id"):
        return trace.get(key)
    raise ValueError(f"unknown attribute {key!r}")


# --- string matching ------------------------------------------------------------------------


def fold(text: str, dialect: Dialect = "unicode") -> str:
    """Case folding for ILIKE: ``str.lower`` (PostgreSQL's lower()), or ASCII-only on SQLite."""
    return text.lower() if dialect == "unicode" else text.translate(_ASCII_UPPER)


def _like_regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL)


def like_match(value: str, pattern: str) -> bool:
    """SQL LIKE: ``%`` any run, ``_`` one character, everything else literal, no escape."""
    return _like_regex(pattern).fullmatch(value) is not None


def rlike_match(value: str, pattern: str) -> bool:
    """Unanchored ``re.search``; an invalid pattern matches nothing."""
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return False


def parse_tag_number(text: str) -> float | None:
    """A tag/metadata value as a number for numeric comparisons, or None if it is not one."""
    return float(text) if _TAG_NUMBER.fullmatch(text) else None


_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _compare(trace: Trace, clause: Comparison, dialect: Dialect) -> bool:
    op, wanted = clause.op, clause.value
    value = field_value(trace, clause.field)
    if op == "IS NULL":
        return value is None
    if op == "IS NOT NULL":
        return value is not None
    if value is None:
        # A value comparison never matches a missing value, negated or not.
        return False
    if clause.is_numeric:
        if isinstance(value, str):
            number = parse_tag_number(value)
            return number is not None and _ORDERING[op](number, wanted)
        return _ORDERING[op](value, wanted)
    if op in ("=", "!="):
        return _ORDERING[op](value, wanted)
    if op in ("IN", "NOT IN"):
        assert isinstance(wanted, tuple)
        return (value in wanted) == (op == "IN")
    assert isinstance(wanted, str) and isinstance(value, str), clause
    negated = op.startswith("NOT ")
    base = op.removeprefix("NOT ")
    if base == "LIKE":
        hit = like_match(value, wanted)
    elif base == "ILIKE":
        hit = like_match(fold(value, dialect), fold(wanted, dialect))
    elif base == "RLIKE":
        hit = rlike_match(value, wanted)
    else:
        raise ValueError(f"unknown comparator {op!r}")
    return hit != negated


def matches(trace: Trace, expr: Expr | None, dialect: Dialect = "unicode") -> bool:
    """Does ``trace`` satisfy ``expr``?  NOT is the plain complement (a missing tag included)."""
    if expr is None:
        return True
    if isinstance(expr, Comparison):
        return _compare(trace, expr, dialect)
    if isinstance(expr, Not):
        return not matches(trace, expr.child, dialect)
    if isinstance(expr, And):
        return all(matches(trace, child, dialect) for child in expr.children)
    if isinstance(expr, Or):
        return any(matches(trace, child, dialect) for child in expr.children)
    raise TypeError(f"not a filter node: {expr!r}")


# --- ordering -------------------------------------------------------------------------------


def _sort_value(trace: Trace, field: Field) -> Any:
    value = field_value(trace, field)
    if field == Field(entity="attribute", key="experiment_id") and value is not None:
        # MLflow's experiment_id is an integer column: "10" sorts after "9".
        return (0, int(value), "") if str(value).isdigit() else (1, 0, str(value))
    return value


def sort_traces(traces: Iterable[Trace], order_keys: Sequence[OrderKey]) -> list[Trace]:
    """Sort by the effective order; missing values last whatever the direction."""
    items = list(traces)
    for key in reversed(effective_order(order_keys)):
        present = [t for t in items if _sort_value(t, key.field) is not None]
        missing = [t for t in items if _sort_value(t, key.field) is None]
        # Python's sort is stable with reverse=True too, so earlier passes break the ties.
        present.sort(key=functools.partial(_sort_value, field=key.field), reverse=not key.ascending)
        items = present + missing
    return items


# --- the search -----------------------------------------------------------------------------


def evaluate(
    traces: Iterable[Trace],
    experiment_ids: Sequence[str] | None,
    filter_ast: Expr | None,
    order_keys: Sequence[OrderKey] = (),
    max_results: int | None = None,
    *,
    offset: int = 0,
    dialect: Dialect = "unicode",
) -> list[str]:
    """Ordered ids of the traces in ``experiment_ids`` (None or []: all) matching ``filter_ast``.

    ``order_keys`` are the user's keys (tie-breakers are added here); ``max_results`` None
    means every match; ``offset`` skips that many matches first (a page).
    """
    # Like MLflow, an empty list does not scope the search at all.
    scope = set(experiment_ids) if experiment_ids else None
    found = [
        t
        for t in traces
        if (scope is None or t["experiment_id"] in scope) and matches(t, filter_ast, dialect)
    ]
    ordered = [t["trace_id"] for t in sort_traces(found, order_keys)]
    end = None if max_results is None else offset + max_results
    return ordered[offset:end]


def search(
    traces: Iterable[Trace],
    experiment_ids: Sequence[str] | None = None,
    filter_string: str | None = None,
    order_by: Sequence[str] | None = None,
    max_results: int | None = 100,
    *,
    offset: int = 0,
    dialect: Dialect = "unicode",
) -> list[str]:
    """:func:`evaluate` from the strings a caller passes; raises the parser's errors.

    ``max_results`` None means all matches (like the fluent API); otherwise 1..50000.
    """
    filter_ast = parse_filter(filter_string)
    order_keys = parse_order_by(order_by)
    if max_results is not None and (
        isinstance(max_results, bool)
        or not isinstance(max_results, int)
        or not 1 <= max_results <= MAX_RESULTS_LIMIT
    ):
        raise ValueError(f"max_results must be an integer in 1..{MAX_RESULTS_LIMIT}")
    return evaluate(
        traces,
        experiment_ids,
        filter_ast,
        order_keys,
        max_results,
        offset=offset,
        dialect=dialect,
    )
