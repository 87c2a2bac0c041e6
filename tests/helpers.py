"""Small helpers shared by tests: reading the log back, waiting for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from tracetags import schemas
from tracetags.keys import Keys


def read_log(client: redis.Redis, namespace: str) -> list[tuple[int, str, schemas.Event]]:
    """Every event of every partition as (partition, entry id, event), in stream order."""
    keys = Keys(namespace)
    partitions = int(client.hget(keys.meta, "partitions") or 0)
    out: list[tuple[int, str, schemas.Event]] = []
    for partition in range(partitions):
        for entry_id, fields in client.xrange(keys.stream(partition)):
            out.append((partition, entry_id.decode(), schemas.decode(fields[schemas.ENTRY_FIELD])))
    return out


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
