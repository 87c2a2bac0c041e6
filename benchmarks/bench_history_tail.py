"""The live tail's part of a trace's history: ``Client.trace_history`` on a large stream.

    .venv/bin/python benchmarks/bench_history_tail.py [--tail 100000] [--calls 40]

Starts a private redis-server (never port 6379), writes ``--tail`` events of bench_fold's
realistic mix with TagProducer into one partition (no archive: the whole history is the
tail), folds nothing (the history reads the log, not the state), and times, alternating, for
random traces (each has 3-4 events spread over the tail):

- ``trace_history`` (XRANGE pages of 10k, a substring test for the trace id's msgpack
  bytes on each payload, decode of the matches, the fold of the history);
- the reference: a bare ``XRANGE - +`` of the whole tail in the same pages (the transfer
  alone, nothing decoded);
- what an index of the trace's entry ids would leave: one pipelined ``XRANGE id id`` per
  event of the trace (the ids known beforehand).

Prints p50/p99 of each and the ratios.
"""

from __future__ import annotations

import argparse
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

from bench_fold import play, realistic_calls  # noqa: E402

from tracetags import Settings, TagProducer, schemas  # noqa: E402
from tracetags.client import Client  # noqa: E402
from tracetags.embedded import RedisServer  # noqa: E402
from tracetags.keys import Keys  # noqa: E402

NAMESPACE = "benchtail"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tail", type=int, default=100_000, help="events in the stream")
    parser.add_argument("--calls", type=int, default=40, help="history calls per contender")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="tt-bench-tail-"))
    server = RedisServer(directory).start()
    settings = Settings(redis_url=server.url, namespace=NAMESPACE, buffer_size=args.tail + 1)
    try:
        calls = realistic_calls(args.tail, seed=11)
        with TagProducer(settings) as producer:
            for call in calls:
                play(producer, call)
            producer.flush(timeout=300)
        r = redis.Redis.from_url(server.url)
        stream = Keys(NAMESPACE).stream(0)
        length = r.xlen(stream)
        memory = r.memory_usage(stream) or 0
        print(f"tail: {length:,} entries, {memory / 2**20:.1f} MiB in Redis; no archive")
        ids: dict[str, list[str]] = {}
        for entry_id, fields in r.xrange(stream):  # type: ignore[union-attr]
            event = schemas.decode(fields[schemas.ENTRY_FIELD])
            ids.setdefault(event.trace_id, []).append(entry_id.decode())
        rng = random.Random(5)
        traces = rng.sample(sorted(ids), args.calls)
        times: dict[str, list[float]] = {"history": [], "bare XRANGE": [], "by id": []}
        with Client(settings) as client:
            for trace_id in traces:
                t0 = time.perf_counter()
                found = client.trace_history(trace_id)
                times["history"].append(time.perf_counter() - t0)
                assert [e.entry_id for e in found] == ids[trace_id]

                t0 = time.perf_counter()
                cursor = "-"
                while True:
                    page: Any = r.xrange(stream, cursor, "+", count=10_000)
                    if len(page) < 10_000:
                        break
                    cursor = "(" + page[-1][0].decode()
                times["bare XRANGE"].append(time.perf_counter() - t0)

                t0 = time.perf_counter()
                pipe = r.pipeline(transaction=False)
                for entry_id in ids[trace_id]:
                    pipe.xrange(stream, entry_id, entry_id)
                got = pipe.execute()
                [schemas.decode(e[0][1][schemas.ENTRY_FIELD]) for e in got]
                times["by id"].append(time.perf_counter() - t0)
        events = statistics.mean(len(ids[t]) for t in traces)
        print(f"{args.calls} traces, {events:.1f} events each on average\n")
        print(f"{'':34s} {'p50 ms':>8s} {'p99 ms':>8s}")
        for name, label in (
            ("history", "Client.trace_history (tail scan)"),
            ("bare XRANGE", "reference: bare XRANGE of the tail"),
            ("by id", "with an index: XRANGE by entry id"),
        ):
            values = times[name]
            print(f"{label:34s} {pct(values, 0.5) * 1e3:8.1f} {pct(values, 0.99) * 1e3:8.1f}")
        ratio = statistics.median(times["history"]) / statistics.median(times["bare XRANGE"])
        print(f"\ntrace_history / bare XRANGE (p50) = {ratio:.2f}")
        r.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
