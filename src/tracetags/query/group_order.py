"""How a walk of values orders its large groups by the next order keys (``walk_next``).

A page ordered by ``status, name DESC`` walks the statuses in order; each status is a group
of thousands of traces that must come out by ``name DESC``.  Reading every member's name
and sorting them is what made such pages slow.  When the next key has its values in order
too (a tag or metadata key, ``name``, ``run_id``, ``status``, ``experiment_id``), tt_query
walks the group by that key's values (a nested walk of values, with the group's leaf as one
more conjunct); when it is ``request_id``, by the ids' byte order
(``functions/lua/group_order.lua``).  Numeric next keys keep walking their zset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tracetags.keys import Keys
from tracetags.query.ast import OrderKey
from tracetags.query.logical import PRESENCE_FIELD, order_index

__all__ = ["walk_next"]


def walk_next(order: Sequence[OrderKey], keys: Keys, partition: int) -> list[Any] | None:
    """The ``walk_next`` entries of the order keys after the first (None: nothing to nest)."""
    out: list[Any] = []
    for key in order[1:]:
        if key.field.entity == "attribute" and key.field.key == "request_id":
            out.append("i")
            continue
        index = order_index(key)
        if index is None:  # a numeric key: its zset orders the group, and the ties after it
            break

        key_set = index.key_set(keys, partition)
        presence = ["C", key_set] if key_set is not None else ["P", PRESENCE_FIELD[index.kind]]
        out.append([index.distinct(keys, partition), index.value_prefix(keys, partition), presence])
    return out or None
