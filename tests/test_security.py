"""Least privilege and clean refusals on a real Redis with ACL users (and TLS).

Each role runs with exactly the rules :mod:`tracetags.security` gives (those printed in
docs/security.md); every refusal is one line with its exit code, never a traceback or a
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from tests.support.consumer import consumer
from tests.support.fold import fold_all
from tests.support.secure_redis import ADMIN_PASSWORD, SecureRedis, TlsFiles, make_tls_files
from tracetags import AsyncTagProducer, TagProducer, functions
from tracetags.cli import ExitCode, app
from tracetags.client import NOT_PERMITTED, Client
from tracetags.connections import sync_client
from tracetags.consumer import create_app, prepare_namespace
from tracetags.errors import (
    LibraryVersionError,
    RedisAuthError,
    RedisPermissionError,
    RedisTlsError,
)
from tracetags.security import ROLES, Role, acl_setuser
from tracetags.settings import Settings

runner = CliRunner()


class Deployment:
    """One namespace of a SecureRedis with a user per role (and one of another namespace)."""

    def __init__(self, server: SecureRedis) -> None:
        self.server = server
        self.namespace = f"sec-{uuid.uuid4().hex[:8]}"
        self.urls = server.add_namespace(self.namespace)
        self.other_namespace = f"oth-{uuid.uuid4().hex[:8]}"
        server.add_namespace(self.other_namespace)

    def settings(self, role: Role, **changes: Any) -> Settings:
        return Settings(
            redis_url=self.urls[role], namespace=self.namespace, flush_interval_ms=2, **changes
        )


def _start(tmp: Path, tls: TlsFiles | None) -> SecureRedis:
    try:
        return SecureRedis(tmp / "redis", tls)
    except RuntimeError as exc:
        if tls is not None and "TLS" in str(exc):
            pytest.skip(f"this redis-server was built without TLS: {exc}")
        raise


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    server = _start(tmp_path_factory.mktemp("acl"), None)
    yield Deployment(server)
    server.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, TlsFiles]]:
    tmp = tmp_path_factory.mktemp("tls")
    files = make_tls_files(tmp / "certs")
    server = _start(tmp, files)
    yield Deployment(server), files
    server.stop()


def _cli(url: str, namespace: str, *args: str) -> Any:
    return runner.invoke(app, ["--redis-url", url, "--namespace", namespace, *args])


def _one_clean_line(result: Any) -> str:
    """The error a command printed: one ``error:`` line, no traceback, no secret."""
    text = result.stderr + result.stdout
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), text
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for secret in ("pw-", ADMIN_PASSWORD, "wrong-password"):
        assert secret not in text, text
    return str(lines[0])


# --- each role with its documented rules ------------------------------------------------------


async def _every_role_works(deployment: Deployment) -> None:
    ns = deployment.namespace
    async with consumer(deployment.settings("consumer"), name="acl-consumer"):
        with TagProducer(deployment.settings("producer")) as producer:
            producer.trace_started("tr-1", experiment_id="0", tags={"env": "prod"})
            producer.set_tags("tr-1", {"owner": "ana"})
            receipt = producer.flush()
        with Client(deployment.settings("query")) as client:
            await asyncio.to_thread(client.wait_applied, receipt, 30)
            trace = client.get_trace("tr-1")
            assert trace is not None and trace.info.tags == {"env": "prod", "owner": "ana"}
            found = client.search_traces(None, "tags.env = 'prod' AND tags.owner LIKE 'a%'")
            assert [t.info.trace_id for t in found] == ["tr-1"]
            assert client.count("tags.owner RLIKE '^an'") == 1
            status = client.status()
            assert status.used_memory_human == NOT_PERMITTED
            assert [row.traces for row in status.partitions] == [1]
        shown = _cli(deployment.urls["query"], ns, "status")
        assert shown.exit_code == 0, shown.output
        assert f"Redis memory: {NOT_PERMITTED}" in shown.stdout
        got = _cli(deployment.urls["query"], ns, "get", "tr-1", "--format", "json")
        assert got.exit_code == 0 and '"owner":"ana"' in got.stdout


async def test_each_role_runs_with_its_documented_rules(plain: Deployment) -> None:
    await _every_role_works(plain)


def test_the_archiver_role_archives_and_trims(plain: Deployment, tmp_path: Path) -> None:
    from tracetags.archive.archiver import archive_once

    prepare_namespace(plain.settings("consumer"))
    settings = plain.settings("archiver", archive_url=f"file://{tmp_path}", log_retention="0")
    reports = archive_once(settings)
    assert [r.error for r in reports] == [None]


async def test_each_role_runs_over_tls(tls: tuple[Deployment, TlsFiles]) -> None:
    deployment, _ = tls
    assert deployment.urls["query"].startswith("rediss://")
    await _every_role_works(deployment)


# --- what a role may not do: one line, its exit code, at once ---------------------------------


def test_a_producer_cannot_read(plain: Deployment) -> None:
    # (a trace folded first, whichever tests ran before: get_trace reads nothing else)
    folder = plain.settings("consumer")
    prepare_namespace(folder)
    with TagProducer(plain.settings("producer")) as producer:
        producer.trace_started("tr-1", experiment_id="0")
    with sync_client(folder.effective_redis_url) as r:
        fold_all(r, folder, folder.partition_count)
    with (
        Client(plain.settings("producer")) as client,
        pytest.raises(RedisPermissionError, match="refused by its ACL"),
    ):
        client.get_trace("tr-1")
    result = _cli(plain.urls["producer"], plain.namespace, "get", "tr-1")
    assert result.exit_code == ExitCode.FORBIDDEN
    assert "refused by its ACL" in _one_clean_line(result)


def test_a_query_user_cannot_write_and_tag_set_fails_at_once(plain: Deployment) -> None:
    started = time.monotonic()
    result = _cli(plain.urls["query"], plain.namespace, "tag", "set", "tr-1", "k", "v")
    assert time.monotonic() - started < 10
    assert result.exit_code == ExitCode.FORBIDDEN, result.output
    assert "no permissions to run the 'hsetnx' command" in _one_clean_line(result)


def test_a_refused_producer_logs_once_keeps_its_events_and_flush_raises(
    plain: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    producer = TagProducer(plain.settings("query"))
    try:
        producer.set_tags("tr-2", {"k": "v"})
        started = time.monotonic()
        with pytest.raises(RedisPermissionError):
            producer.flush(timeout=30)
        assert time.monotonic() - started < 5
        stats = producer.stats()
        assert (stats.condition, stats.buffered, stats.dropped) == ("NOPERM", 1, 0)
        refusals = [r for r in caplog.records if "refused by its ACL" in r.getMessage()]
        assert [r.levelname for r in refusals] == ["ERROR"]
    finally:
        producer.close(timeout=0.1)


async def test_a_refused_async_producer_raises_at_flush(plain: Deployment) -> None:
    producer = AsyncTagProducer(plain.settings("query"))
    try:
        producer.set_tags("tr-3", {"k": "v"})
        started = time.monotonic()
        with pytest.raises(RedisPermissionError, match="refused by its ACL"):
            await producer.flush(timeout=30)
        assert time.monotonic() - started < 5
        assert producer.stats().buffered == 1
    finally:
        await producer.close(timeout=0.1)


def test_another_namespace_is_forbidden(plain: Deployment) -> None:
    result = _cli(plain.urls["query"], plain.other_namespace, "count")
    assert result.exit_code == ExitCode.FORBIDDEN
    assert "refused by its ACL" in _one_clean_line(result)


def test_a_wrong_password_exits_6(plain: Deployment) -> None:
    url = plain.urls["query"].replace("pw-query-", "wrong-password-")
    result = _cli(url, plain.namespace, "count")
    assert result.exit_code == ExitCode.AUTH_FAILED
    line = _one_clean_line(result)
    assert line.startswith(f"error: Redis at redis://{plain.namespace}-query:***@127.0.0.1:")
    assert "refused the credentials" in line


def test_serve_on_a_forbidden_namespace_gives_up_before_its_banner(
    plain: Deployment, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACETAGS_")}
    env["TRACETAGS_REDIS_URL"] = plain.urls["consumer"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracetags.cli", "--namespace", plain.other_namespace, "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    assert proc.returncode == ExitCode.FORBIDDEN, err
    assert "folding namespace" not in out
    assert "Traceback" not in err and "pw-consumer" not in out + err
    assert "refused by its ACL" in err


def test_a_busy_redis_is_reported_as_busy_not_unreachable(plain: Deployment) -> None:
    admin = plain.server.admin()

    def loop() -> None:
        with contextlib.suppress(redis.RedisError):
            admin.eval("local i = 0 while true do i = i + 1 end", 0)

    looping = threading.Thread(target=loop, daemon=True)
    looping.start()
    killer = plain.server.admin()
    try:
        time.sleep(0.5)  # past busy-reply-threshold (200 ms)
        result = _cli(plain.urls["query"], plain.namespace, "count")
        assert result.exit_code == ExitCode.DEGRADED, result.output
        line = _one_clean_line(result)
        assert "is busy running a script or Function" in line
        assert "unreachable" not in line and "redis-server" not in line
    finally:
        with contextlib.suppress(redis.RedisError):
            killer.script_kill()
        looping.join(10)
        killer.close()
        admin.close()


# --- the shared library: who loads it, and never a downgrade ----------------------------------

NEWER = (
    "#!lua name=tracetags_v999\nredis.register_function('tt_newer_probe', function() return 1 end)"
)


def test_a_consumer_never_replaces_a_newer_library(plain: Deployment) -> None:
    admin = plain.server.admin()
    # As a newer consumer leaves it: its version loaded, this one's deleted.
    with contextlib.suppress(redis.ResponseError):
        admin.function_delete(functions.LIBRARY_NAME)
    admin.function_load(NEWER, replace=True)
    try:
        with pytest.raises(LibraryVersionError) as caught:
            prepare_namespace(plain.settings("consumer"))
        assert str(caught.value).startswith(
            f"Redis runs the Functions library tracetags_v999, newer than this tracetags's "
            f"{functions.LIBRARY_NAME}: upgrade tracetags here."
        )
        assert admin.fcall("tt_newer_probe", 0) == 1  # still there
    finally:
        admin.function_delete("tracetags_v999")
        admin.close()


def test_only_the_consumer_role_may_load_the_library(plain: Deployment) -> None:
    admin = plain.server.admin()
    with contextlib.suppress(redis.ResponseError):
        admin.function_delete(functions.LIBRARY_NAME)
    try:
        with (
            Client(plain.settings("query")) as client,
            pytest.raises(
                RedisPermissionError, match=r"no permissions to run the 'function\|load' command"
            ),
        ):
            client.count("tags.env = 'prod'")
        prepare_namespace(plain.settings("consumer"))
        with Client(plain.settings("query")) as client:
            assert client.count("tags.env = 'nobody'") == 0
    finally:
        admin.close()


# --- TLS: a CA that did not sign the server ---------------------------------------------------


def test_a_wrong_ca_is_one_clean_line(tls: tuple[Deployment, TlsFiles]) -> None:
    deployment, files = tls
    url = deployment.server.url(
        f"{deployment.namespace}-query", f"pw-query-{deployment.namespace}", ca=files.other_ca
    )
    result = _cli(url, deployment.namespace, "count")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "certificate verify failed" in _one_clean_line(result)


async def test_a_consumer_with_a_wrong_ca_stops_with_a_log_line(
    tls: tuple[Deployment, TlsFiles], caplog: pytest.LogCaptureFixture
) -> None:
    deployment, files = tls
    url = deployment.server.url(
        f"{deployment.namespace}-consumer", f"pw-consumer-{deployment.namespace}", ca=files.other_ca
    )
    app_ = create_app(Settings(redis_url=url, namespace=deployment.namespace))
    started = time.monotonic()
    with pytest.raises(RedisTlsError, match="certificate verify failed"):
        await app_.start()
    assert time.monotonic() - started < 20
    assert any(
        r.levelname == "ERROR" and "certificate verify failed" in r.getMessage()
        for r in caplog.records
    )


def test_faststream_run_with_a_wrong_ca_exits_with_a_log_line(
    tls: tuple[Deployment, TlsFiles], tmp_path: Path
) -> None:
    deployment, files = tls
    url = deployment.server.url(
        f"{deployment.namespace}-consumer", f"pw-consumer-{deployment.namespace}", ca=files.other_ca
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACETAGS_")}
    env.update(TRACETAGS_REDIS_URL=url, TRACETAGS_NAMESPACE=deployment.namespace)
    faststream = Path(sys.executable).with_name("faststream")
    done = subprocess.run(
        [str(faststream), "run", "tracetags.consumer:app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "certificate verify failed" in done.stderr + done.stdout
    assert f"pw-consumer-{deployment.namespace}" not in done.stderr + done.stdout


def test_wrong_credentials_fail_the_library_calls_at_once(plain: Deployment) -> None:
    url = plain.urls["consumer"].replace("pw-consumer-", "wrong-password-")
    with pytest.raises(RedisAuthError):
        prepare_namespace(Settings(redis_url=url, namespace=plain.namespace))


def test_the_documented_rules_are_the_tested_rules() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    for role in ROLES:
        line = " ".join(["ACL", "SETUSER", *acl_setuser(role, "myns", f"myns-{role}", "PASSWORD")])
        assert f"\n{line}\n" in docs, role


def test_a_producer_with_a_wrong_password_raises_at_flush(plain: Deployment) -> None:
    url = plain.urls["producer"].replace("pw-producer-", "wrong-password-")
    producer = TagProducer(Settings(redis_url=url, namespace=plain.namespace))
    try:
        producer.set_tags("tr-4", {"k": "v"})
        started = time.monotonic()
        with pytest.raises(RedisAuthError, match="refused the credentials") as caught:
            producer.flush(timeout=30)
        assert time.monotonic() - started < 5
        assert "wrong-password" not in str(caught.value)
        assert producer.stats().condition == "AUTH"
    finally:
        producer.close(timeout=0.1)


def test_a_producer_with_a_wrong_ca_raises_at_flush_and_closes_quietly(
    tls: tuple[Deployment, TlsFiles],
) -> None:
    deployment, files = tls
    url = deployment.server.url(
        f"{deployment.namespace}-producer", f"pw-producer-{deployment.namespace}", ca=files.other_ca
    )
    producer = TagProducer(Settings(redis_url=url, namespace=deployment.namespace))
    producer.set_tags("tr-5", {"k": "v"})
    started = time.monotonic()
    with pytest.raises(RedisTlsError, match="certificate verify failed"):
        producer.flush(timeout=30)
    assert time.monotonic() - started < 5
    assert producer.stats().condition == "TLS"
    producer.close(timeout=0.1)  # drops what is left, raises nothing
