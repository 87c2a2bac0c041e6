"""Real-Redis fixtures: one server per session, a unique namespace per test.

Backend order: ``TRACETAGS_TEST_REDIS_URL`` → a testcontainers Redis when a Docker engine
answers within ~2 s → a ``redis-server`` binary on a free loopback port in a temp dir →
fail (in CI) or skip (locally) with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.archive import moto_server, s3_url  # noqa: F401 - fixtures
from tests.support.cluster import LocalCluster, cluster_available
from tests.support.helpers import scratch_namespace
from tracetags.connections import SyncClient, sync_client
from tracetags.embedded import RedisServer
from tracetags.query import budget
from tracetags.settings import Settings


@dataclass
class Backend:
    url: str
    description: str
    server: RedisServer | None = None
    cleanup: list[Any] = field(default_factory=list)


_backend: Backend | None = None
_backend_error: str | None = None


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


def _start_backend() -> Backend:
    url = os.environ.get("TRACETAGS_TEST_REDIS_URL")
    if url:
        return Backend(url=url, description=f"TRACETAGS_TEST_REDIS_URL={url}")
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7.0")
        container.start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        backend = Backend(url=f"redis://{host}:{port}/0", description="testcontainers redis:7.0")
        backend.cleanup.append(container.stop)
        return backend
    if shutil.which("redis-server"):
        directory = tempfile.mkdtemp(prefix="tracetags-test-redis-")
        server = RedisServer(directory).start()
        backend = Backend(url=server.url, description="local redis-server binary", server=server)
        backend.cleanup.append(server.stop)
        backend.cleanup.append(lambda: shutil.rmtree(directory, ignore_errors=True))
        return backend
    raise RuntimeError(
        "no Redis for the tests: set TRACETAGS_TEST_REDIS_URL, run a Docker engine, "
        "or install redis-server (apt-get install redis-server)"
    )


def get_backend() -> Backend:
    global _backend, _backend_error
    if _backend is None and _backend_error is None:
        try:
            _backend = _start_backend()
        except Exception as exc:  # noqa: BLE001 - reported by the fixture below
            _backend_error = str(exc)
    if _backend is None:
        message = _backend_error or "no Redis backend"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return _backend


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--phase",
        choices=("all", "parallel", "serial"),
        default="all",
        help="run only the tests marked serial, only the others, or all (scripts/test runs "
        "the others on several workers, then the serial ones alone)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    phase = config.getoption("--phase")
    if phase == "all":
        return
    wanted = phase == "serial"
    kept = [item for item in items if (item.get_closest_marker("serial") is not None) == wanted]
    dropped = [item for item in items if (item.get_closest_marker("serial") is not None) != wanted]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        backend = get_backend()
    except BaseException as exc:  # noqa: BLE001 - header only
        return [f"redis backend: unavailable ({exc})"]
    client = redis.Redis.from_url(backend.url)
    try:
        version = client.info("server").get("redis_version", "?")
    finally:
        client.close()
    return [f"redis backend: {backend.description}, Redis {version} at {backend.url}"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _backend is not None:
        for action in reversed(_backend.cleanup):
            with contextlib.suppress(Exception):
                action()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return get_backend().url


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace no other test uses; its keys are removed afterwards."""
    with scratch_namespace(redis_url) as ns:
        yield ns


@pytest.fixture
def no_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Page calls without a deadline: a loaded machine must not decide a page's path (each
    page is one call), where a test is about the path."""
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 10_000_000)


@pytest.fixture
def settings(redis_url: str, namespace: str) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, flush_interval_ms=2)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server this test may stop, kill and restart (AOF fsync always)."""
    if not shutil.which("redis-server"):
        message = "fault tests need the redis-server binary (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real Redis Cluster (3 primaries, 3 replicas) on loopback, for the whole session."""
    missing = cluster_available()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """The suites' parametrized Redis: one server, or the local cluster's seed URL."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def any_settings(any_redis_url: str) -> Iterator[Settings]:
    """Settings of a fresh namespace on :func:`any_redis_url` (removed afterwards)."""
    with scratch_namespace(any_redis_url) as ns:
        yield Settings(redis_url=any_redis_url, namespace=ns, flush_interval_ms=2)


@pytest.fixture
def any_r(any_redis_url: str) -> Iterator[SyncClient]:
    """A client of :func:`any_redis_url` (a ``RedisCluster`` on the cluster)."""
    client = sync_client(any_redis_url)
    yield client
    client.close()
