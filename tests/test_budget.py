"""The query budget: no tt_query call holds Redis longer than the budget, on hostile filters
and large data, and every answer stays equal to the reference evaluator's."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.blocking import Blocking
from tests.support.helpers import drop_namespace
from tracetags.client import Client
from tracetags.errors import FilterSemanticError, QueryLimitError
from tracetags.query import budget, executor
from tracetags.settings import Settings

BASE = qd.BASE_MS


class Loaded:
    def __init__(self, redis_url: str, traces: list[dict[str, Any]], **settings: Any) -> None:
        self.namespace = f"tt-b-{uuid.uuid4().hex[:10]}"
        self.settings = Settings(redis_url=redis_url, namespace=self.namespace, **settings)
        self.client = Client(self.settings)
        qd.load(self.client.redis, self.client.keys, self.settings.partition_count, traces)
        self.final = ref.apply_mutations(traces, [])

    def drop(self) -> None:
        drop_namespace(self.client.redis, self.namespace)
        self.client.close()


def _trace(i: int, **tags: str) -> dict[str, Any]:
    return {
        "trace_id": f"t{i:07d}",
        "experiment_id": "1",
        "timestamp_ms": BASE + i,
        "execution_time_ms": i % 97,
        "status": "OK" if i % 5 else "ERROR",
        "tags": tags,
        "metadata": {},
    }


@pytest.fixture(scope="module")
def three_thousand(redis_url: str) -> Iterator[Loaded]:
    """The issue's data: 3,000 traces; limits raised so that 5,000-term filters run."""
    traces = [_trace(i, u=f"u{i}", env=("prod", "dev", "test")[i % 3]) for i in range(3000)]
    loaded = Loaded(redis_url, traces, filter_max_terms=10_000, filter_max_or_width=10_000)
    yield loaded
    loaded.drop()


def test_an_or_of_5000_ranges_is_linear_and_within_the_budget(three_thousand: Loaded) -> None:
    # The case: 5.7 s in one call (quadratic in the terms) before.
    rng = random.Random(5)
    bounds = [BASE + rng.randrange(-500, 3500) for _ in range(5000)]
    filter_string = " OR ".join(f"timestamp_ms < {b}" for b in bounds)
    with Blocking(three_thousand.settings.effective_redis_url) as blocking:
        got = three_thousand.client.count(filter_string)
    assert got == min(3000, max(bounds) - BASE)
    blocking.assert_within_budget()


def test_an_or_of_400_distinct_conjunctions_runs_in_budgeted_calls(
    three_thousand: Loaded,
) -> None:
    # Each child matches one more trace: every child is tested (a scan in several calls).
    filter_string = " OR ".join(
        f"(timestamp_ms < {BASE + i} AND tags.env != 'x')" for i in range(1, 400)
    )
    with Blocking(three_thousand.settings.effective_redis_url) as blocking:
        got = three_thousand.client.count(filter_string)
    assert got == 399
    blocking.assert_within_budget()


def test_an_or_of_equalities_on_one_key_is_one_in_list(three_thousand: Loaded) -> None:
    filter_string = " OR ".join(f"tags.u = 'u{i}'" for i in range(0, 6000, 2))
    filter_string += " OR timestamp_ms < 0 OR status = 'nope'"
    with Blocking(three_thousand.settings.effective_redis_url) as blocking:
        assert three_thousand.client.count(filter_string) == 1500
        page = three_thousand.client.search_traces(filter_string=filter_string, max_results=5)
    assert [t.info.trace_id for t in page] == [f"t{i:07d}" for i in (2998, 2996, 2994, 2992, 2990)]
    blocking.assert_within_budget()


FILTERS = [
    None,
    "tags.env = 'prod'",
    "tags.env != 'prod' AND execution_time_ms > 40",
    "tags.u LIKE '%7' OR status = 'ERROR'",
    "NOT (tags.env = 'dev' OR timestamp_ms > 1700000002000)",
    "tags.u RLIKE '^u1[0-9]*5$' AND tags.env IN ('prod', 'test')",
    "execution_time_ms >= 10 AND execution_time_ms < 20 OR tags.u ILIKE 'U29%'",
]


@pytest.mark.parametrize("filter_string", FILTERS)
def test_budgeted_scans_equal_the_reference(
    three_thousand: Loaded, filter_string: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every count and stats runs as a scan of 1 ms calls: hundreds of calls, same answers.
    monkeypatch.setattr(budget, "SCAN_WORK_MIN", 0)
    client = Client(three_thousand.settings.replace(query_call_budget_ms=1))
    try:
        expected = ref.search(three_thousand.final, None, filter_string, None, None)
        assert client.count(filter_string) == len(expected)
        got = client.stats(filter_string, group_by=["tags.env"], metrics=["count", "max"])
        wanted: dict[str, list[int]] = {}
        by_id = {t["trace_id"]: t for t in three_thousand.final}
        for trace_id in expected:
            trace = by_id[trace_id]
            wanted.setdefault(trace["tags"]["env"], []).append(trace["execution_time_ms"])
        assert {g["group"]["tags.env"]: (g["count"], g["max"]) for g in got} == {
            env: (len(d), max(d)) for env, d in wanted.items()
        }
    finally:
        client.close()


def test_a_stats_over_many_groups_is_capped_with_a_clear_error(three_thousand: Loaded) -> None:
    client = Client(three_thousand.settings.replace(stats_max_groups=1000))
    try:
        with pytest.raises(QueryLimitError) as info:
            client.stats(None, group_by=["tags.u"])
        assert str(info.value) == (
            "stats: more than 1,000 groups (stats_max_groups); narrow the filter or group by"
            " fewer distinct values"
        )
        assert len(client.stats("tags.env = 'prod'", group_by=["tags.u"])) == 1000
    finally:
        client.close()


def test_the_cli_reports_a_stats_over_the_cap_in_one_line_with_exit_2(
    three_thousand: Loaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from tracetags.cli import ExitCode, app

    monkeypatch.setenv("TRACETAGS_STATS_MAX_GROUPS", "1000")
    settings = three_thousand.settings
    result = CliRunner().invoke(
        app,
        ["--redis-url", settings.effective_redis_url, "--namespace", settings.namespace,
         "stats", "--group-by", "tags.u"],
    )  # fmt: skip
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr == (
        "error: stats: more than 1,000 groups (stats_max_groups); narrow the filter or group"
        " by fewer distinct values\n"
    )
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def many_values(redis_url: str) -> Iterator[Loaded]:
    """60,000 traces, each with its own value of tags.u (more than a window of values)."""
    traces = [_trace(i, u=f"v{i}") for i in range(60_000)]
    loaded = Loaded(redis_url, traces)
    yield loaded
    loaded.drop()


@pytest.mark.slow
def test_patterns_and_group_bys_over_many_distinct_values_stay_within_the_budget(
    many_values: Loaded,
) -> None:
    client = many_values.client
    with Blocking(many_values.settings.effective_redis_url) as blocking:
        assert client.count("tags.u LIKE '%5'") == 6000
        assert client.count("tags.u ILIKE '%V12%'") == len(
            [i for i in range(60_000) if "v12" in f"v{i}"]
        )
        assert client.count("tags.u RLIKE '7$' AND status = 'OK'") == len(
            [i for i in range(60_000) if i % 10 == 7 and i % 5]
        )
        groups = client.stats(None, group_by=["tags.u"], metrics=["count"])
        assert len(groups) == 60_000 and all(g["count"] == 1 for g in groups)
        page = client.search_traces(filter_string="tags.u LIKE '%99'", max_results=3)
        assert [t.info.trace_id for t in page] == ["t0059999", "t0059899", "t0059799"]
    blocking.assert_within_budget()


@pytest.mark.parametrize(
    ("filter_string", "message"),
    [
        (
            " OR ".join(f"tags.k = '{i}'" for i in range(501)),
            "OR of 501 terms, over the limit of 500 (filter_max_or_width) at position 8890",
        ),
        (
            " AND ".join(f"tags.k{i} = 'x'" for i in range(501)),
            "Filter has more than 500 terms (filter_max_terms) at position",
        ),
        (
            "tags.k IN (" + ", ".join(f"'{i}'" for i in range(10_001)) + ")",
            "IN list of 10001 values, over the limit of 10000 (filter_max_in_values) at position 0",
        ),
        (
            "status = 'OK' AND tags.k RLIKE '" + "a" * 1001 + "'",
            "RLIKE pattern of 1001 characters, over the limit of 1000 (filter_max_pattern_chars)"
            " at position 18",
        ),
    ],
)
def test_filters_over_a_declared_size_are_refused_with_a_caret(
    filter_string: str, message: str
) -> None:
    with pytest.raises(FilterSemanticError) as info:
        executor.prepare(None, filter_string)
    assert str(info.value).startswith(message)
    position = info.value.position  # type: ignore[attr-defined]
    assert str(info.value).endswith("\n  " + " " * position + "^")


def test_the_filter_limits_follow_the_settings(redis_url: str, namespace: str) -> None:
    wide = " OR ".join(f"tags.k = '{i}'" for i in range(600))
    with (
        Client(Settings(redis_url=redis_url, namespace=namespace)) as client,
        pytest.raises(FilterSemanticError, match="filter_max_or_width"),
    ):
        client.count(wide)
    settings = Settings(
        redis_url=redis_url, namespace=namespace, filter_max_or_width=600, filter_max_terms=600
    )
    with Client(settings) as client:
        assert client.count(wide) == 0
