"""The ``tracetags`` command through typer's runner, against a real Redis."""

from __future__ import annotations

import json
from typing import Any

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


def _cli(redis_url: str, namespace: str, *args: str) -> Any:
    return runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, *args])


def test_status_says_no_consumer_is_running(redis_url: str, namespace: str) -> None:
    _cli(redis_url, namespace, "demo", "--traces", "20")
    result = _cli(redis_url, namespace, "status")
    assert result.exit_code == 0, result.output
    assert "no consumer is running" in result.stdout
    assert "entries waiting" in result.stdout and "tracetags serve" in result.stdout
    data = json.loads(_cli(redis_url, namespace, "status", "--format", "json").stdout)
    assert data["namespace"] == namespace and data["live_consumers"] == []
    assert data["partitions"][0]["stream_length"] >= 40


async def test_get_tag_and_dead_letters_with_a_running_consumer(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    import asyncio

    from tests.test_consumer import consumer
    from tracetags import Settings

    settings = Settings(redis_url=redis_url, namespace=namespace)
    async with consumer(settings):

        def run(*args: str) -> Any:
            return _cli(redis_url, namespace, *args)

        result = await asyncio.to_thread(run, "tag", "set", "tr-x", "env", "prod")
        assert result.exit_code == 0, result.output
        got = await asyncio.to_thread(run, "get", "tr-x", "--format", "json")
        assert got.exit_code == 0, got.output
        record = json.loads(got.stdout)
        assert record["trace_id"] == "tr-x" and record["tags"] == {"env": "prod"}
        assert set(record) == {
            "trace_id",
            "experiment_id",
            "timestamp_ms",
            "execution_time_ms",
            "end_time_ms",
            "status",
            "name",
            "client_request_id",
            "tags",
            "metadata",
        }
        table = await asyncio.to_thread(run, "get", "tr-x")
        assert "tags.env" in table.stdout and "prod" in table.stdout
        deleted = await asyncio.to_thread(run, "tag", "delete", "tr-x", "env")
        assert deleted.exit_code == 0
        record = json.loads(
            (await asyncio.to_thread(run, "get", "tr-x", "--format", "json")).stdout
        )
        assert record["tags"] == {}
        missing = await asyncio.to_thread(run, "get", "tr-nope")
        assert missing.exit_code == 1 and "not found" in missing.stderr
        bad = await asyncio.to_thread(run, "tag", "set", "tr-x", "a//b", "v")
        assert bad.exit_code == 2 and "tag key 'a//b' is invalid" in bad.stderr

        # A letter left by an older consumer (its payload is valid now) and a real poison
        # entry: retry folds the first; purge drops the rest.
        from tracetags import schemas
        from tracetags.keys import Keys

        keys = Keys(namespace)
        good = schemas.encode(
            schemas.TagsSet(
                trace_id="tr-y",
                event_id=schemas.new_event_id(),
                emitted_at_ms=1,
                tags={"fixed": "yes"},
            )
        )
        r.xadd(
            keys.dead_letters(0),
            {"entry_id": "1-1", "payload": good, "reason": "consumer too old", "time_ms": 1},
        )
        r.xadd(keys.stream(0), {"e": b"\xc1 garbage"})
        from tests.helpers import wait_until

        await asyncio.to_thread(wait_until, lambda: r.xlen(keys.dead_letters(0)) == 2)
        listed = await asyncio.to_thread(run, "dead-letters", "list", "--format", "json")
        letters = [json.loads(line) for line in listed.stdout.splitlines()]
        assert letters[0]["reason"] == "consumer too old"
        assert letters[1]["reason"].startswith("not a msgpack event")
        retried = await asyncio.to_thread(run, "dead-letters", "retry", "1-1")
        assert retried.exit_code == 0 and "re-queued 1 dead letters" in retried.stderr
        await asyncio.to_thread(wait_until, lambda: r.hget(keys.trace_ids(0), "tr-y") is not None)
        purged = await asyncio.to_thread(run, "dead-letters", "purge", "--yes")
        assert purged.exit_code == 0 and "deleted 1 dead letters" in purged.stderr
        assert r.xlen(keys.dead_letters(0)) == 0
