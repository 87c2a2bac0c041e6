"""The fold without the consumer app: every partition's log read by the fold's group and
applied by ``tt_apply`` (which acknowledges what it applies), partition after partition, on
one Redis or a cluster (each call goes to its partition's node).  For tests and benchmarks
that need folded state and a group's progress, not the FastStream app."""

from __future__ import annotations

from typing import Any

import redis

from tracetags import functions
from tracetags.connections import SyncClient
from tracetags.keys import Keys
from tracetags.settings import Settings

BATCH = 500


def ensure_group(client: SyncClient, keys: Keys, partition: int, group: str) -> None:
    try:
        client.xgroup_create(keys.stream(partition), group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def fold_partition(client: SyncClient, keys: Keys, partition: int, group: str) -> int:
    """Fold every entry of one partition not yet delivered to ``group``; returns how many."""
    ensure_group(client, keys, partition, group)
    done = 0
    while True:
        reply: Any = client.xreadgroup(
            group, "direct-fold", {keys.stream(partition): ">"}, count=BATCH
        )
        entries = reply[0][1] if reply else []
        if not entries:
            return done
        functions.apply_batch(client, keys, partition, group, functions.decode_entries(entries))
        done += len(entries)


def fold_all(client: SyncClient, settings: Settings, partitions: int) -> int:
    """Fold every partition's undelivered entries; returns how many entries."""
    keys = Keys(settings.namespace)
    return sum(fold_partition(client, keys, p, settings.consumer_group) for p in range(partitions))
