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
   - *replay, tail*: ``tracetags.archive.replay.replay`` (the library call behind
     ``tracetags replay``) from the pristine namespace (the whole log in the stream) into a
     fresh one, in this process: its own clock (claiming the target, every read, every fold
     call, the progress record);
   - *replay, archive + tail*: the same from a copy of the log whose first ``--archived``
     share (0.9) is in a ``file://`` archive (segments of 50k rows written with the
     archive's own segment writer and manifest) and trimmed from the stream.

   After each round, ``verify`` of the live fold's namespace against each replay's must say
   equal.  Prints events/s of each and the ratios replay ÷ live fold (target ≥ 0.8).
2. **digest** at each of ``--digest-traces``: that many traces (one ``trace_finished`` each
   with the mix's tags, name and metadata) folded by ``functions.apply_batch`` with no stream,
   then ``Client.digest()`` timed (best of two), with Redis's ``used_memory``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
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
from tracetags.archive import manifest, segments
from tracetags.archive import replay as replaying
from tracetags.archive.store import open_store
from tracetags.client import Client
from tracetags.consumer import decode_fields
from tracetags.embedded import RedisServer
from tracetags.functions import DeadLetter
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


def archive_log(url: str, pristine: str, archived: str, directory: str, share: float) -> int:
    """Make namespace ``archived``: a COPY of the pristine log whose first ``share`` is in a
    file:// archive (segments of 50k rows, as the archiver publishes them) and trimmed from
    the stream; returns how many entries it archived."""
    client = redis.Redis.from_url(url)
    stream = Keys(archived).stream(0)
    client.copy(Keys(pristine).stream(0), stream)
    client.hset(Keys(archived).meta, mapping={"partitions": 1, "created_ms": 1})
    store = open_store(Settings(redis_url=url, archive_url=f"file://{directory}"))
    assert store is not None
    entries: Any = client.xrange(stream)
    count = int(len(entries) * share)
    rows: list[segments.Row] = []
    for entry_id, fields in entries[:count]:
        item = decode_fields(fields)
        rows.append((entry_id.decode(), item.payload if isinstance(item, DeadLetter) else item))
    for start in range(0, len(rows), 50_000):
        chunk = rows[start : start + 50_000]
        first, last = schemas.parse_entry_id(chunk[0][0]), schemas.parse_entry_id(chunk[-1][0])
        data = segments.write_segment(chunk)
        manifest.publish(store, archived, 0, first, last, len(chunk), data, schemas.now_ms())
    client.xtrim(stream, minid=entries[count][0], approximate=False)
    client.close()
    return count


def replay_run(
    url: str, source_ns: str, namespace: str, batch: int, archive_url: str | None = None
) -> tuple[float, int, int]:
    source = Settings(
        redis_url=url, namespace=source_ns, consumer_batch_size=batch, archive_url=archive_url
    )
    result = replaying.replay(source, source.replace(namespace=namespace))
    archived = sum(p.from_archive for p in result.partitions)
    return result.seconds, result.entries, archived


def rates(args: argparse.Namespace, url: str, client: redis.Redis) -> None:
    pristine = "pristine"
    started = time.monotonic()
    events = fill_log(url, pristine, args.events)
    print(f"log: {events:,} events written in {time.monotonic() - started:.1f} s", flush=True)
    archive_dir = tempfile.mkdtemp(prefix="tt-bench-archive-")
    share = args.archived
    archived = archive_log(url, pristine, "archived", archive_dir, share)
    print(f"archive: {archived:,} entries ({share:.0%}) in file:// segments, trimmed from a "
          "copy of the log", flush=True)  # fmt: skip
    names = ("live fold", "replay, tail", "replay, archive + tail")
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeat):
        order = names if round_ % 2 == 0 else names[::-1]
        for contender in order:
            if contender == "live fold":
                seconds = live_fold(url, pristine, f"live{round_}", args.batch)
            elif contender == "replay, tail":
                seconds, entries, _ = replay_run(url, pristine, f"tail{round_}", args.batch)
                assert entries == events, (entries, events)
            else:
                seconds, entries, from_archive = replay_run(
                    url, "archived", f"arch{round_}", args.batch, f"file://{archive_dir}"
                )
                assert (entries, from_archive) == (events, archived), (entries, from_archive)
            rates[contender].append(events / seconds)
            print(f"  round {round_ + 1}: {contender:<22} {events / seconds:>9,.0f} events/s "
                  f"({seconds:.2f} s)", flush=True)  # fmt: skip
        for other in (f"tail{round_}", f"arch{round_}"):
            check = digests.verify(client, f"live{round_}", client, other)
            print(f"  round {round_ + 1}: verify live vs {other}: "
                  f"{'equal' if check.equal else 'DIFFER'} ({check.a.traces:,} traces, "
                  f"digest {check.a.digest})", flush=True)  # fmt: skip
            if not check.equal:
                raise SystemExit(f"replay differs from the live fold: {check.differences[:3]}")
        for name in (f"live{round_}", f"tail{round_}", f"arch{round_}"):
            drop(client, name)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    live = medians["live fold"]
    print()
    print(f"| {events:,} events, batch {args.batch} | events/s (median of {args.repeat}) "
          "| all rounds | ÷ live fold |")  # fmt: skip
    print("|---|---|---|---|")
    for name in names:
        print(f"| {name} | {medians[name]:,.0f} | "
              f"{', '.join(f'{x:,.0f}' for x in rates[name])} "
              f"| {medians[name] / live:.2f}x |")  # fmt: skip
    print("\ntarget: replay ≥ 0.8x the live fold\n", flush=True)
    drop(client, pristine)
    drop(client, "archived")
    shutil.rmtree(archive_dir, ignore_errors=True)


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
        "--archived", type=float, default=0.9, help="share of the log archived and trimmed"
    )
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
