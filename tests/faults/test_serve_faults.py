"""Findings 4 and 6 on ``tracetags serve``: a worker whose fold call never returns is
restarted by the watchdog; SIGTERM stops serve within seconds while Redis is down, losing
nothing; the restart backoff starts over after a healthy run."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from tests.faults.proxy import Action, FaultProxy
from tests.support.helpers import wait_until
from tests.support.workload import (
    Load,
    assert_log_in_call_order,
    assert_settled,
    assert_state_equals_model,
    start_worker,
)
from tracetags import Settings, TagProducer, serve
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.serve import Supervisor

#: Stated bound: SIGTERM to serve -> exited, with Redis down.
STOP_BOUND_S = 5.0


def test_a_worker_whose_fold_call_never_returns_is_restarted(
    server: RedisServer, admin: redis.Redis, proxy: FaultProxy
) -> None:
    """The fold's FCALL reaches Redis, its reply never comes back (a network black hole;
    the socket timeout is set far above the watchdog here): serve kills and restarts it."""
    direct = Settings(redis_url=server.url, namespace="wd", claim_idle_ms=1_000)
    through_proxy = direct.replace(redis_url=proxy.url, watchdog_ms=2_000, socket_timeout_ms=60_000)
    armed = threading.Event()

    def hook(_: int, command: list[bytes]) -> Action:
        if armed.is_set() and command[0].upper() == b"FCALL":
            armed.clear()
            proxy.blackhole_now()
        return "forward"

    proxy.hook = hook
    supervisor = Supervisor(through_proxy, workers=1)
    runner = threading.Thread(target=supervisor.run, daemon=True)
    runner.start()
    producer = TagProducer(direct)
    client = Client(direct)
    load = Load(producer, rate=2_000)
    try:
        load.start()
        time.sleep(2)
        armed.set()
        wait_until(lambda: supervisor.watchdog_restarts >= 1, 20, 0.05)
        proxy.blackhole(False)
        time.sleep(1)
        load.stop()
        client.wait_applied(producer.flush(30), timeout=30)
        wait_until(lambda: client.status().total_pending == 0, 30, 0.1)
        assert_settled(client)
    finally:
        proxy.blackhole(False)
        supervisor.stop()
        runner.join(60)
        producer.close(5)
        client.close()
    assert assert_log_in_call_order(admin, "wd") == load.calls
    assert_state_equals_model(admin, direct)


def test_sigterm_stops_serve_within_seconds_while_redis_is_down(
    server: RedisServer, admin: redis.Redis
) -> None:
    """Before the fix: 35 s and a kill."""
    settings = Settings(redis_url=server.url, namespace="term", claim_idle_ms=1_000)
    env = {**os.environ, "TRACETAGS_REDIS_URL": server.url, "TRACETAGS_NAMESPACE": "term",
           "TRACETAGS_CLAIM_IDLE_MS": "1000"}  # fmt: skip
    serving = subprocess.Popen(
        [sys.executable, "-m", "tracetags.cli", "serve", "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    producer = TagProducer(settings)
    client = Client(settings)
    load = Load(producer, rate=2_000)
    try:
        wait_until(lambda: len(client.status().live_consumers) == 2, 60, 0.1)
        load.start()
        time.sleep(2)
        server.kill()
        time.sleep(2)
        started = time.monotonic()
        serving.send_signal(signal.SIGTERM)
        serving.wait(30)
        stopped_s = time.monotonic() - started
        load.stop()
        server.start()
        worker = start_worker(settings)
        try:
            client.wait_applied(producer.flush(30), timeout=30)
            wait_until(lambda: client.status().total_pending == 0, 30, 0.1)
            assert_settled(client)
        finally:
            worker.terminate()
            worker.join(30)
    finally:
        if serving.poll() is None:
            serving.kill()
            serving.wait()
        producer.close(5)
        client.close()
    print(f"serve stopped {stopped_s:.2f} s after SIGTERM with Redis down")
    assert serving.returncode == 0, serving.stderr.read() if serving.stderr else ""
    assert stopped_s < STOP_BOUND_S, stopped_s
    assert assert_log_in_call_order(admin, "term") == load.calls
    assert_state_equals_model(admin, settings)


def test_restart_backoff_starts_over_after_a_healthy_run(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(serve, "HEALTHY_RUN_S", 1.0)
    settings = Settings(redis_url=server.url, namespace="backoff")
    supervisor = Supervisor(settings, workers=1)
    runner = threading.Thread(target=supervisor.run, daemon=True)
    runner.start()
    try:
        for _ in range(4):
            time.sleep(1.5)  # a healthy run (HEALTHY_RUN_S patched to 1 s)
            pids = supervisor.pids
            os.kill(pids[0], signal.SIGKILL)
            wait_until(lambda p=pids: supervisor.pids != p, 20, 0.05)  # type: ignore[misc]
    finally:
        supervisor.stop()
        runner.join(60)
    delays = [r.getMessage().rsplit("restarting in ", 1)[1] for r in caplog.records
              if r.levelno == logging.WARNING and "restarting in" in r.getMessage()]  # fmt: skip
    # Before the fix: 0.2s, 0.5s, 1.0s, 2.0s.
    assert delays == ["0.2s"] * 4, delays
