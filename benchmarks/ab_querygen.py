"""Two versions of the query code A/B on one generated dataset, alternating per query.

    .venv/bin/python benchmarks/ab_querygen.py --old /tmp/wt-old/src            # vs this src
    .venv/bin/python benchmarks/ab_querygen.py --old A/src --new B/src --seed 83 --query-seed 19

Suite runs minutes apart drift more than most changes move a page (the same code has
measured a 35 % slower suite 25 minutes later on one VM), so a change is judged here: the
generated dataset (``querygen.generate_dataset``) is folded once into a private
``redis-server`` (or ``--url``'s, reused when its namespace already holds it), and two
worker processes, one per version (``PYTHONPATH`` of each ``src``), time each query in
turn: ``--rounds`` alternating rounds of ``--calls`` cold calls (parses, probes and plans
forgotten), each worker loading its own Functions library first (two versions cannot share
the server's). Prints the queries that moved most, and over all queries the median and
geometric mean of new ÷ old and how many answers differ (each version's first page of
ids; any difference is a bug in one of them). Make the old checkout with
``git worktree add /tmp/wt-old <rev> --detach``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# One version's side: reads a query per line (JSON) and answers its p50 and first page.
WORKER = """
import json, statistics, sys, time
import redis
from tracetags import functions
from tracetags.client import Client
from tracetags.query import executor
from tracetags.settings import Settings
url, namespace, scope = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
admin = redis.Redis.from_url(url)
client = Client(Settings(redis_url=url, namespace=namespace, partitions=1))
for line in sys.stdin:
    q = json.loads(line)
    admin.function_flush()
    functions.load(admin)
    def run():
        executor.clear_caches()
        return client.search_traces(
            experiment_ids=scope, filter_string=q["filter"], order_by=q["order_by"]
        )
    page = run()
    samples = []
    for _ in range(q["calls"]):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    ids = [t.info.trace_id for t in page]
    print(json.dumps({"p50": statistics.median(samples), "ids": ids}), flush=True)
"""


class Side:
    """A worker process running one version of the code."""

    def __init__(self, src: Path, url: str, namespace: str, scope: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(src))
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, namespace, json.dumps(scope)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, query: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(query) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"a worker died (exit {self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def ensure_loaded(url: str, namespace: str, traces: int, seed: int) -> None:
    """Fold the dataset into ``namespace`` unless it holds it already (this checkout's
    code folds it: both versions read the same state)."""
    import redis

    import bench_querygen
    import querygen
    from tracetags import functions
    from tracetags.keys import Keys

    admin = redis.Redis.from_url(url)
    keys = Keys(namespace)
    if admin.hlen(f"{keys.prefix(0)}:ids") != traces:
        for key in admin.scan_iter(f"{namespace}:*", count=10_000):
            admin.delete(key)
        admin.function_flush()
        functions.load(admin)
        started = time.perf_counter()
        bench_querygen.load(admin, keys, querygen.generate_dataset(traces, seed))
        print(f"loaded {traces:,} traces in {time.perf_counter() - started:.1f}s", flush=True)
    admin.close()


def queries_of(args: argparse.Namespace) -> list[dict[str, Any]]:
    import querygen

    if args.queries_json:
        rows = json.loads(args.queries_json.read_text())["compare"]["rows"]
        return [{"filter": r["filter"], "order_by": r["order_by"]} for r in rows]
    dataset = querygen.generate_dataset(args.traces, args.seed)
    generated = querygen.generate_queries(dataset, args.queries, args.query_seed)
    kept = querygen.compared(generated)  # (the documented deviations left out, as compare does)
    return [{"filter": q.filter_string, "order_by": q.order_by} for q in kept]


def compare(
    sides: dict[str, Side], queries: list[dict[str, Any]], rounds: int, calls: int
) -> tuple[list[tuple[float, float, float, dict[str, Any]]], int]:
    """(new / old, old p50, new p50, query) of each query, and how many answers differ."""
    results: list[tuple[float, float, float, dict[str, Any]]] = []
    different = 0
    for query in queries:
        asked = {**query, "calls": calls}
        got: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for r in range(rounds):
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                got[name].append(sides[name].ask(asked))
        if got["old"][0]["ids"] != got["new"][0]["ids"]:
            different += 1
            print(f"DIFFERENT ANSWERS: {query['filter']!r} by {query['order_by']}")
        old = statistics.median(g["p50"] for g in got["old"])
        new = statistics.median(g["p50"] for g in got["new"])
        results.append((new / old, old, new, query))
    return results, different


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the old version's src")
    parser.add_argument("--new", type=Path, default=HERE.parent / "src")
    parser.add_argument("--url", help="an existing redis-server (default: start one)")
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--query-seed", type=int, default=7)
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--queries-json", type=Path, help="bench_querygen.py --json output")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--show", type=int, default=10, help="queries shown at each end")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import bench_query
    import querygen

    namespace = f"ab-{args.seed}-{args.traces}"
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ab-")))
            url = stack.enter_context(bench_query.private_redis(workdir)).url
        ensure_loaded(url, namespace, args.traces, args.seed)
        queries = queries_of(args)
        scope = list(querygen.SCOPE)
        sides: dict[str, Side] = {}
        for name, src in (("old", args.old), ("new", args.new)):
            sides[name] = Side(src, url, namespace, scope)
            stack.callback(sides[name].close)
        results, different = compare(sides, queries, args.rounds, args.calls)
    results.sort(key=lambda r: r[0])
    shown = results if len(results) <= 2 * args.show else (
        results[: args.show] + results[-args.show :])  # fmt: skip
    for ratio, old, new, query in shown:
        print(
            f"{ratio:6.3f}  {old:8.2f} -> {new:8.2f} ms  {query['filter']} by {query['order_by']}"
        )
    ratios = [r[0] for r in results]
    print(
        f"{len(ratios)} queries: new / old median {statistics.median(ratios):.3f},"
        f" geomean {statistics.geometric_mean(ratios):.3f}; answers different: {different}"
    )
    return 1 if different else 0


if __name__ == "__main__":
    raise SystemExit(main())
