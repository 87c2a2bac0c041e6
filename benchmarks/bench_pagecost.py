"""Where a first page's time goes: a one-index filter, a page of 100, one partition, cold.

    .venv/bin/python benchmarks/bench_pagecost.py                       # 100k traces
    .venv/bin/python benchmarks/bench_pagecost.py --url redis://127.0.0.1:PORT/0 --keep

The dataset is ``querygen.generate_dataset`` (seed 17), folded into partition 0 of a
private ``redis-server`` (or of ``--url``'s, loaded once: a namespace already holding the
traces is reused, so two versions of the code can be timed in turn against one dataset).
The Function library of the code under test is loaded first (FUNCTION LOAD REPLACE).

Per query (``tags.t0_706 = 'alpha-0'``, ``status = 'ERROR'``, ``metadata.region = 'Beta-1'``
by default; default order): the p50 of ``Client.search_traces`` with the parse, probe and
plan caches cleared before every call (as bench_querygen.py times queries), then the p50 of
each stage called alone: parse (``executor.prepare``), probe round trip, plan, the
``tt_query`` call, the same call showing one row (``call_1row``: the walk without reading
and packing the other 99 hashes), and decoding the reply into Trace objects.  The decode
stage accepts both reply shapes tried so far (flat HGETALL lists, TraceInfo maps), so
``PYTHONPATH=<another checkout>/src`` times another version against the same data.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import redis

import bench_querygen
import querygen
from tracetags import client as client_module
from tracetags import functions
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.keys import Keys
from tracetags.query import executor, pages
from tracetags.settings import Settings

NAMESPACE = "bench-pagecost"
QUERIES = ("tags.t0_706 = 'alpha-0'", "status = 'ERROR'", "metadata.region = 'Beta-1'")


def p50(call: Callable[[], Any], repeats: int) -> float:
    call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def stages(client: Client, filter_string: str, repeats: int) -> tuple[dict[str, float], list[str]]:
    """p50 in ms of the whole cold call and of each stage alone; the page's ids."""
    scope = list(querygen.SCOPE)
    r, keys, parts = client.redis, client.keys, client.partitions

    def whole() -> list[str]:
        executor.clear_caches()
        page = client.search_traces(experiment_ids=scope, filter_string=filter_string)
        return [t.info.trace_id for t in page]

    def parse() -> Any:
        executor.clear_caches()
        return executor.prepare(scope, filter_string, None)

    prepared = parse()
    out = {"page": p50(whole, repeats), "parse": p50(parse, repeats)}
    if hasattr(executor, "page_stages"):  # the code under test names its own stages
        for name, call in executor.page_stages(r, keys, parts, prepared, 100).items():
            out[name] = p50(call, repeats)
    else:
        probed = executor._probe(r, keys, parts, prepared.root, prepared.order, page=True)
        out["probe"] = p50(
            lambda: executor._probe(r, keys, parts, prepared.root, prepared.order, page=True),
            repeats,
        )

        def plan() -> Any:
            plans = executor._make_plans(keys, prepared, probed, "page", 101, None, (), True)
            shown = executor._first_shown(100, len(plans))
            for p in plans:
                p.plan = msgspec.structs.replace(p.plan, limit=shown + 1, shown=shown)
            return plans

        plans = plan()
        out["plan"] = p50(plan, repeats)
        (reply,) = executor._run(r, keys, plans)
        out["call"] = p50(lambda: executor._run(r, keys, plans), repeats)
        # the same walk showing one row: the call without reading and packing 99 traces
        one = [copy.copy(p) for p in plans]
        for p in one:
            p.plan = msgspec.structs.replace(p.plan, shown=1)
        out["call_1row"] = p50(lambda: executor._run(r, keys, one), repeats)

        def decode() -> list[Any]:
            rows: list[Any] = pages.PAGE_DECODER.decode(reply)[1]
            if rows and isinstance(rows[0], list):  # flat hashes (before TraceInfo replies)
                infos = [client_module.trace_info_from_fields(f) for f in rows]
                return [client_module.Trace(info=i) for i in infos if i is not None]
            return [client_module.Trace(info=i) for i in rows if i is not None]

        decode()
        out["decode"] = p50(decode, repeats)
    return out, whole()


def ensure_loaded(url: str, traces: int) -> Client:
    admin = redis.Redis.from_url(url)
    keys = Keys(NAMESPACE)
    functions.load(admin)
    if admin.zcard(f"{keys.prefix(0)}:ts") != traces:
        for key in admin.scan_iter(f"{NAMESPACE}:*", count=10_000):
            admin.delete(key)
        dataset = querygen.generate_dataset(traces)
        seconds = bench_querygen.load(admin, keys, dataset)
        print(f"loaded {traces:,} traces in {seconds:.1f}s", flush=True)
        del dataset
        gc.collect()
    admin.close()
    return Client(Settings(redis_url=url, namespace=NAMESPACE, partitions=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--url", help="an existing redis-server (default: start one)")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--query", action="append", help="filter strings (default: 3)")
    parser.add_argument("--label", default="")
    parser.add_argument("--json", type=Path, help="append the figures to this JSON lines file")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        server = RedisServer(tempfile.mkdtemp(prefix="bench-pagecost-"), appendfsync="no")
        server.start()
        url = server.url
    try:
        client = ensure_loaded(url, args.traces)
        for filter_string in args.query or QUERIES:
            figures, ids = stages(client, filter_string, args.repeats)
            line = "  ".join(f"{k} {v:.3f}" for k, v in figures.items())
            print(f"{args.label:8} {filter_string:32} rows {len(ids)}  {line}", flush=True)
            if args.json:
                with args.json.open("a") as out:
                    record = {"label": args.label, "query": filter_string, **figures}
                    out.write(json.dumps({**record, "ids": ids}) + "\n")
        client.close()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
