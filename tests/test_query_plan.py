"""The plans tt_query receives: their msgpack form is pinned (the Lua side reads these maps),
and they round-trip through the typed Structs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from tracetags.keys import Keys
from tracetags.query.ast import OrderKey
from tracetags.query.logical import logical
from tracetags.query.parser import effective_order, parse_filter, parse_order_by
from tracetags.query.physical import PNode, _and, _leaf, _or, physical
from tracetags.query.plan import CardsPlan, QueryPlan, ValuesPlan
from tracetags.query.probe import probe_commands
from tracetags.query.strategy import PartitionPlan, plan_partition

P = "ns:{p00}"
ERROR = ["V", f"{P}:std", f"{P}:st:", "ERROR"]
PROD = ["V", f"{P}:td:3:env", f"{P}:tv:3:env", "production"]
NAME = ["V", f"{P}:td:16:mlflow.traceName", f"{P}:tv:16:mlflow.traceName", "chat"]
SLOW = ["R", "du", "(5000", "+inf"]
DEFAULT_ORDER = [["n", "s", 0], ["s", "i", 1]]


def _v(spec: list[Any], est: float, field: str | None = None) -> PNode:
    node = _leaf("V", spec, est, "v", enumerable=True)
    node.field = field
    return node


def _plan(
    tree: Callable[[int], PNode], total: int, order_by: list[str] | None = None, **kw: Any
) -> PartitionPlan:
    order: list[OrderKey] = effective_order(parse_order_by(order_by))
    return plan_partition(0, tree(total), total, order=order, **kw)


def _slow_prod_errors(total: int) -> PNode:
    slow = _leaf("R", SLOW, 0.0333 * total, "slow", enumerable=True)
    return _and([slow, _v(ERROR, 0.196 * total), _v(PROD, 0.7 * total)], total)


USERS = ["V", f"{P}:td:7:user_id", f"{P}:tv:7:user_id", *(f"user_12{i}" for i in range(10))]
SLA = ["V", f"{P}:td:8:sla_tier", f"{P}:tv:8:sla_tier", "critical"]

#: The page plan of `_slow_prod_errors` (collected; a walk adds its fields).
SLOW_PROD_ERRORS = {
    "mode": "page",
    "expr": ["&", SLOW, ERROR, PROD],
    "sources": [SLOW],
    "residual": ["&", ERROR, PROD],
    "order": DEFAULT_ORDER,
    "limit": 101,
}

#: (strategy, the plan as tt_query decodes it) for plans of every shape.
CASES: dict[str, tuple[Callable[[], PartitionPlan], str, dict[str, Any]]] = {
    "walk": (
        lambda: _plan(_slow_prod_errors, 1_000_000, mode="page", limit=101),
        "walk",
        {
            **SLOW_PROD_ERRORS,
            "walk": ["ts", 0],
            "density": 0.004568760000000001,
            # past the entries that should have held 8 matches, none found: collect instead
            "walk_budget": 1752,
        },
    ),
    "collect": (
        lambda: _plan(_slow_prod_errors, 100_000, mode="page", limit=101),
        "collect",
        SLOW_PROD_ERRORS,
    ),
    "chunk-walk": (
        lambda: _plan(
            lambda t: _and([_v(PROD, 0.7 * t), _v(ERROR, 0.196 * t), _v(NAME, 0.3 * t)], t),
            100_000,
            mode="page",
            limit=101,
            time_bounds=True,
        ),
        "chunk-walk",
        {
            "mode": "page",
            "expr": ["&", ERROR, NAME, PROD],
            "sources": [ERROR],
            "residual": ["&", NAME, PROD],
            "order": DEFAULT_ORDER,
            "limit": 101,
            "time_bounds": True,
            "chunk_walk": 25,
            "walk": ["ts", 0],
            "density": 0.04115999999999999,
            "walk_budget": 1024,
        },
    ),
    "cursor and value fields": (
        lambda: _plan(
            lambda t: _v(USERS, 2300.0, "tuser_id"),
            100_000,
            mode="page",
            limit=51,
            cursor=[[1, 1780000000000], [1, "t-42"]],
        ),
        "walk",
        {
            "mode": "page",
            "expr": USERS,
            "sources": [USERS],
            "residual": ["A"],
            "order": DEFAULT_ORDER,
            "limit": 51,
            "value_fields": {f"{P}:td:7:user_id": "tuser_id"},
            "cursor": [[1, 1780000000000], [1, "t-42"]],
            "walk": ["ts", 0],
            "density": 0.023,
            "walk_budget": 1024,
        },
    ),
    "walk values": (
        lambda: _plan(
            lambda t: _v(SLA, 10_000.0),
            100_000,
            ["tags.priority DESC"],
            mode="page",
            limit=101,
            keys=Keys("ns"),
            order_distinct=3,
        ),
        "walk-values",
        {
            "mode": "page",
            "expr": SLA,
            "sources": [SLA],
            "residual": ["A"],
            "order": [["s", "tpriority", 0], *DEFAULT_ORDER],
            "limit": 101,
            "walk_values": [
                f"{P}:td:8:priority",
                f"{P}:tv:8:priority",
                ["C", f"{P}:tk:8:priority"],
                0.1,
                10000.0,
                100000,
                0,  # a walk testing each group: 3 values, no table of the matches
            ],
            "walk_budget": 10000,  # past 10,000 traces visited without a match: collect
        },
    ),
    "count by set algebra": (
        lambda: _plan(
            lambda t: _or([_v(PROD, 70_000.0), _v(ERROR, 19_600.0)], t), 100_000, mode="count"
        ),
        "algebra",
        {
            "mode": "count",
            "expr": ["|", PROD, ERROR],
            "sources": [PROD, ERROR],
            "residual": ["|", PROD, ERROR],
            "terms": [[-1, ERROR, PROD]],
        },
    ),
    "stats": (
        lambda: _plan(lambda t: _v(PROD, 70_000.0), 100_000, mode="stats"),
        "stats",
        {"mode": "stats", "expr": PROD, "sources": [PROD], "residual": ["A"], "group": []},
    ),
}


def _strict(value: Any) -> bytes:
    """msgpack of a decoded value: equal only when keys, order, and int/float types are."""
    return msgspec.msgpack.encode(value)


@pytest.mark.parametrize("case", list(CASES))
def test_plans_encode_as_tt_query_reads_them(case: str) -> None:
    make, strategy, expected = CASES[case]
    plan = make()
    assert plan.strategy == strategy, plan.reason
    encoded = msgspec.msgpack.encode(plan.plan)
    assert _strict(msgspec.msgpack.decode(encoded)) == _strict(expected)
    assert msgspec.msgpack.decode(encoded, type=QueryPlan) == plan.plan
    if plan.plan.mode == "page":
        shown = msgspec.structs.replace(plan.plan, shown=100)
        decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(shown))
        assert _strict(decoded) == _strict({**expected, "shown": 100})


def test_probe_plans_encode_as_tt_query_reads_them() -> None:
    values = ValuesPlan(dkey="ns:{p00}:td:7:user_id", runs=("user", "12"), lead=("user", 1, "12"))
    assert msgspec.msgpack.encode(values) == msgspec.msgpack.encode(
        {
            "mode": "values",
            "dkey": "ns:{p00}:td:7:user_id",
            "runs": ["user", "12"],
            "lead": ["user", 1, "12"],
        }
    )
    # a pattern starting with % has no lead: the empty lead is still sent
    values = ValuesPlan(dkey="d", runs=("", "x"), lead=())
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(values)) == {
        "mode": "values",
        "dkey": "d",
        "runs": ["", "x"],
        "lead": [],
    }
    count_only = ValuesPlan(dkey="d", lead=("v2.",), count_only=1)
    assert msgspec.msgpack.encode(count_only) == msgspec.msgpack.encode(
        {"mode": "values", "dkey": "d", "lead": ["v2."], "count_only": 1}
    )
    cards = CardsPlan(keys=[["ns:{p00}:tk:3:env", "ns:{p00}:td:3:env"]])
    assert msgspec.msgpack.encode(cards) == msgspec.msgpack.encode(
        {"mode": "cards", "keys": [["ns:{p00}:tk:3:env", "ns:{p00}:td:3:env"]]}
    )


def test_a_count_drops_the_presence_a_value_implies() -> None:
    """``env = 'production' AND env IS NOT NULL``: the value implies the key, so the count is
    the value's size, known from the probe (no conjunction left to count in Redis)."""
    keys = Keys("ns")
    root = logical(parse_filter("tags.env = 'production' AND tags.env IS NOT NULL"), None)
    probe = probe_commands(root, keys, 0)
    assert probe.commands == [
        ("HLEN", "ns:{p00}:ids"),
        ("ZMSCORE", "ns:{p00}:td:3:env", "production"),
    ]
    assert probe.card_keys == [["ns:{p00}:tk:3:env", "ns:{p00}:td:3:env"]]
    tree, total = physical(root, probe, [1000, [700.0]], [800], keys)
    plan = plan_partition(0, tree, total, mode="count")
    assert (plan.strategy, plan.exact_count) == ("exact", 700), plan.reason


def test_a_term_twice_in_a_conjunction_is_tested_once() -> None:
    """``x NOT IN (...) AND x != ...`` each carry ``x present`` (a register read per
    candidate for an attribute): the conjunction keeps one copy of a repeated term."""
    present = _leaf("P", ["P", "c"], 1000, "client_request_id present", enumerable=False)
    twin = _leaf("P", ["P", "c"], 1000, "client_request_id present", enumerable=False)
    node = _and([present, _v(ERROR, 200), twin, _v(ERROR, 200)], 1000)
    assert node.spec == ["&", ERROR, ["P", "c"]]
    assert sorted(c.kind for c in node.children) == ["P", "V"]
