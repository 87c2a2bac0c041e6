"""The query engine against real MLflow 3.17.2: the differential test of issue 4.

One generated dataset (traces in three experiments, tags and metadata with quotes, wildcards,
non-ASCII case pairs and numbers as strings, then tag mutations) goes through the real fold
into a real Redis (3 partitions) and through MLflow's SqlAlchemyStore on SQLite
(tests/support/mlflow_oracle.py in the MLflow venv).  Every query of
:func:`tests.support.mlflow_cases.build_queries` (a few hundred filters, order_bys, scopes
and page sizes) must give the same ordered ids from tracetags as from MLflow, first page and
every page walked with tokens, and ``count()`` the number of matches, except for the
documented deliberate differences:

- filters MLflow accepts and tracetags rejects on purpose (label ``deliberate``: non-numeric
  quoted numbers, spans/assessments, ...): tracetags must raise a FilterError;
- ``end_time_ms`` against a quoted number (label ``sqlite-quirk``): tracetags must answer as
  the reference evaluator does (numeric comparison);
- ``ILIKE`` with non-ASCII letters: MLflow on SQLite folds ASCII only, tracetags folds all of
  Unicode: where the two dialects of the reference differ, MLflow must equal the SQLite one
  and tracetags the Unicode one;
- extensions (OR, NOT, parentheses, NOT LIKE, IN on tags, numeric tag comparisons, ordering
  by end_time_ms; label ``extension``): MLflow rejects them, tracetags must accept them and
  answer as the reference evaluator does.

Everything else MLflow rejects, tracetags must reject with a ValueError (never another
exception).  MLflow's automatic keys (the ``mlflow.artifactLocation`` tag, the
``mlflow.trace.infoFinalized`` metadata) exist only on the MLflow side; no query names them.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import drop_namespace
from tests.support.mlflow_cases import build_queries, generate_dataset, uses_extension
from tests.support.mlflow_runner import require_mlflow_python, run_oracle
from tracetags.client import Client
from tracetags.query import parse_filter, parse_order_by
from tracetags.settings import Settings

PARTITIONS = 3
# Page sizes for the token walks, besides each query's own: small ones force many pages, so
# ties across page boundaries and across partitions are exercised.  Walks of 7 (46 pages of
# the whole dataset) only for every WALK_SMALL_EVERY-th query, to stay within the time limit.
WALK_SIZES = (41, 7)
WALK_SMALL_EVERY = 4
_ILIKE = re.compile(r"\bILIKE\b", re.IGNORECASE)


def differential_dataset() -> dict[str, Any]:
    """The reference dataset, with every unfinished trace IN_PROGRESS.

    The producer's events cannot express a trace that has no duration and a final status
    (MLflow's STATE_UNSPECIFIED without an execution time): TraceStarted carries no status.
    """
    dataset = copy.deepcopy(generate_dataset())
    for trace in dataset["traces"]:
        if trace["execution_time_ms"] is None:
            trace["status"] = "IN_PROGRESS"
    return dataset


class Scenario:
    """Both sides loaded and asked every query; MLflow runs in its own process meanwhile."""

    def __init__(self, redis_url: str) -> None:
        python = require_mlflow_python()
        self.dataset = differential_dataset()
        self.queries = build_queries(self.dataset)
        with ThreadPoolExecutor(1) as pool:
            oracle = pool.submit(
                run_oracle, self.dataset, self.queries, python=python, loader="bulk"
            )
            self.final = ref.apply_mutations(self.dataset["traces"], self.dataset["mutations"])
            self.namespace = f"tt-diff-{uuid.uuid4().hex[:10]}"
            settings = Settings(
                redis_url=redis_url, namespace=self.namespace, partitions=PARTITIONS
            )
            self.client = Client(settings)
            qd.load(
                self.client.redis,
                self.client.keys,
                PARTITIONS,
                self.dataset["traces"],
                self.dataset["mutations"],
            )
            started = time.perf_counter()
            self.ours = [ask(self.client, i, q) for i, q in enumerate(self.queries)]
            self.tracetags_seconds = time.perf_counter() - started
            self.answer = oracle.result()

    def drop(self) -> None:
        drop_namespace(self.client.redis, self.namespace)
        self.client.close()


@pytest.fixture(scope="module")
def scenario(redis_url: str) -> Iterator[Scenario]:
    loaded = Scenario(redis_url)
    print(
        f"\nmlflow oracle: {len(loaded.queries)} queries, load {loaded.answer['load']['seconds']}s,"
        f" queries {loaded.answer['query_seconds']}s, wall {loaded.answer['wall_seconds']}s;"
        f" tracetags (all calls, concurrently) {loaded.tracetags_seconds:.1f}s"
    )
    yield loaded
    loaded.drop()


# --- running a query on tracetags -------------------------------------------------------------


class Ours(msgspec.Struct, kw_only=True):
    """What tracetags answered to one query (an error ends the record)."""

    error: str | None = None
    error_is_value_error: bool = False
    first: list[str] | None = None  # the query's own call (all its pages with all_pages)
    walks: dict[int, list[str]] = {}
    count: int | None = None


def _search_kwargs(query: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "experiment_ids": query["experiment_ids"],
        "filter_string": query["filter_string"],
        "order_by": query["order_by"],
    }
    if "max_results" in query:
        kwargs["max_results"] = query["max_results"]
    return kwargs


def walk(client: Client, query: dict[str, Any], size: int) -> list[str]:
    """Every page of ``size`` through the tokens; each page but the last is full."""
    kwargs = {**_search_kwargs(query), "max_results": size}
    ids: list[str] = []
    token = None
    for _ in range(100_000):
        page = client.search_traces(page_token=token, **kwargs)
        ids.extend(t.info.trace_id for t in page)
        token = page.token
        if token is None:
            return ids
        if len(page) != size:
            raise AssertionError(f"a page with a token holds {len(page)} of {size}")
    raise AssertionError("the token walk does not end")


def ask(client: Client, index: int, query: dict[str, Any]) -> Ours:
    ours = Ours()
    try:
        if query.get("all_pages"):
            ours.first = walk(client, query, query["max_results"])
        else:
            page = client.search_traces(**_search_kwargs(query))
            ours.first = [t.info.trace_id for t in page]
        sizes = WALK_SIZES if index % WALK_SMALL_EVERY == 0 else WALK_SIZES[:1]
        ours.walks = {size: walk(client, query, size) for size in sizes}
        ours.count = client.count(query["filter_string"], query["experiment_ids"])
    except Exception as exc:  # noqa: BLE001 - judged against MLflow's answer later
        ours.error = f"{type(exc).__name__}: {exc}"
        ours.error_is_value_error = isinstance(exc, ValueError)
    return ours


# --- what tracetags must answer ----------------------------------------------------------------


def _describe(query: dict[str, Any]) -> str:
    shown: dict[str, Any] = {
        k: query[k] for k in ("filter_string", "order_by", "max_results") if k in query
    }
    if query["experiment_ids"] != ["1", "2", "10"]:
        shown["experiment_ids"] = query["experiment_ids"]
    if query.get("all_pages"):
        shown["all_pages"] = True
    return repr(shown)


def _diff(ours: list[str], theirs: list[str]) -> str:
    only_ours = [i for i in ours if i not in set(theirs)]
    only_theirs = [i for i in theirs if i not in set(ours)]
    where = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    return (
        f"ours {len(ours)}, expected {len(theirs)}, only ours {only_ours[:3]},"
        f" only expected {only_theirs[:3]}, first difference at {where}"
    )


def ref_ids(scenario: Scenario, query: dict[str, Any], dialect: ref.Dialect) -> list[str]:
    """Every match, in order, by the reference evaluator."""
    return ref.search(
        scenario.final,
        query["experiment_ids"],
        query["filter_string"],
        query["order_by"],
        None,
        dialect=dialect,
    )


def expected_answer(
    scenario: Scenario, query: dict[str, Any], theirs: dict[str, Any]
) -> tuple[str, list[str] | None, bool]:
    """(kind, the ids tracetags must return, whether that list is every match).

    kind: "same" (MLflow's ids), "unicode-ilike" / "sqlite-quirk" / "extension" (the
    reference's ids), "reject" (a ValueError is expected).
    """
    label = query.get("label")
    size = query.get("max_results", 100)
    if label == "deliberate":
        assert "ids" in theirs, f"MLflow now rejects a deliberate difference: {_describe(query)}"
        return "reject", None, False
    if "error" in theirs:
        if label != "extension":
            return "reject", None, False
        filter_ast = parse_filter(query["filter_string"])
        order_keys = parse_order_by(query["order_by"])
        assert uses_extension(query["filter_string"], filter_ast, order_keys), query
        return "extension", ref_ids(scenario, query, "unicode"), True
    if label == "sqlite-quirk":
        return "sqlite-quirk", ref_ids(scenario, query, "unicode"), True
    if query["filter_string"] and _ILIKE.search(query["filter_string"]):
        sqlite, unicode = (ref_ids(scenario, query, d) for d in ("sqlite", "unicode"))
        if sqlite != unicode:
            shown = len(sqlite) if query.get("all_pages") else size
            assert theirs["ids"] == sqlite[:shown], f"MLflow ILIKE changed: {_describe(query)}"
            return "unicode-ilike", unicode, True
    return "same", theirs["ids"], bool(query.get("all_pages")) or not theirs["next"]


def judge(query: dict[str, Any], ours: Ours, kind: str, expected: list[str] | None,
          complete: bool) -> list[str]:  # fmt: skip
    what = _describe(query)
    if kind == "reject":
        if ours.error is None:
            return [f"accepted ({len(ours.first or [])} ids), MLflow rejects: {what}"]
        if not ours.error_is_value_error:
            return [f"not a ValueError: {what}: {ours.error}"]
        return []
    if ours.error is not None:
        return [f"{kind} query failed: {what}: {ours.error}"]
    assert expected is not None and ours.first is not None
    shown = len(expected) if query.get("all_pages") else query.get("max_results", 100)
    if ours.first != expected[:shown]:
        return [f"first page/own call differs ({kind}): {what}: {_diff(ours.first, expected)}"]
    if not complete:
        return []
    problems = [
        f"walk of {size} differs ({kind}): {what}: {_diff(ids, expected)}"
        for size, ids in ours.walks.items()
        if ids != expected
    ]
    if ours.count != len(expected):
        problems.append(f"count() {ours.count}, expected {len(expected)}: {what}")
    return problems


@pytest.mark.slow
def test_tracetags_matches_mlflow(scenario: Scenario) -> None:
    problems: list[str] = []
    counts: dict[str, int] = {}
    walked = 0
    for query, ours, theirs in zip(
        scenario.queries, scenario.ours, scenario.answer["results"], strict=True
    ):
        kind, expected, complete = expected_answer(scenario, query, theirs)
        counts[kind] = counts.get(kind, 0) + 1
        walked += complete and ours.error is None
        problems += judge(query, ours, kind, expected, complete)
    print(f"\ncompared with MLflow: {counts}; {walked} also walked page by page and counted")
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:60])
    assert counts["same"] >= 450, counts
    assert counts["reject"] >= 50, counts
    assert counts.get("extension", 0) >= 30, counts
    assert counts.get("unicode-ilike", 0) >= 2, counts
    assert walked >= 500, walked
