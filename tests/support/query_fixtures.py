"""Reading the parser's fixture files (tests/fixtures/query/*.txt): one case a line, columns
separated by `` | ``, ``#`` comments, and placeholders for whitespace a line cannot show.

Plain Python only: the MLflow check (mlflow_accepts.py, in MLflow's venv) reads them too.
"""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "query"
PLACEHOLDERS = {"{sp}": " ", "{tab}": "\t", "{nl}": "\n", "{nbsp}": "\u00a0", "{empty}": ""}


def decode(text: str) -> str:
    """``text`` with each placeholder replaced by the character it stands for."""
    for marker, char in PLACEHOLDERS.items():
        text = text.replace(marker, char)
    return text


def rows(name: str) -> list[list[str]]:
    """The cases of one fixture file, each split into its columns (still encoded)."""
    lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    return [line.split(" | ") for line in lines if line and not line.startswith("#")]
