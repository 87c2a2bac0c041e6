"""Limits on events: keys and bytes per event, tags per trace, and the size of one fold call.

The producer refuses an event over a limit at the call (``EventLimitError``); the consumer
dead-letters one written by another publisher with the same reason; ``tt_apply`` refuses
(dead-letters) an event that would leave its trace with more live tags than the limit.  A
consumer batch is cut into fold calls of bounded keys and bytes so that no call holds Redis
long (see docs/limits.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from tracetags.schemas import Event, TagsDeleted, TagsSet, TraceDeleted

if TYPE_CHECKING:
    from tracetags.functions import BatchItem
    from tracetags.settings import Settings

__all__ = [
    "DEFAULT_EVENT_LIMITS",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_KEYS_PER_EVENT",
    "DEFAULT_MAX_TAGS_PER_TRACE",
    "EventLimits",
    "event_keys",
    "over_limit",
    "split_batch",
]

#: MLflow caps one logging batch at 1,000 entities and 1 MB (mlflow/utils/validation.py:
#: MAX_ENTITIES_PER_BATCH, MAX_BATCH_LOG_REQUEST_SIZE); an event is our batch, and is folded
#: in one call: 500 new keys keep that call within the 50 ms budget at 1M traces (a new
#: distinct key costs the fold ~35-70 us there, its index keys created).
DEFAULT_MAX_KEYS_PER_EVENT: Final = 500
DEFAULT_MAX_EVENT_BYTES: Final = 1_000_000
#: MLflow has no count limit per trace; 1,000 live tags keep one trace's fold and hash small.
DEFAULT_MAX_TAGS_PER_TRACE: Final = 1000
#: One fold call folds at most this many keys (tags, metadata, deleted keys), as many as one
#: event may hold.  Its bytes follow: at most this many keys of at most 8,250 characters,
#: and events of at most max_event_bytes.
DEFAULT_FOLD_MAX_KEYS: Final = 500


class EventLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The limits in force (``Settings``: ``max_keys_per_event``, ``max_event_bytes``,
    ``max_tags_per_trace``, ``fold_max_keys``)."""

    max_keys_per_event: int = DEFAULT_MAX_KEYS_PER_EVENT
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_tags_per_trace: int = DEFAULT_MAX_TAGS_PER_TRACE
    fold_max_keys: int = DEFAULT_FOLD_MAX_KEYS

    @classmethod
    def of(cls, settings: Settings) -> EventLimits:
        return cls(
            max_keys_per_event=settings.max_keys_per_event,
            max_event_bytes=settings.max_event_bytes,
            max_tags_per_trace=settings.max_tags_per_trace,
            fold_max_keys=settings.fold_max_keys,
        )


DEFAULT_EVENT_LIMITS: Final = EventLimits()


def event_keys(event: Event) -> int:
    """How many keys (tags, metadata, deleted keys) the event carries."""
    if type(event) is TagsSet:
        return len(event.tags)
    if type(event) is TagsDeleted:
        return len(event.keys)
    if type(event) is TraceDeleted:
        return 0
    return len(event.tags) + len(event.metadata)  # type: ignore[union-attr]


def over_limit(event: Event, size_bytes: int, limits: EventLimits) -> str | None:
    """Why ``event`` (``size_bytes`` encoded) is over a limit, or None when it is not.

    A ``tags_set`` or start/finish event with more tags than a trace may hold is over the
    per-event limits too: it could never be folded.
    """
    keys = event_keys(event)
    if keys > limits.max_keys_per_event:
        return (
            f"event has {keys} keys, over the limit of {limits.max_keys_per_event}"
            " (max_keys_per_event)"
        )
    if size_bytes > limits.max_event_bytes:
        return (
            f"event is {size_bytes} bytes, over the limit of {limits.max_event_bytes}"
            " (max_event_bytes)"
        )
    if type(event) is not TagsDeleted and type(event) is not TraceDeleted:
        tags = len(event.tags)  # type: ignore[union-attr]
        if tags > limits.max_tags_per_trace:
            return (
                f"event sets {tags} tags, over the limit of {limits.max_tags_per_trace}"
                " tags per trace (max_tags_per_trace)"
            )
    return None


def split_batch(items: Sequence[BatchItem], limits: EventLimits) -> list[Sequence[BatchItem]]:
    """``items`` cut, in order, into runs of at most ``fold_max_keys`` keys (an event counts
    at least one); an event over the bound alone makes a run of its own."""
    runs: list[Sequence[BatchItem]] = []
    start = keys = 0
    bound = limits.fold_max_keys
    for i, (_, item) in enumerate(items):
        n = 1 if isinstance(item, tuple) else max(1, event_keys(item))
        if i > start and keys + n > bound:
            runs.append(items[start:i])
            start, keys = i, 0
        keys += n
    if start < len(items):
        runs.append(items[start:])
    return runs
