"""The generated query suite (querygen.py) against MLflow 3.17.2, and alone at 1M traces.

    .venv/bin/python benchmarks/bench_querygen.py                          # compare at 100k
    .venv/bin/python benchmarks/bench_querygen.py --steps scale --scale-traces 1000000
    .venv/bin/python benchmarks/bench_querygen.py --traces 20000 --queries 60   # a quick look

1. **compare** (``--traces``, default 100k; ``--queries``, default 320): the generated
   dataset folded into a private ``redis-server`` (one partition) and bulk-loaded into
   MLflow's SqlAlchemyStore on SQLite concurrently; every generated query asks for a first
   page of 100 over experiments 1 and 2.  tracetags is timed in this process (cold by
   default: parses, probes and plans forgotten before every call), MLflow inside its own
   process (``--mlflow-repeats`` rounds of the whole suite).  Every answer must be MLflow's
   ids in MLflow's order (queries under a documented deviation, ``querygen.deviation``,
   are excluded by rule and counted).  Reports the distribution of MLflow ÷ tracetags
   (median, p10, min), the queries over 10 ms, and the slowest ``--slowest`` queries with
   their plans (``Client.explain``).  Exit status 1 when an answer differs.
2. **scale** (``--scale-traces``, default 1M): tracetags alone, the suite generated over
   that dataset; p50/p99 of every query's first page, cold.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

import bench_query as bq
import querygen
from tracetags import functions, schemas
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.functions import BatchItem
from tracetags.keys import Keys
from tracetags.query import executor

GROUP = "bench-querygen"


def trace_event(trace: dict[str, Any]) -> schemas.Event:
    """The producer event that creates ``trace`` (unfinished traces are IN_PROGRESS)."""
    fields: dict[str, Any] = {
        "trace_id": trace["trace_id"],
        "event_id": schemas.new_event_id(),
        "emitted_at_ms": trace["timestamp_ms"],
        "experiment_id": trace["experiment_id"],
        "timestamp_ms": trace["timestamp_ms"],
        "name": trace["name"],
        "client_request_id": trace["client_request_id"],
        "tags": trace["tags"],
        "metadata": trace["metadata"],
    }
    if trace["execution_time_ms"] is None:
        return schemas.TraceStarted(**fields)
    return schemas.TraceFinished(
        **fields, execution_time_ms=trace["execution_time_ms"], status=trace["status"]
    )


def load(client: redis.Redis, keys: Keys, dataset: querygen.Dataset) -> float:
    """Fold one event per trace into partition 0 (batches of 1000, two in flight)."""
    client.hset(keys.meta, "partitions", 1)
    started = time.perf_counter()
    in_flight: list[Future[Any]] = []
    with ThreadPoolExecutor(2) as pool:
        batch: list[BatchItem] = []
        for sequence, trace in enumerate(dataset.traces, 1):
            batch.append((f"{querygen.START_MS + sequence}-0", trace_event(trace)))
            if len(batch) == 1000 or sequence == len(dataset.traces):
                in_flight.append(pool.submit(functions.apply_batch, client, keys, 0, GROUP, batch))
                batch = []
                if len(in_flight) >= 4:
                    in_flight.pop(0).result()
        for future in in_flight:
            future.result()
    return time.perf_counter() - started


@dataclass
class Row:
    query: querygen.GenQuery
    samples_ms: list[float]
    ids: list[str]
    mlflow_ms: list[float] = field(default_factory=list)
    mlflow_ids: list[str] | None = None
    mlflow_error: str | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99_ms(self) -> float:
        return bq.quantile(self.samples_ms, 0.99)

    @property
    def ratio(self) -> float:
        return statistics.median(self.mlflow_ms) / self.median_ms


def time_queries(
    client: Client, queries: list[querygen.GenQuery], repeats: int, budget: float, cold: bool
) -> list[Row]:
    rows = []
    for query in queries:

        def call(q: querygen.GenQuery = query) -> list[str]:
            if cold:
                executor.clear_caches()
            page = client.search_traces(
                experiment_ids=list(querygen.SCOPE),
                filter_string=q.filter_string,
                order_by=q.order_by,
                max_results=q.max_results,
            )
            return [t.info.trace_id for t in page]

        ids = call()
        rows.append(Row(query, bq.time_calls(call, repeats, budget), ids))
    return rows


def explain_text(client: Client, query: querygen.GenQuery) -> str:
    return str(
        client.explain(
            query.filter_string,
            experiment_ids=list(querygen.SCOPE),
            order_by=query.order_by,
        )
    )


def report_slowest(
    client: Client, rows: list[Row], n: int, *, mlflow: bool
) -> list[dict[str, Any]]:
    slowest = sorted(rows, key=lambda r: r.median_ms, reverse=True)[:n]
    print(f"\n### the {n} slowest queries (p50), with their plans\n")
    out = []
    for row in slowest:
        q = row.query
        vs = (
            f", MLflow {statistics.median(row.mlflow_ms):.1f} ms ({row.ratio:.1f}x)"
            if mlflow
            else ""
        )
        print(
            f"- `{q.filter_string}` order_by={q.order_by}: p50 {row.median_ms:.2f} ms,"
            f" p99 {row.p99_ms:.2f} ms{vs} [{q.label}]"
        )
        plan = explain_text(client, q)
        print("```text\n" + plan.rstrip() + "\n```")
        out.append(
            {
                "filter": q.filter_string,
                "order_by": q.order_by,
                "p50_ms": row.median_ms,
                "p99_ms": row.p99_ms,
                "plan": plan,
            }
        )
    return out


def step_compare(args: argparse.Namespace, server: RedisServer, workdir: Path) -> dict[str, Any]:
    print(
        f"\n## compare: {args.traces:,} traces, generated suite of >= {args.queries} queries"
        f" ({'cold' if args.cold else 'warm'})",
        flush=True,
    )
    dataset = querygen.generate_dataset(args.traces, args.seed)
    queries = querygen.generate_queries(dataset, args.queries, args.query_seed)
    kept = list(querygen.compared(queries))
    excluded = len(queries) - len(kept)
    db = workdir / "mlflow.db"
    loading = bq.run_oracle(
        ["--db", str(db), "--load-only", "--loader", "bulk"], dataset.oracle_input(), workdir
    )
    client = bq.fresh_client(server, 1, tuple(filter(None, args.lookup_keys.split(","))))
    load_s = load(client.redis, client.keys, dataset)
    del dataset
    gc.collect()
    mlflow_load = bq.oracle_result(loading, timeout=900)["load"]
    print(f"loaded: tracetags {load_s:.1f}s; MLflow {mlflow_load['seconds']}s", flush=True)
    rows = time_queries(client, kept, args.repeats, args.budget, args.cold)
    started = time.perf_counter()
    answer = bq.oracle_result(
        bq.run_oracle(
            ["--db", str(db)],
            {"queries": [q.oracle_query() for q in kept] * args.mlflow_repeats},
            workdir,
        ),
        timeout=3600,
    )
    print(f"MLflow answered in {time.perf_counter() - started:.0f}s", flush=True)
    for index, (result, ms) in enumerate(zip(answer["results"], answer["query_ms"], strict=True)):
        row = rows[index % len(rows)]
        if "error" in result:
            row.mlflow_error = result["error"]
            continue
        row.mlflow_ms.append(ms)
        row.mlflow_ids = result["ids"]
    rejected = [r for r in rows if r.mlflow_error]
    mismatched = [r for r in rows if not r.mlflow_error and r.ids != r.mlflow_ids]
    valid = [r for r in rows if not r.mlflow_error]
    ratios = sorted(r.ratio for r in valid)
    p50s = [r.median_ms for r in valid]
    summary = {
        "traces": args.traces,
        "queries": len(queries),
        "compared": len(valid),
        "excluded_by_rule": excluded,
        "mlflow_rejected": [(r.query.filter_string, r.mlflow_error) for r in rejected],
        "mismatched": [(r.query.filter_string, r.query.order_by) for r in mismatched],
        "ratio_median": statistics.median(ratios),
        "ratio_p10": bq.quantile(ratios, 0.10),
        "ratio_min": ratios[0],
        "p50_max_ms": max(p50s),
        "over_10ms": sum(p > 10 for p in p50s),
        "tracetags_load_s": round(load_s, 1),
        "mlflow_load_s": mlflow_load["seconds"],
    }
    print(
        f"\n{len(valid)} queries compared ({excluded} excluded by a deviation rule,"
        f" {len(rejected)} rejected by MLflow); answers equal MLflow's:"
        f" {len(valid) - len(mismatched)} of {len(valid)}"
    )
    print(
        f"MLflow ÷ tracetags: median {summary['ratio_median']:.1f}x (target ≥ 50),"
        f" p10 {summary['ratio_p10']:.1f}x (≥ 15), min {summary['ratio_min']:.1f}x (≥ 3)"
    )
    print(
        f"tracetags p50: median {statistics.median(p50s):.2f} ms, max {max(p50s):.2f} ms;"
        f" {summary['over_10ms']} queries over 10 ms (target 0)"
    )
    print("\nlowest ratios:")
    for row in sorted(valid, key=lambda r: r.ratio)[: args.slowest]:
        print(
            f"  {row.ratio:6.1f}x  {row.median_ms:7.2f} ms"
            f" vs {statistics.median(row.mlflow_ms):7.1f} ms"
            f"  {row.query.filter_string}  {row.query.order_by}"
        )
    for row in mismatched:
        print(
            f"**differs from MLflow**: {row.query.filter_string!r} {row.query.order_by}"
            f" ({len(row.ids)} vs {len(row.mlflow_ids or [])} ids)"
        )
    for row in rejected:
        print(f"**MLflow rejected**: {row.query.filter_string!r}: {row.mlflow_error}")
    summary["slowest"] = report_slowest(client, valid, args.slowest, mlflow=True)
    summary["rows"] = [
        {
            "label": r.query.label,
            "filter": r.query.filter_string,
            "order_by": r.query.order_by,
            "p50_ms": r.median_ms,
            "p99_ms": r.p99_ms,
            "mlflow_ms": statistics.median(r.mlflow_ms) if r.mlflow_ms else None,
        }
        for r in rows
    ]
    client.close()
    return summary


def step_scale(args: argparse.Namespace, server: RedisServer) -> dict[str, Any]:
    traces = args.scale_traces
    print(
        f"\n## scale: {traces:,} traces, tracetags alone ({'cold' if args.cold else 'warm'})",
        flush=True,
    )
    dataset = querygen.generate_dataset(traces, args.seed)
    queries = querygen.generate_queries(dataset, args.queries, args.query_seed)
    client = bq.fresh_client(server, 1, tuple(filter(None, args.lookup_keys.split(","))))
    load_s = load(client.redis, client.keys, dataset)
    del dataset
    gc.collect()
    print(f"loaded in {load_s:.1f}s", flush=True)
    rows = time_queries(client, queries, args.scale_repeats, args.budget, args.cold)
    p99s = [r.p99_ms for r in rows]
    within = sum(p <= 30 for p in p99s)
    print(
        f"\np99 ≤ 30 ms for {within} of {len(rows)} queries; worst p99 {max(p99s):.1f} ms;"
        f" median p50 {statistics.median(r.median_ms for r in rows):.2f} ms"
    )
    slowest = report_slowest(client, rows, args.slowest, mlflow=False)
    client.close()
    return {
        "traces": traces,
        "load_s": round(load_s, 1),
        "within_30ms": within,
        "queries": len(rows),
        "worst_p99_ms": max(p99s),
        "slowest": slowest,
        "rows": [
            {
                "filter": r.query.filter_string,
                "order_by": r.query.order_by,
                "p50_ms": r.median_ms,
                "p99_ms": r.p99_ms,
            }
            for r in rows
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="compare", help="compare,scale")
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--scale-traces", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--seed", type=int, default=17, help="the dataset's seed")
    parser.add_argument("--query-seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=30, help="tracetags calls per query")
    parser.add_argument("--scale-repeats", type=int, default=100)
    parser.add_argument("--mlflow-repeats", type=int, default=2)
    parser.add_argument("--budget", type=float, default=1.5, help="max seconds per query")
    parser.add_argument("--slowest", type=int, default=10)
    parser.add_argument("--lookup-keys", default="", help="TRACETAGS_LOOKUP_KEYS")
    parser.add_argument(
        "--warm",
        dest="cold",
        action="store_false",
        help="let repeated calls reuse parses, probes and plans",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="tt-bench-querygen-"))
    figures: dict[str, Any] = {}
    failed = False
    try:
        with bq.private_redis(workdir) as server:
            figures["machine"] = bq.machine(server)
            print(f"machine: {figures['machine']}")
            if "compare" in steps:
                figures["compare"] = step_compare(args, server, workdir)
                failed = bool(figures["compare"]["mismatched"])
            if "scale" in steps:
                figures["scale"] = step_scale(args, server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
