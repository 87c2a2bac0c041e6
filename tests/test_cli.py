"""The ``tracetags`` command through typer's runner, against a real Redis."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import redis
import typer
from typer.testing import CliRunner

from tracetags import Client, Settings, TagProducer, errors
from tracetags.cli import (
    ERROR_EXIT_CODES,
    EXIT_CODE_MEANINGS,
    ExitCode,
    RootGroup,
    app,
    exit_code_for,
    leaf_commands,
)
from tracetags.connections import SyncClient, sync_client
from tracetags.embedded import free_port
from tracetags.keys import Keys

runner = CliRunner()


# A representative part of this suite runs on one Redis and on the local cluster (the
# any_* fixtures): the log, status, lookups and exit codes; tests/test_cluster_queries.py
# runs every read and admin command on a cluster URL.
@pytest.fixture
def any_namespace(any_settings: Settings) -> str:
    return any_settings.namespace


@pytest.fixture
def any_r(any_redis_url: str) -> Iterator[SyncClient]:
    client = sync_client(any_redis_url)
    yield client
    client.close()


def test_demo_end_to_end(any_redis_url: str, any_namespace: str) -> None:
    """The README's main job: traffic, a consumer, the classic questions, pasteable commands
    (on one Redis and on a cluster)."""
    redis_url, namespace = any_redis_url, any_namespace
    result = runner.invoke(
        app, ["--redis-url", redis_url, "--namespace", namespace, "demo", "--traces", "400"]
    )
    assert result.exit_code == 0, result.output
    for title in ("Production errors, newest first", "Slow traces (> 5 s) by model version",
                  "That user's session (session_", "Review queue",
                  "Beyond MLflow: IN, OR and parentheses"):  # fmt: skip
        assert title in result.stdout
    assert "emitted 400 traces" in result.stderr and "all folded" in result.stderr
    # the printed commands, pasted, reach the same Redis and namespace and ask the same
    # questions: a search returns traces of the demo's tables, the stats its slow groups
    shown = set(re.findall(r"tr-[0-9a-f]{32}", result.stdout))
    pasted = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert [argv[5] for argv in pasted] == ["search", "stats", "search", "search", "search"]
    for argv in pasted:
        assert argv[:5] == ["tracetags", "--redis-url", redis_url, "--namespace", namespace]
        if argv[5] == "search":
            again = runner.invoke(app, [*argv[1:], "--max-results", "6", "--format", "ids"])
            assert again.exit_code == 0, again.output
            ids = again.stdout.split()
            assert ids and set(ids) <= shown, (argv, ids)
        else:
            again = runner.invoke(app, [*argv[1:], "--format", "json"])
            assert again.exit_code == 0, again.output
            groups = json.loads(again.stdout)
            assert groups and all(g["count"] > 0 and g["max"] > 5000 for g in groups)
            assert f"{groups[0]['max']:,}" in result.stdout  # the demo's table, as it shows ints
    assert f"tracetags --redis-url {redis_url} --namespace {namespace} status" in result.stderr
    counted = runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, "count",
                                  "tags.needs_review = 'true'"])  # fmt: skip
    assert counted.exit_code == 0 and int(counted.stdout) > 0


def test_demo_from_a_fresh_directory_on_the_embedded_redis(tmp_path: Path) -> None:
    """The README's main job as a new user runs it: no Redis URL, a fresh directory, the
    default traffic, under a minute; the state stays for the next command."""
    if not shutil.which("redis-server"):
        pytest.skip("the embedded default needs the redis-server binary")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACETAGS_")}

    def tracetags(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tracetags.cli", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    started = time.monotonic()
    demo = tracetags("demo")
    elapsed = time.monotonic() - started
    assert demo.returncode == 0, demo.stderr
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"
    assert "embedded Redis at redis://127.0.0.1:" in demo.stderr
    assert "emitted 3000 traces" in demo.stderr and "all folded" in demo.stderr
    assert "the data stays in ./.tracetags" in demo.stderr
    assert "$ tracetags search" in demo.stdout  # no --redis-url: the embedded default
    port = int((tmp_path / ".tracetags" / "redis.port").read_text())
    with socket.socket() as sock:  # the demo stopped the server it started
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    counted = tracetags("count", "tags.needs_review = 'true'")
    assert counted.returncode == 0, counted.stderr
    assert int(counted.stdout) > 0


def _start_traces(redis_url: str, namespace: str, count: int) -> None:
    """Log ``count`` trace_started events (tr-0, tr-1, ...); no consumer folds them."""
    with TagProducer(Settings(redis_url=redis_url, namespace=namespace)) as producer:
        for i in range(count):
            producer.trace_started(f"tr-{i}", experiment_id="1", timestamp_ms=i)


def test_log_prints_json_lines_and_marks_undecodable_entries(
    any_redis_url: str, any_namespace: str, any_r: SyncClient
) -> None:
    redis_url, namespace = any_redis_url, any_namespace
    _start_traces(redis_url, namespace, 5)
    last = Settings(redis_url=redis_url).partition_count - 1
    any_r.xadd(Keys(namespace).stream(last), {"e": b"\xc1not msgpack"})
    result = runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, "log"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 6
    assert [line["partition"] for line in lines] == sorted(line["partition"] for line in lines)
    assert lines[0]["type"] == "trace_started"
    assert len(lines[0]["event_id"]) == 36
    assert lines[-1]["error"].startswith("not a msgpack event")
    limited = runner.invoke(
        app, ["--redis-url", redis_url, "--namespace", namespace, "log", "--count", "3"]
    )
    assert len(limited.stdout.splitlines()) == 3


def _summaries(command: Any, path: str = "") -> dict[str, str]:
    """Each command's summary: the first paragraph of its help, by command path."""
    if hasattr(command, "list_commands"):
        found: dict[str, str] = {}
        for name in command.list_commands(None):
            found.update(_summaries(command.get_command(None, name), f"{path} {name}".strip()))
        return found
    return {path: (command.help or "").strip().split("\n\n", 1)[0]}


def test_help_shows_one_line_summaries_exit_codes_and_completion() -> None:
    summaries = _summaries(typer.main.get_command(app))
    assert {"demo", "serve", "status", "tag set", "dead-letters retry"} <= set(summaries)
    for path, summary in summaries.items():
        assert summary and "\n" not in summary, f"{path}: summary spans lines: {summary!r}"
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in ("demo", "serve", "status", "search", "count", "explain"):
        # the command list shows each summary whole, on the command's own line
        assert any(f" {name} " in line and summaries[name] in line for line in lines), name
    text = " ".join(result.stdout.split())
    assert (
        "Exit codes: 0 success; 1 not found, timed out, or failed (a gap in the log, an "
        "unreadable archive); 2 usage or filter error (the filter is shown with a caret), or a "
        "query over a limit; 3 "
        "Redis unreachable (the URL tried and a hint); 4 a bulk write fell short (fewer traces "
        "written than matched); 5 Redis answers but is degraded (status: OOM, READONLY, "
        "MISCONF, ...; any command: busy or loading); 6 Redis refused the user name or "
        "password; 7 Redis's ACL refused a command or key to the user."
    ) in text
    assert "--install-completion" in text and "--show-completion" in text


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


def test_status_says_no_consumer_is_running(any_redis_url: str, any_namespace: str) -> None:
    redis_url, namespace = any_redis_url, any_namespace

    with TagProducer(Settings(redis_url=redis_url, namespace=namespace)) as producer:
        for i in range(40):
            producer.set_tags(f"tr-{i}", {"a": "b"})
    result = _cli(redis_url, namespace, "status")
    assert result.exit_code == 0, result.output
    assert "no consumer is running" in result.stdout
    assert "entries waiting" in result.stdout and "tracetags serve" in result.stdout
    data = json.loads(_cli(redis_url, namespace, "status", "--format", "json").stdout)
    assert data["namespace"] == namespace and data["live_consumers"] == []
    assert sum(p["stream_length"] for p in data["partitions"]) >= 40


async def test_get_tag_and_dead_letters_with_a_running_consumer(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    import asyncio

    from tests.support.consumer import consumer

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
            "last_set",
        }
        # who set each field, from the trace's history: this CLI, as cli:<os user>
        assert record["last_set"]["tags.env"]["source"].startswith("cli:")
        table = await asyncio.to_thread(run, "get", "tr-x")
        assert "tags.env" in table.stdout and "prod" in table.stdout
        deleted = await asyncio.to_thread(run, "tag", "delete", "tr-x", "env")
        assert deleted.exit_code == 0
        record = json.loads(
            (await asyncio.to_thread(run, "get", "tr-x", "--format", "json")).stdout
        )
        assert record["tags"] == {}
        status = await asyncio.to_thread(run, "status")
        assert status.exit_code == 0, status.output
        assert "consumers running: 1 (test-consumer)" in status.stdout
        assert "Redis memory:" in status.stdout and "no consumer is running" not in status.stdout
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
        from tests.support.helpers import wait_until

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


async def test_search_count_stats_explain_and_bulk_tagging(redis_url: str, namespace: str) -> None:
    import asyncio
    import csv
    import io

    from tests.support.consumer import consumer

    settings = Settings(redis_url=redis_url, namespace=namespace, partitions=2)
    producer = TagProducer(settings)
    for i in range(60):
        producer.trace_started(
            f"tr-{i:02d}",
            experiment_id=str(1 + i % 2),
            timestamp_ms=1000 + i,
            tags={"env": ("prod", "dev")[i % 2], "user": f"u{i % 5}"},
        )
        producer.trace_finished(
            f"tr-{i:02d}",
            experiment_id=str(1 + i % 2),
            timestamp_ms=1000 + i,
            execution_time_ms=10 * i,
            status="ERROR" if i % 3 == 0 else "OK",
        )
    client = Client(settings)
    async with consumer(settings):
        await asyncio.to_thread(client.wait_applied, producer.flush(), 30)

        def run(*args: str) -> Any:
            return _cli(redis_url, namespace, *args)

        ids = await asyncio.to_thread(
            run,
            "search",
            "tags.env = 'prod' AND status = 'ERROR'",
            "--format",
            "ids",
            "--order-by",
            "timestamp_ms ASC",
        )
        assert ids.exit_code == 0, ids.output
        assert ids.stdout.split() == [f"tr-{i:02d}" for i in range(0, 60, 6)]
        jsonl = await asyncio.to_thread(run, "search", "tags.user = 'u1'", "--max-results", "5")
        rows = [json.loads(line) for line in jsonl.stdout.splitlines()]  # piped: jsonl
        assert len(rows) == 5 and all(r["tags"]["user"] == "u1" for r in rows)
        assert "more: --page-token" in jsonl.stderr
        token = jsonl.stderr.split("--page-token", 1)[1].split()[0]
        rest = await asyncio.to_thread(
            run, "search", "tags.user = 'u1'", "--page-token", token, "--format", "ids"
        )
        assert len(rest.stdout.split()) == 7 and "more:" not in rest.stderr
        every = await asyncio.to_thread(
            run, "search", "--all", "--max-results", "7", "--format", "json"
        )
        doc = json.loads(every.stdout)
        assert len(doc["traces"]) == 60 and doc["next_page_token"] is None
        table = await asyncio.to_thread(
            run, "search", "tags.env = 'dev'", "-e", "2", "--format", "csv"
        )
        parsed = list(csv.DictReader(io.StringIO(table.stdout)))
        assert len(parsed) == 30 and parsed[0]["tags.env"] == "dev"
        assert {r["experiment_id"] for r in parsed} == {"2"}

        counted = await asyncio.to_thread(run, "count", "status = 'ERROR' OR tags.user = 'u0'")
        assert counted.stdout.strip() == str(
            len({i for i in range(60) if i % 3 == 0 or i % 5 == 0})
        )
        bad = await asyncio.to_thread(run, "count", "tags.env = prod")
        assert bad.exit_code == 2 and "^" in bad.stderr
        stats = await asyncio.to_thread(
            run, "stats", "status = 'OK'", "--group-by", "tags.env", "--format", "json"
        )
        groups = {g["group"]["tags.env"]: g for g in json.loads(stats.stdout)}
        ok_prod = [10 * i for i in range(0, 60, 2) if i % 3]
        assert groups["prod"]["count"] == len(ok_prod)
        assert groups["prod"]["max"] == max(ok_prod) and groups["prod"]["min"] == min(ok_prod)
        chart = await asyncio.to_thread(run, "stats", "--group-by", "status")
        assert "█" in chart.stdout
        # without count, the bar charts the metric asked for: the largest gets the full bar
        by_max = await asyncio.to_thread(run, "stats", "--group-by", "tags.env", "--metric", "max")
        assert "█" * 24 in by_max.stdout and "█" * 25 not in by_max.stdout
        plan = await asyncio.to_thread(run, "explain", "tags.env = 'prod' AND status = 'OK'")
        assert plan.exit_code == 0 and plan.stdout.strip()

        dry = await asyncio.to_thread(
            run, "tag", "set", "--filter", "status = 'ERROR'", "--dry-run", "needs_review", "true"
        )
        assert dry.exit_code == 0 and "20 traces match" in dry.stdout
        assert client.count("tags.needs_review = 'true'") == 0
        bulk = await asyncio.to_thread(
            run, "tag", "set", "--filter", "status = 'ERROR'", "needs_review", "true"
        )
        assert bulk.exit_code == 0 and "on 20 traces" in bulk.stderr
        assert client.count("tags.needs_review = 'true'") == 20
        gone = await asyncio.to_thread(
            run,
            "tag",
            "delete",
            "--filter",
            "tags.needs_review = 'true' AND tags.env = 'dev'",
            "needs_review",
        )
        assert gone.exit_code == 0 and "from 10 traces" in gone.stderr
        assert client.count("tags.needs_review = 'true'") == 10
        usage = await asyncio.to_thread(run, "tag", "set", "--filter", "status = 'OK'", "k")
        assert usage.exit_code == 2 and "expected KEY VALUE" in usage.stderr
    producer.close()
    client.close()


def test_status_lists_lookup_keys_and_their_state(
    any_redis_url: str, any_namespace: str, any_r: SyncClient
) -> None:
    from tracetags import functions
    from tracetags.keys import Keys

    redis_url, namespace, r = any_redis_url, any_namespace, any_r
    keys = Keys(namespace)
    functions.load(r)
    lk, prefix = keys.lookups(0), keys.prefix(0)
    r.fcall(functions.LOOKUP_FUNCTION, 1, lk, prefix, "list", "tuser_id")
    r.fcall(functions.LOOKUP_FUNCTION, 1, lk, prefix, "ready", "tuser_id")
    r.fcall(functions.LOOKUP_FUNCTION, 1, lk, prefix, "list", "mtenant")  # not built yet
    result = _cli(redis_url, namespace, "status")
    assert result.exit_code == 0, result.output
    assert "lookup keys: metadata.tenant (building), tags.user_id (ready)" in result.stdout
    data = json.loads(_cli(redis_url, namespace, "status", "--format", "json").stdout)
    assert data["partitions"][0]["lookups"] == {
        "tags.user_id": "ready",
        "metadata.tenant": "building",
    }


def test_lookups_drop_removes_a_key_in_every_partition(
    any_redis_url: str, any_namespace: str, any_r: SyncClient
) -> None:
    from tracetags import functions
    from tracetags.keys import Keys

    redis_url, namespace, r = any_redis_url, any_namespace, any_r
    keys = Keys(namespace)
    functions.load(r)
    r.hset(keys.meta, "partitions", 2)
    for partition in range(2):
        lk, prefix = keys.lookups(partition), keys.prefix(partition)
        r.fcall(functions.LOOKUP_FUNCTION, 1, lk, prefix, "list", "tuser_id")
        r.fcall(functions.LOOKUP_FUNCTION, 1, lk, prefix, "list", "tenv")
    r.set(keys.lookup_chunk(0, "tuser_id", 0), b"\0" * 1024)
    result = _cli(redis_url, namespace, "lookups", "drop", "tags.user_id")
    assert result.exit_code == 0, result.output
    assert "dropped the lookup fingerprints of tags.user_id (2 partitions had them)" in (
        result.stderr
    )
    assert not r.exists(keys.lookup_chunk(0, "tuser_id", 0))
    assert [r.hgetall(keys.lookups(p)) for p in range(2)] == [{b"tenv": b"building"}] * 2
    bad = _cli(redis_url, namespace, "lookups", "drop", "user_id")
    assert bad.exit_code == 2
    assert "each must be tags.<key> or metadata.<key>" in bad.stderr


# --- exit codes -----------------------------------------------------------------------------

EXIT_CASES: dict[ExitCode, tuple[list[str], str]] = {
    ExitCode.OK: (["count"], ""),
    ExitCode.FAILED: (["get", "tr-nope"], "trace 'tr-nope' not found"),
    ExitCode.USAGE: (["count", "tags.env = prod"], "Unquoted string value 'prod'"),
    ExitCode.UNREACHABLE: (["count"], "Redis unreachable at"),
}


#: Codes that need a Redis fault to happen, tested where the fault is made:
#: INCOMPLETE in tests/faults/test_bulk_writes.py, DEGRADED in tests/faults/test_health.py
#: (and busy in tests/test_clean_errors.py), AUTH_FAILED and FORBIDDEN in
#: tests/test_clean_errors.py (a Redis with ACL users).
FAULT_EXIT_CODES = {
    ExitCode.INCOMPLETE,
    ExitCode.DEGRADED,
    ExitCode.AUTH_FAILED,
    ExitCode.FORBIDDEN,
}


def test_every_exit_code_has_a_case_below() -> None:
    assert set(EXIT_CASES) | FAULT_EXIT_CODES == set(ExitCode)
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)


@pytest.mark.parametrize("code", list(EXIT_CASES), ids=[code.name for code in EXIT_CASES])
def test_exit_code(code: ExitCode, any_redis_url: str, any_namespace: str) -> None:
    args, message = EXIT_CASES[code]
    namespace = any_namespace
    unreachable = "redis+cluster" if "+cluster" in any_redis_url else "redis"
    url = (
        f"{unreachable}://127.0.0.1:{free_port()}/0"
        if code is ExitCode.UNREACHABLE
        else any_redis_url
    )
    result = runner.invoke(app, ["--redis-url", url, "--namespace", namespace, *args])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    if code is ExitCode.OK:
        assert result.stdout == "0\n"
    else:
        assert result.stderr.startswith("error:") or code is ExitCode.FAILED


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.RedisUnavailableError("x"), ExitCode.UNREACHABLE),
        (errors.RedisAuthError("x"), ExitCode.AUTH_FAILED),
        (errors.RedisPermissionError("x"), ExitCode.FORBIDDEN),
        (errors.RedisBusyError("x"), ExitCode.DEGRADED),
        (errors.RedisTlsError("x"), ExitCode.UNREACHABLE),
        (errors.LibraryVersionError("x"), ExitCode.FAILED),
        (errors.EmbeddedRedisError("x"), ExitCode.UNREACHABLE),
        (errors.TracetagsTimeoutError("x"), ExitCode.FAILED),
        (errors.BulkWriteError("x", written=1, total=2), ExitCode.INCOMPLETE),
        (errors.LogGapError("x"), ExitCode.FAILED),
        (errors.ArchiveStoreError("x"), ExitCode.FAILED),
        (errors.ArchiveCorruptError("x"), ExitCode.FAILED),
        (errors.ReplayTargetError("x"), ExitCode.USAGE),
        (errors.ConfigError("x"), ExitCode.USAGE),
        (errors.ValidationError("x"), ExitCode.USAGE),
        (errors.InvalidTagKeyError("x"), ExitCode.USAGE),
        (errors.FilterSyntaxError("x"), ExitCode.USAGE),
        (errors.FilterSemanticError("x"), ExitCode.USAGE),
        (errors.PageTokenError("x"), ExitCode.USAGE),
        (errors.QueryError("x"), ExitCode.USAGE),
        (errors.QueryLimitError("x"), ExitCode.USAGE),
        (errors.EventLimitError("x"), ExitCode.USAGE),
        (errors.FoldError("x"), ExitCode.USAGE),
        (errors.TracetagsError("x"), ExitCode.USAGE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.name,
)
def test_library_errors_map_to_exit_codes(error: errors.TracetagsError, code: ExitCode) -> None:
    assert exit_code_for(error)[0] is code


def test_every_library_error_class_has_an_exit_code() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.TracetagsError)
    ]
    assert len(classes) >= 15
    for cls in classes:
        assert any(issubclass(cls, kind) for kind, _, _ in ERROR_EXIT_CODES), cls


def test_a_usage_error_of_the_command_line_exits_2() -> None:
    result = runner.invoke(app, ["count", "--no-such-option"])
    assert result.exit_code == ExitCode.USAGE


# --- global options before or after the command ---------------------------------------------


def _both_forms(redis_url: str, namespace: str, *args: str) -> tuple[Any, Any]:
    before = runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, *args])
    after = runner.invoke(app, [*args, "--redis-url", redis_url, "--namespace", namespace])
    return before, after


def test_global_options_work_before_or_after_the_command(redis_url: str, namespace: str) -> None:
    _start_traces(redis_url, namespace, 3)
    for args in (
        ["log", "--count", "2"],
        ["search", "tags.a = 'x'", "--format", "ids"],
        ["count", "status = 'OK' OR tags.a = 'x'"],
        ["dead-letters", "list", "--format", "json"],
    ):
        before, after = _both_forms(redis_url, namespace, *args)
        assert before.exit_code == 0, (args, before.output)
        assert (after.exit_code, after.stdout) == (0, before.stdout), (args, after.output)
    for status in _both_forms(redis_url, namespace, "status", "--format", "json"):
        assert status.exit_code == 0, status.output
        report = json.loads(status.stdout)
        assert report["namespace"] == namespace and report["partitions"][0]["stream_length"] == 3
    # mixed, and in a sub-command group: --redis-url before, --namespace after
    tagged = runner.invoke(app, ["--redis-url", redis_url, "tag", "set", "tr-0", "k", "v",
                                 "--no-wait", "--namespace", namespace])  # fmt: skip
    assert tagged.exit_code == 0, tagged.output
    log = runner.invoke(app, ["log", "--redis-url", redis_url, "--namespace", namespace])
    assert json.loads(log.stdout.splitlines()[-1])["tags"] == {"k": "v"}


def test_a_global_option_after_the_command_wins(redis_url: str, namespace: str) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    result = runner.invoke(app, ["--redis-url", unreachable, "count", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["count", "--redis-url", unreachable], env={"TRACETAGS_REDIS_URL": redis_url}
    )
    assert result.exit_code == ExitCode.UNREACHABLE and unreachable in result.stderr


def test_serve_takes_the_redis_url_after_the_command() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["--redis-url", url, "serve"], ["serve", "--redis-url", url]):
        result = runner.invoke(app, args)
        assert result.exit_code == ExitCode.UNREACHABLE, result.output
        assert f"Redis unreachable at {url}" in result.stderr


def test_subcommand_help_lists_the_global_options() -> None:
    result = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Global options (also before the command)" in result.stdout
    assert "--redis-url" in result.stdout and "--namespace" in result.stdout


def test_every_command_takes_the_global_options() -> None:
    root: Any = typer.main.get_command(app)
    global_opts = {opt for param in root.params for opt in param.opts if "completion" not in opt}
    assert global_opts == {"--redis-url", "--namespace"}
    commands = list(leaf_commands(root))
    assert len(commands) >= 15
    for command in commands:
        assert global_opts <= {opt for param in command.params for opt in param.opts}, command


def test_a_command_may_not_define_a_global_option_again() -> None:
    clash = typer.Typer(cls=RootGroup)

    @clash.callback()
    def options(namespace: Annotated[str | None, typer.Option("--namespace")] = None) -> None:
        pass

    @clash.command()
    def one(namespace: Annotated[str | None, typer.Option("--namespace")] = None) -> None:
        pass

    @clash.command()
    def two() -> None:
        pass

    with pytest.raises(TypeError, match="one: --namespace is a global option"):
        typer.main.get_command(clash)


def test_a_write_without_a_fold_times_out_after_its_timeout(redis_url: str, namespace: str) -> None:
    """No consumer runs: `tag set` / `tag delete` wait `--timeout` seconds, exit 1 naming
    the wait, and the event is written (folded once a consumer starts)."""
    base = ["--redis-url", redis_url, "--namespace", namespace]
    for args in (["tag", "set", "tr-1", "owner", "ana"], ["tag", "delete", "tr-1", "owner"]):
        started = time.monotonic()
        result = runner.invoke(app, [*base, *args, "--timeout", "0.3"])
        elapsed = time.monotonic() - started
        assert result.exit_code == ExitCode.FAILED, result.output
        assert "within 0.3s" in result.stderr and "is a consumer running?" in result.stderr
        assert elapsed < 10, elapsed
    assert redis.Redis.from_url(redis_url).xlen(Keys(namespace).stream(0)) == 2
    bad = runner.invoke(app, [*base, "tag", "set", "tr-1", "k", "v", "--timeout", "0"])
    assert bad.exit_code == ExitCode.USAGE
