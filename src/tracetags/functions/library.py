"""The Lua library's assembly: its parts in order, the constants Python shares with them,
and the line map that names a part file and line in an error from Redis."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Final, NamedTuple

from tracetags.keys import (
    LEX_BUCKET,
    PLAIN_MAX,
    SET_CHUNK,
    STAMP_MAX_DELTA_MS,
    STAMP_SEQ_SPAN,
)

LIBRARY_NAME: Final = "tracetags_v21"
#: Every version of the library is named LIBRARY_PREFIX + its number.
LIBRARY_PREFIX: Final = "tracetags_v"
APPLY_FUNCTION: Final = "tt_apply"
QUERY_FUNCTION: Final = "tt_query"
LOOKUP_FUNCTION: Final = "tt_lookup"
TRIM_FUNCTION: Final = "tt_trim"
INDEX_FUNCTION: Final = "tt_index"

#: A budgeted scan enumerates the one source of a value leaf of at most this many values
#: (the union of their chunked sets, chunk by chunk) instead of every trace.
SCAN_UNION_MAX: Final = 16

#: A lookup fingerprint is djb2 over the value's UTF-8 bytes modulo FINGERPRINT_MOD, plus 1.
FINGERPRINT_SEED: Final = 5381
FINGERPRINT_MOD: Final = 65521

#: The part files under lua/, in assembly order: a part may use what an earlier one exports.
#: The prelude is assembled at the top level (its locals are every part's); each other part
#: inside its own ``do ... end``.
PRELUDE: Final = "prelude.lua"
PARTS: Final = (
    PRELUDE,
    "stamps.lua",  # stream-id stamps of registers
    "sets.lua",  # plain and chunked sets of trace numbers
    "lex_index.lua",  # the byte-order index of a key's distinct values
    "id_order.lua",  # the byte order of the trace ids (pages ordered by request_id)
    "lookups.lua",  # lookup fingerprints and tt_lookup
    "batch.lua",  # index changes of one batch, gathered and written once
    "fold_trace.lua",  # the fold of one trace's events (several, or a deletion)
    "fold_single.lua",  # the common case: a trace with one event in the batch
    "tag_limit.lua",  # events over the live-tags-per-trace limit taken out of a batch
    "apply.lua",  # tt_apply: a batch checked, folded, dead-lettered and acked
    "pattern.lua",  # M and B leaves: LIKE/ILIKE tested per candidate, bitmaps of numbers
    "query_leaves.lua",  # leaf tests of a query plan
    "query_or.lua",  # a wide OR's children on one index tested together
    "query_eval.lua",  # the boolean tree over candidate lists
    "query_enum.lua",  # candidate enumeration
    "ordering.lua",  # order keys, comparison, page selection
    "query_walks.lua",  # pages by collecting, walking an order zset, or walking chunks
    "like.lua",  # LIKE values sought in the byte-order index
    "counts.lua",  # counts by set algebra, stats, key set sizes
    "budget.lua",  # counts and stats over several calls, each within a time budget
    "value_walk.lua",  # pages ordered by a string key: walking its distinct values
    "value_shortcuts.lua",  # ... a table of the matches, or the key's traces first
    "id_walk.lua",  # pages ordered by request_id: walking the ids' byte order
    "group_order.lua",  # pages ordered by several keys: groups walked by the next key
    "query.lua",  # tt_query
    "trim.lua",  # tt_trim: the archiver's safe trim of a stream
    "history_index.lua",  # tt_index: the consumer's history index of the live tail
    "registration.lua",  # the Functions registered
)


def shared_constants(function_names: Mapping[str, str] | None = None) -> dict[str, int | str]:
    """The Lua locals of the generated header: constants both Python and Lua spell."""
    names = {
        "APPLY_FUNCTION": APPLY_FUNCTION,
        "QUERY_FUNCTION": QUERY_FUNCTION,
        "LOOKUP_FUNCTION": LOOKUP_FUNCTION,
        "TRIM_FUNCTION": TRIM_FUNCTION,
        "INDEX_FUNCTION": INDEX_FUNCTION,
        **(function_names or {}),
    }
    return {
        **names,
        "SET_CHUNK": SET_CHUNK,
        "PLAIN_MAX": PLAIN_MAX,
        "LEX_BUCKET": LEX_BUCKET,
        "SEQ_SPAN": STAMP_SEQ_SPAN,
        "MAX_DELTA": STAMP_MAX_DELTA_MS,
        "FINGERPRINT_SEED": FINGERPRINT_SEED,
        "FINGERPRINT_MOD": FINGERPRINT_MOD,
        "SCAN_UNION_MAX": SCAN_UNION_MAX,
    }


def _lua_literal(value: int | str) -> str:
    if isinstance(value, int):
        return str(value)
    if not re.fullmatch(r"[A-Za-z0-9_.]*", value):
        raise ValueError(f"not a plain name: {value!r}")
    return f"'{value}'"


class Span(NamedTuple):
    """Lines ``first .. first + length - 1`` of the assembled code are ``part``'s 1..length."""

    first: int
    part: str
    length: int


class Library(NamedTuple):
    """An assembled library: its code and where each of its lines comes from."""

    name: str
    code: str
    spans: tuple[Span, ...]

    def locate(self, line: int) -> str:
        """``part.lua:N`` for a line of the assembled code (``user_function:<line>``)."""
        at = bisect.bisect_right([s.first for s in self.spans], line) - 1
        if at >= 0:
            span = self.spans[at]
            if line < span.first + span.length:
                return f"{span.part}:{line - span.first + 1}"
        return f"{self.name}:{line}"

    def translate(self, text: str) -> str:
        """``text`` (an error reply) with every ``user_function:<line>`` named by part file."""
        return _USER_FUNCTION_LINE.sub(lambda m: self.locate(int(m.group(1))), text)


_USER_FUNCTION_LINE: Final = re.compile(r"user_function:(\d+)")


def read_parts() -> list[tuple[str, str]]:
    """The part files of PARTS as ``(name, text)``, in order."""
    folder = resources.files(__package__) / "lua"
    return [(name, (folder / name).read_text("utf-8")) for name in PARTS]


def assemble(
    parts: Iterable[tuple[str, str]] | None = None,
    library_name: str = LIBRARY_NAME,
    function_names: Mapping[str, str] | None = None,
) -> Library:
    """One library from ``parts`` (default: the part files): the header, the prelude at the
    top level, every other part in a ``do ... end`` block.  ``library_name`` and
    ``function_names`` (e.g. ``{"APPLY_FUNCTION": "tt_test_apply"}``) let a test load a
    variant beside the real library (function names are global in Redis)."""
    lines = [f"#!lua name={library_name}", "-- Generated from tracetags.functions.library."]
    lines += [
        f"local {name} = {_lua_literal(value)}"
        for name, value in shared_constants(function_names).items()
    ]
    spans = [Span(1, "<header>", len(lines))]
    for name, text in read_parts() if parts is None else parts:
        body = text.rstrip("\n").split("\n")
        scoped = name != PRELUDE
        if scoped:
            lines.append(f"do -- {name}")
        spans.append(Span(len(lines) + 1, name, len(body)))
        lines += body
        if scoped:
            lines.append(f"end -- {name}")
    return Library(library_name, "\n".join(lines) + "\n", tuple(spans))
