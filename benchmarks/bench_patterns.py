"""LIKE / ILIKE / RLIKE predicates over many distinct values: tracetags (a backtracking-free
LIKE, RE2 for RLIKE) side by side with Python's ``re`` (what tracetags used before, and
MLflow uses), and the hostile patterns that only the linear engines survive.

The predicates run in the client over a key's distinct values, so their cost per value is
what a LIKE over a high-cardinality key pays.  No Redis is needed.

    flock /tmp/tt-bench.lock .venv/bin/python benchmarks/bench_patterns.py [--values 200000]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from tracetags.query.logical import pattern_predicate

CASES: tuple[tuple[str, str], ...] = (
    ("LIKE", "user_1%"),
    ("LIKE", "%5"),
    ("LIKE", "%er_1%9"),
    ("ILIKE", "USER_1%"),
    ("RLIKE", "^user_1"),
    ("RLIKE", "5$"),
    ("RLIKE", "(?i)USER_1.*9"),
)

HOSTILE: tuple[tuple[str, str], ...] = (
    ("RLIKE", "(a+)+$"),
    ("LIKE", "%a" * 26 + "b"),
    ("LIKE", "%_" * 40 + "?"),
)


def reference(op: str, pattern: str) -> Callable[[str], bool]:
    """Python's re, as tracetags ran these before (and MLflow on SQLite does)."""
    if op == "RLIKE":
        regex = re.compile(pattern)
        return lambda v: regex.search(v) is not None
    text = pattern.lower() if op == "ILIKE" else pattern
    parts = [".*" if c == "%" else "." if c == "_" else re.escape(c) for c in text]
    like = re.compile("".join(parts), re.DOTALL)
    if op == "ILIKE":
        return lambda v: like.fullmatch(v.lower()) is not None
    return lambda v: like.fullmatch(v) is not None


def timed(predicate: Callable[[str], bool], values: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    hits = sum(1 for v in values if predicate(v))
    return time.perf_counter() - started, hits


def hostile_seconds(op: str, pattern: str, engine: str, limit_s: float) -> str:
    """Seconds one match over 8,000 characters takes (in a child: a backtracking engine
    holds the GIL), or ``> limit`` when it had to be killed."""
    code = (
        "import sys, time, re\n"
        "from tracetags.query.logical import pattern_predicate\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "from bench_patterns import reference\n"
        f"f = {'pattern_predicate' if engine == 'tracetags' else 'reference'}"
        f"({op!r}, {pattern!r})\n"
        "t = time.perf_counter(); f('a' * 8000 + '!'); print(time.perf_counter() - t)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=limit_s
        )
    except subprocess.TimeoutExpired:
        return f"> {limit_s:g} s (killed)"
    return f"{float(done.stdout) * 1e3:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hostile-limit-s", type=float, default=10.0)
    args = parser.parse_args()
    values = [f"user_{i}" for i in range(args.values)]
    print(f"{args.values:,} distinct values, median of {args.repeat} alternating runs")
    print("| op | pattern | tracetags | Python re | ratio (tracetags ÷ re) |")
    print("|---|---|---|---|---|")
    for op, pattern in CASES:
        ours, theirs = pattern_predicate(op, pattern), reference(op, pattern)
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.repeat):
            ta, hits_a = timed(ours, values)
            tb, hits_b = timed(theirs, values)
            assert hits_a == hits_b, (op, pattern, hits_a, hits_b)
            a.append(ta)
            b.append(tb)
        ma, mb = statistics.median(a), statistics.median(b)
        print(
            f"| {op} | `{pattern}` | {ma * 1e3:.0f} ms ({ma / len(values) * 1e6:.2f} µs/value) "
            f"| {mb * 1e3:.0f} ms | {ma / mb:.1f}x |"
        )
    print("\none match over 'a' * 8000 + '!'")
    print("| op | pattern | tracetags | Python re |")
    print("|---|---|---|---|")
    for op, pattern in HOSTILE:
        ours_s = hostile_seconds(op, pattern, "tracetags", args.hostile_limit_s)
        theirs_s = hostile_seconds(op, pattern, "re", args.hostile_limit_s)
        shown = pattern if len(pattern) <= 24 else pattern[:24] + "..."
        print(f"| {op} | `{shown}` | {ours_s} | {theirs_s} |")


if __name__ == "__main__":
    main()
