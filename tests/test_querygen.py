"""The generated query suite (benchmarks/querygen.py): a slice of it against MLflow 3.17.2.

The benchmark (benchmarks/bench_querygen.py) runs the whole suite at 100k traces; here ~30
queries spread over its combination classes run over 2k traces through the real fold and
through MLflow's SQL store, and every first page must be MLflow's ids in MLflow's order.
Queries under a documented deviation are excluded by :func:`querygen.deviation`, never by
hand; the rule for each deviation is itself checked against MLflow below.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from benchmarks import querygen

from tests.support import query_data as qd
from tests.support.helpers import drop_namespace
from tests.support.mlflow_runner import require_mlflow_python, run_oracle
from tracetags.client import Client
from tracetags.query import parse_filter, parse_order_by
from tracetags.settings import Settings

TRACES = 2_000
SLICE = 30


def _slice(queries: list[querygen.GenQuery], n: int) -> list[querygen.GenQuery]:
    """``n`` queries evenly spaced over the suite (it interleaves its groups)."""
    step = max(1, len(queries) // n)
    return queries[::step][:n]


class Suite:
    def __init__(self, redis_url: str) -> None:
        self.dataset = querygen.generate_dataset(TRACES)
        self.queries = querygen.generate_queries(self.dataset)
        self.namespace = f"tt-qg-{uuid.uuid4().hex[:10]}"
        self.client = Client(Settings(redis_url=redis_url, namespace=self.namespace, partitions=1))
        qd.load(self.client.redis, self.client.keys, 1, self.dataset.traces)

    def ask(self, query: querygen.GenQuery) -> list[str]:
        page = self.client.search_traces(
            experiment_ids=list(querygen.SCOPE),
            filter_string=query.filter_string,
            order_by=query.order_by,
            max_results=query.max_results,
        )
        return [trace.info.trace_id for trace in page]

    def mlflow(self, queries: list[querygen.GenQuery]) -> list[dict[str, Any]]:
        answer = run_oracle(
            self.dataset.oracle_input(),
            [q.oracle_query() for q in queries],
            python=require_mlflow_python(),
            loader="bulk",
        )
        results: list[dict[str, Any]] = answer["results"]
        return results


@pytest.fixture(scope="module")
def suite(redis_url: str) -> Iterator[Suite]:
    loaded = Suite(redis_url)
    yield loaded
    drop_namespace(loaded.client.redis, loaded.namespace)
    loaded.client.close()


def test_generator_is_seeded_and_covers_every_class() -> None:
    dataset = querygen.generate_dataset(500)
    queries = querygen.generate_queries(dataset)
    again = querygen.generate_queries(querygen.generate_dataset(500))
    assert [(q.filter_string, q.order_by) for q in queries] == [
        (q.filter_string, q.order_by) for q in again
    ]
    assert len(queries) >= 300
    labels = [q.label for q in queries]
    for kind, ops in querygen.IDENTIFIER_KINDS.items():
        for op in ops:
            assert any(label.startswith(f"{kind} {op} ") for label in labels), (kind, op)
    for cls in querygen.VALUE_CLASSES:
        assert sum(f" {cls} |" in label for label in labels) >= 10, cls
    orders = {tuple(q.order_by or ()) for q in queries}
    assert all(tuple(form or ()) in orders for form in querygen.order_forms(dataset))
    sizes = {label.split(":")[0] for label in labels if label.startswith("AND of")}
    assert sizes == {"AND of 2", "AND of 3", "AND of 4"}
    cardinalities = [shape.cardinality for shape in dataset.keys]
    assert min(cardinalities) == 2
    at_100k = querygen.key_shapes(random.Random(17), 100_000)
    assert max(shape.cardinality for shape in at_100k) == 100_000
    assert {shape.presence for shape in at_100k} >= {1.0, 0.01}
    # Every generated query is valid for tracetags (MLflow's side is checked below).
    for query in queries:
        parse_filter(query.filter_string)
        parse_order_by(query.order_by)


def test_deviation_rules_name_the_documented_differences() -> None:
    def q(text: str, order_by: list[str] | None = None) -> querygen.GenQuery:
        return querygen.GenQuery("t", text, order_by)

    assert querygen.deviation(q("run_id = 'a' AND run_id = 'b'")) is not None
    assert querygen.deviation(q("run_id = 'a' AND metadata.`mlflow.sourceRun` = 'b'"))
    assert querygen.deviation(q("run_id = 'a' AND run_id != 'b'")) is None
    assert querygen.deviation(q("tags.k ILIKE 'ÉCOLE'")) is not None
    assert querygen.deviation(q("tags.k ILIKE 'ecole'")) is None
    assert querygen.deviation(q("end_time_ms > '5'")) is not None
    assert querygen.deviation(q("end_time_ms > 5")) is None
    assert querygen.deviation(q("tags.`mlflow.artifactLocation` IS NULL")) is not None
    assert querygen.deviation(q("status = 'OK'", ["end_time_ms DESC"])) is not None


def test_a_slice_of_the_suite_answers_as_mlflow(suite: Suite) -> None:
    picked = _slice(list(querygen.compared(suite.queries)), SLICE)
    assert len(picked) == SLICE
    answers = suite.mlflow(picked)
    differing = []
    for query, answer in zip(picked, answers, strict=True):
        assert "error" not in answer, (query, answer)
        ours = suite.ask(query)
        if ours != answer["ids"]:
            differing.append((query.filter_string, query.order_by, len(ours), len(answer["ids"])))
    assert differing == []


def test_the_run_id_deviation_is_mlflow_keeping_the_last_equality(suite: Suite) -> None:
    """The rule excludes a real difference: MLflow answers ``run_id = a AND run_id = b`` as
    ``run_id = b``; tracetags as the conjunction (nothing, for two different runs)."""
    counts = suite.dataset.counts["metadata.mlflow.sourceRun"].most_common(2)
    (first, _), (last, _) = counts
    both = querygen.GenQuery("t", f"run_id = '{first}' AND run_id = '{last}'")
    only_last = querygen.GenQuery("t", f"run_id = '{last}'")
    assert querygen.deviation(both) is not None
    mlflow_both, mlflow_last = suite.mlflow([both, only_last])
    assert mlflow_both["ids"] == mlflow_last["ids"] != []
    assert suite.ask(both) == []
    assert suite.ask(only_last) == mlflow_last["ids"]
