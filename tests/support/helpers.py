"""Small helpers shared by tests: reading the log back, waiting for a condition."""

from __future__ import annotations

import contextlib
import importlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
import redis.cluster

from tracetags import log, schemas
from tracetags.connections import SyncClient, sync_client


def read_log(client: SyncClient, namespace: str) -> list[tuple[int, str, schemas.Event]]:
    """Every event of every partition as (partition, entry id, event), in stream order."""
    out = []
    for entry in log.read_log(client, namespace):
        assert entry.event is not None, entry.error
        out.append((entry.partition, entry.entry_id, entry.event))
    return out


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def drop_namespace(client: SyncClient, namespace: str) -> None:
    """Delete every key of a test's namespace (tests isolate by namespace, never FLUSHALL);
    on a cluster, on every primary, one key at a time (keys of many slots)."""
    if isinstance(client, redis.cluster.RedisCluster):
        for node in client.get_primaries():
            node_client = client.get_redis_connection(node)
            for key in node_client.scan_iter(match=f"{namespace}:*", count=1000):
                client.delete(key)
        return
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


@contextlib.contextmanager
def scratch_namespace(redis_url: str) -> Iterator[str]:
    """A namespace no other test uses; its keys are removed afterwards."""
    ns = f"tt-{uuid.uuid4().hex[:12]}"
    yield ns
    client = sync_client(redis_url)
    try:
        drop_namespace(client, ns)
    finally:
        client.close()


def all_pages(
    client: Any,
    filter_string: str | None,
    order: list[str] | None,
    max_results: int,
    experiment_ids: list[str] | None = None,
) -> list[str]:
    """The trace ids of every page of a search (``client``: a tracetags Client)."""
    got: list[str] = []
    token = None
    while True:
        page = client.search_traces(
            experiment_ids=experiment_ids,
            filter_string=filter_string,
            order_by=order,
            max_results=max_results,
            page_token=token,
        )
        got += [t.info.trace_id for t in page]
        token = page.token
        if token is None:
            return got


def every_page_equals(
    client: Any,
    filter_string: str,
    order: list[str] | None,
    experiment_ids: list[str] | None,
    expected: list[str],
) -> None:
    """Pages of 100 and of 29 (groups and chunks split over pages) walk to ``expected``."""
    assert all_pages(client, filter_string, order, 100, experiment_ids) == expected
    assert all_pages(client, filter_string, order, 29, experiment_ids) == expected


def first_page_calls(
    client: Any,
    filter_string: str | None,
    order: list[str] | None,
    experiment_ids: list[str] | None,
    commands: Sequence[str],
) -> tuple[list[str], dict[str, int]]:
    """A first page of 100's trace ids, and how many times Redis ran each of ``commands``
    for it (its command counters, reset first: a test's own Redis)."""
    client.redis.config_resetstat()
    page = client.search_traces(
        experiment_ids=experiment_ids, filter_string=filter_string, order_by=order, max_results=100
    )
    stats: dict[str, Any] = client.redis.info("commandstats")
    calls = {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands}
    return [t.info.trace_id for t in page], calls


def exactly_once_problems(seqs: list[int], total: int) -> str:
    """'' when ``seqs`` holds 0..total-1 once each; else which were lost and which doubled
    (a diff of two 30,000-item lists says neither)."""
    seen: dict[int, int] = {}
    for s in seqs:
        seen[s] = seen.get(s, 0) + 1
    lost = [s for s in range(total) if s not in seen]
    doubled = sorted(s for s, n in seen.items() if n > 1)
    strays = sorted(s for s in seen if not 0 <= s < total)
    if not (lost or doubled or strays):
        return ""
    return (
        f"{len(seqs)} events for {total}: lost {len(lost)} {lost[:20]}, "
        f"doubled {len(doubled)} {doubled[:20]}, out of range {strays[:20]}"
    )


def spy(
    monkeypatch: Any, where: Sequence[str], record: Callable[[tuple[Any, ...], Any], None]
) -> None:
    """Wrap a function for a test: ``where`` names it by dotted path (the module that
    defines it first, then modules that imported it by name); every call still runs it,
    and ``record(args, result)`` sees the call's positional arguments and its result."""
    module, _, name = where[0].rpartition(".")
    real = getattr(importlib.import_module(module), name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        record(args, got)
        return got

    for path in where:
        monkeypatch.setattr(path, wrapper)
