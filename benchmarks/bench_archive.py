"""The archive against the fold, in one run: archiver rate, fold rate with and without the
archiver, archive bytes per event against Redis's bytes per log entry, Redis memory under a
steady rate.

    .venv/bin/python benchmarks/bench_archive.py [--events 200000] [--repeat 2 (0: steady only)]
        [--steady-seconds 600] [--steady-rate 3000] [--store file|s3]

Starts a private redis-server (AOF ``everysec``, like the embedded default; never port
6379) and, for ``--store s3``, moto's S3 server on loopback.  The workload is bench_fold's
realistic mix (``realistic_calls``), written once by ``TagProducer`` and kept pristine in
DB 1; every timed run starts from a COPY of it in DB 0 with no fold state.

1. **Redis bytes per log entry**: MEMORY USAGE of the pristine stream (SAMPLES 0) / XLEN.
2. **fold rate, A/B**: the shipped ``tracetags serve`` (one worker) folds the whole stream:
   *A* without an archive (``serve`` runs no archiver), *B* with ``TRACETAGS_ARCHIVE_URL``
   set (``serve`` runs its archiver process too: interval 1 s, retention 0, so it archives
   and trims while the fold runs).  The clock starts at the last 2 ms sample before the
   group's first delivery and stops when nothing is pending or undelivered.  A and B
   alternate ``--repeat`` times; medians count.
3. **archiver alone**: on a fully folded copy, ``archive_once`` (in this process) writes
   every entry into segments and trims: events/s, and archive bytes per event.
4. **steady rate** (``--steady-seconds``; 0 skips): ``serve`` with its archiver
   (interval ``--steady-interval``, retention ``--steady-retention``) while this process
   produces ``--steady-rate`` events/s on a fixed pool of traces (tags from bounded sets, so
   the fold state stops growing once every trace exists); every 5 s: used_memory, the
   stream's length and MEMORY USAGE.  Flat = the second half's used_memory range, and the
   stream's length stays under rate x (retention + interval + 2 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tracetags.consumer  # noqa: F401 - imported before the archiver's clock starts
from bench_fold import kinds, play, realistic_calls
from tracetags import Settings, TagProducer
from tracetags.archive import archive_once
from tracetags.embedded import RedisServer
from tracetags.keys import Keys

NAMESPACE = "bencharchive"
GROUP = "tracetags-fold"
PRISTINE_DB = 1
VENV_BIN = Path(sys.executable).parent


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.server = RedisServer(work / "redis", appendfsync="everysec").start()
        self.url = self.server.url
        self.db0 = redis.Redis.from_url(self.url)
        self.pristine = redis.Redis.from_url(self.url.rsplit("/", 1)[0] + f"/{PRISTINE_DB}")
        self.keys = Keys(NAMESPACE)
        self.stream = self.keys.stream(0)
        self.moto: subprocess.Popen[bytes] | None = None
        self.archive_url = self._store()

    def _store(self) -> str:
        if self.args.store == "file":
            return f"file://{self.work}/archive"
        import socket

        import pyarrow.fs as pafs

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(2)
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                               region="us-east-1", allow_bucket_creation=True)  # fmt: skip
        fs.create_dir("bench")
        return f"s3://bench/archive?endpoint=http://127.0.0.1:{port}&region=us-east-1"

    def settings(self, **changes: Any) -> Settings:
        return Settings(redis_url=self.url, namespace=NAMESPACE, **changes)

    def fill(self) -> int:
        calls = realistic_calls(self.args.events, seed=7)
        print(f"workload: {len(calls):,} events ({kinds(calls)})")
        # A buffer for every call: played back to back, they outrun the writes.
        with TagProducer(self.settings(buffer_size=len(calls) + 1)) as producer:
            for call in calls:
                play(producer, call)
            producer.flush(timeout=300)
        self.pristine.flushdb()
        self.db0.copy(self.keys.meta, self.keys.meta, destination_db=PRISTINE_DB)
        self.db0.copy(self.stream, self.stream, destination_db=PRISTINE_DB)
        return int(self.db0.xlen(self.stream))

    def reset(self) -> None:
        self.db0.flushdb()
        self.pristine.copy(self.keys.meta, self.keys.meta, destination_db=0)
        self.pristine.copy(self.stream, self.stream, destination_db=0)
        self.db0.bgrewriteaof()
        if self.archive_url.startswith("file://"):
            shutil.rmtree(self.archive_url[len("file://") :], ignore_errors=True)

    def close(self) -> None:
        self.db0.close()
        self.pristine.close()
        self.server.stop()
        if self.moto is not None:
            self.moto.terminate()
            self.moto.wait()


class Serve:
    """``tracetags serve`` (one worker; its archiver when ``archive_url`` is given)."""

    def __init__(self, bench: Bench, label: str, env: dict[str, str]) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("TRACETAGS_")}
        full.update(env)
        full.update({"TRACETAGS_REDIS_URL": bench.url, "TRACETAGS_NAMESPACE": NAMESPACE})
        self.log_path = bench.work / f"serve-{label}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen([str(VENV_BIN / "tracetags"), "serve"], env=full,
                                        stdout=self._log, stderr=self._log)  # fmt: skip
        self.bench = bench

    def wait_reading(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited:\n{self.log_path.read_text()[-3000:]}")
            clients: Any = self.bench.db0.client_list()
            if any(c.get("cmd") == "xreadgroup" for c in clients):
                return
            time.sleep(0.05)
        raise SystemExit("the consumer did not start reading")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def group_info(db: redis.Redis, stream: str) -> dict[bytes, Any] | None:
    try:
        info: Any = db.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    return next((g for g in info if g["name"] == GROUP.encode()), None)


def group_done(db: redis.Redis, stream: str, total_last: bytes) -> bool:
    group = group_info(db, stream)
    return group is not None and group["last-delivered-id"] == total_last and not group["pending"]


def wait_rewrite(db: redis.Redis) -> None:
    while int(db.info("persistence")["aof_rewrite_in_progress"]):
        time.sleep(0.05)


def fold_run(bench: Bench, with_archiver: bool) -> float:
    """The consumer makes its group at 0 as in production (a group made at ``$`` would tell
    the archiver that everything before was delivered), so the clock starts at the first
    2 ms sample that sees the group's first delivery: the processes' start-up is not
    counted."""
    bench.reset()
    wait_rewrite(bench.db0)
    last: Any = bench.db0.xrevrange(bench.stream, count=1)
    last_id = last[0][0]
    total = int(bench.db0.xlen(bench.stream))
    env = {"TRACETAGS_CONSUMER_GROUP": GROUP}
    if with_archiver:
        env.update({"TRACETAGS_ARCHIVE_URL": bench.archive_url, "TRACETAGS_ARCHIVE_INTERVAL": "1s",
                    "TRACETAGS_LOG_RETENTION": "0"})  # fmt: skip
    serve = Serve(bench, "B" if with_archiver else "A", env)
    try:
        previous = time.perf_counter()
        while True:
            group = group_info(bench.db0, bench.stream)
            if group is not None and group["last-delivered-id"] != b"0-0":
                break
            if serve.process.poll() is not None:
                raise SystemExit(f"serve exited:\n{serve.log_path.read_text()[-3000:]}")
            previous = time.perf_counter()
            time.sleep(0.002)
        start = previous
        while not group_done(bench.db0, bench.stream, last_id):
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
    finally:
        serve.stop()
    if with_archiver:
        state: Any = bench.db0.hgetall(bench.keys.archive_state(0))
        archived = state.get(b"archived", b"-").decode()
        length = bench.db0.xlen(bench.stream)
        print(f"    B: the archiver had archived up to {archived} (last entry "
              f"{last_id.decode()}); stream length now {length:,}")  # fmt: skip
    return total / elapsed


def archiver_alone(bench: Bench) -> tuple[float, float, int]:
    """Fold everything (untimed, the shipped consumer), then time archive_once."""
    bench.reset()
    wait_rewrite(bench.db0)
    last: Any = bench.db0.xrevrange(bench.stream, count=1)
    serve = Serve(bench, "fold-for-archive", {"TRACETAGS_CONSUMER_GROUP": GROUP})
    try:
        deadline = time.monotonic() + 600
        while not group_done(bench.db0, bench.stream, last[0][0]):
            assert time.monotonic() < deadline, "fold did not finish"
            time.sleep(0.05)
    finally:
        serve.stop()
    total = int(bench.db0.xlen(bench.stream))
    settings = bench.settings(archive_url=bench.archive_url, log_retention="0",
                              archive_max_rows=bench.args.segment_rows)  # fmt: skip
    start = time.perf_counter()
    (report,) = archive_once(settings)
    elapsed = time.perf_counter() - start
    assert report.error is None, report.error
    assert report.archived == total, (report.archived, total)
    state: Any = bench.db0.hgetall(bench.keys.archive_state(0))
    archive_bytes = int(state[b"bytes"])
    print(f"    archiver alone: {total:,} entries in {report.segments_written} segments, "
          f"{elapsed:.2f} s, stream length after: {bench.db0.xlen(bench.stream)}")  # fmt: skip
    return total / elapsed, archive_bytes / total, report.segments_written


def steady(bench: Bench) -> None:
    args = bench.args
    bench.db0.flushdb()
    if bench.archive_url.startswith("file://"):
        shutil.rmtree(bench.archive_url[len("file://") :], ignore_errors=True)
    settings = bench.settings(flush_interval_ms=5)
    rng = random.Random(11)
    pool = [f"tr-steady-{i:06d}" for i in range(args.steady_traces)]
    serve = Serve(bench, "steady", {
        "TRACETAGS_CONSUMER_GROUP": GROUP, "TRACETAGS_ARCHIVE_URL": bench.archive_url,
        "TRACETAGS_ARCHIVE_INTERVAL": args.steady_interval,
        "TRACETAGS_LOG_RETENTION": args.steady_retention,
    })  # fmt: skip
    stop = threading.Event()
    produced = [0]

    def produce() -> None:
        with TagProducer(settings) as producer:
            for trace_id in pool:
                producer.trace_started(trace_id, experiment_id="1", timestamp_ms=1_000,
                                       tags={"environment": "production"})  # fmt: skip
            producer.flush(timeout=120)
            start = time.perf_counter()
            sent = 0
            while not stop.is_set():
                due = int((time.perf_counter() - start) * args.steady_rate)
                while sent < due:
                    trace_id = pool[rng.randrange(len(pool))]
                    if rng.random() < 0.1:
                        producer.delete_tags(trace_id, ["priority"])
                    else:
                        producer.set_tags(trace_id, {
                            "user_id": f"user_{rng.randrange(500)}",
                            "priority": rng.choice(("high", "medium", "low")),
                            "model_version": rng.choice(("v1", "v2", "v3")),
                        })  # fmt: skip
                    sent += 1
                time.sleep(0.005)
            producer.flush(timeout=60)
            produced[0] = sent

    thread = threading.Thread(target=produce, daemon=True)
    samples: list[tuple[float, int, int, int]] = []
    try:
        serve.wait_reading()
        thread.start()
        start = time.monotonic()
        while time.monotonic() - start < args.steady_seconds:
            time.sleep(5)
            memory: Any = bench.db0.info("memory")
            length = int(bench.db0.xlen(bench.stream))
            stream_bytes = int(bench.db0.memory_usage(bench.stream, samples=0) or 0)
            samples.append((time.monotonic() - start, int(memory["used_memory"]), length,
                            stream_bytes))  # fmt: skip
            t, used, length, sbytes = samples[-1]
            print(f"    t={t:5.0f}s used_memory={used / 2**20:7.1f} MiB stream={length:8,} "
                  f"entries {sbytes / 2**20:6.1f} MiB")  # fmt: skip
        stop.set()
        thread.join(120)
    finally:
        serve.stop()
    second_half = [s for s in samples if s[0] >= args.steady_seconds / 2]
    used = [s[1] for s in second_half]
    bound = args.steady_rate * (
        _duration_s(args.steady_retention) + _duration_s(args.steady_interval) + 2
    )
    # The first half includes the pool's trace_started burst and the first retention.
    max_length = max(s[2] for s in second_half)
    print(f"  steady: {produced[0]:,} events (after {len(pool):,} trace_started) at "
          f"{args.steady_rate:,}/s for {args.steady_seconds} s;"
          f" second half used_memory {min(used) / 2**20:.1f}..{max(used) / 2**20:.1f} MiB "
          f"(range {(max(used) - min(used)) / 2**20:.1f} MiB, "
          f"{(max(used) - min(used)) / max(used):.1%}); second half stream length max "
          f"{max_length:,} "
          f"(bound rate x (retention + interval + 2 s) = {bound:,.0f}: "
          f"{'met' if max_length <= bound else 'MISSED'})")  # fmt: skip


def _duration_s(text: str) -> float:
    from tracetags.settings import parse_duration_ms

    return (parse_duration_ms(text) or 0) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--repeat", type=int, default=2, help="A/B rounds; 0 runs the steady phase alone"
    )
    parser.add_argument("--store", choices=("file", "s3"), default="file")
    parser.add_argument("--segment-rows", type=int, default=100_000)
    parser.add_argument("--steady-seconds", type=int, default=60)
    parser.add_argument("--steady-rate", type=int, default=3_000)
    parser.add_argument("--steady-traces", type=int, default=20_000)
    parser.add_argument("--steady-interval", default="5s")
    parser.add_argument("--steady-retention", default="30s")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; store: {args.store}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="tracetags-bench-archive-"))
    bench = Bench(args, work)
    try:
        total = bench.fill()
        log_bytes = int(bench.pristine.memory_usage(bench.stream, samples=0) or 0)
        print(f"1. Redis log: {total:,} entries, MEMORY USAGE {log_bytes / 2**20:.1f} MiB = "
              f"{log_bytes / total:.0f} B per entry")  # fmt: skip

        if args.repeat == 0:  # the steady phase alone
            if args.steady_seconds > 0:
                steady(bench)
            return
        rates: dict[str, list[float]] = {"A": [], "B": []}
        for round_no in range(args.repeat):
            for label in ("A", "B") if round_no % 2 == 0 else ("B", "A"):
                rate = fold_run(bench, with_archiver=label == "B")
                rates[label].append(rate)
                print(f"  round {round_no + 1} {label}: fold {rate:,.0f} events/s")
        fold_a = statistics.median(rates["A"])
        fold_b = statistics.median(rates["B"])
        print(f"2. fold rate: A (no archiver) {fold_a:,.0f} events/s, B (archiver running) "
              f"{fold_b:,.0f} events/s: B/A = {fold_b / fold_a:.3f} "
              f"(drop {1 - fold_b / fold_a:.1%}; target <= 10 %)")  # fmt: skip

        archive_rate, bytes_per_event, segments = archiver_alone(bench)
        print(f"3. archiver alone: {archive_rate:,.0f} events/s = {archive_rate / fold_a:.2f}x "
              f"the fold (target >= 2x); archive {bytes_per_event:.1f} B per event in "
              f"{segments} segments (target <= 40 B) vs Redis {log_bytes / total:.0f} B per "
              f"log entry: {log_bytes / total / bytes_per_event:.1f}x smaller")  # fmt: skip
        if args.steady_seconds > 0:
            print(f"4. steady rate ({args.steady_rate:,} events/s, interval "
                  f"{args.steady_interval}, retention {args.steady_retention}):")  # fmt: skip
            steady(bench)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
