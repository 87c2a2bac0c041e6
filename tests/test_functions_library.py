"""The Lua library assembled from part files: its layout, its shared constants, the line map
that names a part file and line in an error, and reloading when the code changes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources

import msgspec
import pytest
import redis

from tracetags import functions
from tracetags.embedded import RedisServer
from tracetags.errors import QueryError
from tracetags.functions import library
from tracetags.keys import LEX_BUCKET, PLAIN_MAX, SET_CHUNK, Keys
from tracetags.schemas import TagsSet, new_event_id

PARTS_DIR = resources.files("tracetags.functions") / "lua"
MAX_PART_LINES = 400
MAX_FUNCTION_LINES = 80


def _part(name: str) -> list[str]:
    return (PARTS_DIR / name).read_text("utf-8").split("\n")


def _line_of(part: str, text: str, after: str) -> int:
    """The 1-based line of ``part`` that is exactly ``text``, first after the line ``after``."""
    lines = _part(part)
    start = lines.index(after)
    return lines.index(text, start) + 1


def test_every_part_file_is_assembled_once_in_declared_order() -> None:
    on_disk = sorted(p.name for p in PARTS_DIR.iterdir() if p.name.endswith(".lua"))
    assert sorted(library.PARTS) == on_disk
    assert len(set(library.PARTS)) == len(library.PARTS)
    assert library.PARTS[0] == library.PRELUDE
    spans = functions.LIBRARY.spans
    assert [s.part for s in spans] == ["<header>", *library.PARTS]


def test_parts_and_functions_stay_short() -> None:
    starts = re.compile(r"(local )?function \w|\w+ = function\(")
    for name in library.PARTS:
        lines = _part(name)
        assert len(lines) <= MAX_PART_LINES, f"{name} has {len(lines)} lines"
        start = None
        for n, line in enumerate(lines, 1):
            if starts.match(line):
                start = n
            elif line.startswith("end") and start is not None:
                length = n - start + 1
                reason = lines[start - 2] if start > 1 else ""
                assert length <= MAX_FUNCTION_LINES or reason.startswith("-- Long: "), (
                    f"{name}:{start} is {length} lines with no '-- Long: <reason>' above it"
                )
                start = None


def test_each_function_entry_lists_its_keys_and_argv() -> None:
    for part, entry in (
        ("apply.lua", "tt_apply"),
        ("query.lua", "tt_query"),
        ("lookups.lua", "tt_lookup"),
    ):
        text = (PARTS_DIR / part).read_text("utf-8")
        doc = text[text.index(f"--[[\n{entry}:") : text.index(f"local function {entry}(")]
        assert "KEYS[1]" in doc and "ARGV" in doc, part
        assert f"local function {entry}(keys, argv)\n    bind_runtime()\n" in text


def test_constants_shared_with_python_are_emitted_once_in_the_header() -> None:
    code = functions.LIBRARY_CODE
    header = code.split("\n")[: functions.LIBRARY.spans[1].first - 1]
    assert header[0] == f"#!lua name={functions.LIBRARY_NAME}"
    for line in (
        f"local SET_CHUNK = {SET_CHUNK}",
        f"local PLAIN_MAX = {PLAIN_MAX}",
        f"local LEX_BUCKET = {LEX_BUCKET}",
        f"local FINGERPRINT_MOD = {library.FINGERPRINT_MOD}",
        f"local APPLY_FUNCTION = '{functions.APPLY_FUNCTION}'",
    ):
        assert line in header
    for name in library.shared_constants():
        # spelled in the header only: no part defines it again
        assert not re.search(rf"^local {name}\b", code[len("\n".join(header)) :], re.M), name


def test_the_line_map_names_part_files() -> None:
    lib = functions.LIBRARY
    span = next(s for s in lib.spans if s.part == "fold_trace.lua")
    assert lib.locate(span.first) == "fold_trace.lua:1"
    assert lib.locate(span.first + 40) == "fold_trace.lua:41"
    assert lib.locate(1) == "<header>:1"
    at = span.first + 40
    text = f"ERR user_function:{at}: boom script: tt_apply, on @user_function:{at}."
    assert lib.translate(text) == (
        "ERR fold_trace.lua:41: boom script: tt_apply, on @fold_trace.lua:41."
    )


@pytest.fixture
def faulty(r: redis.Redis) -> Iterator[tuple[library.Library, int]]:
    """The library with a deliberate fault in fold_trace.lua, loaded beside the real one
    under names of its own; yields it and the faulty line of fold_trace.lua."""
    parts = []
    fault_line = 0
    for name, text in library.read_parts():
        if name == "fold_trace.lua":
            lines = text.split("\n")
            at = lines.index("local function fold_events(st, events)") + 1
            lines.insert(at, "    local fault = nil; fault.x = 1")
            fault_line = at + 1
            text = "\n".join(lines)
        parts.append((name, text))
    names = {
        "APPLY_FUNCTION": "tt_fault_apply",
        "QUERY_FUNCTION": "tt_fault_query",
        "LOOKUP_FUNCTION": "tt_fault_lookup",
        "TRIM_FUNCTION": "tt_fault_trim",
        "INDEX_FUNCTION": "tt_fault_index",
    }
    lib = library.assemble(parts, library_name="tracetags_test_fault", function_names=names)
    r.function_load(lib.code, replace=True)
    yield lib, fault_line
    r.function_delete(lib.name)


def test_a_runtime_error_in_a_part_names_its_file_and_line(
    faulty: tuple[library.Library, int], r: redis.Redis, namespace: str
) -> None:
    lib, fault_line = faulty
    keys = Keys(namespace)
    prefix = keys.prefix(0)
    # two events of one trace: the batch takes the several-event fold (fold_events)
    items: list[functions.BatchItem] = [
        (
            "1-1",
            TagsSet(trace_id="tr-1", event_id=new_event_id(), emitted_at_ms=1, tags={"a": "1"}),
        ),
        (
            "1-2",
            TagsSet(trace_id="tr-1", event_id=new_event_id(), emitted_at_ms=1, tags={"a": "2"}),
        ),
    ]
    argv = functions.build_args("g", prefix, items)
    with pytest.raises(redis.ResponseError) as caught:
        r.fcall("tt_fault_apply", 2, f"{prefix}:log", f"{prefix}:dead", *argv)
    raw = str(caught.value)
    span = next(s for s in lib.spans if s.part == "fold_trace.lua")
    assert f"user_function:{span.first + fault_line - 1}:" in raw
    assert lib.translate(raw) == (
        f"fold_trace.lua:{fault_line}: attempt to index local 'fault' (a nil value) "
        f"script: tt_fault_apply, on @fold_trace.lua:{fault_line}."
    )


def test_the_query_wrapper_translates_a_lua_runtime_error(r: redis.Redis, namespace: str) -> None:
    # a plan whose order is not a list: Lua fails where it first takes its length
    plan = msgspec.msgpack.encode({"mode": "page", "order": 5, "limit": 1})
    with pytest.raises(QueryError) as caught:
        functions.query_partitions(r, Keys(namespace), [(0, plan)])
    line = _line_of(
        "ordering.lua", "    for k = 1, #order do", "local function order_fields(order)"
    )
    assert str(caught.value) == (
        f"ordering.lua:{line}: attempt to get length of local 'order' (a number value)"
    )
    assert caught.value.code == "TT_ERROR"


def test_load_replaces_a_library_whose_code_differs(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    try:
        assert functions.load(client) is True
        assert functions.load(client) is False
        parts = library.read_parts()
        name, text = parts[1]
        parts[1] = (name, text + "-- a comment: the same fold, other code text\n")
        client.function_load(library.assemble(parts).code, replace=True)
        assert functions.load(client) is True
        assert functions.load(client) is False
    finally:
        client.close()
