"""Check the parser fixtures (tests/fixtures/query) against real MLflow 3.17.2.

Runs in the MLflow venv, never imported by the tests (tests/test_parser.py runs it as a
subprocess):  .mlflow-venv/bin/python tests/support/mlflow_accepts.py
Every filter/order_by goes through SqlAlchemyStore.search_traces on a temporary SQLite
file (MLflow validates some rules only while building SQL). Expectations:
  valid core   -> MLflow accepts, and MLflow reads our canonical rendering the same way
  valid ext    -> MLflow rejects (an extension must never change an MLflow-valid filter)
  invalid both -> MLflow rejects;  invalid ours -> MLflow accepts (a deliberate deviation)
Exits non-zero and lists every mismatch.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
# Run as a script in MLflow's venv: the fixture reader is found from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: E402
from mlflow.utils.search_utils import SearchTraceUtils  # noqa: E402

from tests.support.query_fixtures import decode, rows  # noqa: E402

NUMERIC = {"timestamp_ms", "execution_time_ms", "end_time_ms"}


def outcome(store: SqlAlchemyStore, exp: str, **kwargs: Any) -> str | None:
    """None when MLflow accepts, else its error message."""
    try:
        store.search_traces([exp], **kwargs)
    except MlflowException as exc:
        return str(exc.message)
    return None


def meaning(filter_string: str) -> list[tuple[Any, ...]]:
    clauses = []
    for c in SearchTraceUtils.parse_search_filter_for_search_traces(filter_string):
        value = c["value"]
        if c["type"] == "attribute" and c["key"] in NUMERIC and isinstance(value, str):
            value = float(value)
        clauses.append((c["type"], c["key"], c["comparator"].upper(), value))
    return clauses


def main() -> int:
    tmp = tempfile.mkdtemp()
    store = SqlAlchemyStore(f"sqlite:///{tmp}/mlflow.db", f"{tmp}/artifacts")
    exp = store.create_experiment("fixtures")
    problems: list[str] = []
    checked = 0

    for kind, text, canonical in rows("valid_filters.txt"):
        checked += 1
        error = outcome(store, exp, filter_string=decode(text))
        if kind == "core" and error is not None:
            problems.append(f"core filter rejected by MLflow: {text!r}: {error}")
        elif kind == "ext" and error is None:
            problems.append(f"extension accepted by MLflow (must not be an extension): {text!r}")
        elif kind == "core" and canonical != "<none>":
            ours, theirs = meaning(decode(canonical)), meaning(decode(text))
            if ours != theirs:
                problems.append(f"rendering changes MLflow's reading: {text!r}: {theirs} != {ours}")

    for kind, _cls, _pos, text, _reason in rows("invalid_filters.txt"):
        checked += 1
        error = outcome(store, exp, filter_string=decode(text))
        if kind == "both" and error is None:
            problems.append(f"MLflow accepts a filter we reject as invalid: {text!r}")
        if kind == "ours" and error is not None:
            problems.append(f"'ours' deviation is rejected by MLflow anyway: {text!r}: {error}")

    for kind, keys, _canonical in rows("valid_order_by.txt"):
        checked += 1
        error = outcome(store, exp, order_by=[decode(k) for k in keys.split(" ;; ")])
        if (kind == "core") != (error is None):
            problems.append(f"order_by {kind} {keys!r}: MLflow says {error or 'accepted'}")

    for kind, _cls, _index, _pos, keys, _reason in rows("invalid_order_by.txt"):
        checked += 1
        error = outcome(store, exp, order_by=[decode(k) for k in keys.split(" ;; ")])
        if (kind == "both") != (error is not None):
            problems.append(f"invalid order_by {kind} {keys!r}: MLflow says {error or 'accepted'}")

    for problem in problems:
        print(problem)
    print(f"{checked} fixtures checked against MLflow, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
