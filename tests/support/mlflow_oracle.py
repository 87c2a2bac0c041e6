"""Answer search_traces queries with real MLflow 3.17.2 (SqlAlchemyStore on SQLite): the oracle.

Run it with the MLflow venv, never import it from the tracetags test process:

    .mlflow-venv/bin/python tests/support/mlflow_oracle.py INPUT.json   # or "-" / stdin
    ... --db PATH --load-only     # load a (big) dataset into PATH once, report the load rate
    ... --db PATH                 # run the queries of INPUT against an already loaded PATH

INPUT is a JSON object (every part optional):

    {"traces": [{"trace_id", "experiment_id", "timestamp_ms", "execution_time_ms": int|null,
                 "status", "name": str|null, "client_request_id": str|null,
                 "tags": {k: v}, "metadata": {k: v}}, ...],
     "mutations": [{"op": "set"|"delete", "trace_id", "key", "value"?}, ...],
     "queries": [{"experiment_ids": [...]|null, "filter_string", "order_by", "max_results",
                  "page_token"?, "all_pages"?: bool}, ...],
     "loader": "store"|"bulk", "cross_check_every": N}

("dataset": {"traces", "mutations"} is accepted in place of the two top-level lists.)
Output on stdout: {"load": {...}, "query_seconds", "query_ms": [per query, all its pages],
"results": [...]} where each result is
{"ids": [...], "next": bool, "token": str|null, "pages": n} or {"error": "<Class>: <message>"}.
With all_pages the ids of every page are concatenated (pages counts the calls made).

Loaders: "store" (the default) goes only through the store's public methods, one trace at a
time (start_trace, set_trace_tag, delete_trace_tag; ~50-100 traces/s).  "bulk" writes the
same rows start_trace would write (trace_info incl. trace_name/session_id, tags plus the
artifact-location tag, metadata plus mlflow.trace.infoFinalized) with executemany in one
transaction, after folding the mutations in Python (tens of thousands of traces/s).
``cross_check_every: N`` forks a process that loads a second database with the other loader
and answers every N-th query there, concurrently; differences are listed under
"loader_mismatches" (empty when both loaders agree).

Dataset experiment ids are mapped onto MLflow experiments created in ascending numeric order
(so ordering by experiment_id is preserved) and named ``tracetags-oracle:<id>``; a later
``--db`` run finds them by name.  Unknown ids map to ids that do not exist.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import TraceInfo, TraceLocation, TraceState  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.store.tracking.dbmodels.models import (  # noqa: E402
    SqlTraceInfo,
    SqlTraceMetadata,
    SqlTraceTag,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: E402
from mlflow.store.tracking.utils.trace_analytics import (  # noqa: E402
    PROMOTED_TRACE_METADATA_KEYS,
    analytics_columns_from_metadata,
)
from mlflow.tracing.constant import TraceMetadataKey, TraceTagKey  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_ARTIFACT_LOCATION  # noqa: E402
from mlflow.utils.uri import append_to_uri_path  # noqa: E402

EXPERIMENT_PREFIX = "tracetags-oracle:"
MISSING_EXPERIMENT_BASE = 900_000_000


def _experiment_sort_key(experiment_id: str) -> tuple[int, int, str]:
    return (0, int(experiment_id), "") if experiment_id.isdigit() else (1, 0, experiment_id)


def open_store(db_path: Path) -> SqlAlchemyStore:
    artifacts = db_path.parent / f"{db_path.stem}-artifacts"
    return SqlAlchemyStore(f"sqlite:///{db_path}", str(artifacts))


def create_experiments(store: SqlAlchemyStore, experiment_ids: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for dataset_id in sorted(set(experiment_ids), key=_experiment_sort_key):
        mapping[dataset_id] = store.create_experiment(f"{EXPERIMENT_PREFIX}{dataset_id}")
    return mapping


def find_experiments(store: SqlAlchemyStore) -> dict[str, str]:
    mapping: dict[str, str] = {}
    page_token = None
    while True:
        page = store.search_experiments(max_results=1000, page_token=page_token)
        for experiment in page:
            if experiment.name.startswith(EXPERIMENT_PREFIX):
                mapping[experiment.name[len(EXPERIMENT_PREFIX) :]] = experiment.experiment_id
        page_token = page.token
        if not page_token:
            return mapping


def _mlflow_tags(trace: dict[str, Any]) -> dict[str, str]:
    tags = dict(trace.get("tags") or {})
    if trace.get("name") is not None:
        tags[TraceTagKey.TRACE_NAME] = trace["name"]
    return tags


def load_with_store(
    store: SqlAlchemyStore,
    traces: list[dict[str, Any]],
    mutations: list[dict[str, Any]],
    mapping: dict[str, str],
) -> dict[str, int]:
    """Public store methods only: start_trace per trace, then every mutation in order."""
    ignored = 0
    for trace in traces:
        store.start_trace(
            TraceInfo(
                trace_id=trace["trace_id"],
                trace_location=TraceLocation.from_experiment_id(mapping[trace["experiment_id"]]),
                request_time=trace["timestamp_ms"],
                state=TraceState(trace["status"]),
                execution_duration=trace.get("execution_time_ms"),
                client_request_id=trace.get("client_request_id"),
                trace_metadata=dict(trace.get("metadata") or {}),
                tags=_mlflow_tags(trace),
            )
        )
    for mutation in mutations:
        try:
            if mutation["op"] == "set":
                store.set_trace_tag(mutation["trace_id"], mutation["key"], mutation["value"])
            else:
                store.delete_trace_tag(mutation["trace_id"], mutation["key"])
        except MlflowException:
            # Deleting a missing tag is an error in MLflow and a no-op for tracetags.
            ignored += 1
    return {"ignored_mutations": ignored}


def fold_mutations(
    traces: list[dict[str, Any]], mutations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The final state of each trace (name folded into tags as mlflow.traceName)."""
    by_id = {trace["trace_id"]: {**trace, "tags": _mlflow_tags(trace)} for trace in traces}
    for mutation in mutations:
        trace = by_id.get(mutation["trace_id"])
        if trace is None:
            continue
        if mutation["op"] == "set":
            trace["tags"][mutation["key"]] = mutation["value"]
        else:
            trace["tags"].pop(mutation["key"], None)
    return list(by_id.values())


def load_bulk(
    store: SqlAlchemyStore,
    traces: list[dict[str, Any]],
    mutations: list[dict[str, Any]],
    mapping: dict[str, str],
) -> dict[str, int]:
    """The rows start_trace (+ the mutations) would leave, written with executemany."""
    artifact_roots = {
        dataset_id: store.get_experiment(mlflow_id).artifact_location
        for dataset_id, mlflow_id in mapping.items()
    }
    infos: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    metadata: list[dict[str, Any]] = []
    for trace in fold_mutations(traces, mutations):
        trace_id = trace["trace_id"]
        trace_tags = dict(trace["tags"])
        request_metadata = dict(trace.get("metadata") or {})
        infos.append(
            {
                "request_id": trace_id,
                "experiment_id": int(mapping[trace["experiment_id"]]),
                "timestamp_ms": trace["timestamp_ms"],
                "execution_time_ms": trace.get("execution_time_ms"),
                "status": TraceState(trace["status"]).value,
                "client_request_id": trace.get("client_request_id"),
                "request_preview": None,
                "response_preview": None,
                "trace_name": trace_tags.pop(TraceTagKey.TRACE_NAME, None),
                **analytics_columns_from_metadata(request_metadata),
            }
        )
        trace_tags[MLFLOW_ARTIFACT_LOCATION] = append_to_uri_path(
            artifact_roots[trace["experiment_id"]], "traces", trace_id, "artifacts"
        )
        tags.extend({"request_id": trace_id, "key": k, "value": v} for k, v in trace_tags.items())
        for key in PROMOTED_TRACE_METADATA_KEYS:
            request_metadata.pop(key, None)
        request_metadata[TraceMetadataKey.TRACE_INFO_FINALIZED] = "true"
        metadata.extend(
            {"request_id": trace_id, "key": k, "value": v} for k, v in request_metadata.items()
        )
    # executemany takes its columns from the first row: give every row the same keys.
    columns = {key for row in infos for key in row}
    infos = [{**dict.fromkeys(columns), **row} for row in infos]
    with store.ManagedSessionMaker(read_only=False) as session:
        connection = session.connection()
        for model, rows in (
            (SqlTraceInfo, infos),
            (SqlTraceTag, tags),
            (SqlTraceMetadata, metadata),
        ):
            for start in range(0, len(rows), 20_000):
                connection.execute(model.__table__.insert(), rows[start : start + 20_000])
    return {"ignored_mutations": 0}


def run_query(
    store: SqlAlchemyStore, mapping: dict[str, str], query: dict[str, Any]
) -> dict[str, Any]:
    experiment_ids = query.get("experiment_ids")
    if experiment_ids is not None:
        experiment_ids = [
            mapping.get(e, str(MISSING_EXPERIMENT_BASE + i)) for i, e in enumerate(experiment_ids)
        ]
    kwargs: dict[str, Any] = {
        "experiment_ids": experiment_ids,
        "filter_string": query.get("filter_string"),
        "order_by": query.get("order_by"),
    }
    if "max_results" in query:
        kwargs["max_results"] = query["max_results"]
    token = query.get("page_token")
    ids: list[str] = []
    pages = 0
    try:
        while True:
            infos, token = store.search_traces(page_token=token, **kwargs)
            pages += 1
            ids.extend(info.trace_id for info in infos)
            if not query.get("all_pages") or not token or not infos:
                break
    except MlflowException as exc:
        return {"error": f"{type(exc).__name__}: {exc.message}"}
    except Exception as exc:  # noqa: BLE001 - MLflow failing at run time is an answer too
        return {"error": f"{type(exc).__name__}: {exc}"}
    token_text = token.decode() if isinstance(token, bytes) else token
    return {"ids": ids, "next": bool(token), "token": token_text, "pages": pages}


def load(
    db_path: Path, traces: list[dict[str, Any]], mutations: list[dict[str, Any]], loader: str
) -> tuple[SqlAlchemyStore, dict[str, str], dict[str, Any]]:
    store = open_store(db_path)
    started = time.perf_counter()
    mapping = create_experiments(store, [t["experiment_id"] for t in traces])
    fill = load_bulk if loader == "bulk" else load_with_store
    extra = fill(store, traces, mutations, mapping)
    seconds = time.perf_counter() - started
    report = {
        "loader": loader,
        "db": str(db_path),
        "traces": len(traces),
        "mutations": len(mutations),
        "seconds": round(seconds, 3),
        "traces_per_s": round(len(traces) / seconds, 1) if seconds else None,
        **extra,
    }
    return store, mapping, report


def start_cross_check(
    traces: list[dict[str, Any]],
    mutations: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    every: int,
    loader: str,
) -> tuple[int, Path]:
    """Fork a process that loads with the other loader and answers every ``every``-th query.

    It runs while the parent answers all queries (two CPUs, half the wall time); the parent
    reads its answers from the returned path after waiting for the pid.
    """
    path = Path(_temp_dir()) / "cross-check.json"
    pid = os.fork()
    if pid:
        return pid, path
    _TEMP_DIRS.clear()  # the parent removes its own directories
    code = 1
    try:
        store, mapping, report = load(Path(_temp_dir()) / "mlflow.db", traces, mutations, loader)
        results = {i: run_query(store, mapping, queries[i]) for i in range(0, len(queries), every)}
        path.write_text(json.dumps({"load": report, "results": results}), encoding="utf-8")
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported through the exit status
        print(f"mlflow_oracle cross-check: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        _remove_temp_dirs()
        os._exit(code)


_TEMP_DIRS: list[str] = []


def _temp_dir() -> str:
    """A fresh directory (on tmpfs when there is one), removed when this process ends."""
    shm = Path("/dev/shm")
    directory = tempfile.mkdtemp(
        prefix="tracetags-oracle-",
        dir=str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None,
    )
    _TEMP_DIRS.append(directory)
    return directory


def _remove_temp_dirs() -> None:
    while _TEMP_DIRS:
        shutil.rmtree(_TEMP_DIRS.pop(), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", default="-", help="JSON file, or - for stdin")
    parser.add_argument("--db", type=Path, help="SQLite file to load into / query from")
    parser.add_argument("--load-only", action="store_true", help="load and report, no queries")
    parser.add_argument("--loader", choices=("store", "bulk"), help="overrides the input's loader")
    args = parser.parse_args(argv)

    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
    spec = json.loads(text) if text.strip() else {}
    dataset = spec.get("dataset") or {}
    traces = spec.get("traces", dataset.get("traces", []))
    mutations = spec.get("mutations", dataset.get("mutations", []))
    queries = [] if args.load_only else spec.get("queries", [])
    loader = args.loader or spec.get("loader", "store")

    every = int(spec.get("cross_check_every") or 0)
    child = None
    if every and queries and traces:
        # Forked before loading here, so both loads and both query runs overlap.
        child = start_cross_check(
            traces, mutations, queries, every, "bulk" if loader == "store" else "store"
        )

    out: dict[str, Any] = {}
    if args.db is not None and args.db.exists() and not traces:
        store = open_store(args.db)
        mapping = find_experiments(store)
        out["load"] = {"db": str(args.db), "reused": True, "experiments": len(mapping)}
    else:
        if args.db is not None and args.db.exists():
            parser.error(f"{args.db} exists: load into a fresh file")
        db_path = args.db or Path(_temp_dir()) / "mlflow.db"
        store, mapping, out["load"] = load(db_path, traces, mutations, loader)
        print(
            f"mlflow_oracle: loaded {len(traces)} traces with {loader} in"
            f" {out['load']['seconds']}s ({out['load']['traces_per_s']}/s)",
            file=sys.stderr,
        )

    out["results"], timings = [], []
    for query in queries:
        started = time.perf_counter()
        out["results"].append(run_query(store, mapping, query))
        timings.append(round((time.perf_counter() - started) * 1000, 3))
    out["query_ms"] = timings
    out["query_seconds"] = round(sum(timings) / 1000, 3)

    if child is not None:
        pid, path = child
        _, status = os.waitpid(pid, 0)
        if status != 0 or not path.exists():
            raise SystemExit(f"mlflow_oracle: the cross-check process failed ({status})")
        other = json.loads(path.read_text(encoding="utf-8"))
        out["cross_check_load"] = other["load"]
        out["loader_mismatches"] = [
            {"index": int(index), "other": result}
            for index, result in other["results"].items()
            if result != out["results"][int(index)]
        ]
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        _remove_temp_dirs()
