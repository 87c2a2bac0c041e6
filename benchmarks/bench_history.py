"""History of one trace from the archive: ``read_trace`` (pruned: manifest trace ranges,
row-group min/max, bloom filters) against a full scan and DuckDB, on archives of 1M and 10M
events, before and after compaction, and against the segment count.

    flock /tmp/tt-bench.lock .venv/bin/python benchmarks/bench_history.py \\
        [--sizes 1000000,10000000] [--segment-rows 100000] [--counts 1000,10000,100000] \\
        [--lookups 300] [--naive-max 1000000] [--work DIR] [--s3]

The archive is written directly with the segment and manifest writers (no Redis): bench_fold's
realistic event mix (``realistic_calls``, ~3.3 events per trace, traces overlapping), in
chunks of 100k calls with their own seed, entry ids 3 per millisecond, cut into segments of
``--segment-rows`` (the archiver's ``archive_max_rows``).  Per archive:

* **read_trace**: ``--lookups`` random present trace ids and as many absent ones, warm
  (footers and filters cached: the steady state of a process), p50/p99; and the first
  lookup with a cold cache (it reads every segment's footer and filters).
* **full scan** (the naive reference): ``read_partition`` filtered by trace id, 3 lookups,
  at sizes up to ``--naive-max``; its result must equal read_trace's.
* **DuckDB**: ``SELECT ... FROM read_parquet(<segments>) WHERE trace_id = ?`` over the same
  files (DuckDB uses the row-group statistics and the bloom filters too), 30 lookups.
* then ``compact_partition`` (the serve loop's policy, ``archive_compact_rows`` default, grace 0;
  in a child process, for its peak RSS) and the same lookups again; then ``--full``
  compaction and again.  Compaction works on a copy: the generated archive is kept in
  ``--work`` for the next run.

The segment-count curve: 1M events cut into segments of each ``--counts`` rows; the
smallest compacted, and measured again.  ``--s3``: the 1M archive copied into moto's S3
server on loopback (every lookup lists the manifest and reads ranges over HTTP).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fold import realistic_calls
from tracetags import Settings, schemas
from tracetags.archive import manifest, read_partition
from tracetags.archive.index import CACHE
from tracetags.archive.reader import read_trace
from tracetags.archive.segments import Row, to_table, write_tables
from tracetags.archive.store import LocalStore, S3Store, store_from_url

NAMESPACE = "benchhistory"
#: Compaction's target: the default of ``archive_compact_rows``.
TARGET_ROWS = Settings().archive_compact_rows
CHUNK = 100_000
BASE_MS = 1_780_000_000_000


def _event(call: tuple[str, str, dict[str, Any]], ms: int) -> schemas.Event:
    method, trace_id, kwargs = call
    common: dict[str, Any] = {
        "trace_id": trace_id, "event_id": schemas.new_event_id(ms), "emitted_at_ms": ms,
    }  # fmt: skip
    if method == "trace_started":
        return schemas.TraceStarted(**common, **kwargs)
    if method == "trace_finished":
        return schemas.TraceFinished(**common, **kwargs)
    if method == "set_tags":
        return schemas.TagsSet(**common, tags=kwargs["tags"])
    return schemas.TagsDeleted(**common, keys=kwargs["keys"])


def rows(events: int, sample: list[str]) -> Iterator[Row]:
    """``events`` rows of the realistic mix; a few trace ids of each chunk go to ``sample``."""
    rng = random.Random(11)
    index = 0
    chunk = 0
    while index < events:
        calls = realistic_calls(min(CHUNK, events - index), seed=1_000 + chunk)
        sample.extend(rng.sample(sorted({c[1] for c in calls}), 40))
        for call in calls:
            ms = BASE_MS + index // 3
            yield f"{ms}-{index % 3}", _event(call, ms)
            index += 1
        chunk += 1


def generate(root: Path, events: int, segment_rows: int) -> tuple[LocalStore, list[str], float]:
    """The archive (reused when ``root`` holds a complete one); ``(store, sample ids,
    seconds)``."""
    done = root / "DONE"
    sample_file = root / "sample.txt"
    store = LocalStore(root)
    if done.exists():
        return store, sample_file.read_text().split(), 0.0
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    sample: list[str] = []
    batch: list[Row] = []

    def flush() -> None:
        first, last = schemas.parse_entry_id(batch[0][0]), schemas.parse_entry_id(batch[-1][0])
        data = write_tables([to_table(batch)])
        manifest.publish(store, NAMESPACE, 0, first, last, len(batch), data, schemas.now_ms())
        batch.clear()

    for row in rows(events, sample):
        batch.append(row)
        if len(batch) == segment_rows:
            flush()
    if batch:
        flush()
    sample_file.write_text("\n".join(sample))
    done.write_text("ok")
    return store, sample, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[str], Any], ids: list[str]) -> list[float]:
    out = []
    for trace_id in ids:
        started = time.perf_counter()
        fn(trace_id)
        out.append((time.perf_counter() - started) * 1000)
    return out


def archive_bytes(store: LocalStore | S3Store) -> int:
    return sum(o.size for o in store.list(f"{NAMESPACE}/p00/segments"))


class Measure:
    def __init__(self, args: argparse.Namespace, log: list[str]) -> None:
        self.args = args
        self.log = log

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.append(line)

    def lookups(self, store: LocalStore | S3Store, label: str, sample: list[str], events: int,
                naive: bool, duck: bool) -> dict[str, float]:  # fmt: skip
        rng = random.Random(5)
        present = rng.sample(sample, min(self.args.lookups, len(sample)))
        absent = [f"tr-{rng.getrandbits(128):032x}" for _ in range(self.args.lookups)]

        def trace(trace_id: str) -> list[Any]:
            return list(read_trace(store, NAMESPACE, 0, trace_id))

        CACHE.clear()
        cold = timed(trace, present[:1])[0]
        hits = [len(trace(t)) for t in present[:50]]
        assert all(hits), "a sampled trace id was not found"
        assert not any(trace(t) for t in absent[:50])
        warm = timed(trace, present)
        miss = timed(trace, absent)
        segments = len(manifest.list_visible(store, NAMESPACE, 0))
        size = archive_bytes(store)
        result = {"p50": pct(warm, 0.5), "p99": pct(warm, 0.99), "absent_p50": pct(miss, 0.5),
                  "absent_p99": pct(miss, 0.99), "cold": cold}  # fmt: skip
        self.say(
            f"| {events:,} | {label} | {segments} | {size / events:.1f} | {result['p50']:.1f} | "
            f"{result['p99']:.1f} | {result['absent_p50']:.1f} | {result['absent_p99']:.1f} | "
            f"{cold:.0f} | {statistics.mean(hits):.1f} |"
        )
        if naive:
            scan = []
            for trace_id in present[:3]:
                started = time.perf_counter()
                found = [
                    (i, e) for i, e in read_partition(store, NAMESPACE, 0)
                    if not isinstance(e, bytes) and e.trace_id == trace_id
                ]  # fmt: skip
                scan.append((time.perf_counter() - started) * 1000)
                assert found == trace(trace_id), "read_trace differs from the full scan"
            result["scan"] = statistics.median(scan)
            self.say(f"  full scan (read_partition + filter), median of 3: {result['scan']:,.0f} "
                     f"ms = {result['scan'] / result['p50']:,.0f}x read_trace's p50")  # fmt: skip
        if duck and isinstance(store, LocalStore):
            import duckdb

            con = duckdb.connect()
            listed = store.list(f"{NAMESPACE}/p00/segments")
            files = sorted(str(store.root / o.name) for o in listed)
            query = ("SELECT entry_ms, entry_seq, type, tags FROM read_parquet(?) "
                     "WHERE trace_id = ? ORDER BY entry_ms, entry_seq")  # fmt: skip
            con.execute(query, [files, present[0]]).fetchall()
            times = timed(lambda t: con.execute(query, [files, t]).fetchall(), present[:30])
            result["duckdb"] = statistics.median(times)
            self.say(f"  DuckDB {duckdb.__version__} WHERE trace_id = ?, median of 30: "
                     f"{result['duckdb']:.1f} ms = {result['duckdb'] / result['p50']:.1f}x "
                     "read_trace's p50")  # fmt: skip
            con.close()
        return result

    def compact(self, store: LocalStore, full: bool) -> None:
        """``compact_partition`` in a child process, for its own peak RSS (VmHWM: the
        rusage maximum would carry this process's over the fork)."""
        script = (
            "import json, time\n"
            "from tracetags.archive.compaction import compact_partition\n"
            "from tracetags.archive.store import LocalStore, S3Store, store_from_url\n"
            "t = time.perf_counter()\n"
            f"r = compact_partition(LocalStore({str(store.root)!r}), {NAMESPACE!r}, 0, "
            f"target_rows={TARGET_ROWS}, grace_ms=0, full={full})\n"
            "print(json.dumps({'merged': r.merged, 'written': r.written, 'rows': r.rows, "
            "'s': time.perf_counter() - t, "
            "'rss': int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])}))\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=True)  # fmt: skip
        r = json.loads(done.stdout)
        self.say(
            f"  compaction{' --full' if full else ''}: {r['merged']} segments into "
            f"{r['written']} ({r['rows']:,} rows) in {r['s']:.1f} s = "
            f"{r['rows'] / max(r['s'], 1e-9):,.0f} rows/s; peak RSS {r['rss'] / 1024:,.0f} MiB"
        )


HEADER = ("| events | archive | segments | B/event | p50 ms | p99 ms | absent p50 | absent p99 "
          "| cold first ms | rows/trace |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--segment-rows", type=int, default=100_000)
    parser.add_argument("--counts", default="1000,10000,100000")
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--naive-max", type=int, default=1_000_000)
    parser.add_argument("--work", default=None, help="keep generated archives here")
    parser.add_argument("--s3", action="store_true", help="also on moto's S3 server (1M)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tt-bench-history-"))
    log: list[str] = []
    m = Measure(args, log)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    m.say(f"bench_history {when}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")  # fmt: skip
    m.say("\n### read_trace vs archive size, before and after compaction\n")
    m.say(HEADER)
    for events in (int(x) for x in args.sizes.split(",") if x):
        pristine = work / f"size-{events}-{args.segment_rows}"
        _, sample, took = generate(pristine, events, args.segment_rows)
        if took:
            m.say(f"  (generated {events:,} events in {took:.0f} s)")
        # Compaction changes the archive: measure a copy, keep the generated one.
        root = work / "compacting"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(pristine, root)
        store = LocalStore(root)
        label = f"{args.segment_rows // 1000}k-row segments"
        m.lookups(store, label, sample, events, events <= args.naive_max, True)
        m.compact(store, full=False)
        m.lookups(store, "compacted", sample, events, False, True)
        m.compact(store, full=True)
        m.lookups(store, "compacted --full", sample, events, events <= args.naive_max, True)
        shutil.rmtree(root)
    m.say("\n### read_trace vs segment count (1M events)\n")
    m.say(HEADER)
    counts = sorted(int(x) for x in args.counts.split(",") if x)
    for count in counts:
        pristine = work / f"count-{count}"
        _, sample, _ = generate(pristine, 1_000_000, count)
        store = LocalStore(pristine)
        m.lookups(store, f"{count:,}-row segments", sample, 1_000_000, False, count >= 10_000)
        if count == counts[0]:
            root = work / "compacting"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(pristine, root)
            store = LocalStore(root)
            m.compact(store, full=False)
            m.lookups(store, "compacted", sample, 1_000_000, False, True)
            shutil.rmtree(root)
    if args.s3:
        s3_lookups(m, work)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def s3_lookups(m: Measure, work: Path) -> None:
    """The 1M-event archive (100k-row segments) copied into moto's S3 server on loopback."""
    import socket

    import pyarrow.fs as pafs

    m.say("\n### read_trace on S3 (moto's server on loopback; 1M events)\n")
    m.say(HEADER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                               region="us-east-1", allow_bucket_creation=True)  # fmt: skip
        fs.create_dir("bench")
        store = store_from_url(f"s3://bench/a?endpoint=http://127.0.0.1:{port}&region=us-east-1")
        local, sample, _ = generate(work / "size-1000000-100000", 1_000_000, 100_000)
        for obj in local.list(NAMESPACE):
            store.put(obj.name, local.get(obj.name))
        m.lookups(store, "S3, 100k-row segments", sample, 1_000_000, False, False)
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
