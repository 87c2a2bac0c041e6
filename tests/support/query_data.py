"""Loading reference-shaped datasets (query_reference.py) into Redis through the real fold."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from tracetags import schemas
from tracetags.client import Client
from tracetags.connections import SyncClient
from tracetags.functions import BatchItem, apply_batch
from tracetags.keys import NAME_TAG, Keys, partition_of
from tracetags.settings import Settings

GROUP = "query-test"
BASE_MS = 1_700_000_000_000
_seq = itertools.count(1)


def _common(trace_id: str) -> dict[str, Any]:
    return {"trace_id": trace_id, "event_id": os.urandom(16), "emitted_at_ms": 1}


def trace_events(trace: Mapping[str, Any]) -> list[schemas.Event]:
    """The producer events that create ``trace`` (unfinished traces are IN_PROGRESS)."""
    tags = {k: v for k, v in trace["tags"].items() if k != NAME_TAG}
    fields: dict[str, Any] = {
        "experiment_id": trace["experiment_id"],
        "timestamp_ms": trace["timestamp_ms"],
        "name": trace.get("name") if trace.get("name") is not None else trace["tags"].get(NAME_TAG),
        "client_request_id": trace.get("client_request_id"),
        "tags": tags,
        "metadata": dict(trace["metadata"]),
    }
    if trace.get("execution_time_ms") is None:
        return [schemas.TraceStarted(**_common(trace["trace_id"]), **fields)]
    return [
        schemas.TraceFinished(
            **_common(trace["trace_id"]),
            **fields,
            execution_time_ms=trace["execution_time_ms"],
            status=trace["status"],
        )
    ]


def mutation_event(mutation: Mapping[str, Any]) -> schemas.Event:
    if mutation["op"] == "set":
        return schemas.TagsSet(
            **_common(mutation["trace_id"]), tags={mutation["key"]: mutation["value"]}
        )
    return schemas.TagsDeleted(**_common(mutation["trace_id"]), keys=[mutation["key"]])


def apply_events(
    client: SyncClient, keys: Keys, partitions: int, events: Iterable[schemas.Event]
) -> None:
    """Fold ``events`` in order, through tt_apply, in batches per partition."""
    client.hsetnx(keys.meta, "partitions", partitions)
    per_partition: dict[int, list[BatchItem]] = defaultdict(list)
    for event in events:
        partition = partition_of(event.trace_id, partitions)
        per_partition[partition].append((f"{BASE_MS}-{next(_seq)}", event))
    for partition, items in per_partition.items():
        for start in range(0, len(items), 1000):
            apply_batch(client, keys, partition, GROUP, items[start : start + 1000])


def load(
    client: SyncClient,
    keys: Keys,
    partitions: int,
    traces: Sequence[Mapping[str, Any]],
    mutations: Sequence[Mapping[str, Any]] = (),
) -> None:
    events = [e for t in traces for e in trace_events(t)]
    events += [mutation_event(m) for m in mutations]
    apply_events(client, keys, partitions, events)


ENVIRONMENTS = ("production", "staging", "dev", "Production", "", "prod'uction")
STATUSES = ("OK", "ERROR", "IN_PROGRESS")
NOTES = ("a%b", "a_b", "ÄÖ", "äö", "ß", "x'y", 'x"y', "\\d", "\u0131")


def generate(
    seed: int, n_traces: int, *, dense: bool = False, n_mutations: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Traces in the reference shape (final state is computed by apply_mutations)."""
    rng = random.Random(seed)
    timestamps = [BASE_MS + rng.randrange(0, 10_000) for _ in range(max(n_traces // 3, 2))]
    traces: list[dict[str, Any]] = []
    for index in range(n_traces):
        status = rng.choices(STATUSES, (70, 20, 10))[0]
        duration = None if status == "IN_PROGRESS" else int(rng.lognormvariate(5, 1.5))
        tags: dict[str, str] = {}
        if dense or rng.random() < 0.85:
            tags["env"] = "production" if dense and rng.random() < 0.8 else rng.choice(ENVIRONMENTS)
        if rng.random() < 0.7:
            tags["user"] = f"user_{rng.randrange(max(n_traces // 4, 3))}"
        if rng.random() < 0.5:
            tags["retries"] = rng.choice(("0", "1", "2", "10", "x", "1.5", "-3", "1e2"))
        if rng.random() < 0.3:
            tags["note"] = rng.choice(
                ("a%b", "a_b", "ÄÖ", "äö", "ß", "x'y", 'x"y', "\\d", "\u0131")
            )
        if rng.random() < 0.1:
            tags["model.version"] = rng.choice(("3", "4"))
        metadata: dict[str, str] = {}
        if rng.random() < 0.4:
            metadata["source"] = rng.choice(("api", "batch", "API"))
        if rng.random() < 0.3:
            metadata["mlflow.sourceRun"] = rng.choice(("run1", "run2", "run3"))
        traces.append(
            {
                "trace_id": f"tr-{index:05d}-{rng.getrandbits(24):06x}",
                "experiment_id": rng.choice(("1", "2", "10")),
                "timestamp_ms": rng.choice(timestamps),
                "execution_time_ms": duration,
                "status": status,
                "name": rng.choice(("chat", "Chat", "embed", None)),
                "client_request_id": f"req-{index % 7}" if rng.random() < 0.5 else None,
                "tags": tags,
                "metadata": metadata,
            }
        )
    mutations: list[dict[str, Any]] = []
    for _ in range(n_mutations):
        trace = rng.choice(traces)
        if rng.random() < 0.7:
            value = rng.choice(("production", "staging", "canary"))
            mutations.append(
                {"op": "set", "trace_id": trace["trace_id"], "key": "env", "value": value}
            )
        else:
            key = rng.choice(("env", "retries", "note"))
            mutations.append({"op": "delete", "trace_id": trace["trace_id"], "key": key})
    return traces, mutations


@contextlib.contextmanager
def loaded(
    redis_url: str, label: str, partitions: int, traces: list[dict[str, Any]]
) -> Iterator[tuple[Client, list[dict[str, Any]]]]:
    """A client on a fresh namespace holding ``traces`` (folded straight into the
    partitions), with the reference's final state of them; the namespace is dropped after."""
    from tests.support import query_reference as ref
    from tests.support.helpers import drop_namespace

    client = Client(Settings(redis_url=redis_url, namespace=f"tt-{label}-{os.urandom(4).hex()}"))
    try:
        load(client.redis, client.keys, partitions, traces)
        yield client, ref.apply_mutations(traces, [])
    finally:
        drop_namespace(client.redis, client.keys.namespace)
        client.close()
