from __future__ import annotations

import re
import uuid

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracetags import schemas
from tracetags.errors import (
    DecodeError,
    InvalidTagKeyError,
    InvalidTagValueError,
    ValidationError,
)

EID = schemas.new_event_id()

EVENTS: list[schemas.Event] = [
    schemas.TraceStarted(
        trace_id="tr-1",
        event_id=EID,
        emitted_at_ms=1,
        experiment_id="7",
        timestamp_ms=10,
        name="chat",
        client_request_id="req-9",
        metadata={"mlflow.sourceRun": "r1"},
        tags={"env": "prod"},
    ),
    schemas.TraceFinished(
        trace_id="tr-1",
        event_id=EID,
        emitted_at_ms=2,
        experiment_id="7",
        timestamp_ms=10,
        execution_time_ms=42,
        status="ERROR",
        tags={"model.version": "v2"},
    ),
    schemas.TagsSet(trace_id="tr-1", event_id=EID, emitted_at_ms=3, tags={"a b/c:d": "é"}),
    schemas.TagsDeleted(trace_id="tr-1", event_id=EID, emitted_at_ms=4, keys=["env", "x"]),
    schemas.TraceDeleted(trace_id="tr-1", event_id=EID, emitted_at_ms=5),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_the_wire_format(event: schemas.Event) -> None:
    data = schemas.encode(event)
    assert schemas.decode(data) == event
    # The wire format is a plain msgpack map that any msgpack reader can open.
    raw = msgspec.msgpack.decode(data)
    assert raw["type"] == event.__struct_config__.tag
    assert raw["trace_id"] == "tr-1"
    assert len(raw["event_id"]) == 16


def test_json_events_decode_too() -> None:
    event = EVENTS[2]
    assert schemas.decode_json(msgspec.json.encode(event)) == event


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1garbage", "not a msgpack event"),
        (msgspec.msgpack.encode({"type": "nope", "trace_id": "t"}), "schema violation"),
        (msgspec.msgpack.encode({"type": "tags_set", "trace_id": "t"}), "schema violation"),
    ],
)
def test_bad_payloads_raise_decode_error_with_reason(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        schemas.decode(payload)


def test_decode_error_names_the_path_of_a_too_long_value() -> None:
    raw = msgspec.msgpack.encode(
        {
            "type": "tags_set",
            "trace_id": "t",
            "event_id": EID,
            "emitted_at_ms": 1,
            "tags": {"env": "x" * 8001},
        }
    )
    with pytest.raises(DecodeError) as info:
        schemas.decode(raw)
    assert str(info.value) == (
        "schema violation: Expected `str` of length <= 8000 - at `$.tags[...]`"
    )


def test_decode_refuses_a_bad_key_and_a_newer_schema_version() -> None:
    raw = msgspec.msgpack.encode(
        {
            "type": "tags_set",
            "trace_id": "t",
            "event_id": EID,
            "emitted_at_ms": 1,
            "tags": {"a//b": "x"},
        }
    )
    with pytest.raises(DecodeError, match="schema violation"):
        schemas.decode(raw)
    newer = msgspec.msgpack.encode(
        {"type": "trace_deleted", "trace_id": "t", "event_id": EID, "emitted_at_ms": 1, "v": 2}
    )
    with pytest.raises(DecodeError, match="schema version 2 is not supported"):
        schemas.decode(newer)


# The wire bytes of one event of schema version 1 as written before events had a source,
# and the same event with one: the field is optional (an unset source is not encoded), so
# the old bytes still decode, and a source is one more map entry.
_FIXED_ID = bytes(range(16))
_WITHOUT_SOURCE = (
    b"\x85\xa4type\xa8tags_set\xa8trace_id\xa4tr-1\xa8event_id\xc4\x10" + _FIXED_ID
    + b"\xademitted_at_ms\x03\xa4tags\x81\xa3env\xa4prod"
)  # fmt: skip
_WITH_SOURCE = (
    b"\x86\xa4type\xa8tags_set\xa8trace_id\xa4tr-1\xa8event_id\xc4\x10" + _FIXED_ID
    + b"\xademitted_at_ms\x03\xa6source\xa9cli:alice\xa4tags\x81\xa3env\xa4prod"
)  # fmt: skip


def test_schema_version_1_pins_events_with_and_without_a_source() -> None:
    assert schemas.SCHEMA_VERSION == 1
    old = schemas.TagsSet(trace_id="tr-1", event_id=_FIXED_ID, emitted_at_ms=3,
                          tags={"env": "prod"})  # fmt: skip
    new = msgspec.structs.replace(old, source="cli:alice")
    assert schemas.encode(old) == _WITHOUT_SOURCE
    assert schemas.encode(new) == _WITH_SOURCE
    assert schemas.decode(_WITHOUT_SOURCE) == old and old.source is None
    assert schemas.decode(_WITH_SOURCE) == new
    assert schemas.decode_json(msgspec.json.encode(new)) == new


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "Expected `str` of length >= 1 - at `$.source`"),
        ("x" * 129, "Expected `str` of length <= 128 - at `$.source`"),
        ("two words", "source 'two words' breaks the source rule - at `$.source`"),
        ("a\nb", "breaks the source rule"),
    ],
)
def test_a_bad_source_is_refused_when_decoded_and_when_written(source: str, message: str) -> None:
    raw = msgspec.msgpack.encode(
        {"type": "trace_deleted", "trace_id": "t", "event_id": EID, "emitted_at_ms": 1,
         "source": source}
    )  # fmt: skip
    with pytest.raises(DecodeError, match=re.escape(message)):
        schemas.decode(raw)
    with pytest.raises(ValidationError, match="a source is 1-128 characters"):
        schemas.check_source(source)


@pytest.mark.parametrize("source", ["etl@host-3", "cli:alice", "undo:labeler/v2", "jöb+1.2_x"])
def test_valid_sources(source: str) -> None:
    assert schemas.check_source(source) == source
    event = schemas.TraceDeleted(trace_id="t", event_id=EID, emitted_at_ms=1, source=source)
    assert schemas.decode(schemas.encode(event)) == event


@pytest.mark.parametrize(
    "key",
    [
        "env",
        "model.version",
        "a b",
        "a/b",
        "a:b",
        "x-y_z",
        "日本語",
        "é",
        ".hidden",
        "a..b",
        "a.",
        "k" * 250,
    ],
)
def test_valid_keys(key: str) -> None:
    assert schemas.check_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/a",
        "a/",
        "a//b",
        "..",
        "..a",
        ".",
        "./a",
        "a/./b",
        "a/../b",
        "a/..",
        "a\n",
        "a\tb",
        "a*b",
        "a'b",
        "a=b",
        "a\\b",
    ],
)
def test_invalid_keys_name_the_key_and_the_rule(key: str) -> None:
    with pytest.raises(InvalidTagKeyError) as info:
        schemas.check_key(key)
    assert str(info.value) == f"tag key {key!r} is invalid: {schemas.KEY_RULE}"
    assert isinstance(info.value, ValueError)


def test_key_length_limit_is_250() -> None:
    with pytest.raises(InvalidTagKeyError) as info:
        schemas.check_key("k" * 251, "metadata")
    assert str(info.value) == (
        f"metadata key {'k' * 40!r}... is 251 characters long; the limit is 250"
    )


def test_value_limit_is_8000_and_never_truncated() -> None:
    assert schemas.check_value("k", "v" * 8000) == "v" * 8000
    with pytest.raises(InvalidTagValueError) as info:
        schemas.check_value("k", "v" * 8001)
    assert str(info.value) == (
        "tag 'k': value is 8001 characters long; the limit is 8000 "
        "(values are refused, never truncated)"
    )


def test_non_string_value_is_refused_with_its_type() -> None:
    with pytest.raises(InvalidTagValueError) as info:
        schemas.check_mapping({"retries": 3})
    assert str(info.value) == "tag 'retries': value must be a str, not int (3)"


@given(st.text(max_size=60))
def test_call_site_key_rule_agrees_with_the_decoder(key: str) -> None:
    """The one rule, two enforcers: the producer's check and the consumer's decoder."""
    raw = msgspec.msgpack.encode(
        {
            "type": "tags_set",
            "trace_id": "t",
            "event_id": EID,
            "emitted_at_ms": 1,
            "tags": {key: "v"},
        }
    )
    try:
        schemas.check_key(key)
        accepted = True
    except InvalidTagKeyError:
        accepted = False
    try:
        schemas.decode(raw)
        decoded = True
    except DecodeError:
        decoded = False
    assert accepted == decoded


def test_event_ids_are_unique_uuid7_and_time_ordered() -> None:
    ids = [schemas.new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(bytes=i) for i in ids]
    assert all(u.version == 7 for u in parsed)
    stamps = [int.from_bytes(i[:6], "big") for i in ids]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - schemas.now_ms()) < 5_000
