"""No secret is ever printed: every output path of the CLI (commands, serve, demo, errors)
and the library's logs, run with a Redis password and an archive endpoint holding a key,
is searched for both.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.support.secure_redis import ADMIN_PASSWORD, SecureRedis
from tracetags import TagProducer
from tracetags.cli import ExitCode, app
from tracetags.client import Client
from tracetags.embedded import free_port
from tracetags.errors import ConfigError, RedisUnavailableError
from tracetags.settings import Settings, redact_url

S3_SECRET = "s3-SECRET-key-xyz"
ARCHIVE_URL = f"s3://bucket/prefix?endpoint=http://AKID:{S3_SECRET}@127.0.0.1:9&region=x"
SECRETS = (ADMIN_PASSWORD, S3_SECRET)

runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    started = SecureRedis(tmp_path_factory.mktemp("redact") / "redis")
    yield started
    started.stop()


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:pw@h/0?socket_timeout=1", "redis://user:***@h/0?socket_timeout=1"),
        ("redis://token@h/0", "redis://***@h/0"),
        ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
        (
            "rediss://h?ssl_password=pw&ssl_ca_certs=/ca.pem",
            "rediss://h?ssl_password=***&ssl_ca_certs=/ca.pem",
        ),
        ("unix:///run/r.sock?password=pw", "unix:///run/r.sock?password=***"),
        ("s3://b/p?endpoint=http://ak:sk@minio:9000", "s3://b/p?endpoint=http://ak:***@minio:9000"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("file:///data/archive", "file:///data/archive"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_cli_output_path_hides_the_password(server: SecureRedis, tmp_path: Path) -> None:
    url = server.url()
    ns = f"red-{uuid.uuid4().hex[:8]}"
    outputs: list[str] = []

    def cli(*args: str, env: dict[str, str] | None = None) -> Any:
        result = runner.invoke(app, ["--redis-url", url, "--namespace", ns, *args], env=env)
        outputs.append(result.stdout + result.stderr)
        return result

    with TagProducer(Settings(redis_url=url, namespace=ns)) as producer:
        producer.trace_started("tr-1", experiment_id="0", tags={"env": "prod"})
    for args in (
        ["status"],
        ["status", "--format", "json"],
        ["count"],
        ["search", "tags.env = 'prod'"],
        ["get", "tr-1"],
        ["explain", "tags.env = 'prod'"],
        ["log"],
        ["digest"],
        ["dead-letters", "list"],
        ["tag", "set", "tr-1", "owner", "ana", "--timeout", "1"],  # no fold runs: times out
    ):
        result = cli(*args)
        assert result.exit_code in (ExitCode.OK, ExitCode.FAILED), (args, result.output)
    archive = cli("status", env={"TRACETAGS_ARCHIVE_URL": ARCHIVE_URL})
    assert "endpoint=http://AKID:***@127.0.0.1:9" in archive.stdout
    # errors: a bad setting, an unreachable Redis, a wrong password
    bad = runner.invoke(app, ["--redis-url", url + "?socket_timeout=abc", "count"])
    outputs.append(bad.stderr)
    assert bad.exit_code == ExitCode.USAGE and "redis://:***@127.0.0.1" in bad.stderr
    gone = f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{free_port()}/0"
    unreachable = runner.invoke(app, ["--redis-url", gone, "count"])
    outputs.append(unreachable.stderr)
    assert unreachable.exit_code == ExitCode.UNREACHABLE
    assert "Redis unreachable at redis://:***@127.0.0.1:" in unreachable.stderr
    wrong = runner.invoke(
        app, ["--redis-url", url.replace(ADMIN_PASSWORD, "x" + ADMIN_PASSWORD), "count"]
    )
    outputs.append(wrong.stderr)
    assert wrong.exit_code == ExitCode.AUTH_FAILED
    for text in outputs:
        _assert_no_secret(text)


def test_demo_names_the_variable_instead_of_the_url(server: SecureRedis) -> None:
    ns = f"red-{uuid.uuid4().hex[:8]}"
    result = runner.invoke(
        app, ["--redis-url", server.url(), "--namespace", ns, "demo", "--traces", "30"]
    )
    assert result.exit_code == 0, result.output
    _assert_no_secret(result.stdout + result.stderr)
    assert '--redis-url "$TRACETAGS_REDIS_URL"' in result.stdout + result.stderr


def test_serve_banner_and_logs_hide_the_password(server: SecureRedis, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACETAGS_")}
    env.update(TRACETAGS_REDIS_URL=server.url(), TRACETAGS_ARCHIVE_URL=ARCHIVE_URL)
    ns = f"red-{uuid.uuid4().hex[:8]}"
    err_path = tmp_path / "serve.err"
    with err_path.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracetags.cli", "--namespace", ns, "serve", "--verbose"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            banner = ""
            assert proc.stdout is not None
            while "TRACETAGS_REDIS_URL" not in banner and time.monotonic() < deadline:
                banner += proc.stdout.readline()
            time.sleep(2)  # the workers and the archiver start and log
        finally:
            proc.send_signal(signal.SIGTERM)
            # Read on through the same buffered reader (communicate would skip what
            # readline has already buffered).
            out = proc.stdout.read() if proc.stdout is not None else ""
            proc.wait(60)
    err = err_path.read_text()
    text = banner + out + err
    assert f"at redis://:***@127.0.0.1:{server.port}/0" in banner
    assert "(clients: set TRACETAGS_REDIS_URL to this URL with its password)" in banner
    flat = " ".join(text.split())  # however the console wrapped it
    assert "archiving to s3://bucket/prefix?endpoint=http://AKID:***@127.0.0.1:9" in flat, text
    _assert_no_secret(text)


def test_library_errors_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gone = f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{free_port()}/0"
    settings = Settings(redis_url=gone, namespace="red", socket_timeout_ms=200)
    with Client(settings) as client, pytest.raises(RedisUnavailableError) as unreachable:
        client.count()
    with pytest.raises(ConfigError) as bad:
        Settings(redis_url=gone + "?socket_timeout=abc")
    producer = TagProducer(settings)
    producer.set_tags("t", {"k": "v"})
    time.sleep(0.5)  # the flusher fails and logs
    producer.close(timeout=0.2)
    texts = [str(unreachable.value), str(bad.value), caplog.text]
    for text in texts:
        _assert_no_secret(text)
    assert "redis://:***@127.0.0.1" in str(unreachable.value)
