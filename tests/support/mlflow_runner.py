"""Finding the MLflow 3.17.2 interpreter and running the oracle scripts in it.

MLflow lives in a virtualenv of its own (scripts/bootstrap.sh makes ``.mlflow-venv``); the
tests drive it as a subprocess and never import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
ORACLE = SUPPORT / "mlflow_oracle.py"
ACCEPTS = SUPPORT / "mlflow_accepts.py"
ENV_VAR = "TRACETAGS_MLFLOW_PYTHON"


def mlflow_python() -> str | None:
    """The MLflow venv's python: ``$TRACETAGS_MLFLOW_PYTHON`` if set, else
    ``<repo>/.mlflow-venv/bin/python``; None when that is not an executable file."""
    candidate = os.environ.get(ENV_VAR) or str(REPO / ".mlflow-venv" / "bin" / "python")
    if Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


def require_mlflow_python() -> str:
    """The MLflow python, or fail (under CI) / skip (locally) with the reason."""
    python = mlflow_python()
    if python is None:
        reason = (
            f"no MLflow 3.17.2 venv (looked at ${ENV_VAR}, then .mlflow-venv):"
            " run scripts/bootstrap.sh to create .mlflow-venv"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return python


_ORACLE_CACHE: dict[str, dict[str, Any]] = {}


def run_oracle(
    dataset: dict[str, Any],
    queries: list[dict[str, Any]],
    *,
    python: str | None = None,
    loader: str = "store",
    cross_check_every: int = 0,
    timeout: float = 300,
) -> dict[str, Any]:
    """MLflow's answers: {"load", "query_seconds", "results": [one per query], ...}.

    Cached per input within the process, so several tests can share one MLflow run.
    """
    python = python or require_mlflow_python()
    payload = json.dumps(
        {**dataset, "queries": queries, "loader": loader, "cross_check_every": cross_check_every},
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()
    if digest not in _ORACLE_CACHE:
        started = time.perf_counter()
        done = subprocess.run(
            [python, str(ORACLE), "-"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mlflow_oracle failed ({done.returncode}):\n{done.stderr[-4000:]}")
        answer = json.loads(done.stdout)
        answer["wall_seconds"] = round(time.perf_counter() - started, 3)
        _ORACLE_CACHE[digest] = answer
    return _ORACLE_CACHE[digest]
