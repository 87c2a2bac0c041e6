"""The typed filter AST the parser produces and the logical rewrite (query.logical) consumes.

Nodes are frozen msgspec Structs. ``And``/``Or`` are flat (never nested in a node of their
own kind) and have at least two children; parentheses leave no trace.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "And",
    "Comparison",
    "Entity",
    "Expr",
    "Field",
    "Not",
    "Op",
    "Or",
    "OrderKey",
    "Value",
]

Entity: TypeAlias = Literal["tag", "metadata", "attribute"]

Op: TypeAlias = Literal[
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "LIKE",
    "ILIKE",
    "RLIKE",
    "NOT LIKE",
    "NOT ILIKE",
    "NOT RLIKE",
    "IN",
    "NOT IN",
    "IS NULL",
    "IS NOT NULL",
]

# str: a quoted string; int/float: an unquoted number (or a quoted one on a numeric
# attribute); tuple: the strings of an IN list; None: IS [NOT] NULL.
Value: TypeAlias = str | int | float | tuple[str, ...] | None


class Field(msgspec.Struct, frozen=True, kw_only=True):
    """What a clause looks at, after aliases and rewrites (``name`` -> tag mlflow.traceName)."""

    entity: Entity
    key: str


class Comparison(msgspec.Struct, frozen=True, kw_only=True, tag="comparison"):
    """``field op value``; ``position`` is the offset of the identifier (-1 when synthetic)."""

    field: Field
    op: Op
    value: Value
    position: int = -1

    @property
    def is_numeric(self) -> bool:
        """True when the value is a number, so the comparison is numeric, not by string."""
        return isinstance(self.value, (int, float))


class Not(msgspec.Struct, frozen=True, kw_only=True, tag="not"):
    """Complement within the searched traces (a missing tag makes the child false)."""

    child: Expr
    position: int = -1


class And(msgspec.Struct, frozen=True, kw_only=True, tag="and"):
    children: tuple[Expr, ...]


class Or(msgspec.Struct, frozen=True, kw_only=True, tag="or"):
    children: tuple[Expr, ...]


Expr: TypeAlias = Comparison | Not | And | Or


class OrderKey(msgspec.Struct, frozen=True, kw_only=True):
    """One order_by key; missing values sort last in both directions."""

    field: Field
    ascending: bool = True
