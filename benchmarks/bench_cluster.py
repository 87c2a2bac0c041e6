"""A Redis Cluster of 3 primaries against one Redis, in the same run: fold rate and first-page
query latency, and the cluster's overhead.

    flock /tmp/tt-bench.lock .venv/bin/python benchmarks/bench_cluster.py \
        [--events 60000] [--repeat 3] [--fold consumer,function] [--repeats 60]

Starts a private ``redis-server`` (AOF, ``appendfsync no``) and a local Redis Cluster of 3
primaries, each with one replica (``tests/support/cluster.py``: six ``redis-server``
children with the same persistence, joined by ``redis-cli --cluster create``); never port
6379.  Both hold namespaces of 16 partitions (the cluster default), so that the figures
differ by the cluster alone: routing by slot, a connection per primary, replication to the
replicas.

1. **fold**: ``--events`` producer calls of the realistic mix of ``bench_fold.py`` written
   by ``TagProducer`` into a fresh namespace, then folded, ``--repeat`` times per target
   (alternating, a fresh namespace each time; medians count):

   - *consumer*: the shipped FastStream app (``tracetags.consumer.create_app``) in this
     process, timed from its start until every partition's group has no lag and nothing
     pending (polled every 10 ms);
   - *function*: the fold's Function calls without the app: per partition ``XREADGROUP``
     (COUNT 500) → ``functions.decode_entries`` → ``functions.apply_batch``, partitions
     spread over 2 threads; each call goes to its partition's primary.

2. **first page**: on the last folded namespace of each target, the first page (100 rows)
   of each page-1 query of ``bench_query.py``'s suite, ``--repeats`` times, one Redis and
   the cluster called in turn (a shared machine's load weighs on both alike); the pages
   must be identical on both targets.  Reported per query: median and p99 on each, and the ms a
   page costs more on the cluster (the target: <= 2 ms).

On 2 CPUs the cluster cannot be faster (its 6 servers and this process share them): the
overhead is the figure; benchmarks/README.md scales it to N primaries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.support.cluster: the cluster the tests run on

from tests.support.cluster import LocalCluster  # noqa: E402

from bench_fold import Call, play, realistic_calls  # noqa: E402
from bench_query import page_call, quantile, suite  # noqa: E402
from tracetags import TagProducer, functions  # noqa: E402
from tracetags.client import Client  # noqa: E402
from tracetags.connections import SyncClient  # noqa: E402
from tracetags.consumer import create_app  # noqa: E402
from tracetags.embedded import RedisServer  # noqa: E402
from tracetags.keys import Keys  # noqa: E402
from tracetags.settings import Settings  # noqa: E402

PARTITIONS = 16
BATCH = 500


@dataclass
class Target:
    label: str
    url: str
    partitions: int = PARTITIONS
    fold_s: dict[str, list[float]] = field(default_factory=dict)
    produce_s: list[float] = field(default_factory=list)
    last: Settings | None = None

    def settings(self) -> Settings:
        namespace = f"bench-cluster-{uuid.uuid4().hex[:8]}"
        return Settings(
            redis_url=self.url,
            namespace=namespace,
            partitions=self.partitions,
            flush_interval_ms=5,
        )


# --- fold --------------------------------------------------------------------------------


def produce(settings: Settings, calls: list[Call]) -> float:
    producer = TagProducer(settings)
    started = time.perf_counter()
    try:
        for call in calls:
            play(producer, call)
        producer.flush(timeout=300)
    finally:
        producer.close()
    return time.perf_counter() - started


def settled(client: SyncClient, keys: Keys, group: str, partitions: int) -> bool:
    """Every partition's group exists, has delivered everything and has nothing pending."""
    for partition in range(partitions):
        try:
            groups: Any = client.xinfo_groups(keys.stream(partition))
        except redis.ResponseError:
            return False  # no stream yet
        info = next((g for g in groups if g["name"] == group.encode()), None)
        if info is None or info.get("lag") != 0 or int(info["pending"]) != 0:
            return False
    return True


async def _run_consumer(settings: Settings, client: SyncClient, timeout_s: float) -> float:
    keys = Keys(settings.namespace)
    app = create_app(settings, name="bench-cluster")
    started = time.perf_counter()
    await app.start()
    try:
        while not settled(client, keys, settings.consumer_group, settings.partition_count):
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"the consumer did not fold the log within {timeout_s} s")
            await asyncio.sleep(0.01)
        return time.perf_counter() - started
    finally:
        await app.stop()


def fold_consumer(settings: Settings, client: SyncClient) -> float:
    return asyncio.run(_run_consumer(settings, client, 300))


def fold_function(settings: Settings, client: SyncClient) -> float:
    keys = Keys(settings.namespace)
    group = settings.consumer_group
    partitions = settings.partition_count
    for partition in range(partitions):
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
            client.xgroup_create(keys.stream(partition), group, id="0", mkstream=True)
    functions.load(client)

    def fold(partition: int) -> None:
        while True:
            reply: Any = client.xreadgroup(
                group, "bench", {keys.stream(partition): ">"}, count=BATCH
            )
            entries = reply[0][1] if reply else []
            if not entries:
                return
            functions.apply_batch(client, keys, partition, group, functions.decode_entries(entries))

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(fold, range(partitions)))
    return time.perf_counter() - started


FOLDS: dict[str, Callable[[Settings, SyncClient], float]] = {
    "consumer": fold_consumer,
    "function": fold_function,
}


def run_fold(target: Target, mode: str, calls: list[Call]) -> None:
    settings = target.settings()
    target.produce_s.append(produce(settings, calls))
    client = Client(settings)
    try:
        seconds = FOLDS[mode](settings, client.redis)
        assert settled(client.redis, client.keys, settings.consumer_group, target.partitions)
    finally:
        client.close()
    target.fold_s.setdefault(mode, []).append(seconds)
    target.last = settings


# --- queries -----------------------------------------------------------------------------


@dataclass
class PageRow:
    label: str
    #: Latencies in ms per target (the order of ``Target``s given to run_pages).
    ms: list[list[float]]

    def median(self, which: int) -> float:
        return statistics.median(self.ms[which])

    @property
    def added_ms(self) -> float:
        """What a page costs more on the cluster than on one Redis of as many partitions."""
        return self.median(2) - self.median(1)


def time_turns(calls: list[Callable[[], Any]], repeats: int, budget_s: float) -> list[list[float]]:
    """Latencies in ms of each call, the calls made in turn (who goes first rotates), so
    that the load of a shared machine weighs on all alike."""
    for call in calls:
        call()  # warm-up: connections, the Function's cache
    times: list[list[float]] = [[] for _ in calls]
    deadline = time.perf_counter() + budget_s
    for i in range(repeats):
        if i >= 3 and time.perf_counter() > deadline:
            break
        for k in range(len(calls)):
            which = (i + k) % len(calls)
            started = time.perf_counter()
            calls[which]()
            times[which].append((time.perf_counter() - started) * 1000)
    return times


def run_pages(targets: list[Target], traces: int, repeats: int) -> list[PageRow]:
    rows = []
    clients = [Client(t.last) for t in targets if t.last is not None]
    try:
        for query in suite(traces):
            if query.page != 1:
                continue
            made = [page_call(c, query) for c in clients]
            if any(ids != made[0][1] for _, ids in made):
                raise SystemExit(f"{query.label}: the pages of the targets differ")
            rows.append(PageRow(query.label, time_turns([c for c, _ in made], repeats, 8.0)))
    finally:
        for client in clients:
            client.close()
    return rows


# --- report ------------------------------------------------------------------------------


def machine() -> str:
    cpus = os.cpu_count()
    return f"{platform.machine()}, {cpus} CPUs, Python {platform.python_version()}"


def report(args: argparse.Namespace, targets: list[Target], pages: list[PageRow]) -> None:
    _, single, cluster = targets
    print(f"# bench_cluster: {args.events:,} events, {machine()}")
    print(
        "one Redis (1 and 16 partitions) vs a Redis Cluster of 3 primaries + 3 replicas,"
        " 16 partitions (loopback, AOF without fsync)"
    )
    print()
    print("fold, events/s (median of the runs); overhead = 1 - cluster / one Redis P=16")
    print(f"{'contender':<10} {'one P=1':>10} {'one P=16':>10} {'cluster':>10} {'overhead':>9}")

    def rate(runs: list[float] | None) -> str:
        return f"{args.events / statistics.median(runs):>10,.0f}" if runs else f"{'-':>10}"

    for mode in args.fold:
        a, b = single.fold_s.get(mode), cluster.fold_s.get(mode)
        overhead = f"{1 - statistics.median(a) / statistics.median(b):>8.0%}" if a and b else "   -"
        cells = [rate(t.fold_s.get(mode)) for t in targets]
        print(f"{mode:<10} {' '.join(cells)} {overhead:>9}")
    a, b = single.produce_s, cluster.produce_s
    overhead = f"{1 - statistics.median(a) / statistics.median(b):>8.0%}"
    cells = [rate(t.produce_s) for t in targets]
    print(f"{'producer':<10} {' '.join(cells)} {overhead:>9}")
    print()
    print("first page of 100 rows, ms (p50 / p99); added = cluster p50 - one Redis P=16 p50")
    print(f"{'query':<30} {'one P=1':>15} {'one P=16':>15} {'cluster':>15} {'added':>7}")
    for row in pages:
        cells = [f"{row.median(i):>6.2f} / {quantile(row.ms[i], 0.99):>6.2f}" for i in range(3)]
        print(f"{row.label:<30} {' '.join(cells)} {row.added_ms:>+7.2f}")
    added = [row.added_ms for row in pages]
    totals = [sum(row.median(i) for row in pages) for i in range(3)]
    print(
        f"added per page: median {statistics.median(added):+.2f} ms, max {max(added):+.2f} ms;"
        " pages/s (sequential, the suite's mix): "
        + ", ".join(
            f"{t.label} {1000 * len(pages) / total:,.0f}"
            for t, total in zip(targets, totals, strict=True)
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3, help="fold runs per target and mode")
    parser.add_argument("--fold", default="consumer,function", help="consumer,function")
    parser.add_argument("--repeats", type=int, default=60, help="calls per query")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    args.fold = [mode for mode in args.fold.split(",") if mode]
    calls = realistic_calls(args.events, seed=args.seed)
    traces = len({trace_id for _, trace_id, _ in calls})
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tt-bench-")))
        server = RedisServer(workdir / "single", appendfsync="no").start()
        stack.callback(server.kill)
        cluster = LocalCluster(workdir / "cluster").start()
        stack.callback(cluster.stop)
        targets = [
            Target("one Redis P=1", server.url, 1),
            Target("one Redis P=16", server.url),
            Target("cluster P=16", cluster.url),
        ]
        for mode in args.fold:
            failed: set[str] = set()
            for run in range(args.repeat):
                for target in targets if run % 2 == 0 else targets[::-1]:
                    if target.label in failed:
                        continue
                    try:
                        run_fold(target, mode, calls)
                    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                        print(f"{mode} on {target.label} failed: {exc!r}", file=sys.stderr)
                        failed.add(target.label)
                        continue
                    seconds = target.fold_s[mode][-1]
                    print(
                        f"  {mode} {target.label}: {args.events / seconds:,.0f} events/s",
                        file=sys.stderr,
                    )
        if any(t.last is None for t in targets):
            raise SystemExit("no folded namespace to query")
        pages = run_pages(targets, traces, args.repeats)
        report(args, targets, pages)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
