"""Sparse patterns over many strings: a literal every match holds, found at C speed.

A ``LIKE``, ``ILIKE`` or ``RLIKE`` that the probe's sample finds sparse still has to look
at every trace id or every distinct value of a key (no index narrows ``'%-zz'`` or
``'CR_096867'``).  Calling the pattern's predicate once per string costs a Python call
each.  Instead the strings are joined into one text and the
pattern's **needle** (of the literal runs every match contains, lowered for ``ILIKE``,
the one the text holds least often: ``str.count`` at C speed) is sought in it with
``str.find``; only the strings holding it are tested by the exact predicate.  The needle
is a necessary condition, never the decision, so a result is exactly the predicate's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from tracetags.connections import SyncClient

SEP: Final = "\x00"

#: The needle is given up (the caller tests each string) when more strings than this share
#: of them, plus NEEDLE_SLACK, hold it: the needle then narrows too little to pay.
NEEDLE_MAX_SHARE: Final = 0.1
NEEDLE_SLACK: Final = 64

#: Fewer strings than this are tested one by one (joining them would not pay).
NEEDLE_MIN_STRINGS: Final = 1_000

#: Distinct values read per ZRANGE by :func:`values_by_needle` (one reply of ~0.5 MB; the
#: server builds it in a few milliseconds).
NEEDLE_WINDOW: Final = 50_000


#: At most this many of a pattern's literal runs (the longest) are counted.
NEEDLE_RUNS: Final = 3

Needle = tuple[tuple[str, ...], bool]


def needle_of(op: str, pattern: str, literal: str | None = None) -> Needle | None:
    """Literals every value matching ``op pattern`` contains (the longest runs first), and
    whether they are in the value's lower case (ILIKE); None when no literal is certain,
    and for the ``NOT`` ops.  ``literal``: an RLIKE's required literal
    (:func:`logical.regex_literal`)."""
    if op == "RLIKE":
        return ((literal,), False) if literal and SEP not in literal else None
    if op not in ("LIKE", "ILIKE"):
        return None
    text = pattern.lower() if op == "ILIKE" else pattern
    runs = sorted({run for run in re.split("[%_]", text) if run and SEP not in run}, key=len)
    if not runs:
        return None
    return tuple(reversed(runs[-NEEDLE_RUNS:])), op == "ILIKE"


def needle_hits(
    strings: Sequence[bytes | str],
    needle: Needle,
    predicate: Callable[[str], bool],
) -> list[int] | None:
    """The positions of the strings ``predicate`` accepts, found through the needle; None
    when the needle cannot decide (a string holds the separator or is not UTF-8, lowering
    changed a length, or the needle is in too many strings): the caller tests each one."""
    if not strings:
        return []
    literals, fold = needle
    try:
        if isinstance(strings[0], bytes):
            text = b"\x00".join(strings).decode()  # type: ignore[arg-type]
        else:
            text = SEP.join(strings)  # type: ignore[arg-type]
    except (UnicodeDecodeError, TypeError):
        return None
    if text.count(SEP) != len(strings) - 1:
        return None
    hay = text.lower() if fold else text
    if len(hay) != len(text):  # (str.lower() of a few characters is longer)
        return None
    limit = NEEDLE_MAX_SHARE * len(strings) + NEEDLE_SLACK
    held, literal = min((hay.count(run), run) for run in literals)
    if held > limit:
        return None
    hits: list[int] = []
    index = 0  # the position of the string starting at `counted`
    counted = 0
    at = hay.find(literal)
    while at >= 0:
        start = hay.rfind(SEP, 0, at) + 1
        end = hay.find(SEP, at + len(literal))
        if end < 0:
            end = len(hay)
        index += hay.count(SEP, counted, start)
        counted = start
        if predicate(text[start:end]):
            hits.append(index)
        at = hay.find(literal, end + 1) if end < len(hay) else -1
    return hits


def values_by_needle(
    client: SyncClient,
    dkey: str,
    needle: Needle,
    predicate: Callable[[str], bool],
) -> list[Any] | None:
    """The flat [value, count, ...] of the values of the distinct zset ``dkey`` that match,
    read a NEEDLE_WINDOW of ranks at a time (members only) and narrowed by the needle, the
    matches' counts read last; None when the needle cannot decide (see :func:`needle_hits`).
    Ranks move when values come and go between reads: a value may be missed or read twice,
    as with every windowed read of a key's values."""
    matched: list[Any] = []
    start = 0
    while True:
        got: Any = client.zrange(dkey, start, start + NEEDLE_WINDOW - 1)
        hits = needle_hits(got, needle, predicate)
        if hits is None:
            return None
        matched.extend(got[i] for i in hits)
        if len(got) < NEEDLE_WINDOW:
            break
        start += NEEDLE_WINDOW
    matched = list(dict.fromkeys(matched))
    counts: Any = client.zmscore(dkey, matched) if matched else []
    flat: list[Any] = []
    for value, count in zip(matched, counts, strict=True):
        if count is not None:
            flat.extend((value, count))
    return flat
