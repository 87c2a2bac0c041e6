"""Filter strings and order_by keys: parse them into a typed AST, render them back."""

from tracetags.query.ast import And, Comparison, Entity, Expr, Field, Not, Op, Or, OrderKey, Value
from tracetags.query.parser import (
    effective_order,
    parse_filter,
    parse_order_by,
    render,
    render_order_key,
    strip_positions,
)

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
    "effective_order",
    "parse_filter",
    "parse_order_by",
    "render",
    "render_order_key",
    "strip_positions",
]
