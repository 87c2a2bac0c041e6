"""The fold Function alone: apply rate on pre-decoded batches, and Redis memory per trace.

    .venv/bin/python benchmarks/bench_fold_function.py [--traces 100000] [--batch 500]

Starts a private redis-server (or uses --redis-url; it must be empty of this namespace),
generates a realistic log in memory (never written to a stream: the Function's XACK of ids
not pending is a no-op), folds it in batches of ``--batch`` pre-decoded events, and reports:

- apply rate in events/s (wall time of ``apply_batch`` calls; the Python share — building
  ARGV — is reported separately): the server-side bound the consumer benchmark compares with;
- used_memory before and after, per trace, and a breakdown by key family (MEMORY USAGE).

Per trace (the issue's profile): trace_started (name, 2 metadata keys, 2 tags), tags_set
(2 tags), trace_finished (status, duration), tags_set (1 tag) -> 6 tags counting the name
(``mlflow.traceName``), 2 metadata keys, finished.  Value cardinality: name 20, env 3,
model 8, user_id 5,000, session_id one per 10 traces, feedback 2; metadata sourceRun 100
(32 hex), user 50; 5 experiments; 35-character trace ids.  Traces overlap 1,000 at a time.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections import Counter
from typing import Any

import redis

from tracetags import functions, schemas
from tracetags.embedded import RedisServer
from tracetags.functions import BatchItem
from tracetags.keys import Keys

NAMESPACE = "bench"
GROUP = "bench"
NAMES = [f"span-{i}" for i in range(20)]
MODELS = [f"model-{i}" for i in range(8)]
RUNS = [f"{random.Random(i).getrandbits(128):032x}" for i in range(100)]


def _common(trace_id: str) -> dict[str, Any]:
    return {"trace_id": trace_id, "event_id": schemas.new_event_id(), "emitted_at_ms": 1}


def generate(traces: int, seed: int = 1) -> list[BatchItem]:
    """The log of ``traces`` traces as (entry id, event), in stream order."""
    rng = random.Random(seed)
    items: list[BatchItem] = []
    ms = 1_750_000_000_000
    seq = 0

    def entry_id() -> str:
        nonlocal ms, seq
        if rng.random() < 0.5:
            ms += 1
            seq = 0
        else:
            seq += 1
        return f"{ms}-{seq}"

    for chunk in range(0, traces, 1000):
        ids = [f"tr-{rng.getrandbits(128):032x}" for _ in range(min(1000, traces - chunk))]
        starts = {t: ms - rng.randrange(60_000) for t in ids}
        for t in ids:
            items.append((entry_id(), schemas.TraceStarted(
                **_common(t), experiment_id=str(rng.randrange(5)), timestamp_ms=starts[t],
                name=rng.choice(NAMES),
                metadata={"mlflow.sourceRun": rng.choice(RUNS),
                          "mlflow.user": f"user{rng.randrange(50)}"},
                tags={"env": rng.choice(["prod", "staging", "dev"]),
                      "model": rng.choice(MODELS)},
            )))  # fmt: skip
        for t in ids:
            items.append((entry_id(), schemas.TagsSet(
                **_common(t), tags={"user_id": f"u{rng.randrange(5000)}",
                                    "session_id": f"s{rng.randrange(traces // 10 + 1)}"},
            )))  # fmt: skip
        for t in ids:
            items.append((entry_id(), schemas.TraceFinished(
                **_common(t), experiment_id=str(rng.randrange(5)), timestamp_ms=starts[t],
                execution_time_ms=rng.randrange(1, 60_000),
                status="ERROR" if rng.random() < 0.1 else "OK",
            )))  # fmt: skip
        for t in ids:
            items.append((entry_id(), schemas.TagsSet(
                **_common(t), tags={"feedback": rng.choice(["good", "bad"])}
            )))  # fmt: skip
    return items


def family(key: str, prefix: str) -> str:
    rest = key[len(prefix) + 1 :]
    head = rest.split(":", 1)[0]
    return {
        "t": "trace hashes (t:<no>)",
        "ids": "id map (ids)",
        "ts": "time zsets (ts du en)",
        "du": "time zsets (ts du en)",
        "en": "time zsets (ts du en)",
        "tv": "tag value sets (tv)",
        "tk": "tag key sets (tk)",
        "td": "distinct zsets (td md exd crd)",
        "md": "distinct zsets (td md exd crd)",
        "exd": "distinct zsets (td md exd crd)",
        "crd": "distinct zsets (td md exd crd)",
        "mv": "metadata sets (mv mk)",
        "mk": "metadata sets (mv mk)",
        "lf": "lookup fingerprints (lf lk)",
        "lk": "lookup fingerprints (lf lk)",
    }.get(head, "status/experiment/all/other")


def breakdown(client: redis.Redis, keys: Keys) -> tuple[Counter[str], Counter[str]]:
    prefix = keys.prefix(0)
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(batch, pipe.execute(), strict=True):
            sizes[family(key, prefix)] += size or 0
            counts[family(key, prefix)] += 1
        batch.clear()

    for raw in client.scan_iter(match=f"{keys.namespace}:*", count=5000):
        batch.append(raw.decode())
        if len(batch) >= 5000:
            flush()
    flush()
    return sizes, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--lookup-fields",
        default="",
        help="register fields listed for lookup fingerprints before folding (e.g. tuser_id)",
    )
    args = parser.parse_args()

    directory = None
    server = None
    url = args.redis_url
    if url is None:
        directory = tempfile.mkdtemp(prefix="tt-bench-")
        server = RedisServer(directory, appendfsync="no").start()
        url = server.url
    client = redis.Redis.from_url(url)
    try:
        keys = Keys(NAMESPACE)
        functions.load(client)
        lk, prefix = keys.lookups(0), keys.prefix(0)
        for field in filter(None, args.lookup_fields.split(",")):  # no trace yet: ready at once
            client.fcall(functions.LOOKUP_FUNCTION, 1, lk, prefix, "list", field)
            client.fcall(functions.LOOKUP_FUNCTION, 1, lk, prefix, "ready", field)
        items = generate(args.traces)
        batches = [items[i : i + args.batch] for i in range(0, len(items), args.batch)]
        info = client.info("server")
        client.execute_command("MEMORY", "PURGE")
        before = int(client.info("memory")["used_memory"])

        python_s = 0.0
        for batch in batches[:20]:  # the Python share, measured apart
            t0 = time.perf_counter()
            functions.build_args(GROUP, keys.prefix(0), batch)
            python_s += time.perf_counter() - t0
        python_per_event_us = python_s / sum(len(b) for b in batches[:20]) * 1e6

        t0 = time.perf_counter()
        for batch in batches:
            functions.apply_batch(client, keys, 0, GROUP, batch)
        elapsed = time.perf_counter() - t0

        client.execute_command("MEMORY", "PURGE")
        after = int(client.info("memory")["used_memory"])
        traces = int(client.hlen(keys.trace_ids(0)))
        sizes, counts = breakdown(client, keys)
        print(f"redis {info['redis_version']}, {len(items)} events, {traces} traces, "
              f"batches of {args.batch}; lookups: {args.lookup_fields or 'none'}")  # fmt: skip
        rate = len(items) / elapsed
        print(f"apply rate: {rate:,.0f} events/s ({elapsed:.2f} s; "
              f"Python builds ARGV in {python_per_event_us:.2f} us/event)")  # fmt: skip
        print(f"used_memory: {before:,} -> {after:,} B: {(after - before) / traces:,.0f} B/trace")
        total = sum(sizes.values())
        print("MEMORY USAGE by key family (B/trace, keys):")
        for name, size in sizes.most_common():
            print(f"  {name:34s} {size / traces:7.1f}  {counts[name]:>8,}")
        print(f"  {'sum (excludes the keyspace dict)':34s} {total / traces:7.1f}")
    finally:
        client.close()
        if server is not None:
            server.stop()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
