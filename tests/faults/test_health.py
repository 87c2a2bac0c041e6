"""Finding 5: status names the condition (LOADING, BUSY, OOM, MISCONF, READONLY,
unreachable), works wherever reads work, exits 3 when unreachable and 5 when degraded, and
sees live consumers while the heartbeat (a write) cannot be written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.faults.conftest import out_of_memory, read_only
from tests.faults.proxy import FaultProxy
from tests.support.helpers import wait_until
from tests.support.workload import start_worker
from tracetags import Settings, TagProducer
from tracetags.client import HEARTBEAT_TTL_MS, Client
from tracetags.embedded import RedisServer


def status_cli(url: str, namespace: str) -> tuple[int, dict[str, object] | None, str]:
    env = {**os.environ, "TRACETAGS_REDIS_URL": url, "TRACETAGS_NAMESPACE": namespace}
    done = subprocess.run(
        [sys.executable, "-m", "tracetags.cli", "status", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    body = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, body, done.stderr


@contextmanager
def misconf(tmp_path: Path) -> Iterator[RedisServer]:
    """A server whose background save failed (its directory was removed under it), with
    save points set: it refuses writes (MISCONF); reads still work."""
    server = RedisServer(tmp_path / "misconf").start()
    admin = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)
    try:
        with TagProducer(Settings(redis_url=server.url, namespace="h")) as producer:
            producer.set_tags("t", {"k": "v"})
            producer.flush(10)
        admin.config_set("save", "3600 1")
        shutil.rmtree(server.directory)
        admin.bgsave()
        wait_until(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 10)
        yield server
    finally:
        admin.close()
        server.kill()


@contextmanager
def busy(server: RedisServer) -> Iterator[None]:
    """A script that runs past busy-reply-threshold: every other command gets BUSY."""
    admin = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=30)
    admin.config_set("busy-reply-threshold", 100)
    runner = threading.Thread(
        target=lambda: _ignore(lambda: admin.eval("while true do end", 0)), daemon=True
    )
    runner.start()
    time.sleep(0.5)
    try:
        yield
    finally:
        killer = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)
        killer.script_kill()
        runner.join(10)
        killer.close()
        admin.close()


def _ignore(action: object) -> None:
    with contextlib.suppress(redis.RedisError):
        action()  # type: ignore[operator]


def test_status_names_each_condition_and_exits_5(
    server: RedisServer, admin: redis.Redis, tmp_path: Path
) -> None:
    """Before the fix: LOADING, BUSY and MISCONF said "Redis unreachable" (exit 3); status
    failed outright under MISCONF; OOM and READONLY exited 0."""
    with TagProducer(Settings(redis_url=server.url, namespace="h")) as producer:
        producer.set_tags("t", {"k": "v"})
        producer.flush(10)
    assert status_cli(server.url, "h")[0] == 0
    seen = {}
    for name, fault in (
        ("READONLY", lambda on: read_only(admin, on)),
        ("OOM", lambda on: out_of_memory(admin, on)),
    ):
        fault(True)
        try:
            seen[name] = status_cli(server.url, "h")
        finally:
            fault(False)
    with misconf(tmp_path) as broken:
        seen["MISCONF"] = status_cli(broken.url, "h")
    with busy(server):
        seen["BUSY"] = status_cli(server.url, "h")
    for name, (code, body, stderr) in seen.items():
        assert code == 5, (name, code, stderr)
        assert body is not None and body["condition"] == name, (name, body)
        if name != "BUSY":  # reads work: the partitions are there
            assert body["partitions"][0]["stream_length"] == 1, (name, body)
    server.kill()
    code, body, stderr = status_cli(server.url, "h")
    assert code == 3, (code, stderr)
    assert "unreachable" in stderr


def test_status_names_loading(tmp_path: Path) -> None:
    """A restart that loads a large dataset (slowed by key-load-delay): LOADING, exit 5."""
    server = RedisServer(tmp_path / "loading")
    server.directory.mkdir(parents=True)
    plain = [*server.command(), "--appendonly", "no"]
    proc = subprocess.Popen(plain, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=server.port)
    wait_until(lambda: _answers(client), 10, 0.02)
    pipe = client.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"k{i}", "v")
    pipe.execute()
    client.save()
    client.close()
    proc.terminate()
    proc.wait(10)
    # ~6 s of loading: key-load-delay is in microseconds per key
    proc = subprocess.Popen([*plain, "--key-load-delay", "300",
                             "--loading-process-events-interval-bytes", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        probe = redis.Redis(host="127.0.0.1", port=server.port)
        wait_until(lambda: _answers(probe), 10, 0.02)
        code, body, stderr = status_cli(server.url, "h")
        assert code == 5, (code, stderr)
        assert body is not None and body["condition"] == "LOADING", body
        probe.close()
    finally:
        proc.kill()
        proc.wait()


def _answers(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.exceptions.BusyLoadingError:
        return True
    except redis.ConnectionError:
        return False
    return True


@pytest.mark.parametrize("fault", ["readonly", "oom"])
def test_a_live_consumer_is_seen_while_its_heartbeat_cannot_be_written(
    server: RedisServer, admin: redis.Redis, fault: str
) -> None:
    """Before the fix: 0 live consumers once the heartbeat went stale."""
    settings = Settings(redis_url=server.url, namespace=f"live-{fault}")
    worker = start_worker(settings)
    client = Client(settings)
    flip = read_only if fault == "readonly" else out_of_memory
    try:
        wait_until(lambda: len(client.status().live_consumers) == 1, 60, 0.1)
        flip(admin, True)
        time.sleep(HEARTBEAT_TTL_MS / 1000 + 1)
        status = client.status()
        assert len(status.live_consumers) == 1, status
    finally:
        flip(admin, False)
        worker.terminate()
        worker.join(30)
        client.close()


def test_status_behind_a_network_black_hole_answers_unreachable_in_seconds(
    server: RedisServer, proxy: FaultProxy
) -> None:
    """Before the fix `tracetags status` hung > 40 s (no socket timeout on its connection)."""
    with TagProducer(Settings(redis_url=server.url, namespace="h")) as producer:
        producer.set_tags("t", {"k": "v"})
        producer.flush(10)
    proxy.blackhole(True)
    started = time.monotonic()
    code, _, stderr = status_cli(proxy.url, "h")
    took_s = time.monotonic() - started
    proxy.blackhole(False)
    assert code == 3, (code, stderr)
    assert took_s < 15, took_s
