"""The longest Redis block per hostile query class, with the call budget on and off.

    flock /tmp/tt-bench.lock .venv/bin/python benchmarks/bench_hostile.py --traces 100000
    flock /tmp/tt-bench.lock .venv/bin/python benchmarks/bench_hostile.py --traces 1000000

A private ``redis-server`` gets ``--traces`` traces of ``tracetags.traffic`` (one
trace_finished each, folded by ``functions.apply_batch``) plus a tag ``u`` unique per trace
(as many distinct values as traces).  Each query class runs once with the budget on (the
product: deadlines, budgeted scans, value windows) and once with it off (the same code with
``SCAN_WORK_MIN``, the windows and the deadlines set to infinity: everything in one call, as
before the budget), while a child process PINGs Redis back to back; SLOWLOG gives the
longest single command (of those of 0.2 ms or more; "calls" counts those Function calls).
The reference is a plain PING loop with no query running; the table shows each side's
longest PING and longest command, and the ratio off/on.  Event classes fold events of
500 new keys (the most one event may hold) through a consumer-sized batch (cut at
``fold_max_keys``, or not).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tracetags import functions, schemas, traffic
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.errors import QueryLimitError
from tracetags.functions import BatchItem
from tracetags.keys import Keys
from tracetags.limits import EventLimits, split_batch
from tracetags.query import budget, executor, pages
from tracetags.settings import Settings

GROUP = "bench-hostile"
START_MS = 1_780_000_000_000
PINGER = """
import select, sys, time, redis
client = redis.Redis.from_url(sys.argv[1], socket_timeout=120)
client.ping()
print("ready", flush=True)
longest = 0.0
while True:
    start = time.perf_counter()
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.BusyLoadingError:
            time.sleep(0.001)  # BUSY: Redis runs a script past its busy threshold
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("BUSY"):
                raise
            time.sleep(0.001)
    longest = max(longest, (time.perf_counter() - start) * 1000)
    if select.select([sys.stdin], [], [], 0)[0]:
        break
print(longest, flush=True)
"""


@contextmanager
def watched(url: str) -> Iterator[dict[str, float]]:
    """Measure while the block runs: the longest PING (ms) and the longest command (ms)."""
    admin = redis.Redis.from_url(url)
    # Commands from 0.2 ms on: SLOWLOG also logs the commands a Function makes, and logging
    # every one (millions in a stats of a million groups) would overflow the log and slow
    # the calls it measures.
    admin.config_set("slowlog-log-slower-than", 200)
    admin.config_set("slowlog-max-len", 100_000)
    admin.slowlog_reset()
    pinger = subprocess.Popen(
        [sys.executable, "-c", PINGER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert pinger.stdout is not None and pinger.stdout.readline().strip() == "ready"
    out: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield out
    finally:
        out["total_s"] = time.perf_counter() - started
        text, _ = pinger.communicate("stop\n", timeout=600)
        out["ping_ms"] = float(text.split()[0])
        log = [
            e
            for e in admin.slowlog_get(100_000)
            if not e["command"].startswith((b"SLOWLOG", b"CONFIG"))
        ]
        out["command_ms"] = max((e["duration"] / 1000 for e in log), default=0.0)
        out["calls"] = float(sum(1 for e in log if e["command"].startswith(b"FCALL")))
        admin.close()


@contextmanager
def budget_off() -> Iterator[None]:
    saved = (budget.SCAN_WORK_MIN, budget.VALUES_WINDOW, budget.ZRANGE_WINDOW)
    saved_deadline, saved_plan_max = budget.call_deadline_us, pages.DIRECT_PLAN_MAX_BYTES
    budget.SCAN_WORK_MIN = float("inf")  # type: ignore[misc,assignment]
    budget.VALUES_WINDOW = budget.ZRANGE_WINDOW = 10**9  # type: ignore[misc]
    budget.call_deadline_us = lambda budget_us: 10**12
    pages.DIRECT_PLAN_MAX_BYTES = 10**12  # type: ignore[misc]
    try:
        yield
    finally:
        budget.SCAN_WORK_MIN, budget.VALUES_WINDOW, budget.ZRANGE_WINDOW = saved  # type: ignore[misc]
        budget.call_deadline_us = saved_deadline
        pages.DIRECT_PLAN_MAX_BYTES = saved_plan_max  # type: ignore[misc]


def load(client: redis.Redis, keys: Keys, traces: int) -> float:
    client.hset(keys.meta, "partitions", 1)
    started = time.perf_counter()
    in_flight: list[Future[Any]] = []
    batch: list[BatchItem] = []
    with ThreadPoolExecutor(2) as pool:
        for sequence, spec in enumerate(traffic.generate(traces, seed=3, start_ms=START_MS), 1):
            event = schemas.TraceFinished(
                trace_id=spec.trace_id, event_id=schemas.new_event_id(),
                emitted_at_ms=spec.timestamp_ms, experiment_id=spec.experiment_id,
                timestamp_ms=spec.timestamp_ms, execution_time_ms=spec.execution_time_ms,
                status=spec.status, name=spec.name,  # type: ignore[arg-type]
                tags={**spec.tags, "u": f"u{sequence}"}, metadata=spec.metadata,
            )  # fmt: skip
            batch.append((f"{START_MS + sequence}-0", event))
            if len(batch) == 1000:
                in_flight.append(pool.submit(functions.apply_batch, client, keys, 0, GROUP, batch))
                batch = []
                if len(in_flight) >= 4:
                    in_flight.pop(0).result()
        if batch:
            functions.apply_batch(client, keys, 0, GROUP, batch)
        for future in in_flight:
            future.result()
    return time.perf_counter() - started


def query_classes(traces: int) -> list[tuple[str, Callable[[Client], Any]]]:
    low, high = START_MS, START_MS + 86_400_000
    step = (high - low) // 500
    wide_or = " OR ".join(f"timestamp_ms < {low + i * step}" for i in range(500))
    conj_or = " OR ".join(
        f"(timestamp_ms < {low + i * step} AND tags.environment != 'x')" for i in range(200)
    )
    in_wide = "tags.u IN (" + ", ".join(f"'u{i * 97}'" for i in range(1, 10_001)) + ")"
    return [
        ("count OR of 500 ranges", lambda c: c.count(wide_or)),
        ("count OR of 200 conjunctions", lambda c: c.count(conj_or)),
        ("count IN of 10,000 values", lambda c: c.count(in_wide)),
        ("page IN of 10,000 values", lambda c: c.search_traces(filter_string=in_wide)),
        ("count LIKE '%5' (all distinct)", lambda c: c.count("tags.u LIKE '%5'")),
        ("page LIKE '%55'", lambda c: c.search_traces(filter_string="tags.u LIKE '%55'")),
        ("count RLIKE '77$' AND OK", lambda c: c.count("tags.u RLIKE '77$' AND status = 'OK'")),
        ("count ILIKE '%U12%'", lambda c: c.count("tags.u ILIKE '%U12%'")),
        ("count OK AND > 1 s", lambda c: c.count("status = 'OK' AND execution_time_ms > 1000")),
        ("page LIKE '%5' OR ERROR, by duration", lambda c: refused(lambda: c.search_traces(
            filter_string="tags.u LIKE '%5' OR status = 'ERROR'",
            order_by=["execution_time_ms DESC"]))),
        ("page of 50,000 rows", lambda c: c.search_traces(
            filter_string="status = 'OK'", max_results=50_000)),
        ("stats by environment (all)", lambda c: c.stats(None, group_by=["tags.environment"])),
        ("stats by u (1 group a trace)", stats_by_u),
    ]  # fmt: skip


def refused(query: Callable[[], Any]) -> Any:
    """The answer, or "refused" for a QueryLimitError (docs/limits.md)."""
    try:
        return query()
    except QueryLimitError:
        return "refused"


def stats_by_u(client: Client) -> Any:
    try:
        return client.stats(None, group_by=["tags.u"], metrics=["count"])
    except QueryLimitError:
        return "capped"


def event_classes(url: str, namespace: str) -> list[tuple[str, Callable[[bool], Any]]]:
    keys = Keys(namespace)
    client = redis.Redis.from_url(url)
    counter = iter(range(10**9))

    def fold(events: int, cut: bool) -> None:
        items: list[BatchItem] = []
        for _ in range(events):
            n = next(counter)
            tags = {f"k{n}_{i}": "v" * 100 for i in range(500)}
            event = schemas.TagsSet(
                trace_id=f"big{n}", event_id=schemas.new_event_id(), emitted_at_ms=1, tags=tags
            )
            items.append((f"{START_MS + 10**8 + n}-0", event))
        runs = split_batch(items, EventLimits()) if cut else [items]
        for run in runs:
            functions.apply_batch(client, keys, 0, GROUP, list(run))

    return [
        ("fold 1 event of 500 new keys", lambda cut: fold(1, cut)),
        ("fold a batch of 20 such events", lambda cut: fold(20, cut)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument(
        "--only", default="", help="run the classes whose name holds one of these texts (a,b)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory) / "redis").start()
        try:
            run(server.url, args.traces, args.only)
        finally:
            server.stop()


def row(name: str, on: dict[str, float], off: dict[str, float]) -> str:
    ratio = off["command_ms"] / on["command_ms"] if on["command_ms"] else float("nan")
    return (
        f"| {name} | {on['command_ms']:.1f} | {on['ping_ms']:.1f} | {on['calls']:.0f}"
        f" | {on['total_s']:.2f} | {off['command_ms']:.1f} | {off['ping_ms']:.1f}"
        f" | {off['total_s']:.2f} | {ratio:.1f}x |"
    )


def run(url: str, traces: int, only: str = "") -> None:
    namespace = "hostile"
    r = redis.Redis.from_url(url)
    functions.load(r)
    took = load(r, Keys(namespace), traces)
    print(f"# bench_hostile: {traces:,} traces loaded in {took:.1f} s ({sys.platform})")
    with watched(url) as base:
        time.sleep(2.0)
    print(f"reference: a PING loop alone for 2 s: longest PING {base['ping_ms']:.2f} ms,"
          f" longest command {base['command_ms']:.2f} ms")  # fmt: skip
    print()
    print("| class | on: longest command ms | on: longest PING ms | on: calls | on: total s"
          " | off: longest command ms | off: longest PING ms | off: total s"
          " | off/on |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    settings = Settings(
        redis_url=url, namespace=namespace, filter_max_terms=10_000, filter_max_or_width=10_000,
        stats_max_groups=10**7,
    )  # fmt: skip
    client = Client(settings)
    # The budget-off side runs single calls of up to a minute at 1M traces.
    patient = Client(settings.replace(socket_timeout_ms=600_000))
    for name, query in query_classes(traces):
        if not any(part in name for part in only.split(",")):
            continue
        executor.clear_caches()
        with watched(url) as on:
            first = query(client)
        executor.clear_caches()
        with budget_off(), watched(url) as off:
            second = query(patient)
        same = _comparable(first) == _comparable(second)
        note = " (refused: QueryLimitError)" if first == "refused" else ""
        note += "" if same or first == "refused" else " ANSWERS DIFFER"
        print(row(name, on, off) + note, flush=True)
    for name, fold in event_classes(url, namespace):
        if not any(part in name for part in only.split(",")):
            continue
        with watched(url) as on:
            fold(True)
        with watched(url) as off:
            fold(False)
        print(row(name, on, off), flush=True)
    client.close()
    patient.close()


def _comparable(answer: Any) -> Any:
    if isinstance(answer, list) and answer and hasattr(answer[0], "info"):
        return [t.info.trace_id for t in answer]
    if isinstance(answer, list):
        return sorted(map(repr, answer))
    return answer


if __name__ == "__main__":
    main()
