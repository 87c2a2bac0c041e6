"""Replay against the live fold on the same events, and the digest at 100k / 1M traces.

    .venv/bin/python benchmarks/bench_replay.py [--events 200000] [--repeat 3]
                                                [--digest-traces 100000,1000000]

Starts a private redis-server (AOF ``everysec``, like the embedded default; never port 6379)
and, in one run:

1. **replay rate vs live fold rate** on one log: ``--events`` events of the realistic mix of
   ``tracetags.traffic`` (started with tags and metadata, finished, late tags), written once
   by ``TagProducer`` into a pristine namespace that nothing folds.  The contenders
   alternate, ``--repeat`` times each, medians count:

   - *live fold*: the shipped consumer, ``tracetags serve`` (supervisor + one worker), on a
     COPY of the pristine stream in a namespace of its own; its group is created at ``$``
     so the worker starts idle, and the clock runs from the last 2 ms sample before the
     group's first delivery (``XGROUP SETID … 0``) until everything is delivered and acked;
   - *replay*: ``tracetags.archive.replay.replay`` (the library call behind ``tracetags
     replay``) from the pristine namespace into a fresh one, in this process: its own
     clock (claiming the target, every read, every fold call, the progress record).

   After each pair, ``verify`` of the two namespaces must say equal.  Prints events/s of
   each and the ratio replay ÷ live fold (target ≥ 0.8).
2. **digest** at each of ``--digest-traces``: that many traces (one ``trace_finished`` each
   with the mix's tags, name and metadata) folded by ``functions.apply_batch`` with no stream,
   then ``Client.digest()`` timed (best of two), with Redis's ``used_memory``.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tracetags import Settings, TagProducer, functions, schemas, traffic
from tracetags.archive import digest as digests
from tracetags.archive import replay as replaying
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.keys import Keys

VENV_BIN = Path(sys.executable).parent
GROUP = "tracetags-fold"


def drop(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}:*", count=5000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def fill_log(url: str, namespace: str, events: int) -> int:
    settings = Settings(redis_url=url, namespace=namespace, buffer_size=10**7)
    producer = TagProducer(settings)
    # ~2.2 events a trace (started, finished, a late tag for some)
    traffic.emit(producer, traffic.generate(int(events / 2.2) + 1, seed=11))
    producer.flush(600)
    producer.close()
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(Keys(namespace).stream(0)))  # type: ignore[arg-type]
    finally:
        client.close()


def live_fold(url: str, pristine: str, namespace: str, batch: int) -> float:
    """Seconds the shipped consumer takes to fold a COPY of the pristine log."""
    client = redis.Redis.from_url(url)
    keys = Keys(namespace)
    stream = keys.stream(0)
    client.copy(Keys(pristine).stream(0), stream)
    client.hset(keys.meta, mapping={"partitions": 1, "created_ms": 1})
    client.xgroup_create(stream, GROUP, id="$")
    env = {**os.environ, "TRACETAGS_CONSUMER_BATCH_SIZE": str(batch)}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - the child writes to it until the end
    command = [str(VENV_BIN / "tracetags"), "--redis-url", url, "--namespace", namespace, "serve"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not any(c.get("cmd") == "xreadgroup" for c in client.client_list()):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"tracetags serve did not start:\n{log.read()[-3000:]!r}")
            time.sleep(0.05)
        time.sleep(0.5)
        last_id = client.xinfo_stream(stream)["last-generated-id"]
        last_idle = time.perf_counter()
        client.xgroup_setid(stream, GROUP, id="0")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            now = time.perf_counter()
            info: Any = next(g for g in client.xinfo_groups(stream) if g["name"] == GROUP.encode())
            delivered = info["last-delivered-id"]
            if delivered == b"0-0":
                last_idle = now
            elif delivered == last_id and info["pending"] == 0:
                return now - last_idle
            time.sleep(0.002)
        raise SystemExit("the consumer did not finish within 600 s")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(45)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        client.close()


def replay_run(url: str, pristine: str, namespace: str, batch: int) -> tuple[float, int]:
    source = Settings(redis_url=url, namespace=pristine, consumer_batch_size=batch)
    result = replaying.replay(source, source.replace(namespace=namespace))
    return result.seconds, result.entries


def rates(args: argparse.Namespace, url: str, client: redis.Redis) -> None:
    pristine = "pristine"
    started = time.monotonic()
    events = fill_log(url, pristine, args.events)
    print(f"log: {events:,} events written in {time.monotonic() - started:.1f} s", flush=True)
    live: list[float] = []
    replayed: list[float] = []
    for round_ in range(args.repeat):
        order = ("live", "replay") if round_ % 2 == 0 else ("replay", "live")
        for contender in order:
            if contender == "live":
                seconds = live_fold(url, pristine, f"live{round_}", args.batch)
                live.append(events / seconds)
                print(f"  round {round_ + 1}: live fold {events / seconds:,.0f} events/s "
                      f"({seconds:.2f} s)", flush=True)  # fmt: skip
            else:
                seconds, entries = replay_run(url, pristine, f"replay{round_}", args.batch)
                assert entries == events, (entries, events)
                replayed.append(events / seconds)
                print(f"  round {round_ + 1}: replay    {events / seconds:,.0f} events/s "
                      f"({seconds:.2f} s)", flush=True)  # fmt: skip
        check = digests.verify(client, f"live{round_}", client, f"replay{round_}")
        print(f"  round {round_ + 1}: verify live vs replay: "
              f"{'equal' if check.equal else 'DIFFER'} ({check.a.traces:,} traces, "
              f"digest {check.a.digest})", flush=True)  # fmt: skip
        if not check.equal:
            raise SystemExit(f"replay differs from the live fold: {check.differences[:3]}")
        drop(client, f"live{round_}")
        drop(client, f"replay{round_}")
    live_median, replay_median = statistics.median(live), statistics.median(replayed)
    print()
    print(f"| {events:,} events, batch {args.batch} | events/s (median of {args.repeat}) "
          "| all rounds |")  # fmt: skip
    print("|---|---|---|")
    print(f"| live fold (tracetags serve, 1 worker) | {live_median:,.0f} "
          f"| {', '.join(f'{x:,.0f}' for x in live)} |")  # fmt: skip
    print(f"| replay (library, tail only) | {replay_median:,.0f} "
          f"| {', '.join(f'{x:,.0f}' for x in replayed)} |")  # fmt: skip
    print(f"\nreplay ÷ live fold: {replay_median / live_median:.2f}x (target ≥ 0.8)\n", flush=True)
    drop(client, pristine)


def fill_traces(client: redis.Redis, namespace: str, count: int) -> None:
    keys = Keys(namespace)
    client.hset(keys.meta, mapping={"partitions": 1, "created_ms": 1})
    items: list[functions.BatchItem] = []
    base = 1_780_000_000_000
    for n, spec in enumerate(traffic.generate(count, seed=5)):
        event = schemas.TraceFinished(
            trace_id=spec.trace_id, event_id=schemas.new_event_id(), emitted_at_ms=1,
            experiment_id=spec.experiment_id, timestamp_ms=spec.timestamp_ms,
            execution_time_ms=spec.execution_time_ms, status=spec.status,  # type: ignore[arg-type]
            name=spec.name, tags=spec.tags, metadata=spec.metadata,
        )  # fmt: skip
        items.append((f"{base + n}-0", event))
        if len(items) == 1000:
            functions.apply_batch(client, keys, 0, GROUP, items)
            items = []
    if items:
        functions.apply_batch(client, keys, 0, GROUP, items)


def digest_times(args: argparse.Namespace, url: str, client: redis.Redis) -> None:
    rows = []
    for count in args.digest_traces:
        namespace = f"digest{count}"
        started = time.monotonic()
        fill_traces(client, namespace, count)
        client.memory_purge()
        memory = int(client.info("memory")["used_memory"])
        print(f"digest: {count:,} traces folded in {time.monotonic() - started:.1f} s, "
              f"used_memory {memory / 2**20:,.0f} MiB", flush=True)  # fmt: skip
        times = []
        with Client(Settings(redis_url=url, namespace=namespace)) as reader:
            for _ in range(2):
                started = time.perf_counter()
                result = reader.digest()
                times.append(time.perf_counter() - started)
        assert result.traces == count, (result.traces, count)
        best = min(times)
        rows.append((count, best, count / best, result.digest))
        print(f"  Client.digest(): {best:.2f} s (runs {', '.join(f'{t:.2f}' for t in times)})",
              flush=True)  # fmt: skip
        client.flushdb()
    print()
    print("| traces | Client.digest() s (best of 2) | traces/s |")
    print("|---|---|---|")
    for count, best, rate, _ in rows:
        print(f"| {count:,} | {best:.2f} | {rate:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500, help="consumer_batch_size of both")
    parser.add_argument(
        "--digest-traces",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[100_000, 1_000_000],
    )
    parser.add_argument("--steps", default="rate,digest")
    args = parser.parse_args()
    steps = set(args.steps.split(","))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tt-bench-replay-") as directory:
        server = RedisServer(directory).start()
        client = redis.Redis.from_url(server.url)
        try:
            print(f"redis-server {client.info('server')['redis_version']} at {server.url}")
            if "rate" in steps:
                rates(args, server.url, client)
            if "digest" in steps:
                digest_times(args, server.url, client)
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
