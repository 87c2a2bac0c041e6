"""Query latency: tracetags against MLflow 3.17.2's SQL store, and tracetags alone at 1M traces.

    .venv/bin/python benchmarks/bench_query.py                 # everything (< 15 min)
    .venv/bin/python benchmarks/bench_query.py --steps compare --traces 100000
    .venv/bin/python benchmarks/bench_query.py --steps scale --scale-traces 1000000

1. **compare** (``--traces``, default 100k): the realistic traffic of ``tracetags.traffic``
   (environment, model_version, user_id with high cardinality, session_id, priority,
   sla_tier, needs_review, ab_variant; ~20 % errors; log-normal execution times) folded into
   a private ``redis-server`` (``functions.apply_batch``, one trace_finished per trace,
   ``--partitions`` partitions: default 1, like the product) and bulk-loaded into MLflow's
   SqlAlchemyStore on a SQLite file by ``tests/support/mlflow_oracle.py --db PATH --load-only`` (in
   the MLflow venv, concurrently).  Each suite query asks for a first page of 100 (or page 5
   for the deep ones): tracetags ``--repeats`` times in this process (median, p99), MLflow
   ``--mlflow-repeats`` times inside the oracle process (``--db PATH``: its own per-query
   timer, so the interpreter start-up and the import of MLflow are not counted).  Both
   answers must be the same ids.  Extensions (OR, IN, NOT) run on tracetags only.
2. **scale** (``--scale-traces``, default 1M): tracetags alone; load time and
   ``used_memory``; first page of 100 per suite query (p50/p99) and ``count()`` for
   single-index / selective filters and for broad intersections.

Needs ``redis-server`` (never the one on 6379: a private one on a free port) and, for
compare, the MLflow venv ($TRACETAGS_MLFLOW_PYTHON, else .mlflow-venv).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from tracetags import functions, schemas, traffic
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.functions import BatchItem
from tracetags.keys import Keys, partition_of
from tracetags.query import executor
from tracetags.settings import Settings

REPO = Path(__file__).resolve().parent.parent
ORACLE = REPO / "tests" / "support" / "mlflow_oracle.py"
NAMESPACE = "bench-query"
GROUP = "bench-query"
START_MS = 1_780_000_000_000
DAY_MS = 86_400_000


# --- the suite -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    label: str
    filter_string: str | None
    order_by: list[str] | None = None
    page: int = 1  # 5: the fifth page of 100 (the token of page 4 obtained beforehand)
    extension: bool = False  # tracetags only (MLflow rejects it)


def suite(traces: int) -> list[Query]:
    """What ops teams ask; ids picked so that they exist at any scale (traffic.generate)."""
    recent = START_MS + DAY_MS - DAY_MS // 24  # the last hour
    return [
        Query("env = production", "tags.environment = 'production'"),
        Query("user_id = user_123", "tags.user_id = 'user_123'"),
        Query(
            "production errors > 5 s",
            "tags.environment = 'production' AND status = 'ERROR' AND execution_time_ms > 5000",
        ),
        Query("needs_review, newest first", "tags.needs_review = 'true'", ["timestamp_ms DESC"]),
        Query("session_456, oldest first", "tags.session_id = 'session_456'", ["timestamp_ms ASC"]),
        Query("critical SLA > 30 s", "tags.sla_tier = 'critical' AND execution_time_ms > 30000"),
        Query("model v2.0.0", "tags.model_version = 'v2.0.0'"),
        Query("all errors", "status = 'ERROR'"),
        Query("all OK", "status = 'OK'"),
        Query("no filter", None),
        Query("last hour", f"timestamp_ms >= {recent}"),
        Query(
            "staging rc1",
            "tags.environment = 'staging' AND tags.model_version = 'v2.1.0-rc1'",
        ),
        Query("model LIKE 'v2.%'", "tags.model_version LIKE 'v2.%'"),
        Query("user LIKE 'user_12%'", "tags.user_id LIKE 'user_12%'"),
        Query("env ILIKE 'PROD%'", "tags.environment ILIKE 'PROD%'"),
        Query("chat errors", "name = 'chat' AND status = 'ERROR'"),
        Query(
            "slowest > 10 s",
            "execution_time_ms > 10000",
            ["execution_time_ms DESC"],
        ),
        Query(
            "treatment_b to review in prod",
            "tags.ab_variant = 'treatment_b' AND tags.needs_review = 'true'"
            " AND tags.environment = 'production'",
        ),
        Query(
            "run-3 errors, EU", "run_id = 'run-3' AND metadata.region = 'eu' AND status = 'ERROR'"
        ),
        Query("high priority", "tags.priority = 'high'", ["tags.user_id ASC"]),
        Query("critical by model", "tags.sla_tier = 'critical'", ["tags.model_version DESC"]),
        Query("ordered by priority", None, ["tags.priority DESC"]),
        Query("env = production, page 5", "tags.environment = 'production'", page=5),
        Query(
            "errors by duration, page 5",
            "status = 'ERROR'",
            ["execution_time_ms DESC"],
            page=5,
        ),
        # Extensions: tracetags only.
        Query(
            "prod OR staging errors",
            "(tags.environment = 'production' OR tags.environment = 'staging')"
            " AND status = 'ERROR'",
            extension=True,
        ),
        Query("model IN (2)", "tags.model_version IN ('v2.0.0', 'v2.1.0-rc1')", extension=True),
        Query(
            "users IN (3)",
            "tags.user_id IN ('user_1', 'user_2', 'user_3')",
            extension=True,
        ),
        Query("NOT production", "NOT tags.environment = 'production'", extension=True),
        Query(
            "critical OR high, errors",
            "(tags.sla_tier = 'critical' OR tags.priority = 'high') AND status = 'ERROR'",
            extension=True,
        ),
    ]


COUNT_SELECTIVE = (
    ("env = production (one index)", "tags.environment = 'production'"),
    ("status = ERROR (one index)", "status = 'ERROR'"),
    ("model v2.0.0 (one index)", "tags.model_version = 'v2.0.0'"),
    ("needs_review (one index)", "tags.needs_review = 'true'"),
    ("no filter", None),
    ("user_123 (selective)", "tags.user_id = 'user_123'"),
    ("user_123 errors (selective)", "tags.user_id = 'user_123' AND status = 'ERROR'"),
    (
        "session_456 in prod (selective)",
        "tags.session_id = 'session_456' AND tags.environment = 'production'",
    ),
    ("critical > 30 s (selective)", "tags.sla_tier = 'critical' AND execution_time_ms > 30000"),
)
COUNT_BROAD = (
    ("prod AND OK", "tags.environment = 'production' AND status = 'OK'"),
    ("prod AND v2.0.0", "tags.environment = 'production' AND tags.model_version = 'v2.0.0'"),
    (
        "prod errors > 5 s",
        "tags.environment = 'production' AND status = 'ERROR' AND execution_time_ms > 5000",
    ),
    ("OK AND > 1 s", "status = 'OK' AND execution_time_ms > 1000"),
    (
        "prod, standard, control",
        "tags.environment = 'production' AND tags.sla_tier = 'standard'"
        " AND tags.ab_variant = 'control'",
    ),
)


# --- loading -------------------------------------------------------------------------------


def specs(traces: int, seed: int) -> list[traffic.TraceSpec]:
    return list(traffic.generate(traces, seed=seed, start_ms=START_MS))


def load_tracetags(client: redis.Redis, keys: Keys, partitions: int, data: list[Any]) -> float:
    """Fold one trace_finished per trace through functions.apply_batch; seconds taken.

    The events get stream ids as XADD gives them (a millisecond and a small sequence).

    Two threads send batches of 1000, so this process builds the next batch while Redis folds
    the previous one.
    """
    client.hset(keys.meta, "partitions", partitions)
    started = time.perf_counter()
    pending: dict[int, list[BatchItem]] = {p: [] for p in range(partitions)}
    in_flight: list[Future[Any]] = []
    with ThreadPoolExecutor(2) as pool:

        def send(partition: int, batch: list[BatchItem]) -> None:
            in_flight.append(
                pool.submit(functions.apply_batch, client, keys, partition, GROUP, batch)
            )
            if len(in_flight) >= 4:
                in_flight.pop(0).result()

        for sequence, spec in enumerate(data, 1):
            event = schemas.TraceFinished(
                trace_id=spec.trace_id,
                event_id=schemas.new_event_id(),
                emitted_at_ms=spec.timestamp_ms,
                experiment_id=spec.experiment_id,
                timestamp_ms=spec.timestamp_ms,
                execution_time_ms=spec.execution_time_ms,
                status=spec.status,
                name=spec.name,
                tags=spec.tags,
                metadata=spec.metadata,
            )
            partition = partition_of(spec.trace_id, partitions)
            batch = pending[partition]
            # A stream id like XADD's at ~1k events/s: a new millisecond each, sequence 0.
            # (Ids of one millisecond and a sequence counting to 1M, which no stream makes,
            # defeat the fold's compact stamps and would inflate the memory per trace.)
            batch.append((f"{START_MS + sequence}-0", event))
            if len(batch) == 1000:
                send(partition, batch)
                pending[partition] = []
        for partition, batch in pending.items():
            if batch:
                send(partition, batch)
        for future in in_flight:
            future.result()
    return time.perf_counter() - started


def oracle_dataset(data: list[traffic.TraceSpec]) -> dict[str, Any]:
    return {
        "traces": [
            {
                "trace_id": s.trace_id,
                "experiment_id": s.experiment_id,
                "timestamp_ms": s.timestamp_ms,
                "execution_time_ms": s.execution_time_ms,
                "status": s.status,
                "name": s.name,
                "client_request_id": None,
                "tags": s.tags,
                "metadata": s.metadata,
            }
            for s in data
        ],
        "mutations": [],
    }


def mlflow_python() -> str:
    """The MLflow venv's python: $TRACETAGS_MLFLOW_PYTHON if set, else <repo>/.mlflow-venv.

    (The tests have the same rule in tests/support/mlflow_runner.py; a benchmark script does
    not import the tests.)
    """
    candidate = os.environ.get("TRACETAGS_MLFLOW_PYTHON") or str(
        REPO / ".mlflow-venv" / "bin" / "python"
    )
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    raise SystemExit(
        f"compare needs the MLflow 3.17.2 venv, and {candidate} is not an executable:"
        " set TRACETAGS_MLFLOW_PYTHON or run scripts/bootstrap.sh (creates .mlflow-venv)"
    )


def run_oracle(args: list[str], spec: dict[str, Any], workdir: Path) -> subprocess.Popen[str]:
    path = workdir / f"oracle-input-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return subprocess.Popen(
        [mlflow_python(), str(ORACLE), str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def oracle_result(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise SystemExit(f"mlflow_oracle failed ({process.returncode}):\n{err[-3000:]}")
    return dict(json.loads(out))


# --- timing --------------------------------------------------------------------------------


def quantile(samples: list[float], q: float) -> float:
    """Nearest-rank quantile (q=0.99: p99)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def time_calls(call: Callable[[], Any], repeats: int, budget_s: float) -> list[float]:
    """Latencies in ms of ``repeats`` calls (at least 3; fewer than ``repeats`` past
    ``budget_s``, so that a slow engine cannot stretch the run past its time limit)."""
    call()  # warm-up: connection, Function cache
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < repeats and (len(samples) < 3 or time.perf_counter() < deadline):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


EXPERIMENTS = ["1", "2"]


def page_call(
    client: Client, query: Query, cold: bool = False
) -> tuple[Callable[[], list[str]], list[str]]:
    """A call fetching the query's page (for page 5: with page 4's token) and its ids."""
    kwargs: dict[str, Any] = {
        "experiment_ids": EXPERIMENTS,
        "filter_string": query.filter_string,
        "order_by": query.order_by,
        "max_results": 100,
    }
    token = None
    for _ in range(query.page - 1):
        token = client.search_traces(page_token=token, **kwargs).token
        if token is None:
            raise SystemExit(f"{query.label}: fewer than {query.page} pages")

    def call() -> list[str]:
        if cold:  # no parse, probe or plan remembered from the previous call
            executor.clear_caches()
        return [t.info.trace_id for t in client.search_traces(page_token=token, **kwargs)]

    return call, call()


@dataclass
class Row:
    query: Query
    samples_ms: list[float]
    ids: list[str]
    mlflow_ms: list[float] = field(default_factory=list)
    mlflow_ids: list[str] | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99_ms(self) -> float:
        return quantile(self.samples_ms, 0.99)


def time_suite(
    client: Client, queries: list[Query], repeats: int, budget_s: float, cold: bool = False
) -> list[Row]:
    rows = []
    for query in queries:
        call, ids = page_call(client, query, cold)
        rows.append(Row(query, time_calls(call, repeats, budget_s), ids))
    return rows


def mlflow_queries(queries: list[Query], repeats: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(repeats):
        for query in queries:
            spec: dict[str, Any] = {
                "experiment_ids": EXPERIMENTS,
                "filter_string": query.filter_string,
                "order_by": query.order_by,
                "max_results": 100,
            }
            if query.page > 1:  # MLflow's tokens are offsets
                offset = json.dumps({"offset": 100 * (query.page - 1)}).encode()
                spec["page_token"] = base64.b64encode(offset).decode()
            out.append(spec)
    return out


# --- the steps -----------------------------------------------------------------------------


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[RedisServer]:
    """A redis-server on a free port; persistence off (the figures are about queries)."""
    server = RedisServer(directory / "redis").start()
    admin = redis.Redis.from_url(server.url)
    admin.config_set("appendonly", "no")
    admin.close()
    try:
        yield server
    finally:
        server.stop(timeout=60)


def fresh_client(server: RedisServer, partitions: int, lookup_keys: tuple[str, ...]) -> Client:
    """A client of an emptied server; ``lookup_keys`` listed before any trace is folded (as
    a consumer started with TRACETAGS_LOOKUP_KEYS does), so the fold keeps them."""
    admin = redis.Redis.from_url(server.url)
    admin.flushall()
    functions.load(admin)
    admin.memory_purge()
    admin.close()
    settings = Settings(
        redis_url=server.url, namespace=NAMESPACE, partitions=partitions, lookup_keys=lookup_keys
    )

    async def list_lookups() -> None:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            for partition in range(partitions):
                await functions.ensure_lookups_async(
                    client, Keys(NAMESPACE), partition, settings.lookup_fields
                )
        finally:
            await client.aclose()

    asyncio.run(list_lookups())
    return Client(settings)


def used_memory(client: redis.Redis) -> int:
    client.memory_purge()
    return int(client.info("memory")["used_memory"])


def step_compare(args: argparse.Namespace, server: RedisServer, workdir: Path) -> dict[str, Any]:
    mode = "cold: nothing remembered between calls" if args.cold else "repeated calls may reuse"
    print(
        f"\n## compare: {args.traces:,} traces, {args.partitions} partitions ({mode})", flush=True
    )
    data = specs(args.traces, args.seed)
    db = workdir / "mlflow.db"
    started = time.perf_counter()
    loading = run_oracle(
        ["--db", str(db), "--load-only", "--loader", "bulk"], oracle_dataset(data), workdir
    )
    client = fresh_client(
        server, args.partitions, tuple(args.lookup_keys.split(",")) if args.lookup_keys else ()
    )
    load_s = load_tracetags(client.redis, client.keys, args.partitions, data)
    # The generated traces (~0.5M Python objects) are the workload's, not the engine's:
    # alive, each full collection walks them and stalls a timed call now and then.
    del data
    gc.collect()
    mlflow_load = oracle_result(loading, timeout=600)["load"]
    print(
        f"loaded: tracetags {load_s:.1f}s ({args.traces / load_s:,.0f} traces/s);"
        f" MLflow (bulk rows, concurrently) {mlflow_load['seconds']}s;"
        f" wall {time.perf_counter() - started:.1f}s; lookup keys: {args.lookup_keys or 'none'}",
        flush=True,
    )
    queries = suite(args.traces)
    rows = time_suite(client, queries, args.repeats, args.budget, args.cold)
    core = [row for row in rows if not row.query.extension]
    started = time.perf_counter()
    answer = oracle_result(
        run_oracle(
            ["--db", str(db)],
            {"queries": mlflow_queries([r.query for r in core], args.mlflow_repeats)},
            workdir,
        ),
        timeout=900,
    )
    mlflow_wall = time.perf_counter() - started
    for index, (result, ms) in enumerate(zip(answer["results"], answer["query_ms"], strict=True)):
        row = core[index % len(core)]
        if "error" in result:
            raise SystemExit(f"MLflow rejected {row.query.filter_string!r}: {result['error']}")
        row.mlflow_ms.append(ms)
        row.mlflow_ids = result["ids"]
    client.close()
    report = report_compare(rows, args)
    report.update(
        traces=args.traces,
        tracetags_load_s=round(load_s, 1),
        mlflow_load_s=mlflow_load["seconds"],
        mlflow_wall_s=round(mlflow_wall, 1),
    )
    return report


def report_compare(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    print(
        "\n| query | matches MLflow | tracetags median ms | tracetags p99 ms |"
        " MLflow median ms | MLflow ÷ tracetags |\n|---|---|---:|---:|---:|---:|"
    )
    ratios = []
    out_rows = []
    for row in rows:
        if row.query.extension:
            continue
        mlflow_median = statistics.median(row.mlflow_ms)
        ratio = mlflow_median / row.median_ms
        ratios.append(ratio)
        same = (
            "yes"
            if row.ids == row.mlflow_ids
            else f"**NO** ({len(row.ids)} vs {len(row.mlflow_ids or [])})"
        )
        print(
            f"| {row.query.label} | {same} | {row.median_ms:.2f} | {row.p99_ms:.2f} |"
            f" {mlflow_median:.1f} | {ratio:,.0f}x |"
        )
        out_rows.append(
            {
                "label": row.query.label,
                "same": row.ids == row.mlflow_ids,
                "median_ms": row.median_ms,
                "p99_ms": row.p99_ms,
                "mlflow_median_ms": mlflow_median,
                "ratio": ratio,
            }
        )
    median_ratio = statistics.median(ratios)
    verdict = "met" if median_ratio >= 50 else "MISSED"
    print(
        f"\nmedian ratio over {len(ratios)} queries: {median_ratio:,.0f}x"
        f" (target ≥ 50x: {verdict});"
        f" min {min(ratios):,.1f}x, max {max(ratios):,.0f}x"
    )
    print(
        "\nextensions (tracetags only):\n\n| query | median ms | p99 ms | ids |"
        "\n|---|---:|---:|---:|"
    )
    for row in rows:
        if row.query.extension:
            print(
                f"| {row.query.label} | {row.median_ms:.2f} | {row.p99_ms:.2f} | {len(row.ids)} |"
            )
            out_rows.append(
                {
                    "label": row.query.label,
                    "extension": True,
                    "median_ms": row.median_ms,
                    "p99_ms": row.p99_ms,
                }
            )
    mismatches = [r.query.label for r in rows if not r.query.extension and r.ids != r.mlflow_ids]
    if mismatches:
        print(f"\n**ids differ from MLflow** for: {mismatches}")
    return {"rows": out_rows, "median_ratio": median_ratio, "mismatches": mismatches}


def step_scale(args: argparse.Namespace, server: RedisServer) -> dict[str, Any]:
    traces = args.scale_traces
    print(
        f"\n## scale: {traces:,} traces, {args.partitions} partitions, tracetags alone"
        + (" (cold)" if args.cold else ""),
        flush=True,
    )
    started = time.perf_counter()
    data = specs(traces, args.seed)
    generate_s = time.perf_counter() - started
    client = fresh_client(
        server, args.partitions, tuple(args.lookup_keys.split(",")) if args.lookup_keys else ()
    )
    before = used_memory(client.redis)
    load_s = load_tracetags(client.redis, client.keys, args.partitions, data)
    del data  # (see step_compare)
    gc.collect()
    after = used_memory(client.redis)
    rss = int(client.redis.info("memory")["used_memory_rss"])
    per_trace = (after - before) / traces
    print(
        f"load: {load_s:.1f}s ({traces / load_s:,.0f} traces/s; generating them took"
        f" {generate_s:.1f}s more); used_memory {(after - before) / 2**20:,.0f} MiB"
        f" ({per_trace:,.0f} B/trace), RSS {rss / 2**20:,.0f} MiB;"
        f" lookup keys: {args.lookup_keys or 'none'}",
        flush=True,
    )
    rows = time_suite(client, suite(traces), args.scale_repeats, args.budget, args.cold)
    print("\n| query | kind | p50 ms | p99 ms | ids | p99 ≤ 20 ms |\n|---|---|---:|---:|---:|---|")
    for row in rows:
        kind = "extension" if row.query.extension else f"page {row.query.page}"
        ok = "yes" if row.p99_ms <= 20 else "**no**"
        print(
            f"| {row.query.label} | {kind} | {row.median_ms:.2f} | {row.p99_ms:.2f} |"
            f" {len(row.ids)} | {ok} |"
        )
    core_p99 = [row.p99_ms for row in rows if not row.query.extension]
    within = sum(p <= 20 for p in core_p99)
    print(
        f"\np99 ≤ 20 ms for {within} of {len(core_p99)} core queries; worst {max(core_p99):.1f} ms"
    )
    counts = []
    print(
        "\n| count() filter | class | matches | p50 ms | p99 ms | target |"
        "\n|---|---|---:|---:|---:|---|"
    )
    for group, filters in (("selective", COUNT_SELECTIVE), ("broad", COUNT_BROAD)):
        for label, filter_string in filters:
            n = client.count(filter_string, EXPERIMENTS)
            samples = time_calls(
                functools.partial(client.count, filter_string, EXPERIMENTS),
                args.count_repeats,
                args.budget,
            )
            p50, p99 = statistics.median(samples), quantile(samples, 0.99)
            target = ("met" if p99 <= 10 else "**missed**") if group == "selective" else "recorded"
            print(f"| {label} | {group} | {n:,} | {p50:.2f} | {p99:.2f} | {target} |")
            counts.append(
                {"label": label, "class": group, "matches": n, "p50_ms": p50, "p99_ms": p99}
            )
    client.close()
    return {
        "traces": traces,
        "load_s": round(load_s, 1),
        "bytes_per_trace": round(per_trace),
        "used_memory_mib": round((after - before) / 2**20),
        "rss_mib": round(rss / 2**20),
        "rows": [
            {
                "label": r.query.label,
                "p50_ms": r.median_ms,
                "p99_ms": r.p99_ms,
                "extension": r.query.extension,
            }
            for r in rows
        ],
        "counts": counts,
    }


def machine(server: RedisServer) -> str:
    model = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    admin = redis.Redis.from_url(server.url)
    version = admin.info("server")["redis_version"]
    admin.close()
    return (
        f"{model}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB; Python {sys.version.split()[0]};"
        f" Redis {version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="compare,scale", help="compare,scale")
    parser.add_argument("--traces", type=int, default=100_000, help="compare: traces")
    parser.add_argument("--scale-traces", type=int, default=1_000_000, help="scale: traces")
    parser.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="partitions of the namespace (default 1, the product default)",
    )
    parser.add_argument("--repeats", type=int, default=100, help="tracetags calls per query")
    parser.add_argument("--scale-repeats", type=int, default=200)
    parser.add_argument("--count-repeats", type=int, default=100)
    parser.add_argument("--mlflow-repeats", type=int, default=3, help="MLflow calls per query")
    parser.add_argument("--budget", type=float, default=3.0, help="max seconds per query")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--lookup-keys",
        default="tags.user_id",
        help="TRACETAGS_LOOKUP_KEYS of the loaded namespace ('' for none)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="forget remembered parses, probes and plans before every tracetags call "
        "(a repeated query otherwise reuses its probe and plan for 2 s)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    if steps - {"compare", "scale"}:
        parser.error(f"unknown steps {sorted(steps - {'compare', 'scale'})}")

    # A SIGTERM unwinds like Ctrl-C: the private redis-server and the temp files go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="tt-bench-query-"))
    figures: dict[str, Any] = {}
    try:
        with private_redis(workdir) as server:
            figures["machine"] = machine(server)
            print(f"machine: {figures['machine']}")
            if "compare" in steps:
                figures["compare"] = step_compare(args, server, workdir)
            if "scale" in steps:
                figures["scale"] = step_scale(args, server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal wall time {figures['wall_s']:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
