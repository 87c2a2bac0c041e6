"""The ``tracetags`` command through typer's runner, against a real Redis."""

from __future__ import annotations

import json

import redis
from typer.testing import CliRunner

from tracetags.cli import app
from tracetags.embedded import free_port
from tracetags.keys import Keys

runner = CliRunner()


def test_demo_emits_traffic_and_reads_the_log_back(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    result = runner.invoke(
        app, ["--redis-url", redis_url, "--namespace", namespace, "demo", "--traces", "300"]
    )
    assert result.exit_code == 0, result.output
    assert "trace_started" in result.stdout and "trace_finished" in result.stdout
    assert f"event log of namespace {namespace!r}" in result.stdout
    assert r.xlen(Keys(namespace).stream(0)) >= 600


def test_log_prints_json_lines_and_marks_undecodable_entries(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    runner.invoke(
        app, ["--redis-url", redis_url, "--namespace", namespace, "demo", "--traces", "5"]
    )
    r.xadd(Keys(namespace).stream(0), {"e": b"\xc1not msgpack"})
    result = runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, "log"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["type"] == "trace_started" and lines[0]["partition"] == 0
    assert len(lines[0]["event_id"]) == 36
    assert lines[-1]["error"].startswith("not a msgpack event")
    limited = runner.invoke(
        app, ["--redis-url", redis_url, "--namespace", namespace, "log", "--count", "3"]
    )
    assert len(limited.stdout.splitlines()) == 3


def test_unreachable_redis_exits_3_with_the_url_and_a_hint() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = runner.invoke(app, ["--redis-url", url, "log"])
    assert result.exit_code == 3
    assert f"Redis unreachable at {url}" in result.stderr
    assert "hint:" in result.stderr


def test_bad_setting_exits_2_naming_it(redis_url: str) -> None:
    result = runner.invoke(app, ["--redis-url", redis_url, "--namespace", "bad:ns", "log"])
    assert result.exit_code == 2
    assert "namespace='bad:ns'" in result.stderr
