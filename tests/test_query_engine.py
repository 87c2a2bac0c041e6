"""The query engine (planner + tt_query + merge) against the naive reference evaluator.

Data goes through the real fold (tt_apply); every search, page walk, count and stats answer
must equal tests/query_reference.py on the same final state.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import drop_namespace
from tracetags import functions, schemas
from tracetags.client import Client
from tracetags.errors import FilterError, FilterSemanticError, FilterSyntaxError, PageTokenError
from tracetags.keys import PLAIN_MAX, partition_of
from tracetags.query import executor
from tracetags.settings import Settings

# --- shared datasets (loaded once per module; each in its own namespace) ---------------------


class Loaded:
    def __init__(self, redis_url: str, partitions: int, traces: Any, mutations: Any) -> None:
        self.namespace = f"tt-q-{uuid.uuid4().hex[:10]}"
        self.settings = Settings(
            redis_url=redis_url, namespace=self.namespace, partitions=partitions
        )
        self.client = Client(self.settings)
        qd.load(self.client.redis, self.client.keys, partitions, traces, mutations)
        self.final = ref.apply_mutations(traces, mutations)

    def drop(self) -> None:
        drop_namespace(self.client.redis, self.namespace)
        self.client.close()


def _suite_url(request: pytest.FixtureRequest) -> str:
    """The Redis of a ``params=["single", "cluster"]`` dataset: the session's server, or the
    local cluster (whose partitions spread over its primaries, each queried on its own)."""
    fixture = "redis_cluster" if request.param == "cluster" else "redis_url"
    value = request.getfixturevalue(fixture)
    return value if isinstance(value, str) else str(value.url)


@pytest.fixture(scope="module", params=["single", "cluster"])
def small(request: pytest.FixtureRequest) -> Iterator[Loaded]:
    traces, mutations = qd.generate(7, 300, n_mutations=80)
    loaded = Loaded(_suite_url(request), 3 if request.param == "single" else 16, traces, mutations)
    yield loaded
    loaded.drop()


@pytest.fixture(scope="module", params=["single", "cluster"])
def dense(request: pytest.FixtureRequest) -> Iterator[Loaded]:
    """> PLAIN_MAX traces per partition share env=production: chunked value sets."""
    traces, mutations = qd.generate(11, 1500, dense=True, n_mutations=200)
    loaded = Loaded(_suite_url(request), 2, traces, mutations)
    yield loaded
    loaded.drop()


def _all_pages(client: Client, **kwargs: Any) -> list[str]:
    ids: list[str] = []
    token = None
    for _ in range(10_000):
        page = client.search_traces(page_token=token, **kwargs)
        ids.extend(t.info.trace_id for t in page)
        token = page.token
        if token is None:
            return ids
        assert len(page) == kwargs["max_results"]
    raise AssertionError("too many pages")


# --- random filters ---------------------------------------------------------------------------

STRING_VALUES = ["production", "Production", "staging", "", "prod'uction", "user_1", "user_10",
                 "a%b", "ÄÖ", "äö", "ß", "x'y", "1", "10", "api", "run1", "chat", "OK", "ERROR",
                 "req-1", "nope"]  # fmt: skip
PATTERNS = ["prod%", "%ion", "P%", "_", "%", "user\\_1%", "user_1_", "%ö", "ä%", "%'%", "a\\%b",
            "(", "^user_1$", "[0-9]+", "^$", "x.y", "AP%", "chat", "%r%"]  # fmt: skip
KV_FIELDS = ["tags.env", "tags.user", "tags.retries", "tags.note", "tags.model.version",
             "metadata.source", "run_id", "name", "tags.missing"]  # fmt: skip
NUMBERS = ["0", "1", "2", "1.5", "-3", "100", "10", "1e2", "5000"]
ATTR_STRING = ["status", "client_request_id", "request_id"]
ATTR_NUMERIC = ["timestamp_ms", "execution_time_ms", "end_time_ms"]


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


@st.composite
def clauses(draw: st.DrawFn, trace_ids: list[str], timestamps: list[int]) -> str:
    kind = draw(st.sampled_from(["kv", "kv", "kv", "attr", "num"]))
    if kind == "kv":
        f = draw(st.sampled_from(KV_FIELDS))
        op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE", "RLIKE", "NOT LIKE", "NOT ILIKE",
                                   "NOT RLIKE", "IN", "NOT IN", "IS NULL", "IS NOT NULL",
                                   "num"]))  # fmt: skip
        if op.startswith("IS"):
            return f"{f} {op}"
        if op == "num":
            comp = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]))
            return f"{f} {comp} {draw(st.sampled_from(NUMBERS))}"
        if op.endswith("IN"):
            values = draw(st.lists(st.sampled_from(STRING_VALUES), min_size=1, max_size=3))
            return f"{f} {op} ({', '.join(_quote(v) for v in values)})"
        if "LIKE" in op:
            return f"{f} {op} {_quote(draw(st.sampled_from(PATTERNS)))}"
        return f"{f} {op} {_quote(draw(st.sampled_from(STRING_VALUES)))}"
    if kind == "attr":
        f = draw(st.sampled_from(ATTR_STRING))
        pool = [*trace_ids[:5], "nope"] if f == "request_id" else STRING_VALUES
        op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE", "RLIKE", "NOT LIKE", "IN",
                                   "NOT IN"]))  # fmt: skip
        if op.endswith("IN"):
            values = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
            return f"{f} {op} ({', '.join(_quote(v) for v in values)})"
        if "LIKE" in op:
            return f"{f} {op} {_quote(draw(st.sampled_from([*PATTERNS, 'tr-000%', 'O%'])))}"
        return f"{f} {op} {_quote(draw(st.sampled_from(pool)))}"
    f = draw(st.sampled_from(ATTR_NUMERIC))
    op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]))
    if f == "execution_time_ms":
        value = draw(st.sampled_from([0, 50, 148, 300, 1000, 5000]))
    else:
        value = draw(st.sampled_from(timestamps)) + draw(st.sampled_from([0, 0, 1, -1, 300]))
    return f"{f} {op} {value}"


@st.composite
def filters(draw: st.DrawFn, trace_ids: list[str], timestamps: list[int]) -> str | None:
    def expr(depth: int) -> str:
        roll = draw(st.integers(0, 9)) if depth < 2 else 0
        if roll <= 4:
            return draw(clauses(trace_ids, timestamps))
        if roll <= 6:
            parts = [expr(depth + 1) for _ in range(draw(st.integers(2, 3)))]
            return " AND ".join(f"({p})" if " OR " in p else p for p in parts)
        if roll <= 8:
            parts = [expr(depth + 1) for _ in range(draw(st.integers(2, 3)))]
            return "(" + " OR ".join(parts) + ")"
        return f"NOT ({expr(depth + 1)})"

    if draw(st.integers(0, 15)) == 0:
        return None
    return expr(0)


ORDERABLE = ["timestamp_ms", "execution_time_ms", "end_time_ms", "status", "request_id",
             "experiment_id", "name", "run_id", "tags.env", "tags.retries", "metadata.source",
             "tags.missing"]  # fmt: skip


@st.composite
def orders(draw: st.DrawFn) -> list[str] | None:
    keys = draw(st.lists(st.sampled_from(ORDERABLE), max_size=2, unique=True))
    if not keys:
        return None
    return [f"{k} {draw(st.sampled_from(['ASC', 'DESC', '']))}".strip() for k in keys]


def _check_search(loaded: Loaded, data: st.DataObject, *, pages: bool) -> None:
    ids = [t["trace_id"] for t in loaded.final]
    stamps = sorted({t["timestamp_ms"] for t in loaded.final})
    filter_string = data.draw(filters(ids, stamps), label="filter")
    order_by = data.draw(orders(), label="order_by")
    experiment_ids = data.draw(
        st.sampled_from([None, None, ["1"], ["2", "10"], []]), label="experiment_ids"
    )
    limit = data.draw(st.sampled_from([1, 3, 10, 100]), label="max_results")
    try:
        expected = ref.search(loaded.final, experiment_ids, filter_string, order_by, None)
    except ValueError:
        with pytest.raises(FilterError):
            loaded.client.search_traces(experiment_ids, filter_string, order_by, limit)
        return
    page = loaded.client.search_traces(experiment_ids, filter_string, order_by, limit)
    assert [t.info.trace_id for t in page] == expected[:limit]
    assert (page.token is None) == (len(expected) <= limit)
    if pages:
        walked = _all_pages(
            loaded.client,
            experiment_ids=experiment_ids,
            filter_string=filter_string,
            order_by=order_by,
            max_results=limit if len(expected) < 60 * limit else 100,
        )
        assert walked == expected
    assert loaded.client.count(filter_string, experiment_ids) == len(expected)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_filters_equal_the_reference(small: Loaded, data: st.DataObject) -> None:
    _check_search(small, data, pages=True)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_filters_over_chunked_sets_equal_the_reference(
    dense: Loaded, data: st.DataObject
) -> None:
    _check_search(dense, data, pages=False)


def test_dense_values_are_chunked(dense: Loaded) -> None:
    r = dense.client.redis
    counts = [r.zscore(dense.client.keys.tag_values(p, "env"), "production") for p in range(2)]
    assert all(c is not None and c > PLAIN_MAX for c in counts)
    expected = ref.search(dense.final, None, "tags.env = 'production'", None, None)
    assert dense.client.count("tags.env = 'production'") == len(expected)
    walked = _all_pages(dense.client, filter_string="tags.env = 'production'", max_results=500)
    assert walked == expected


# --- paging -----------------------------------------------------------------------------------


def test_tokens_survive_tag_changes_between_pages(settings: Settings, r: redis.Redis) -> None:
    traces, _ = qd.generate(3, 400)
    for t in traces:
        t["tags"]["keep"] = "yes" if int(t["trace_id"][3:8]) % 3 else "no"
    client = Client(settings)
    qd.load(r, client.keys, 2, traces)
    final = ref.apply_mutations(traces, [])
    query: dict[str, Any] = {"filter_string": "tags.keep = 'yes'", "order_by": ["timestamp_ms ASC"]}
    expected = ref.search(final, None, max_results=None, **query)
    seen: list[str] = []
    token = None
    flip = 0
    while True:
        page = client.search_traces(max_results=25, page_token=token, **query)
        seen.extend(t.info.trace_id for t in page)
        token = page.token
        if token is None:
            break
        # Between pages: traces that never matched start and stop matching, others churn.
        churn = [t for t in final if t["tags"]["keep"] == "no"][flip : flip + 5]
        flip += 5
        qd.apply_events(
            r,
            client.keys,
            2,
            [
                qd.mutation_event(
                    {"op": "set", "trace_id": t["trace_id"], "key": "keep", "value": "yes"}
                )
                for t in churn
            ]
            + [
                qd.mutation_event(
                    {"op": "set", "trace_id": t["trace_id"], "key": "other", "value": str(flip)}
                )
                for t in final[:20]
            ],
        )
    stable = [i for i in seen if i in set(expected)]
    assert stable == expected  # every always-matching trace once, in order
    assert len(seen) == len(set(seen))
    client.close()


def test_token_errors(small: Loaded) -> None:
    c = small.client
    page = c.search_traces(filter_string="status = 'OK'", max_results=2)
    assert page.token is not None
    with pytest.raises(PageTokenError, match="another query"):
        c.search_traces(filter_string="status = 'ERROR'", max_results=2, page_token=page.token)
    with pytest.raises(PageTokenError, match="malformed"):
        c.search_traces(filter_string="status = 'OK'", page_token="!!not-a-token")
    with pytest.raises(PageTokenError, match="malformed"):
        c.search_traces(filter_string="status = 'OK'", page_token="AAAA")
    for bad in (0, 50_001, -1, 1.5, True, "10", None):
        with pytest.raises(ValueError, match=r"max_results must be an integer in 1\.\.50000"):
            c.search_traces(max_results=bad)  # type: ignore[arg-type]


# --- errors -----------------------------------------------------------------------------------


def test_errors_carry_the_position(small: Loaded) -> None:
    c = small.client
    with pytest.raises(FilterSyntaxError) as info:
        c.search_traces(filter_string="tags.env = 'a' AND status ==")
    assert info.value.position == 26  # type: ignore[attr-defined]
    assert info.value.filter_string in str(info.value)  # type: ignore[attr-defined]
    assert str(info.value).endswith("\n  tags.env = 'a' AND status ==\n" + " " * 28 + "^")
    with pytest.raises(FilterSemanticError) as info2:
        c.count("tags.env > 'a'")
    assert info2.value.position == 11  # type: ignore[attr-defined]
    with pytest.raises(FilterSemanticError, match="experiment_ids must be a list"):
        c.count(None, "1")
    with pytest.raises(FilterSemanticError, match="order_by must be a list"):
        c.search_traces(order_by="timestamp_ms")


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    text=st.text(
        st.sampled_from(list("tags.env='a\" ()`%_ANDORNOTINLIKE<>=!0123456789,metadta"))
        | st.characters(),
        max_size=40,
    )
)
def test_any_input_raises_only_filter_errors(small: Loaded, text: str) -> None:
    try:
        small.client.search_traces(filter_string=text, max_results=5)
        small.client.count(text)
    except FilterError:
        pass


# --- explain, count, stats ---------------------------------------------------------------------


def test_explain_walks_for_broad_filters_and_collects_for_selective(dense: Loaded) -> None:
    broad = dense.client.explain("tags.env = 'production'")
    assert broad.count("strategy: walk") == 2, broad
    user = next(t["tags"]["user"] for t in dense.final if "user" in t["tags"])
    selective = dense.client.explain(f"tags.user = '{user}' AND tags.env = 'production'")
    assert "strategy: walk" not in selective and "strategy: collect" in selective, selective
    by_tag = dense.client.explain("status = 'OK'", order_by=["tags.env"])
    assert by_tag.count("strategy: walk-values") == 2, by_tag
    by_id = dense.client.explain("status = 'OK'", order_by=["request_id"])
    assert by_id.count("strategy: walk-ids") == 2, by_id  # the ids' byte order
    by_id_selective = dense.client.explain(f"tags.user = '{user}'", order_by=["request_id"])
    assert "first order key has no order zset" in by_id_selective, by_id_selective
    assert "exact from index sizes" in dense.client.explain("tags.env = 'production'", count=True)


@pytest.mark.parametrize(
    "filter_string",
    [
        None,
        "tags.env = 'production'",
        "status = 'OK' AND tags.env = 'production'",
        "tags.env IS NULL",
        "tags.env IS NOT NULL",
        "execution_time_ms > 100",
        "tags.retries >= 1 OR NOT status = 'OK'",
        "tags.env ILIKE 'PROD%'",
    ],
)
def test_count_equals_the_reference(dense: Loaded, filter_string: str | None) -> None:
    for scope in (None, ["1"], ["2", "10"]):
        expected = ref.search(dense.final, scope, filter_string, None, None)
        assert dense.client.count(filter_string, scope) == len(expected)


# --- walking the distinct values of a string order key ---------------------------------------

VALUE_ORDERS = [
    ["tags.env"],
    ["tags.env DESC"],
    ["tags.env", "timestamp_ms ASC"],
    ["tags.env DESC", "request_id DESC"],
    ["tags.env", "execution_time_ms DESC"],
    ["tags.env", "tags.user DESC"],
    ["tags.user"],
    ["tags.retries DESC", "end_time_ms"],
    ["tags.note"],
    ["metadata.source DESC"],
    ["run_id"],
    ["name DESC"],
    ["status", "timestamp_ms ASC"],
    ["experiment_id DESC"],
    ["tags.missing"],
]


@pytest.mark.parametrize("order_by", VALUE_ORDERS, ids=" ".join)
@pytest.mark.parametrize(
    "filter_string",
    [
        None,
        "status = 'OK'",
        "tags.env = 'production' OR tags.retries IS NOT NULL",
        "NOT (tags.user IS NULL)",
        "execution_time_ms > 100",
    ],
)
def test_walking_distinct_values_equals_the_reference(
    dense: Loaded, order_by: list[str], filter_string: str | None
) -> None:
    expected = ref.search(dense.final, None, filter_string, order_by, None)
    explained = dense.client.explain(filter_string, order_by=order_by, max_results=37)
    pinned = filter_string == "status = 'OK'" and order_by[0].startswith("status")
    if pinned:  # every match has status OK: the key orders nothing, timestamp_ms decides
        assert "strategy: walk-values" not in explained, explained
    elif order_by != ["tags.user"]:  # ~190 users a partition: sorting the matches is cheaper
        assert "strategy: walk-values" in explained, explained
    page = dense.client.search_traces(filter_string=filter_string, order_by=order_by)
    assert [t.info.trace_id for t in page] == expected[:100]
    walked = _all_pages(
        dense.client, filter_string=filter_string, order_by=order_by, max_results=37
    )
    assert walked == expected  # every group boundary, the ties and the nulls, through tokens


def test_walking_distinct_values_within_experiments(dense: Loaded) -> None:
    for scope in (["1"], ["2", "10"]):
        expected = ref.search(dense.final, scope, "status != 'ERROR'", ["tags.env DESC"], None)
        walked = _all_pages(
            dense.client,
            experiment_ids=scope,
            filter_string="status != 'ERROR'",
            order_by=["tags.env DESC"],
            max_results=53,
        )
        assert walked == expected


# --- counts by set algebra ------------------------------------------------------------------

ALGEBRA_COUNTS = [
    "status = 'OK' AND tags.env = 'production'",
    "status = 'OK' AND tags.env = 'production' AND name = 'chat'",
    "status = 'OK' AND tags.env = 'production' AND execution_time_ms > 100",
    "tags.env = 'production' AND tags.retries IS NOT NULL",
    "tags.env = 'production' AND tags.retries IS NULL",
    "NOT (status = 'OK')",
    "NOT (status = 'OK' AND tags.env = 'production')",
    "tags.env != 'production'",
    "tags.env != 'production' AND tags.env != 'staging'",
    "tags.env = 'production' AND tags.env = 'staging'",
    "tags.env IN ('production', 'staging', 'production') AND status IN ('OK', 'ERROR')",
    "tags.env = 'production' OR status = 'ERROR'",
    "tags.env = 'production' OR status = 'ERROR' OR tags.user IS NULL",
    "NOT (tags.env = 'production' OR status = 'ERROR')",
    "tags.env = 'production' AND NOT (status = 'OK') AND tags.note IS NULL",
    "tags.user = 'user_3' AND tags.env = 'production'",
    "tags.env = 'staging' AND execution_time_ms > 2000",  # plain set and a smaller range
    "tags.env LIKE 'prod%' AND status != 'OK'",
    "status = 'OK' AND request_id LIKE 'tr-00%'",
    "tags.env = 'production' AND client_request_id = 'req-1'",
]


@pytest.mark.parametrize("filter_string", ALGEBRA_COUNTS)
def test_counts_by_set_algebra_equal_the_reference(dense: Loaded, filter_string: str) -> None:
    for scope in (None, ["1"], ["2", "10"]):
        expected = ref.search(dense.final, scope, filter_string, None, None)
        assert dense.client.count(filter_string, scope) == len(expected), scope


def test_counts_by_set_algebra_are_explained(dense: Loaded) -> None:
    two = dense.client.explain("status = 'OK' AND tags.env = 'production'", count=True)
    assert two.count("strategy: algebra") == 2, two
    negated = dense.client.explain("NOT (status = 'OK')", count=True)
    assert negated.count("exact from index sizes (set algebra") == 2, negated
    different = dense.client.explain("tags.env != 'production'", count=True)
    assert different.count("exact from index sizes (set algebra") == 2, different


def _expected_stats(final: list[dict[str, Any]], ids: list[str], field: str) -> dict[Any, Any]:
    by_id = {t["trace_id"]: t for t in final}
    groups: dict[Any, list[Any]] = {}
    for i in ids:
        t = by_id[i]
        value = t["status"] if field == "status" else t["tags"].get(field)
        groups.setdefault(value, []).append(t["execution_time_ms"])
    return groups


def test_stats_equal_the_reference(dense: Loaded) -> None:
    import statistics

    ids = ref.search(dense.final, None, "tags.env != 'staging'", None, None)
    got = dense.client.stats("tags.env != 'staging'", group_by=["status"])
    expected = _expected_stats(dense.final, ids, "status")
    assert {g["group"]["status"]: g["count"] for g in got} == {
        k: len(v) for k, v in expected.items()
    }
    counts = [g["count"] for g in got]
    assert counts == sorted(counts, reverse=True)
    for g in got:
        durations = sorted(d for d in expected[g["group"]["status"]] if d is not None)
        if not durations:
            assert g["avg"] is None and g["p50"] is None
            continue
        assert g["min"] == durations[0] and g["max"] == durations[-1]
        assert g["avg"] == pytest.approx(statistics.fmean(durations))
        qs = statistics.quantiles(durations, n=100, method="inclusive")
        assert g["p50"] == pytest.approx(statistics.median(durations))
        assert g["p95"] == pytest.approx(qs[94])
        assert g["p99"] == pytest.approx(qs[98])
    only = dense.client.stats(None, group_by=["tags.env"], metrics=["count"])
    expected_env = _expected_stats(dense.final, [t["trace_id"] for t in dense.final], "env")
    assert {g["group"]["tags.env"]: g["count"] for g in only} == {
        k: len(v) for k, v in expected_env.items()
    }
    assert all(set(g) == {"group", "count"} for g in only)
    with pytest.raises(FilterSemanticError, match="cannot group by"):
        dense.client.stats(None, group_by=["timestamp_ms"])
    with pytest.raises(FilterSemanticError, match="metrics"):
        dense.client.stats(None, metrics=["p42"])


def test_trace_info_fields(small: Loaded) -> None:
    page = small.client.search_traces(filter_string="name = 'chat'", max_results=1)
    (trace,) = page
    source = next(t for t in small.final if t["trace_id"] == trace.info.trace_id)
    info = trace.info
    assert info.request_id == info.trace_id
    assert info.name == "chat" == source["name"]
    assert info.experiment_id == source["experiment_id"]
    assert info.timestamp_ms == source["timestamp_ms"]
    assert info.execution_time_ms == source["execution_time_ms"]
    assert info.status == source["status"]
    assert info.tags == source["tags"]
    assert info.request_metadata == info.trace_metadata == source["metadata"]
    assert info.client_request_id == source["client_request_id"]


def test_empty_namespace(settings: Settings) -> None:
    with Client(settings) as client:
        assert list(client.search_traces()) == []
        assert client.search_traces().token is None
        assert client.count("tags.env = 'x'") == 0
        assert client.stats() == []


def test_a_stale_library_on_the_server_is_replaced_before_the_first_query(
    settings: Settings, r: redis.Redis
) -> None:
    """A server that kept an older copy of the library under the same name must not answer
    with the old query code."""
    from tracetags import functions
    from tracetags.client import Client

    stale = (
        f"#!lua name={functions.LIBRARY_NAME}\n"
        "redis.register_function{function_name='tt_query', "
        "callback=function() return redis.error_reply('TT_STALE old code') end, "
        "flags={'no-writes'}}\n"
    )
    traces, _ = qd.generate(5, 50)
    with Client(settings) as loader:
        qd.load(r, loader.keys, 1, traces)
    r.execute_command("FUNCTION", "LOAD", "REPLACE", stale)
    try:
        with Client(settings) as client:
            page = client.search_traces(filter_string="status = 'OK'", max_results=5)
            assert len(page) == 5
    finally:
        functions.load(r)


def test_a_probe_reading_like_values_reloads_a_library_the_server_lost(
    settings: Settings, r: redis.Redis
) -> None:
    """The probe of a LIKE calls tt_query (its values are filtered inside the Function) in
    the same pipeline as its other reads; a server that lost the library since this client
    checked it gets it again, and the query still answers."""
    from tracetags import functions
    from tracetags.client import Client

    traces, _ = qd.generate(6, 120)
    final = ref.apply_mutations(traces, [])
    with Client(settings) as client:
        qd.load(r, client.keys, 1, traces)
        filter_string = "tags.user LIKE 'user_1%'"
        expected = ref.search(final, None, filter_string, None, None)
        assert expected
        assert [t.info.trace_id for t in client.search_traces(filter_string=filter_string)] == (
            expected[:100]
        )
        try:
            r.execute_command("FUNCTION", "DELETE", functions.LIBRARY_NAME)
            page = client.search_traces(filter_string=filter_string)
            assert [t.info.trace_id for t in page] == expected[:100]
        finally:
            functions.load(r)


# --- strategies for large indexes (issue 4 performance gaps) ---------------------------------


def _build_lookups(loaded: Loaded, redis_url: str, fields: list[str]) -> None:
    """Lookup fingerprints of fields, built from the data already folded (as a consumer
    started with TRACETAGS_LOOKUP_KEYS does)."""
    import asyncio

    import redis.asyncio

    async def build() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            for partition in range(loaded.settings.partition_count):
                keys = loaded.client.keys
                await functions.ensure_lookups_async(client, keys, partition, fields)
        finally:
            await client.aclose()

    asyncio.run(build())


@pytest.fixture(scope="module", params=["indexed", "unindexed", "lookups"])
def wide(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Loaded]:
    """One partition, ~420 distinct `wide` values (walk of distinct values in byte order)
    and ~100 small `user` sets matching one LIKE (membership table).  "unindexed" deletes
    the byte-order indexes (data folded before they existed): readers fall back to the
    distinct zsets.  "lookups" builds lookup fingerprints of `user`, `wide` and `env`."""
    traces, mutations = qd.generate(17, 2600, dense=True, n_mutations=120)
    rng = __import__("random").Random(5)
    odd = ["ä", "Ä", "ß", "\u0131", "z", "Z", "_", "%", "~", "0", "9", " ", "*", "?", "[", "\\"]
    for trace in traces:
        if rng.random() < 0.9:
            trace["tags"]["wide"] = f"w{rng.randrange(25)}{rng.choice(odd)}"
    loaded = Loaded(redis_url, 1, traces, mutations)
    r, keys = loaded.client.redis, loaded.client.keys
    index = [*r.scan_iter(match=f"{keys.tag_values(0, 'wide')}:L*")]
    assert len(index) > 3  # ~420 values: several buckets
    if request.param == "unindexed":
        r.delete(*r.scan_iter(match=f"{loaded.namespace}:*:L*", count=1000))
    if request.param == "lookups":
        _build_lookups(loaded, redis_url, ["tuser", "twide", "tenv"])
    yield loaded
    loaded.drop()


WIDE_QUERIES: list[tuple[str | None, list[str] | None]] = [
    ("tags.user LIKE 'user_1%'", None),
    ("tags.user LIKE 'user_1%'", ["timestamp_ms ASC"]),
    ("tags.user LIKE 'user_2%' AND tags.env = 'production'", ["execution_time_ms DESC"]),
    ("tags.user LIKE 'user_%' AND status = 'ERROR'", None),
    ("execution_time_ms > 400", ["execution_time_ms DESC"]),
    ("execution_time_ms > 400", ["execution_time_ms ASC"]),
    ("execution_time_ms <= 50 AND status = 'OK'", ["execution_time_ms DESC", "request_id DESC"]),
    ("timestamp_ms >= 1700000005000", None),
    ("timestamp_ms > 1700000002000 AND timestamp_ms < 1700000006000", ["timestamp_ms ASC"]),
    ("tags.env = 'production' AND status = 'ERROR' AND execution_time_ms > 300", None),
    ("status = 'OK'", ["tags.wide"]),
    ("status = 'OK'", ["tags.wide DESC", "timestamp_ms ASC"]),
    (None, ["tags.wide", "request_id DESC"]),
    ("tags.env = 'production'", ["tags.wide DESC"]),
]


@pytest.mark.parametrize(("filter_string", "order_by"), WIDE_QUERIES)
def test_large_index_strategies_equal_the_reference(
    wide: Loaded, filter_string: str | None, order_by: list[str] | None
) -> None:
    expected = ref.search(wide.final, None, filter_string, order_by, None)
    page = wide.client.search_traces(filter_string=filter_string, order_by=order_by)
    assert [t.info.trace_id for t in page] == expected[:100]
    walked = _all_pages(wide.client, filter_string=filter_string, order_by=order_by, max_results=41)
    assert walked == expected
    assert wide.client.count(filter_string) == len(expected)


def test_large_index_strategies_are_chosen(wide: Loaded) -> None:
    by_wide = wide.client.explain("status = 'OK'", order_by=["tags.wide"])
    assert "strategy: walk-values" in by_wide, by_wide
    ranged = wide.client.explain("execution_time_ms > 400", order_by=["execution_time_ms DESC"])
    assert "strategy: walk" in ranged and "within execution_time_ms > 400" in ranged, ranged
    like = wide.client.explain("tags.user LIKE 'user_1%'")
    # a page's probe counts the values; tt_query seeks them itself
    assert "value sets, sought by tt_query]" in like, like
    assert int(like.split("[")[1].split()[0]) >= 8, like
    if wide.client.redis.exists(wide.client.keys.lookups(0)):  # the "lookups" fixture
        assert "a walk tests tags.user by 2-byte lookup fingerprints" in like, like
    else:
        assert "a walk tests tags.user by each trace's register" in like, like
        assert "(with tags.user in TRACETAGS_LOOKUP_KEYS: 2 bytes a trace)" in like, like


@pytest.mark.parametrize(
    "filter_string",
    ["tags.wide IS NULL", "tags.env IS NULL", "tags.env IS NOT NULL", "tags.wide != 'w1z'"],
)
def test_presence_counts_equal_the_reference(wide: Loaded, filter_string: str) -> None:
    expected = ref.search(wide.final, None, filter_string, None, None)
    assert wide.client.count(filter_string) == len(expected)


@pytest.mark.parametrize(
    "pattern",
    [
        *("w1%", "w1_", "w_*", "%?", "w2[", "%\\", "%\\%", "w1%ä", "%_%", "W1%", "w1", "%[%"),
        *("x%", "%ä", "_1%", "w2%ß", "w%1%", "%1_", "", "%", "w1ä", "%w%", "w%2%2", "w1_1"),
        # sought by their start in the byte-order index: '_' after a literal prefix
        *("w_ä%", "w1_%", "w__%", "w_1%", "w2_%ß", "w_", "w___", "w_%_", "w1__", "wä_%"),
    ],
)
def test_like_read_by_its_literals_equals_the_reference(wide: Loaded, pattern: str) -> None:
    """LIKE reads only the distinct values that start with its first literal run and hold
    the others in order (inside tt_query); the pattern itself is applied by the planner."""
    for op in ("LIKE", "ILIKE", "NOT LIKE"):
        filter_string = f"tags.wide {op} '{pattern}'"
        expected = ref.search(wide.final, None, filter_string, None, None)
        assert wide.client.count(filter_string) == len(expected), filter_string
        page = wide.client.search_traces(filter_string=filter_string, max_results=500)
        assert [t.info.trace_id for t in page] == expected[:500], filter_string


@pytest.mark.parametrize(
    "filter_string",
    [
        "tags.env IN ('production', 'production')",
        "status IN ('OK', 'OK', 'ERROR')",
        "tags.env IN ('production', 'staging', 'production') AND status = 'OK'",
    ],
)
def test_a_value_named_twice_in_an_in_list_counts_once(
    dense: Loaded, small: Loaded, filter_string: str
) -> None:
    """Found by the random-filter property: the duplicate doubled count() and the page."""
    for loaded in (small, dense):
        expected = ref.search(loaded.final, None, filter_string, None, max_results=None)
        assert loaded.client.count(filter_string) == len(expected)
        page = loaded.client.search_traces(filter_string=filter_string, max_results=50)
        assert [t.info.trace_id for t in page] == expected[:50]


# --- the page reply ----------------------------------------------------------------------------


def test_trace_info_from_fields_skips_tombstones_and_bookkeeping() -> None:
    from tracetags.client import trace_info_from_fields, trace_info_from_hash

    fields = ["i", "tr-1", "b", "1700000000000", "x", "5", "e", "3:1", "s", "3:1700000000123",
              "d", "1700000000000-2000:42", "S", "3:OK", "tenv", "3:prod:eu", "tgone", "7",
              "t", "3:", "mmlflow.sourceRun", "3:run-1", "mold", "-9", "c", "4"]  # fmt: skip
    info = trace_info_from_fields(fields)
    assert info is not None
    assert info.trace_id == "tr-1"
    assert info.experiment_id == "1"
    assert info.timestamp_ms == 1700000000123
    assert info.execution_time_ms == 42
    assert info.status == "OK"
    assert info.client_request_id is None  # a tombstone
    assert info.tags == {"env": "prod:eu", "": ""}
    assert info.request_metadata == {"mlflow.sourceRun": "run-1"}
    as_hash = {fields[k].encode(): fields[k + 1].encode() for k in range(0, len(fields), 2)}
    assert trace_info_from_hash(as_hash) == info
    assert trace_info_from_fields(["tenv", "3:prod"]) is None  # no id: the trace is gone


def test_a_page_reads_only_the_rows_it_shows(small: Loaded) -> None:
    """tt_query looks for limit rows but returns the hashes of the first `shown` only (the
    extra row of a page only tells that a next page exists)."""
    import msgspec

    from tracetags import functions
    from tracetags.query import executor

    c = small.client
    prepared = executor.prepare(None, "status = 'OK'", None)
    plans = executor._plans(c.redis, c.keys, 1, prepared, "page", limit=6)
    expected = ref.search(small.final, None, "status = 'OK'", None, None)
    in_partition = [t for t in expected if partition_of(t, c.partitions) == 0][:6]
    for shown, hashes in ((5, 5), (6, 6), (None, 6)):
        plan = plans[0].plan
        if shown is not None:
            plan = msgspec.structs.replace(plan, shown=shown)
        (reply,) = functions.query_partitions(c.redis, c.keys, [(0, msgspec.msgpack.encode(plan))])
        found, rows = msgspec.msgpack.decode(reply)
        assert found == 6
        assert len(rows) == hashes
        assert [dict(zip(r[::2], r[1::2], strict=True))["i"] for r in rows] == in_partition[:hashes]


def test_a_term_holding_every_trace_is_skipped_only_when_it_does(
    settings: Settings, r: redis.Redis
) -> None:
    """experiment_ids naming every experiment (the values' counts sum to the number of
    traces) needs no test; a trace with no experiment (only tagged so far) breaks the sum."""
    traces, _ = qd.generate(23, 700, dense=True)
    client = Client(settings)
    qd.load(r, client.keys, 1, traces)
    final = ref.apply_mutations(traces, [])
    every = ["1", "2", "10"]
    queries: list[tuple[str | None, list[str] | None]] = [
        (None, None),
        ("tags.env = 'production'", None),
        ("status = 'OK'", ["timestamp_ms ASC"]),
        ("tags.env IN ('production', 'staging', 'dev', 'Production', '', \"prod'uction\")", None),
    ]
    for filter_string, order_by in queries:
        expected = ref.search(final, every, filter_string, order_by, None)
        assert (
            _all_pages(
                client,
                experiment_ids=every,
                filter_string=filter_string,
                order_by=order_by,
                max_results=97,
            )
            == expected
        )
        assert client.count(filter_string, every) == len(expected)
    orphan = {"op": "set", "trace_id": "tr-orphan", "key": "env", "value": "production"}
    qd.apply_events(r, client.keys, 1, [qd.mutation_event(orphan)])
    for filter_string, order_by in queries:
        found = _all_pages(
            client,
            experiment_ids=every,
            filter_string=filter_string,
            order_by=order_by,
            max_results=97,
        )
        assert "tr-orphan" not in found
        assert found == ref.search(final, every, filter_string, order_by, None)
    assert "tr-orphan" in client.matching_ids("tags.env = 'production'")
    client.close()


@pytest.mark.parametrize(
    ("filter_string", "order_by"),
    [
        ("status = 'OK' AND tags.env = 'production'", None),
        ("tags.env = 'production' AND status = 'ERROR'", ["timestamp_ms ASC"]),
        ("status = 'OK' AND tags.env = 'production' AND tags.user IS NOT NULL", None),
        ("status = 'OK' AND tags.env = 'production' AND tags.user = 'user_7'", None),
        ("tags.env = 'production' AND status = 'OK' AND execution_time_ms > 300", None),
        ("status = 'OK' AND tags.env = 'production'", ["execution_time_ms DESC"]),
        ("status = 'ERROR' AND tags.wide LIKE 'w1%'", None),
    ],
)
def test_conjunctions_of_chunked_sets_equal_the_reference(
    wide: Loaded, filter_string: str, order_by: list[str] | None
) -> None:
    """Several chunked sets of one AND are tested together (each number split into chunk and
    offset once); walks size their batches by the density of matches."""
    expected = ref.search(wide.final, None, filter_string, order_by, None)
    for limit in (1, 7, 100):
        page = wide.client.search_traces(
            filter_string=filter_string, order_by=order_by, max_results=limit
        )
        assert [t.info.trace_id for t in page] == expected[:limit]
        assert (page.token is None) == (len(expected) <= limit)
    walked = _all_pages(wide.client, filter_string=filter_string, order_by=order_by, max_results=53)
    assert walked == expected


@pytest.mark.parametrize(
    "filter_string",
    [
        "status = 'ERROR' AND tags.env = 'production'",
        "status = 'OK' AND tags.env = 'production' AND execution_time_ms > 100",
        "tags.env = 'production' AND status = 'ERROR' AND tags.user LIKE 'user_1%'",
        "status = 'ERROR' AND tags.env = 'production' AND tags.user IS NOT NULL",
    ],
)
@pytest.mark.parametrize("order_by", [["request_id"], ["request_id DESC", "timestamp_ms"]])
def test_collecting_an_intersection_of_chunked_sets_equals_the_reference(
    wide: Loaded, filter_string: str, order_by: list[str]
) -> None:
    """Candidates from a chunked set whose residual ANDs other chunked sets come from one
    SINTER per chunk; the rest of the filter is tested on the intersection.  Ordering by
    request_id collects when the partition has no byte order of its ids (folded before it
    existed); with it, dense filters walk the ids instead (tests/test_id_order.py)."""
    r, prefix = wide.client.redis, wide.client.keys.prefix(0)
    for key in [*r.scan_iter(match=f"{prefix}:ri*", count=1000)]:
        r.delete(key)  # every answer stays the same; only the strategy may change
    explained = wide.client.explain(filter_string, order_by=order_by)
    assert "strategy: collect" in explained and "source" in explained, explained
    for scope in (None, ["1", "2", "10"], ["2"]):
        expected = ref.search(wide.final, scope, filter_string, order_by, None)
        walked = _all_pages(
            wide.client,
            experiment_ids=scope,
            filter_string=filter_string,
            order_by=order_by,
            max_results=61,
        )
        assert walked == expected
        assert wide.client.count(filter_string, scope) == len(expected)


def test_a_reused_probe_never_hides_a_value_that_appeared_since(
    settings: Settings, r: redis.Redis
) -> None:
    """Page plans of value/range/presence terms reuse a recent probe (it only sizes the
    terms); a value the probe did not know must still be read by tt_query."""
    from tracetags.query import executor

    traces, _ = qd.generate(29, 300)
    client = Client(settings)
    qd.load(r, client.keys, 2, traces)
    queries = [
        "tags.env = 'brand-new'",
        "tags.env IN ('brand-new', 'production')",
        "tags.env = 'brand-new' AND status = 'OK'",
    ]
    before = {q: [t.info.trace_id for t in client.search_traces(filter_string=q)] for q in queries}
    assert before[queries[0]] == []
    assert executor.prepare(None, queries[1]) is executor.prepare(None, queries[1])
    chosen = [t["trace_id"] for t in traces if t["status"] == "OK"][:3]
    qd.apply_events(
        r,
        client.keys,
        2,
        [
            qd.mutation_event({"op": "set", "trace_id": i, "key": "env", "value": "brand-new"})
            for i in chosen
        ],
    )
    final = ref.apply_mutations(
        traces, [{"op": "set", "trace_id": i, "key": "env", "value": "brand-new"} for i in chosen]
    )
    for q in queries:
        got = [t.info.trace_id for t in client.search_traces(filter_string=q)]
        assert got == ref.search(final, None, q, None, 100), q
        assert set(chosen) <= set(got) or "production" in q
    # clear_caches() forgets every remembered parse and probe: the next call starts cold
    again = executor.prepare(None, queries[1])
    executor.clear_caches()
    assert executor.prepare(None, queries[1]) is not again
    got = [t.info.trace_id for t in client.search_traces(filter_string=queries[0])]
    assert got == ref.search(final, None, queries[0], None, 100)
    client.close()


@pytest.mark.parametrize("timestamps", ["in load order", "random"])
def test_walks_over_chunked_sets_equal_the_reference(
    settings: Settings, r: redis.Redis, timestamps: str
) -> None:
    """A walk tests its candidates against each chunk's intersection (read once) when they
    share chunks (trace numbers follow time), and per chunk with SMISMEMBER when they
    spread over many (numbers unrelated to time); the chunked sets of an AND first, then the
    rest of it on the survivors."""
    traces, mutations = qd.generate(31, 3000, dense=True, n_mutations=150)
    if timestamps == "in load order":
        for index, trace in enumerate(traces):
            trace["timestamp_ms"] = qd.BASE_MS + index * 3 - index % 5
    client = Client(settings)
    qd.load(r, client.keys, 1, traces, mutations)
    final = ref.apply_mutations(traces, mutations)
    for filter_string, order_by in [
        ("tags.env = 'production' AND status = 'OK'", None),
        ("status = 'OK' AND tags.env = 'production'", ["timestamp_ms ASC"]),
        ("tags.env = 'production' AND status = 'OK' AND tags.user IS NOT NULL", None),
        ("status = 'OK'", None),
        ("tags.env = 'production'", ["execution_time_ms DESC"]),
        # the chunked sets are tested before the range and the plain sets of the LIKE
        ("execution_time_ms > 50 AND tags.env = 'production' AND status = 'OK'", None),
        ("status = 'OK' AND tags.user LIKE 'user_%' AND tags.env = 'production'", None),
    ]:
        expected = ref.search(final, None, filter_string, order_by, None)
        explained = client.explain(filter_string, order_by=order_by, max_results=37)
        assert "strategy: walk" in explained, explained
        page = client.search_traces(filter_string=filter_string, order_by=order_by, max_results=37)
        assert [t.info.trace_id for t in page] == expected[:37]
        walked = _all_pages(client, filter_string=filter_string, order_by=order_by, max_results=211)
        assert walked == expected
    client.close()


def test_a_count_within_every_experiment_is_read_from_index_sizes(dense: Loaded) -> None:
    every = sorted({t["experiment_id"] for t in dense.final})
    for filter_string in ("tags.env = 'production'", "status = 'OK'", None):
        explained = dense.client.explain(filter_string, every, count=True)
        assert explained.count("exact from index sizes") == 2, explained
        expected = ref.search(dense.final, every, filter_string, None, None)
        assert dense.client.count(filter_string, every) == len(expected)
    partial = dense.client.explain("tags.env = 'production'", every[:1], count=True)
    assert "exact from index sizes" not in partial, partial


@pytest.mark.parametrize("order_by", [["tags.user"], ["tags.user DESC", "timestamp_ms ASC"]])
def test_walking_many_distinct_values_of_a_broad_filter_equals_the_reference(
    wide: Loaded, order_by: list[str]
) -> None:
    """~650 users for ~1,800 candidates: walking the values in order (a few groups fill a
    page) is chosen over reading every candidate's key from its hash."""
    explained = wide.client.explain("status = 'OK'", order_by=order_by)
    assert "strategy: walk-values" in explained, explained
    expected = ref.search(wide.final, None, "status = 'OK'", order_by, None)
    page = wide.client.search_traces(filter_string="status = 'OK'", order_by=order_by)
    assert [t.info.trace_id for t in page] == expected[:100]
    walked = _all_pages(
        wide.client, filter_string="status = 'OK'", order_by=order_by, max_results=113
    )
    assert walked == expected


@pytest.mark.parametrize(
    ("total", "expected"), [(100_000, "collect"), (1_000_000, "walk")], ids=["100k", "1M"]
)
def test_a_broad_range_source_is_walked_at_scale_and_collected_when_small(
    total: int, expected: str
) -> None:
    """Collecting from a range costs ~1 us per candidate (they scatter over every chunk)
    and grows with the data, while walking ts until a page of this density is full does
    not: `production AND ERROR AND execution_time_ms > 5000` (the benchmark's densities)
    collects at 100k traces and walks at 1M."""
    from tracetags.query.parser import effective_order, parse_order_by
    from tracetags.query.physical import _and, _leaf
    from tracetags.query.strategy import plan_partition

    slow = _leaf("R", ["R", "du", "(5000", "+inf"], 0.0333 * total, "slow", enumerable=True)
    errors = _leaf("V", ["V", "std", "st:", "ERROR"], 0.196 * total, "err", enumerable=True)
    prod = _leaf("V", ["V", "td", "tv", "production"], 0.7 * total, "env", enumerable=True)
    tree = _and([slow, errors, prod], total)
    order = effective_order(parse_order_by(None))
    plan = plan_partition(0, tree, total, mode="page", order=order, limit=101)
    assert plan.strategy == expected, plan.reason
    # a term of many small sets (LIKE 'user_12%': 2.3 % of the traces) walks at both sizes
    users = _leaf("V", ["V", "td", "tv", "u"], 0.023 * total, "users", enumerable=True)
    plan = plan_partition(0, users, total, mode="page", order=order, limit=101)
    assert plan.strategy == "walk", plan.reason


# --- LIKE sought in the byte-order index ------------------------------------------------------

_LEX_ALPHABET = ["a", "b", "_", "%", "ä", "\u4e2d", "\U0001f600", "Z", "0"]


def _one_tag(key: str, values: list[str], digits: int = 3) -> list[dict[str, Any]]:
    """One trace per value of tag key, a millisecond apart (tr-000, tr-001, ...)."""
    return [
        {
            "trace_id": f"tr-{i:0{digits}d}",
            "experiment_id": "1",
            "timestamp_ms": qd.BASE_MS + i,
            "execution_time_ms": 5,
            "status": "OK",
            "tags": {key: value},
            "metadata": {},
        }
        for i, value in enumerate(values)
    ]


@pytest.fixture(scope="module", params=["indexed", "unindexed", "lookups"])
def many_values(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Loaded]:
    """One partition, ~1,500 distinct short values of `v` over a small alphabet (with 2-, 3-
    and 4-byte characters and the wildcard characters themselves): a byte-order index of
    many buckets, where a LIKE start with `_` needs a seek per distinct continuation.
    "unindexed" deletes the index (data folded before it existed): a page's tt_query then
    matches the pattern's lead against every value itself."""
    rng = __import__("random").Random(23)
    values = [
        "".join(rng.choice(_LEX_ALPHABET) for _ in range(rng.randrange(0, 6))) for _ in range(2400)
    ]
    traces = _one_tag("v", values, digits=5)
    loaded = Loaded(redis_url, 1, traces, [])
    r, keys = loaded.client.redis, loaded.client.keys
    assert r.zcard(f"{keys.tag_values(0, 'v')}:L") > 10
    if request.param == "unindexed":
        r.delete(*r.scan_iter(match=f"{loaded.namespace}:*:L*", count=1000))
    if request.param == "lookups":
        _build_lookups(loaded, redis_url, ["tv"])
    yield loaded
    loaded.drop()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(pattern=st.lists(st.sampled_from([*_LEX_ALPHABET[:7], "_", "%"]), max_size=6).map("".join))
def test_like_sought_in_the_byte_order_index_equals_the_reference(
    many_values: Loaded, pattern: str
) -> None:
    filter_string = f"tags.v LIKE '{pattern}'"
    expected = ref.search(many_values.final, None, filter_string, None, None)
    assert many_values.client.count(filter_string) == len(expected)
    page = many_values.client.search_traces(filter_string=filter_string, max_results=1000)
    assert [t.info.trace_id for t in page] == expected[:1000]


def test_a_like_sought_by_the_page_sees_values_changed_after_the_probe(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's probe only counts the values of `LIKE 'u_1%'`; its tt_query seeks them again.
    Tags changed between the two (a value gone, a new one, a trace moved out of the pattern)
    are what the page shows: the rows are those matching when the page ran."""
    traces = _one_tag("user", [f"u{i % 7}{i % 3}" for i in range(60)])
    loaded = Loaded(redis_url, 1, traces, [])
    filter_string = "tags.user LIKE 'u_1%'"
    assert "sought by tt_query" in loaded.client.explain(filter_string)
    mutations = [
        {"op": "set", "trace_id": "tr-001", "key": "user", "value": "zz"},  # leaves u11
        {"op": "set", "trace_id": "tr-002", "key": "user", "value": "u91"},  # a new value
        {"op": "delete", "trace_id": "tr-004", "key": "user"},  # u41 loses a trace
        *(
            {"op": "set", "trace_id": t["trace_id"], "key": "user", "value": "gone"}
            for t in traces
            if t["tags"]["user"] == "u01"  # a value that leaves the index
        ),
    ]
    real = executor._make_plans
    changed: list[bool] = []

    def after_the_probe(*args: Any, **kwargs: Any) -> Any:
        if not changed:
            r, keys = loaded.client.redis, loaded.client.keys
            qd.apply_events(r, keys, 1, [qd.mutation_event(m) for m in mutations])
            changed.append(True)
        return real(*args, **kwargs)

    try:
        monkeypatch.setattr(executor, "_make_plans", after_the_probe)
        executor.clear_caches()
        page = loaded.client.search_traces(filter_string=filter_string, max_results=100)
        assert changed
        final = ref.apply_mutations(traces, mutations)
        expected = ref.search(final, None, filter_string, None, None)
        assert [t.info.trace_id for t in page] == expected
        assert "tr-002" in expected and "tr-001" not in expected and "tr-004" not in expected
    finally:
        loaded.drop()


def test_a_fingerprint_shared_with_a_wanted_value_is_checked_on_the_register(
    redis_url: str,
) -> None:
    """Lookup fingerprints are 16 bits: a value outside the pattern whose fingerprint equals a
    matching value's must not match (tt_query reads the register of every wanted
    fingerprint); values changed after the build are seen through the fold."""
    wanted = "user_10"
    target = functions.fingerprint(wanted)
    twin = next(f"zz{i}" for i in itertools.count() if functions.fingerprint(f"zz{i}") == target)
    users = [[wanted, twin, f"user_{i}", f"other_{i}"][i % 4] for i in range(400)]
    traces = _one_tag("user", users)
    loaded = Loaded(redis_url, 1, traces, [])
    try:
        _build_lookups(loaded, redis_url, ["tuser"])
        mutations = [{"op": "set", "trace_id": "tr-002", "key": "user", "value": "user_1x"}]
        r, keys = loaded.client.redis, loaded.client.keys
        qd.apply_events(r, keys, 1, [qd.mutation_event(m) for m in mutations])
        final = ref.apply_mutations(traces, mutations)
        for filter_string in ("tags.user LIKE 'user_1%'", "tags.user LIKE 'user_10%'"):
            expected = ref.search(final, None, filter_string, None, None)
            walked = _all_pages(loaded.client, filter_string=filter_string, max_results=30)
            assert walked == expected, filter_string
            assert all(final_tag(final, t) != twin for t in walked)
        assert "tr-002" in ref.search(final, None, "tags.user LIKE 'user_1%'", None, None)
    finally:
        loaded.drop()


def final_tag(final: Any, trace_id: str) -> str | None:
    tags: dict[str, str] = next(t["tags"] for t in final if t["trace_id"] == trace_id)
    return tags.get("user")


def test_a_redis_that_went_away_raises_redis_unavailable(own_redis: Any) -> None:
    """The read side names the URL in a ConnectionError (and TracetagsError) instead of
    leaking redis-py's exceptions; the server back, the same client works again."""
    from tracetags.errors import RedisUnavailableError, TracetagsError

    settings = Settings(redis_url=own_redis.url, namespace="tt-gone")
    with Client(settings) as client:
        assert client.search_traces(filter_string="status = 'OK'") == []
        own_redis.stop()
        calls = [
            lambda: client.search_traces(filter_string="status = 'OK'"),
            lambda: client.count("status = 'OK'"),
            lambda: client.get_trace("tr-1"),
            lambda: client.status(),
        ]
        for call in calls:
            with pytest.raises(RedisUnavailableError) as raised:
                call()
            assert isinstance(raised.value, ConnectionError)
            assert isinstance(raised.value, TracetagsError)
            assert own_redis.url in str(raised.value)
        own_redis.start()
        assert client.count("status = 'OK'") == 0


# --- the chunk walk (newest first, chunk by chunk) ----------------------------------------


def _timed(redis_url: str, order: str) -> Loaded:
    """One partition, 3,000 traces with dense env/status sets; timestamps rising with the
    trace numbers ("rising", as traces are folded in time), shuffled, or falling; 40 traces
    made by a tag alone (no timestamp: they sort last)."""
    rng = __import__("random").Random(29)
    traces, mutations = qd.generate(31, 3000, dense=True, n_mutations=150)
    stamps = [qd.BASE_MS + 7 * i + rng.randrange(5) for i in range(len(traces))]
    if order == "shuffled":
        rng.shuffle(stamps)
    elif order == "falling":
        stamps.reverse()
    for index, (trace, stamp) in enumerate(zip(traces, stamps, strict=True)):
        trace["timestamp_ms"] = stamp
        if index % 5 == 0:
            trace["tags"]["ab"] = "x"  # 600 traces: a chunked set
    loaded = Loaded(redis_url, 1, traces, mutations)
    untimed = [
        schemas.TagsSet(
            trace_id=f"tr-untimed-{i}",
            event_id=os.urandom(16),
            emitted_at_ms=1,
            tags={"env": "production", "ab": "x"},
        )
        for i in range(40)
    ]
    qd.apply_events(loaded.client.redis, loaded.client.keys, 1, untimed)
    for event in untimed:
        loaded.final.append(
            {
                "trace_id": event.trace_id,
                "experiment_id": None,
                "timestamp_ms": None,
                "execution_time_ms": None,
                "status": None,
                "name": None,
                "client_request_id": None,
                "tags": dict(event.tags),
                "metadata": {},
            }
        )
    return loaded


@pytest.fixture(scope="module", params=["rising", "shuffled", "falling"])
def timed(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Loaded]:
    loaded = _timed(redis_url, request.param)
    yield loaded
    loaded.drop()


CHUNK_WALK_FILTERS = [
    "tags.env = 'production' AND status = 'ERROR'",
    "tags.env = 'production' AND status = 'ERROR' AND execution_time_ms > 300",
    "tags.env = 'production' AND status = 'OK' AND tags.user IS NOT NULL",
    "status = 'ERROR' AND tags.env = 'production' AND name = 'chat'",
    "tags.env = 'production' AND NOT (tags.note IS NULL)",
    "tags.env = 'production' AND tags.user IS NULL",  # the untimed traces too, last
    "tags.env = 'production' AND tags.ab = 'x'",  # the untimed traces too, last
]


@pytest.mark.parametrize("filter_string", CHUNK_WALK_FILTERS)
def test_chunk_walk_pages_equal_the_reference(timed: Loaded, filter_string: str) -> None:
    """Whatever the relation of times and trace numbers (the walk gives up on a bad one),
    first pages of every size equal the reference, traces without timestamp last."""
    expected = ref.search(timed.final, None, filter_string, None, None)
    for max_results in (1, 10, 100, 1000, 5000):
        page = timed.client.search_traces(filter_string=filter_string, max_results=max_results)
        assert [t.info.trace_id for t in page] == expected[:max_results], max_results
    walked = _all_pages(timed.client, filter_string=filter_string, max_results=97)
    assert walked == expected


def test_chunk_walk_is_chosen_and_needs_the_time_bounds(redis_url: str) -> None:
    loaded = _timed(redis_url, "rising")
    try:
        filter_string = CHUNK_WALK_FILTERS[0]
        explained = loaded.client.explain(filter_string)
        assert "strategy: chunk-walk" in explained, explained
        assert "chunk-walk" not in loaded.client.explain(
            filter_string, order_by=["timestamp_ms ASC"]
        )
        # Every chunk visited, then the traces without timestamp: the page runs past them.
        with_untimed = "tags.env = 'production' AND tags.ab = 'x'"
        explained = loaded.client.explain(with_untimed, max_results=1000)
        assert "strategy: chunk-walk" in explained, explained
        everything = ref.search(loaded.final, None, with_untimed, None, None)
        assert sum(t.startswith("tr-untimed") for t in everything[-40:]) == 40
        page = loaded.client.search_traces(filter_string=with_untimed, max_results=1000)
        assert [t.info.trace_id for t in page] == everything
        expected = ref.search(loaded.final, None, filter_string, None, None)
        # A partition folded before tsx existed has none: the ts walk serves it.
        r, keys = loaded.client.redis, loaded.client.keys
        r.delete(keys.time_bounds(0))
        executor.clear_caches()
        assert "chunk-walk" not in loaded.client.explain(filter_string)
        page = loaded.client.search_traces(filter_string=filter_string)
        assert [t.info.trace_id for t in page] == expected[:100]
    finally:
        loaded.drop()


def test_chunk_walk_gives_up_when_times_and_numbers_do_not_go_together(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12,000 traces (24 chunks) whose timestamps ignore the order they were folded in:
    every chunk's bound is near the top, so the walk would visit them all; past its budget
    (here forced to 8 chunks) it gives up and the ts walk answers: the same rows."""
    from tracetags.query import costs

    rng = __import__("random").Random(37)
    traces, _ = qd.generate(41, 12_000, dense=True)
    for trace in traces:
        trace["timestamp_ms"] = qd.BASE_MS + rng.randrange(10_000_000)
    loaded = Loaded(redis_url, 1, traces, [])
    monkeypatch.setattr(costs, "chunk_walk_cost", lambda tree, total, limit: (1.0, 1.0))
    try:
        filter_string = "tags.env = 'production' AND status = 'ERROR' AND name = 'chat'"
        explained = loaded.client.explain(filter_string)
        assert "strategy: chunk-walk" in explained and "past 8 tt_query walks ts" in explained
        expected = ref.search(loaded.final, None, filter_string, None, None)
        for max_results in (10, 100, 1000):
            page = loaded.client.search_traces(filter_string=filter_string, max_results=max_results)
            assert [t.info.trace_id for t in page] == expected[:max_results]
    finally:
        loaded.drop()


def test_chunk_walk_after_traces_move_in_time_and_go(redis_url: str) -> None:
    """Bounds only rise: traces moved to a later time raise their chunk's bound, traces moved
    earlier or deleted leave it high (a wasted visit, never a missed row).  Pages of every
    size still equal the reference."""
    rng = __import__("random").Random(43)
    loaded = _timed(redis_url, "rising")
    try:
        final = {t["trace_id"]: t for t in loaded.final if t["timestamp_ms"] is not None}
        ids = sorted(final)
        events: list[schemas.Event] = []
        top = max(t["timestamp_ms"] for t in final.values())
        for trace_id in rng.sample(ids, 400):
            trace = dict(final[trace_id])
            later = rng.random() < 0.5
            trace["timestamp_ms"] = top + rng.randrange(1, 50_000) if later else qd.BASE_MS - 5
            final[trace_id].update(timestamp_ms=trace["timestamp_ms"])
            events.extend(qd.trace_events(trace))
        gone = rng.sample([i for i in ids if i not in {e.trace_id for e in events}], 300)
        events.extend(schemas.TraceDeleted(**qd._common(trace_id)) for trace_id in gone)
        qd.apply_events(loaded.client.redis, loaded.client.keys, 1, events)
        loaded.final = [t for t in loaded.final if t["trace_id"] not in set(gone)]
        executor.clear_caches()
        for filter_string in CHUNK_WALK_FILTERS:
            expected = ref.search(loaded.final, None, filter_string, None, None)
            for max_results in (5, 100, 1000):
                page = loaded.client.search_traces(
                    filter_string=filter_string, max_results=max_results
                )
                assert [t.info.trace_id for t in page] == expected[:max_results], filter_string
        assert "strategy: chunk-walk" in loaded.client.explain(CHUNK_WALK_FILTERS[0])
    finally:
        loaded.drop()


def test_a_chunk_walk_without_a_chunked_set_at_run_time_falls_back(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner counts a single dense value as a chunked set; tt_query may find none (a
    scope naming every trace is no test at all, a count may have fallen since the probe):
    then it walks or collects instead, and the rows are the same."""
    from tracetags.query import costs

    traces, _ = qd.generate(47, 1200)
    for index, trace in enumerate(traces):
        trace["experiment_id"] = "1"
        trace["tags"]["user"] = f"user_{index % 40}"
    loaded = Loaded(redis_url, 1, traces, [])
    monkeypatch.setattr(costs, "chunk_walk_cost", lambda tree, total, limit: (1.0, 1.0))
    try:
        filter_string = "tags.user = 'user_3'"
        explained = loaded.client.explain(filter_string, experiment_ids=["1"])
        assert "strategy: chunk-walk" in explained, explained
        expected = ref.search(loaded.final, ["1"], filter_string, None, None)
        page = loaded.client.search_traces(experiment_ids=["1"], filter_string=filter_string)
        assert [t.info.trace_id for t in page] == expected
    finally:
        loaded.drop()


@pytest.mark.parametrize("order_by", [["tags.env"], ["tags.env DESC"], ["tags.ab DESC"]])
def test_chunk_walks_inside_value_groups_page_through_untimed_traces(
    timed: Loaded, order_by: list[str]
) -> None:
    """Ordered by a tag, each value's group is walked newest first (by chunks where the
    times allow); pages of 13 cross group ends and the untimed traces at each group's end."""
    for filter_string in ("tags.ab = 'x'", "tags.env = 'production' AND tags.ab = 'x'", None):
        expected = ref.search(timed.final, None, filter_string, order_by, None)
        walked = _all_pages(
            timed.client, filter_string=filter_string, order_by=order_by, max_results=13
        )
        assert walked == expected, (filter_string, order_by)
