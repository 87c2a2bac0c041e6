"""Fault fixtures: a private redis-server per test (so it can be made read-only, out of
memory, paused or killed) and the fault-injecting proxy in front of it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.faults.proxy import FaultProxy
from tracetags.embedded import RedisServer, free_port


def pytest_itemcollected(item: pytest.Item) -> None:
    """Every fault test bounds a time (recovery, resume, stop) that another test's load
    could stretch: scripts/test runs them alone."""
    item.add_marker(pytest.mark.serial)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    if not shutil.which("redis-server"):
        pytest.skip("fault tests need the redis-server binary (apt-get install redis-server)")
    srv = RedisServer(tmp_path / "redis", appendfsync="always").start()
    yield srv
    srv.kill()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    """A direct connection to the server, for the faults themselves (never via the proxy)."""
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    p = FaultProxy(server.port).start()
    yield p
    p.stop()


def read_only(admin: redis.Redis, on: bool) -> None:
    """A failover as seen by a client: the server becomes a replica (of a master that does
    not answer, so it keeps its data and refuses writes with READONLY), then a master again."""
    if on:
        admin.replicaof("127.0.0.1", free_port())
    else:
        admin.replicaof("NO", "ONE")


def out_of_memory(admin: redis.Redis, on: bool) -> None:
    """``maxmemory`` below what the server uses (noeviction): every write is refused (OOM)."""
    admin.config_set("maxmemory", "1" if on else "0")
