"""The producer against a hand-written pipelined XADD loop: ingest rate and call-site latency.

    .venv/bin/python benchmarks/bench_producer.py [--events 200000] [--rounds 5]

Starts a private redis-server (AOF ``everysec``) unless --redis-url is given, and in one run,
on the same server and the same events (``set_tags`` of two tags on 1,000 traces, ~120 bytes
encoded), measures in alternating order, ``--rounds`` times:

- ingest: ``TagProducer`` events/s (back-to-back calls, then ``flush()`` until all is written)
  against a redis-py loop that XADDs the same payloads, encoded beforehand, in pipelines of
  the producer's batch size to the same streams; and ``AsyncTagProducer`` against the same
  loop on redis.asyncio.  The ratio is the median producer rate over the median loop rate.
- call-site cost: ``perf_counter_ns`` around every ``set_tags()`` of the ingest runs (the
  flusher busy at the same time), and again with the producer pointed at a port nobody
  listens on (Redis down; the buffer holds every event).

The asyncio caller yields to the loop (``await asyncio.sleep(0)``) every ``--async-yield``
calls, as a server handling requests would; without that the flusher task never runs.
Each run writes to its own namespace, whose streams are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import shutil
import statistics
import subprocess
import tempfile
import time

import redis
import redis.asyncio

from tracetags import AsyncTagProducer, Settings, TagProducer, schemas
from tracetags.embedded import RedisServer, free_port
from tracetags.keys import Keys, partition_of

Workload = list[tuple[str, dict[str, str]]]


def make_workload(events: int, traces: int) -> Workload:
    """``events`` set_tags calls spread round-robin over ``traces`` trace ids."""
    trace_ids = [f"tr-{i:012x}" for i in range(traces)]
    envs = ("prod", "staging", "dev")
    return [
        (trace_ids[i % traces], {"env": envs[i % 3], "user_id": f"u{i % 5000:04d}"})
        for i in range(events)
    ]


def encode_workload(workload: Workload, namespace: str, partitions: int) -> list[tuple[str, bytes]]:
    """(stream key, payload) per event, encoded once with the producer's own encoder."""
    keys = Keys(namespace)
    now = schemas.now_ms()
    return [
        (
            keys.stream(partition_of(trace_id, partitions)),
            schemas.encode(
                schemas.TagsSet(
                    trace_id=trace_id, event_id=schemas.new_event_id(), emitted_at_ms=now, tags=tags
                )
            ),
        )
        for trace_id, tags in workload
    ]


# --- the two sides ----------------------------------------------------------------------


def loop_sync(url: str, items: list[tuple[str, bytes]], batch: int) -> float:
    client = redis.Redis.from_url(url)
    client.ping()
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i in range(0, len(items), batch):
        for stream, payload in items[i : i + batch]:
            pipe.execute_command("XADD", stream, "*", "e", payload)
        pipe.execute()
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


async def loop_async(url: str, items: list[tuple[str, bytes]], batch: int) -> float:
    client = redis.asyncio.Redis.from_url(url)
    await client.ping()
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i in range(0, len(items), batch):
        for stream, payload in items[i : i + batch]:
            pipe.execute_command("XADD", stream, "*", "e", payload)
        await pipe.execute()
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed


def written_out_sync(url: str, items: list[tuple[str, bytes]], batch: int) -> float:
    """Reference only: the pipeline as the producer writes it (pack, send, read replies)."""
    client = redis.Redis.from_url(url)
    client.ping()
    pool = client.connection_pool
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        commands = [("XADD", stream, "*", "e", payload) for stream, payload in items[i : i + batch]]
        conn = pool.get_connection()
        conn.send_packed_command(conn.pack_commands(commands))
        for _ in commands:
            conn.read_response()
        pool.release(conn)
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


async def written_out_async(url: str, items: list[tuple[str, bytes]], batch: int) -> float:
    client = redis.asyncio.Redis.from_url(url)
    await client.ping()
    pool = client.connection_pool
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        commands = [("XADD", stream, "*", "e", payload) for stream, payload in items[i : i + batch]]
        conn = await pool.get_connection()
        await conn.send_packed_command(conn.pack_commands(commands))
        for _ in commands:
            await conn.read_response()
        await pool.release(conn)
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed


def warm_up_sync(producer: TagProducer) -> None:
    producer.set_tags("tr-warm-up", {"env": "warm"})
    producer.flush(None)


def producer_sync(settings: Settings, workload: Workload, lat: list[int]) -> float:
    """Seconds from the first call to the end of flush(); per-call ns appended to ``lat``."""
    producer = TagProducer(settings)
    warm_up_sync(producer)
    set_tags = producer.set_tags
    clock = time.perf_counter_ns
    append = lat.append
    start = time.perf_counter()
    for trace_id, tags in workload:
        t0 = clock()
        set_tags(trace_id, tags)
        append(clock() - t0)
    producer.flush(None)
    elapsed = time.perf_counter() - start
    stats = producer.stats()
    producer.close()
    assert stats.dropped == 0 and stats.buffered == 0, stats
    return elapsed


async def producer_async(
    settings: Settings, workload: Workload, lat: list[int], yield_every: int
) -> float:
    producer = AsyncTagProducer(settings)
    producer.set_tags("tr-warm-up", {"env": "warm"})
    await producer.flush(None)
    set_tags = producer.set_tags
    clock = time.perf_counter_ns
    append = lat.append
    start = time.perf_counter()
    for i, (trace_id, tags) in enumerate(workload, 1):
        t0 = clock()
        set_tags(trace_id, tags)
        append(clock() - t0)
        if i % yield_every == 0:
            await asyncio.sleep(0)
    await producer.flush(None)
    elapsed = time.perf_counter() - start
    stats = producer.stats()
    await producer.close()
    assert stats.dropped == 0 and stats.buffered == 0, stats
    return elapsed


def down_sync(settings: Settings, workload: Workload, lat: list[int]) -> None:
    producer = TagProducer(settings)
    set_tags = producer.set_tags
    clock = time.perf_counter_ns
    append = lat.append
    for trace_id, tags in workload:
        t0 = clock()
        set_tags(trace_id, tags)
        append(clock() - t0)
    stats = producer.stats()
    producer.close(timeout=0.01)
    assert stats.dropped == 0 and stats.sent == 0, stats


async def down_async(
    settings: Settings, workload: Workload, lat: list[int], yield_every: int
) -> None:
    producer = AsyncTagProducer(settings)
    set_tags = producer.set_tags
    clock = time.perf_counter_ns
    append = lat.append
    for i, (trace_id, tags) in enumerate(workload, 1):
        t0 = clock()
        set_tags(trace_id, tags)
        append(clock() - t0)
        if i % yield_every == 0:
            await asyncio.sleep(0)
    stats = producer.stats()
    await producer.close(timeout=0.01)
    assert stats.dropped == 0 and stats.sent == 0, stats


# --- bookkeeping ------------------------------------------------------------------------


def settle(admin: redis.Redis, namespace: str, partitions: int, expected: int) -> None:
    """Check that the run wrote ``expected`` entries, delete its keys, let the AOF settle."""
    keys = Keys(namespace)
    streams = [keys.stream(p) for p in range(partitions)]
    written = sum(int(admin.xlen(s)) for s in streams)
    if written != expected:
        raise SystemExit(f"{namespace}: {written} entries written, expected {expected}")
    admin.delete(*streams, keys.meta)
    while int(admin.info("persistence")["aof_rewrite_in_progress"]):
        time.sleep(0.05)


def percentiles(lat: list[int]) -> dict[str, float]:
    ordered = sorted(lat)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000

    return {"p50": at(0.50), "p99": at(0.99), "p99.9": at(0.999), "max": ordered[-1] / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run")
    parser.add_argument("--traces", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=Settings().partition_count)
    parser.add_argument("--batch", type=int, default=Settings().producer_batch_size)
    parser.add_argument("--async-yield", type=int, default=100, dest="yield_every")
    parser.add_argument("--redis-url", help="use this Redis instead of a private one")
    parser.add_argument("--skip-down", action="store_true", help="skip the Redis-down runs")
    parser.add_argument(
        "--skip-reference",
        action="store_true",
        help="skip the loops that write out the pipeline as the producer does",
    )
    args = parser.parse_args()
    # The Redis-down runs end by abandoning their buffers, which the producer logs.
    logging.getLogger("tracetags.producer").setLevel(logging.ERROR)

    tmp = tempfile.mkdtemp(prefix="tt-bench-")
    server = None if args.redis_url else RedisServer(tmp).start()
    url = args.redis_url or (server.url if server else "")
    admin = redis.Redis.from_url(url)
    workload = make_workload(args.events, args.traces)
    # The workload is the benchmark's, not the producer's: keep the collector off it.
    gc.collect()
    gc.freeze()
    sizes = [len(p) for _, p in encode_workload(workload[:1000], "bench-x", args.partitions)]
    base = Settings(
        redis_url=url,
        partitions=args.partitions,
        producer_batch_size=args.batch,
        buffer_size=max(args.events, Settings().buffer_size),
    )
    sides = ["loop", "sync", "aloop", "async"]
    if not args.skip_reference:
        sides += ["wloop", "awloop"]
    rates: dict[str, list[float]] = {k: [] for k in sides}
    lat: dict[str, list[int]] = {k: [] for k in ("sync", "async", "sync-down", "async-down")}
    n = args.events
    try:
        for rnd in range(args.rounds):
            order = sides if rnd % 2 == 0 else sides[::-1]
            for side in order:
                ns = f"bench-{rnd}-{side}"
                settings = base.replace(namespace=ns)
                gc.collect()
                if side == "loop":
                    items = encode_workload(workload, ns, args.partitions)
                    elapsed = loop_sync(url, items, args.batch)
                    expected = n
                elif side == "aloop":
                    items = encode_workload(workload, ns, args.partitions)
                    elapsed = asyncio.run(loop_async(url, items, args.batch))
                    expected = n
                elif side == "wloop":
                    items = encode_workload(workload, ns, args.partitions)
                    elapsed = written_out_sync(url, items, args.batch)
                    expected = n
                elif side == "awloop":
                    items = encode_workload(workload, ns, args.partitions)
                    elapsed = asyncio.run(written_out_async(url, items, args.batch))
                    expected = n
                elif side == "sync":
                    elapsed = producer_sync(settings, workload, lat["sync"])
                    expected = n + 1
                else:
                    elapsed = asyncio.run(
                        producer_async(settings, workload, lat["async"], args.yield_every)
                    )
                    expected = n + 1
                rates[side].append(n / elapsed)
                settle(admin, ns, args.partitions, expected)
                print(f"round {rnd + 1} {side:6s} {n / elapsed:10,.0f} events/s", flush=True)
            if not args.skip_down:
                down = base.replace(
                    redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace="bench-down"
                )
                gc.collect()
                down_sync(down, workload, lat["sync-down"])
                gc.collect()
                asyncio.run(down_async(down, workload, lat["async-down"], args.yield_every))
    finally:
        admin.close()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    info = f"redis-server {redis_version(url) if args.redis_url else server_version()}"
    print()
    print(f"python {platform.python_version()} redis-py {redis.__version__} {info}")
    print(
        f"{n:,} events/run, {args.traces:,} traces, payload {min(sizes)}-{max(sizes)} B "
        f"(mean {statistics.mean(sizes):.0f}), batch {args.batch}, partitions "
        f"{args.partitions}, {args.rounds} rounds (medians)"
    )
    print()
    print("| ingest | events/s (median) | all rounds | ratio | target |")
    print("|---|---:|---|---:|---|")
    for side, ref, label in (
        ("loop", None, "redis-py pipelined XADD loop (Pipeline)"),
        ("wloop", None, "reference: redis-py loop, pipeline written out"),
        ("sync", "loop", "TagProducer"),
        ("aloop", None, "redis.asyncio pipelined XADD loop (Pipeline)"),
        ("awloop", None, "reference: redis.asyncio loop, pipeline written out"),
        ("async", "aloop", "AsyncTagProducer"),
    ):
        if side not in med:
            continue
        ratio = f"{med[side] / med[ref]:.2f}" if ref else ""
        target = ">= 0.8" if ref else ""
        written = "wloop" if side == "sync" else "awloop"
        if ref and written in med:
            ratio += f" ({med[side] / med[written]:.2f} vs written out)"
        runs = " ".join(f"{r / 1000:.0f}k" for r in rates[side])
        print(f"| {label} | {med[side]:,.0f} | {runs} | {ratio} | {target} |")
    print()
    print("| set_tags() latency, µs (all calls of all rounds) | p50 | p99 | p99.9 | max |")
    print("|---|---:|---:|---:|---:|")
    labels = {
        "sync": "TagProducer, flusher busy",
        "sync-down": "TagProducer, Redis down",
        "async": "AsyncTagProducer, flusher busy",
        "async-down": "AsyncTagProducer, Redis down",
    }
    for key, label in labels.items():
        if not lat[key]:
            continue
        p = percentiles(lat[key])
        print(f"| {label} | {p['p50']:.1f} | {p['p99']:.1f} | {p['p99.9']:.1f} | {p['max']:.0f} |")
    print("\ntargets: p50 <= 10 µs, p99 <= 100 µs")


def server_version() -> str:
    binary = shutil.which("redis-server") or "redis-server"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split("v=")[1].split()[0] if "v=" in out else "?"


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


if __name__ == "__main__":
    main()
