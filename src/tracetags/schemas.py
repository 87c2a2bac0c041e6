"""Events of the log: msgspec Structs, their limits, and the one encoder and decoder.

Wire format (see the README): each stream entry has one field ``e``, a msgpack map of the
event Struct with its ``type`` tag; ``event_id`` is a UUIDv7 as 16 raw bytes (msgpack bin).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from tracetags.errors import (
    DecodeError,
    InvalidTagKeyError,
    InvalidTagValueError,
    ValidationError,
)

SCHEMA_VERSION: Final = 1
#: Field of a stream entry that carries the encoded event.
ENTRY_FIELD: Final = b"e"

# Limits follow MLflow (mlflow/utils/validation.py): tag keys <= 250, values <= 8000 chars.
MAX_KEY_LENGTH: Final = 250
MAX_VALUE_LENGTH: Final = 8000
MAX_ID_LENGTH: Final = 256
#: Milliseconds are signed 64-bit integers, as in MLflow's BIGINT columns.
MAX_MILLIS: Final = 2**63 - 1

#: A ``source`` (who wrote an event) is a short name: ``etl@host-3``, ``cli:alice``,
#: ``undo:labeler/v2``.
MAX_SOURCE_LENGTH: Final = 128
SOURCE_PATTERN: Final = r"\A[\w.@:/+\-]+\Z"
SOURCE_RULE: Final = (
    f"a source is 1-{MAX_SOURCE_LENGTH} characters: letters and digits of any script, "
    "'_', '.', '@', ':', '/', '+' and '-'"
)
_SOURCE_RE: Final = re.compile(SOURCE_PATTERN)

TRACE_STATES: Final = ("OK", "ERROR", "IN_PROGRESS", "STATE_UNSPECIFIED")
TraceState = Literal["OK", "ERROR", "IN_PROGRESS", "STATE_UNSPECIFIED"]

# MLflow's tag-name rule: word characters of any script and ``_ - . space / :``, and the
# name must be a normalised relative path (no leading or trailing ``/``, no ``//``, no
# ``.`` or ``..`` component, not starting with ``..``).  \Z (not $) refuses a trailing
# newline, which MLflow's own ``$`` lets through.
KEY_PATTERN: Final = (
    r"\A(?!\.\.)(?!\.(?:/|\Z))(?!/)(?!.*//)(?!.*/\.\.?(?:/|\Z))(?!.*/\Z)[\w.\- :/]+\Z"
)
KEY_RULE: Final = (
    "keys may contain letters and digits of any script, '_', '-', '.', ' ', '/' and ':'; "
    "they may not be empty, start with '/' or '..', end with '/', contain '//', "
    "or have a '.' or '..' path component"
)
_KEY_RE: Final = re.compile(KEY_PATTERN)
#: Values, names and ids may hold newlines, but not end with one (see KEY_PATTERN: MLflow's
#: ``$`` lets a trailing newline through; tracetags refuses it everywhere).
NEWLINE_RULE: Final = "must not end with a newline"

# The decoder checks key lengths; the key rule's regex runs after decoding, through the same
# cache of keys found valid that the producer uses (the regex per key would otherwise be the
# dearest part of decoding).
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
Value = Annotated[str, msgspec.Meta(max_length=MAX_VALUE_LENGTH)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Millis = Annotated[int, msgspec.Meta(ge=0)]
# The character rule runs after decoding, through a cache like the keys' (a writer has one
# source, so the regex runs once per source, not once per event).
Source = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SOURCE_LENGTH)]
EventId = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]


class _Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Fields common to every event."""

    trace_id: Id
    #: Unique and time-ordered: a UUIDv7 as 16 bytes, made by the producer.
    event_id: EventId
    emitted_at_ms: Millis
    v: int = SCHEMA_VERSION
    #: Who wrote the event (``Settings.source``, or per call); None for events written
    #: before sources existed, which decode unchanged: an unset source is not encoded.
    source: Source | None = None


class TraceStarted(_Event, frozen=True, kw_only=True, tag="trace_started"):
    experiment_id: Id
    timestamp_ms: Millis
    name: Value | None = None
    client_request_id: Value | None = None
    metadata: dict[Key, Value] = {}
    tags: dict[Key, Value] = {}


class TraceFinished(_Event, frozen=True, kw_only=True, tag="trace_finished"):
    experiment_id: Id
    timestamp_ms: Millis
    execution_time_ms: Millis
    status: TraceState
    name: Value | None = None
    client_request_id: Value | None = None
    metadata: dict[Key, Value] = {}
    tags: dict[Key, Value] = {}


class TagsSet(_Event, frozen=True, kw_only=True, tag="tags_set"):
    tags: dict[Key, Value]


class TagsDeleted(_Event, frozen=True, kw_only=True, tag="tags_deleted"):
    keys: list[Key]


class TraceDeleted(_Event, frozen=True, kw_only=True, tag="trace_deleted"):
    pass


Event = TraceStarted | TraceFinished | TagsSet | TagsDeleted | TraceDeleted

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Event)
_JSON_DECODER: Final = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    """The wire bytes of ``event`` (msgpack)."""
    return _ENCODER.encode(event)


def decode(data: bytes | bytearray | memoryview) -> Event:
    """Decode and validate one event from msgpack; raise :class:`DecodeError` naming the path."""
    try:
        event = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"schema violation: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not a msgpack event: {exc}") from None
    return _check_version(event)


def decode_json(data: bytes | str) -> Event:
    """Decode and validate one event from JSON (events published by other FastStream apps)."""
    try:
        event = _JSON_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"schema violation: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not a JSON event: {exc}") from None
    return _check_version(event)


def _check_version(event: Event) -> Event:
    if event.v != SCHEMA_VERSION:
        raise DecodeError(
            f"schema version {event.v} is not supported (this tracetags reads {SCHEMA_VERSION})"
        )
    source = event.source
    if source is not None and source not in _valid_sources:
        if _SOURCE_RE.match(source) is None:
            raise DecodeError(
                f"schema violation: source {source!r} breaks the source rule - at `$.source`"
            )
        _remember_source(source)
    valid = _valid_keys
    if type(event) is TagsSet:
        _check_decoded_keys(event.tags, "$.tags", valid)
    elif type(event) is TagsDeleted:
        _check_decoded_keys(event.keys, "$.keys", valid)
    elif type(event) is TraceStarted or type(event) is TraceFinished:
        _check_decoded_keys(event.tags, "$.tags", valid)
        _check_decoded_keys(event.metadata, "$.metadata", valid)
    return event


def _check_decoded_keys(keys: Iterable[str], path: str, valid: set[str]) -> None:
    for key in keys:
        if key not in valid and _KEY_RE.match(key) is None:
            raise DecodeError(f"schema violation: key {key!r} breaks the key rule - at `{path}`")


# --- event ids -------------------------------------------------------------------------

_counter = itertools.count()
_id_base = secrets.randbits(74)
_LOW_BITS: Final = (1 << 74) - 1
_RAND_B_BITS: Final = (1 << 62) - 1
_VERSION_AND_VARIANT: Final = (0x7 << 76) | (0b10 << 62)


def new_event_id(ms: int | None = None) -> bytes:
    """A UUIDv7: 48-bit Unix ms (``ms``, default now), then 74 bits of (random + counter).

    The counter makes ids unique within a process without a lock (``next`` on
    ``itertools.count`` is atomic under the GIL); the random base, redrawn after ``fork``,
    makes them unique across processes.  Callers that also stamp ``emitted_at_ms`` pass the
    same ``ms`` so that one clock read serves both.
    """
    if ms is None:
        ms = time.time_ns() // 1_000_000
    low = (_id_base + next(_counter)) & _LOW_BITS
    value = (ms << 80) | _VERSION_AND_VARIANT | ((low >> 62) << 64) | (low & _RAND_B_BITS)
    return value.to_bytes(16, "big")


def event_uuid(event: Event) -> uuid.UUID:
    """The event's id as a :class:`uuid.UUID` (it travels as 16 raw bytes)."""
    return uuid.UUID(bytes=event.event_id)


def _reseed_after_fork() -> None:
    global _id_base
    _id_base = secrets.randbits(74)


os.register_at_fork(after_in_child=_reseed_after_fork)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- call-site validation (msgspec does not validate on construction) -------------------


# Keys already found valid: a service uses a handful of tag keys, and the rule's regex is
# the dearest part of a call.  Bounded so that ever-new keys cannot grow it without limit.
_valid_keys: set[str] = set()
_VALID_KEYS_MAX: Final = 4096


def check_key(key: object, kind: str = "tag") -> str:
    """Return ``key`` if it is a valid tag/metadata key, else raise naming key and rule."""
    if type(key) is str and key in _valid_keys:
        return key
    if not isinstance(key, str):
        raise InvalidTagKeyError(f"{kind} key {key!r} must be a str, not {type(key).__name__}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidTagKeyError(
            f"{kind} key {key[:40]!r}... is {len(key)} characters long; "
            f"the limit is {MAX_KEY_LENGTH}"
        )
    if _KEY_RE.match(key) is None:
        raise InvalidTagKeyError(f"{kind} key {key!r} is invalid: {KEY_RULE}")
    if type(key) is str:
        if len(_valid_keys) >= _VALID_KEYS_MAX:
            _valid_keys.clear()
        _valid_keys.add(key)
    return key


_valid_sources: set[str] = set()


def check_source(value: object) -> str:
    """Return ``value`` if it is a valid ``source``, else raise :class:`ValidationError`."""
    if type(value) is str and value in _valid_sources:
        return value
    if not isinstance(value, str) or not value or len(value) > MAX_SOURCE_LENGTH:
        raise ValidationError(f"source {value!r:.60}: {SOURCE_RULE}")
    if _SOURCE_RE.match(value) is None:
        raise ValidationError(f"source {value!r}: {SOURCE_RULE}")
    _remember_source(value)
    return value


def _remember_source(value: str) -> None:
    if len(_valid_sources) >= _VALID_KEYS_MAX:
        _valid_sources.clear()
    _valid_sources.add(value)


def source_name(text: str) -> str:
    """``text`` made into a valid source: characters outside the rule become ``_``, cut to
    the length limit (for names built from a program, host or user name)."""
    cleaned = re.sub(r"[^\w.@:/+\-]", "_", text)[:MAX_SOURCE_LENGTH]
    return cleaned or "unknown"


def check_value(key: str, value: object, kind: str = "tag") -> str:
    if not isinstance(value, str):
        raise InvalidTagValueError(
            f"{kind} {key!r}: value must be a str, not {type(value).__name__} ({value!r:.60})"
        )
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidTagValueError(
            f"{kind} {key!r}: value is {len(value)} characters long; "
            f"the limit is {MAX_VALUE_LENGTH} (values are refused, never truncated)"
        )
    if value[-1:] == "\n":
        raise InvalidTagValueError(f"{kind} {key!r}: value {NEWLINE_RULE}")
    return value


def check_mapping(items: object, kind: str = "tag", *, allow_empty: bool = True) -> dict[str, str]:
    """Validate a ``{key: value}`` mapping of tags or metadata; return it as a plain dict.

    A plain dict comes back as is (not copied): the producer encodes it at once.
    """
    if type(items) is not dict and not isinstance(items, Mapping):
        raise ValidationError(
            f"{kind}s must be a mapping of str to str, not {type(items).__name__}"
        )
    if not items and not allow_empty:
        raise ValidationError(f"no {kind}s given: pass at least one {kind}")
    valid = _valid_keys
    for key, value in items.items():
        if type(key) is not str or key not in valid:
            check_key(key, kind)
        if type(value) is not str or len(value) > MAX_VALUE_LENGTH or value[-1:] == "\n":
            check_value(key, value, kind)
    return items if type(items) is dict else dict(items)


def check_keys(keys: object, kind: str = "tag") -> list[str]:
    if isinstance(keys, str) or not isinstance(keys, Iterable):
        raise ValidationError(f"{kind} keys must be a list of str, not {type(keys).__name__}")
    result = [check_key(k, kind) for k in keys]
    if not result:
        raise ValidationError(f"no {kind} keys given: pass at least one key")
    return result


def check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what} must be a non-empty str, got {value!r:.60}")
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(
            f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if value[-1] == "\n":
        raise ValidationError(f"{what} {NEWLINE_RULE}")
    return value


def check_text(value: str, what: str) -> str:
    """``value`` if it is valid Unicode text (encodes to UTF-8), else a ValidationError naming
    the first lone surrogate (what a mis-decoded byte becomes in a command-line argument)."""
    if not value.isascii():
        problem = _surrogate(value)
        if problem is not None:
            raise ValidationError(f"{what} {problem}")
    return value


def _surrogate(value: str) -> str | None:
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate at {exc.start} (not valid Unicode text)"
    return None


def unencodable(event: Event) -> str:
    """Why ``event`` does not encode: the first field that holds a lone surrogate (the
    producer finds out by encoding, which costs nothing when all is well)."""
    named: list[tuple[str, str]] = [("trace_id", event.trace_id)]
    if isinstance(event, TraceStarted | TraceFinished):
        named.append(("experiment_id", event.experiment_id))
        named += [(what, text) for what, text in (("name", event.name),
                  ("client_request_id", event.client_request_id)) if text is not None]  # fmt: skip
        named += [(f"metadata {k!r}: value", v) for k, v in event.metadata.items()]
    if isinstance(event, TraceStarted | TraceFinished | TagsSet):
        named += [(f"tag {k!r}: value", v) for k, v in event.tags.items()]
    for what, text in named:
        problem = _surrogate(text)
        if problem is not None:
            return f"{what} {problem}"
    return "the event holds text that is not valid Unicode"


def check_millis(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MILLIS:
        raise ValidationError(
            f"{what} must be a non-negative int (milliseconds) below 2**63, got {value!r}"
        )
    return value


def check_status(value: object) -> str:
    if value not in TRACE_STATES:
        raise ValidationError(f"status {value!r} is not one of {', '.join(TRACE_STATES)}")
    return str(value)


def check_optional_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_VALUE_LENGTH:
        raise ValidationError(f"{what} must be a str of at most {MAX_VALUE_LENGTH} characters")
    if value[-1:] == "\n":
        raise ValidationError(f"{what} {NEWLINE_RULE}")
    return value


def as_builtins(event: Event) -> dict[str, Any]:
    """The event as plain Python values (for logs, the dead-letter view and the CLI)."""
    return msgspec.to_builtins(event)  # type: ignore[no-any-return]


#: A stream entry id ``ms-seq`` as ``(ms, seq)``: entry ids compare numerically, never as text.
EntryPosition = tuple[int, int]


def parse_entry_id(text: str | bytes) -> EntryPosition:
    """``(ms, seq)`` of a stream entry id (``ms`` alone means sequence 0)."""
    if isinstance(text, bytes):
        text = text.decode()
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def entry_text(entry_id: EntryPosition) -> str:
    """The ``ms-seq`` text of an entry id."""
    return f"{entry_id[0]}-{entry_id[1]}"
