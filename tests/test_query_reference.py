"""The reference evaluator (tests/support/query_reference.py) against real MLflow 3.17.2.

One generated dataset (tags, metadata, mutations) and a few hundred filters and order_bys
(tests/support/mlflow_cases.py) go through MLflow's SqlAlchemyStore once (the oracle in the
MLflow venv); the reference must return the same ids in the same order for everything MLflow
accepts, reject what MLflow rejects, and accept only documented extensions where MLflow
refuses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import query_reference as ref
from tests.support.mlflow_cases import (
    EXPERIMENTS,
    build_queries,
    derive_ids,
    generate_dataset,
    uses_extension,
)
from tests.support.mlflow_runner import require_mlflow_python, run_oracle
from tracetags.query import parse_filter, parse_order_by


def reference_answer(
    traces: list[dict[str, Any]], query: dict[str, Any], dialect: ref.Dialect = "sqlite"
) -> dict[str, Any]:
    """What the reference says for one oracle query: {"ids"} or {"error"}."""
    try:
        ids = ref.search(
            traces,
            query["experiment_ids"],
            query["filter_string"],
            query["order_by"],
            None if query.get("all_pages") else query.get("max_results", 100),
            dialect=dialect,
        )
    except ValueError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"ids": ids}


def _describe(query: dict[str, Any]) -> str:
    shown: dict[str, Any] = {
        k: query[k] for k in ("filter_string", "order_by", "max_results") if k in query
    }
    if query["experiment_ids"] != list(EXPERIMENTS):
        shown["experiment_ids"] = query["experiment_ids"]
    return json.dumps(shown, ensure_ascii=False)


@pytest.fixture(scope="module")
def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    python = require_mlflow_python()
    dataset = generate_dataset()
    queries = build_queries(dataset)
    answer = run_oracle(dataset, queries, python=python, loader="bulk", cross_check_every=3)
    print(
        f"\nmlflow oracle: {len(queries)} queries, load {answer['load']['seconds']}s"
        f" ({answer['load']['traces_per_s']} traces/s), queries {answer['query_seconds']}s,"
        f" wall {answer['wall_seconds']}s"
    )
    traces = ref.apply_mutations(dataset["traces"], dataset["mutations"])
    return traces, queries, answer


@pytest.mark.slow
def test_reference_matches_mlflow(scenario: Any) -> None:
    traces, queries, answer = scenario
    problems: list[str] = []
    counts = {"same": 0, "both-reject": 0, "extension": 0, "deliberate": 0, "quirk": 0}
    for query, theirs in zip(queries, answer["results"], strict=True):
        ours = reference_answer(traces, query)
        label = query.get("label")
        what = _describe(query)
        if "error" in ours and "error" in theirs:
            counts["both-reject"] += 1
            if label in ("extension", "deliberate"):
                problems.append(f"{label} rejected by us too: {what}: {ours['error']}")
        elif "error" in theirs:
            filter_ast = parse_filter(query["filter_string"])
            order_keys = parse_order_by(query["order_by"])
            if not uses_extension(query["filter_string"], filter_ast, order_keys):
                problems.append(f"MLflow rejects, we accept (no extension): {what}: {theirs}")
            elif label != "extension":
                problems.append(f"unlabelled extension: {what}")
            counts["extension"] += 1
        elif "error" in ours:
            if label != "deliberate":
                problems.append(f"we reject, MLflow accepts: {what}: {ours['error']}")
            counts["deliberate"] += 1
        elif label == "sqlite-quirk":
            if ours["ids"] == theirs["ids"]:
                problems.append(f"documented SQLite quirk no longer differs: {what}")
            counts["quirk"] += 1
        elif ours["ids"] != theirs["ids"]:
            only_ours = [i for i in ours["ids"] if i not in set(theirs["ids"])]
            only_theirs = [i for i in theirs["ids"] if i not in set(ours["ids"])]
            problems.append(
                f"different ids: {what}: ours {len(ours['ids'])}, MLflow {len(theirs['ids'])},"
                f" only ours {only_ours[:3]}, only MLflow {only_theirs[:3]}"
                + (" (order differs)" if not (only_ours or only_theirs) else "")
            )
        else:
            counts["same"] += 1
    print(f"\ncompared with MLflow: {counts}")
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    assert counts["same"] >= 300, counts


@pytest.mark.slow
def test_extensions_follow_from_mlflow_answers(scenario: Any) -> None:
    traces, queries, answer = scenario
    plain = {
        q["filter_string"]: set(r["ids"])
        for q, r in zip(queries, answer["results"], strict=True)
        if "ids" in r
        and q["experiment_ids"] == list(EXPERIMENTS)
        and not q["order_by"]
        and not q.get("all_pages")
        and q.get("max_results") == 50_000
    }
    everything = plain[None]
    default_order = answer["results"][0]["ids"]
    checked = 0
    for query in queries:
        derive = query.get("derive")
        if derive is None:
            continue
        wanted = derive_ids(derive, plain, everything)
        expected = [i for i in default_order if i in wanted]
        ours = ref.search(traces, list(EXPERIMENTS), query["filter_string"], None, None)
        assert ours == expected, query["filter_string"]
        checked += 1
    assert checked >= 20


@pytest.mark.slow
def test_bulk_loader_matches_store_loader(scenario: Any) -> None:
    _, _, answer = scenario
    assert answer["cross_check_load"]["loader"] == "store"
    assert answer["loader_mismatches"] == []


@pytest.mark.slow
def test_unicode_ilike_differs_from_sqlite_on_purpose(scenario: Any) -> None:
    # MLflow on SQLite folds ASCII only (lower()); tracetags folds Unicode like PostgreSQL.
    traces, queries, answer = scenario
    by_filter = {
        q["filter_string"]: r
        for q, r in zip(queries, answer["results"], strict=True)
        if q.get("max_results") == 50_000 and not q["order_by"]
    }
    differing = 0
    for text in ("tags.note ILIKE 'ÉCOLE'", "tags.note ILIKE 'CAFÉ'", "tags.note ILIKE 'σίσυφος'"):
        sqlite_ids = ref.search(traces, None, text, None, None, dialect="sqlite")
        unicode_ids = ref.search(traces, None, text, None, None)
        assert by_filter[text]["ids"] == sqlite_ids
        assert set(sqlite_ids) <= set(unicode_ids)
        differing += sqlite_ids != unicode_ids
    assert differing >= 2


# --- the reference on its own (no MLflow needed) --------------------------------------------


def _trace(trace_id: str, **fields: Any) -> dict[str, Any]:
    base = {
        "trace_id": trace_id,
        "experiment_id": "1",
        "timestamp_ms": 10,
        "execution_time_ms": None,
        "status": "OK",
        "name": None,
        "client_request_id": None,
        "tags": {},
        "metadata": {},
    }
    return {**base, **fields}


def test_reference_rules_by_example() -> None:
    traces = ref.apply_mutations(
        [
            _trace("a", tags={"env": "prod", "n": "10"}, execution_time_ms=5),
            _trace("b", tags={"env": "Prod", "n": "9"}, timestamp_ms=20),
            _trace("c", tags={"env": "ÉCOLE", "n": "x"}, name="chat"),
            _trace("d", tags={"n": " 3"}, timestamp_ms=20, experiment_id="2"),
        ],
        [
            {"op": "set", "trace_id": "d", "key": "mlflow.traceName", "value": "late"},
            {"op": "delete", "trace_id": "c", "key": "mlflow.traceName"},
            {"op": "delete", "trace_id": "zz", "key": "env"},
        ],
    )

    def ids(filter_string: str | None, order_by: list[str] | None = None, **kw: Any) -> list[str]:
        return ref.search(traces, None, filter_string, order_by, None, **kw)

    assert ids(None) == ["b", "d", "a", "c"]
    assert ids("tags.env != 'prod'") == ["b", "c"]
    assert ids("NOT tags.env = 'prod'") == ["b", "d", "c"]
    assert ids("tags.env NOT LIKE 'p%'") == ["b", "c"]
    assert ids("tags.env ILIKE 'prod'") == ["b", "a"]
    assert ids("tags.env ILIKE 'école'") == ["c"]
    assert ids("tags.env ILIKE 'école'", dialect="sqlite") == []
    assert ids("tags.env RLIKE '('") == []
    assert ids("tags.n > 9") == ["a"]
    assert ids("tags.n < 100") == ["b", "a"]
    assert ids("name = 'late'") == ["d"]
    assert ids("name IS NULL") == ["b", "a", "c"]
    assert ids("execution_time_ms >= 0") == ["a"]
    assert ids("end_time_ms = 10") == ["c"]
    assert ids("end_time_ms = 15") == ["a"]
    assert ids(None, ["execution_time_ms DESC"]) == ["a", "b", "d", "c"]
    assert ids(None, ["tags.env DESC"]) == ["c", "a", "b", "d"]
    assert ids(None, ["tags.env ASC"]) == ["b", "a", "c", "d"]
    assert ids(None, ["timestamp_ms"]) == ["a", "c", "b", "d"]
    assert ids(None, ["experiment_id DESC"]) == ["d", "b", "a", "c"]
    assert ref.search(traces, ["2"], None, None, None) == ["d"]
    assert ref.search(traces, [], None, None, None) == ["b", "d", "a", "c"]
    assert ref.search(traces, None, None, None, 2, offset=1) == ["d", "a"]
    with pytest.raises(ValueError):
        ref.search(traces, None, "status = 'OK'", None, 0)


def test_like_and_numbers() -> None:
    assert ref.like_match("a%b", "a%b") and ref.like_match("axxb", "a%b")
    assert ref.like_match("a_b", "a_b") and ref.like_match("axb", "a_b")
    assert not ref.like_match("ab", "a_b") and ref.like_match("a\nb", "a_b")
    assert ref.like_match("back\\slash", "back\\slash")
    assert ref.like_match("", "%") and not ref.like_match("", "_")
    assert ref.like_match("日本語", "日本_")
    assert [ref.parse_tag_number(t) for t in ("3", "-1", "2.5", "1e2", ".5", "03")] == [
        3.0,
        -1.0,
        2.5,
        100.0,
        0.5,
        3.0,
    ]
    assert [ref.parse_tag_number(t) for t in (" 4", "", "nan", "inf", "1_0", "0x1")] == [None] * 6
