"""Hostile patterns and values: regexes that cannot hang, values the docs refuse, filters
that could only crash (huge integers, lone surrogates) refused with their position.

Each pattern test runs in a thread with a deadline so a regression (a backtracking engine)
fails the test instead of hanging the suite.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.support.query_data import apply_events
from tracetags import TagProducer, schemas
from tracetags.cli import ExitCode, app
from tracetags.client import Client
from tracetags.errors import FilterSemanticError, FilterSyntaxError, ValidationError
from tracetags.query.logical import pattern_predicate
from tracetags.query.parser import parse_filter
from tracetags.settings import Settings

runner = CliRunner()
#: A linear engine answers these in microseconds; a backtracking one takes minutes or more.
DEADLINE_S = 2.0
LONG = "a" * 8000


def _within_deadline(work: Callable[[], Any]) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"still running after {DEADLINE_S} s"
    assert time.monotonic() - started < DEADLINE_S
    return result[0]


HOSTILE_PATTERNS: list[tuple[str, str, bool]] = [
    ("RLIKE", "(a+)+$", False),
    ("RLIKE", "(a+)+b", False),
    ("RLIKE", "(a|aa)+c", False),
    ("RLIKE", "(.*a){20}x", False),
    ("RLIKE", "a!$", True),
    ("LIKE", "%_" * 40 + "?", False),
    ("ILIKE", "%A" * 40 + "b", False),
    ("NOT LIKE", "%a" * 40 + "b", False),
]
_RUN_HOSTILE = """
import json, sys
from tracetags.query.logical import pattern_predicate
cases = json.loads(sys.argv[1])
value = "a" * 8000 + "!"
print(json.dumps([pattern_predicate(op, pattern)(value) for op, pattern, _ in cases]))
"""


def test_hostile_patterns_run_in_linear_time() -> None:
    """In a child process: a backtracking engine holds the GIL, so no in-process deadline
    (thread join, pytest-timeout's alarm) could stop it."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RUN_HOSTILE, json.dumps(HOSTILE_PATTERNS)],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a hostile pattern ran for more than 20 s (a backtracking regex engine)")
    # Import and start-up included; the eight matches themselves take microseconds.
    assert time.monotonic() - started < 20
    assert json.loads(done.stdout) == [expected for _, _, expected in HOSTILE_PATTERNS]


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("^chat", "chatbot", True),
        ("a.c", "xabcx", True),
        ("(?i)CAFÉ", "un café", True),
        ("^x{3}$", "xxx", True),
        ("[", "[", False),  # invalid in every dialect: matches nothing
        (r"(a)\1", "aa", False),  # a backreference is not RE2 syntax: matches nothing
        ("(?=a)a", "a", False),  # nor is lookaround
        ("a.b", "a\nb", False),  # `.` does not match a newline unless (?s)
        ("(?s)a.b", "a\nb", True),
    ],
)
def test_rlike_is_re2_search(pattern: str, value: str, expected: bool) -> None:
    assert pattern_predicate("RLIKE", pattern)(value) is expected


def test_an_invalid_pattern_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    assert pattern_predicate("RLIKE", r"(a)\1")("aa") is False
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_rlike_against_redis_returns_in_bounded_time(settings: Settings) -> None:
    started = schemas.TraceStarted(
        trace_id="hostile",
        event_id=os.urandom(16),
        emitted_at_ms=1,
        experiment_id="0",
        timestamp_ms=1,
        tags={"long": LONG + "!"},
    )
    with Client(settings) as client:
        apply_events(client.redis, client.keys, settings.partition_count, [started])
        found = _within_deadline(lambda: client.search_traces(None, "tags.long RLIKE '!$'"))
        assert [t.info.trace_id for t in found] == ["hostile"]
        for hostile in ("tags.long RLIKE '(a+)+$'", "tags.long LIKE '" + "%_" * 40 + "?'"):
            none = _within_deadline(functools.partial(client.search_traces, None, hostile))
            assert list(none) == []


# --- values the docs refuse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.set_tags("t\n", {"k": "v"}), "trace_id must not end with a newline"),
        (lambda p: p.set_tags("t", {"k": "v\n"}), "tag 'k': value must not end with a newline"),
        (
            lambda p: p.set_tags("t\ud800", {"k": "v"}),
            "trace_id holds a lone surrogate at 1 (not valid Unicode text)",
        ),
        (
            lambda p: p.set_tags("t", {"k": "v\udcff"}),
            "tag 'k': value holds a lone surrogate at 1 (not valid Unicode text)",
        ),
        (
            lambda p: p.trace_started("t", experiment_id="0", metadata={"m": "x\n"}),
            "metadata 'm': value must not end with a newline",
        ),
        (
            lambda p: p.trace_started("t", experiment_id="0", name="n\ud800"),
            "name holds a lone surrogate at 1 (not valid Unicode text)",
        ),
        (
            lambda p: p.trace_started("t", experiment_id="0", client_request_id="c\n"),
            "client_request_id must not end with a newline",
        ),
        (
            lambda p: p.trace_finished(
                "t", experiment_id="0", timestamp_ms=1, execution_time_ms=2**63
            ),
            "execution_time_ms must be a non-negative int (milliseconds) below 2**63, "
            "got 9223372036854775808",
        ),
    ],
)
def test_producer_refuses_what_the_docs_refuse(settings: Settings, call: Any, message: str) -> None:
    with TagProducer(settings) as producer:
        with pytest.raises(ValidationError) as caught:
            call(producer)
        assert str(caught.value) == message
        stats = producer.stats()
        assert (stats.sent, stats.buffered) == (0, 0)


def test_inner_newlines_are_still_values(settings: Settings) -> None:
    with TagProducer(settings) as producer:
        producer.set_tags("t", {"k": "line one\nline two"})
        assert producer.flush().dropped == 0
        assert producer.stats().sent == 1


# --- filters that could only crash ----------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_string", "error", "reason", "position"),
    [
        (
            "execution_time_ms > 99999999999999999999",
            FilterSemanticError,
            "Integer out of range for execution_time_ms (at most 2**63-1)",
            20,
        ),
        (
            "timestamp_ms < '-99999999999999999999'",
            FilterSemanticError,
            "Integer out of range for timestamp_ms (at most 2**63-1)",
            15,
        ),
        (
            "tags.x = 'a\udcff'",
            FilterSyntaxError,
            "Invalid text: a lone surrogate (not valid Unicode)",
            11,
        ),
        (
            "tags.\ud800 = 'a'",
            FilterSyntaxError,
            "Invalid text: a lone surrogate (not valid Unicode)",
            5,
        ),
    ],
)
def test_filters_that_crashed_are_filter_errors(
    filter_string: str, error: type[Exception], reason: str, position: int
) -> None:
    with pytest.raises(error) as caught:
        parse_filter(filter_string)
    exc: Any = caught.value
    assert (exc.reason, exc.position) == (reason, position)
    assert str(exc).startswith(f"{reason} at position {position}:")


def test_crashing_filters_are_clean_through_the_client(settings: Settings) -> None:
    with Client(settings) as client:
        for filter_string in ("execution_time_ms > 99999999999999999999", "tags.x = 'a\udcff'"):
            with pytest.raises((FilterSemanticError, FilterSyntaxError)):
                client.search_traces(None, filter_string)
        with pytest.raises(ValidationError, match="lone surrogate"):
            client.get_trace("a\udcff")


# --- the same through the command line: one line, exit 2 -------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["count", "execution_time_ms > 99999999999999999999"], "Integer out of range"),
        (["search", "tags.x = 'a\udcff'"], "Invalid text: a lone surrogate"),
        (["get", "tr\udcff"], "trace_id holds a lone surrogate at 2"),
        (["tag", "set", "tr", "k", "v\udcff", "--no-wait"], "tag 'k': value holds a lone"),
        (["tag", "set", "tr\n", "k", "v", "--no-wait"], "trace_id must not end with a newline"),
    ],
)
def test_hostile_cli_arguments_exit_2_with_one_line(
    redis_url: str, namespace: str, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, *args])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # One error line (a filter error adds the filter and a caret under the position).
    lines = result.stderr.splitlines()
    assert len(lines) == (3 if "position" in lines[0] else 1), result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://127.0.0.1:6390/0?socket_timeout=abc",
            "Invalid value for 'socket_timeout' in connection URL.",
        ),
        ("redis://127.0.0.1:99999/0", "Port out of range 0-65535"),
        (
            "http://127.0.0.1:6390/0",
            "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://",
        ),
    ],
)
def test_a_bad_redis_url_is_a_config_error(url: str, message: str) -> None:
    result = runner.invoke(app, ["--redis-url", url, "count"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr == f"error: redis_url={url!r}: {message}\n"
