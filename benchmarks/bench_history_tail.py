"""The live tail's part of a trace's history: ``Client.trace_history`` on a large stream.

    .venv/bin/python benchmarks/bench_history_tail.py [--tail 100000] [--calls 40]

Starts a private redis-server (never port 6379), writes ``--tail`` events of bench_fold's
realistic mix with TagProducer into one partition (no archive: the whole history is the
tail), folds them with the shipped consumer (in this process; it keeps the history index),
and times, alternating, for random traces (each has 3-4 events spread over the tail):

- ``trace_history`` through the history index (``TRACETAGS_HISTORY_INDEX=1``);
- ``trace_history`` by a scan of the tail (the index off: XRANGE pages of 10k, a substring
  test for the trace id's msgpack bytes on each payload, decode of the matches);
- the reference: a bare ``XRANGE - +`` of the whole tail in the same pages (the transfer
  alone, nothing decoded).

Prints p50/p99 of each and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fold import play, realistic_calls
from tracetags import Settings, TagProducer, schemas
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.keys import Keys

NAMESPACE = "benchtail"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def fold_all(settings: Settings, r: redis.Redis, stream: str) -> None:
    """Run the shipped consumer app until it has folded (and indexed) the whole stream."""
    from tracetags.consumer import create_app

    app = create_app(settings, name="bench")
    await app.start()
    try:
        last = r.xinfo_stream(stream)["last-generated-id"]
        while True:
            groups: Any = r.xinfo_groups(stream)
            group = next((g for g in groups if g["name"] == settings.consumer_group.encode()), None)
            if group and group["last-delivered-id"] == last and group["pending"] == 0:
                return
            await asyncio.sleep(0.05)
    finally:
        await app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tail", type=int, default=100_000, help="events in the stream")
    parser.add_argument("--calls", type=int, default=40, help="history calls per contender")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="tt-bench-tail-"))
    server = RedisServer(directory).start()
    settings = Settings(
        redis_url=server.url, namespace=NAMESPACE, buffer_size=args.tail + 1, history_index=True
    )
    try:
        calls = realistic_calls(args.tail, seed=11)
        with TagProducer(settings) as producer:
            for call in calls:
                play(producer, call)
            producer.flush(timeout=300)
        r = redis.Redis.from_url(server.url)
        stream = Keys(NAMESPACE).stream(0)
        t0 = time.perf_counter()
        asyncio.run(fold_all(settings, r, stream))
        print(f"folded (and indexed) by the shipped consumer in {time.perf_counter() - t0:.1f} s")
        length = r.xlen(stream)
        memory = r.memory_usage(stream) or 0
        print(f"tail: {length:,} entries, {memory / 2**20:.1f} MiB in Redis; no archive")
        ids: dict[str, list[str]] = {}
        for entry_id, fields in r.xrange(stream):  # type: ignore[union-attr]
            event = schemas.decode(fields[schemas.ENTRY_FIELD])
            ids.setdefault(event.trace_id, []).append(entry_id.decode())
        rng = random.Random(5)
        traces = rng.sample(sorted(ids), args.calls)
        times: dict[str, list[float]] = {"index": [], "scan": [], "bare XRANGE": []}
        scanning = settings.replace(history_index=False)
        with Client(settings) as client, Client(scanning) as scan:
            client.trace_history(traces[0])  # warm-up: imports, connections
            scan.trace_history(traces[0])
            for trace_id in traces:
                t0 = time.perf_counter()
                found = client.trace_history(trace_id)
                times["index"].append(time.perf_counter() - t0)
                assert [e.entry_id for e in found] == ids[trace_id]

                t0 = time.perf_counter()
                scanned = scan.trace_history(trace_id)
                times["scan"].append(time.perf_counter() - t0)
                assert scanned == found

                t0 = time.perf_counter()
                cursor = "-"
                while True:
                    page: Any = r.xrange(stream, cursor, "+", count=10_000)
                    if len(page) < 10_000:
                        break
                    cursor = "(" + page[-1][0].decode()
                times["bare XRANGE"].append(time.perf_counter() - t0)
        events = statistics.mean(len(ids[t]) for t in traces)
        print(f"{args.calls} traces, {events:.1f} events each on average\n")
        print(f"{'':34s} {'p50 ms':>8s} {'p99 ms':>8s}")
        for name, label in (
            ("index", "trace_history, history index"),
            ("scan", "trace_history, scan of the tail"),
            ("bare XRANGE", "reference: bare XRANGE of the tail"),
        ):
            values = times[name]
            print(f"{label:34s} {pct(values, 0.5) * 1e3:8.1f} {pct(values, 0.99) * 1e3:8.1f}")
        bare = statistics.median(times["bare XRANGE"])
        print(f"\nscan / bare XRANGE (p50) = {statistics.median(times['scan']) / bare:.2f}")
        print(f"index / bare XRANGE (p50) = {statistics.median(times['index']) / bare:.3f}")
        r.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
