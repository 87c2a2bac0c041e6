"""Queries, status and the CLI on a Redis Cluster: one dataset loaded into one Redis with 1 and
with 16 partitions and into the local cluster (16 partitions over 3 primaries) answers every
search (all pages), count and stats alike, and as the reference model says."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.cluster import LocalCluster
from tests.support.fold import fold_all
from tests.support.helpers import drop_namespace
from tracetags import schemas
from tracetags.cli import app
from tracetags.client import Client
from tracetags.embedded import free_port
from tracetags.keys import Keys, partition_of
from tracetags.query import pages
from tracetags.settings import Settings
from tracetags.topology import partition_slot

runner = CliRunner()


class Loaded:
    def __init__(self, redis_url: str, partitions: int, traces: Any, mutations: Any) -> None:
        self.namespace = f"tt-cq-{uuid.uuid4().hex[:10]}"
        self.settings = Settings(
            redis_url=redis_url, namespace=self.namespace, partitions=partitions
        )
        self.client = Client(self.settings)
        qd.load(self.client.redis, self.client.keys, partitions, traces, mutations)

    def drop(self) -> None:
        drop_namespace(self.client.redis, self.namespace)
        self.client.close()


class Copies:
    def __init__(self, final: list[dict[str, Any]], loaded: dict[str, Loaded]) -> None:
        self.final = final
        self.loaded = loaded


@pytest.fixture(scope="module")
def copies(redis_url: str, redis_cluster: LocalCluster) -> Iterator[Copies]:
    traces, mutations = qd.generate(23, 700, n_mutations=200)
    loaded = {
        "single P=1": Loaded(redis_url, 1, traces, mutations),
        "single P=16": Loaded(redis_url, 16, traces, mutations),
        "cluster P=16": Loaded(redis_cluster.url, 16, traces, mutations),
    }
    yield Copies(ref.apply_mutations(traces, mutations), loaded)
    for one in loaded.values():
        one.drop()


VALUES = ["production", "staging", "Production", "", "user_1", "user_10", "a%b", "äö", "x'y",
          "1", "10", "api", "batch", "run1", "OK", "ERROR", "IN_PROGRESS", "nope"]  # fmt: skip
PATTERNS = ["prod%", "%ion", "P%", "user\\_1%", "%ö", "%'%", "a\\%b", "%r%", "_"]
FIELDS = ["tags.env", "tags.user", "tags.retries", "tags.note", "metadata.source",
          "metadata.mlflow.sourceRun", "run_id", "name", "tags.missing"]  # fmt: skip
ORDERABLE = ["timestamp_ms", "execution_time_ms", "end_time_ms", "status", "request_id",
             "experiment_id", "name", "tags.env", "tags.retries", "metadata.source",
             "tags.user"]  # fmt: skip
GROUPS = [[], ["status"], ["tags.env"], ["tags.env", "status"], ["metadata.source"],
          ["experiment_id"]]  # fmt: skip


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def _clause(rng: random.Random, stamps: list[int]) -> str:
    kind = rng.choice(["kv", "kv", "kv", "status", "time", "duration"])
    if kind == "status":
        return f"status {rng.choice(['=', '!='])} {_quote(rng.choice(['OK', 'ERROR']))}"
    if kind == "time":
        return f"timestamp_ms {rng.choice(['<', '>=', '>'])} {rng.choice(stamps)}"
    if kind == "duration":
        return f"execution_time_ms {rng.choice(['<', '>'])} {rng.choice([10, 100, 1000])}"
    field = rng.choice(FIELDS)
    op = rng.choice(["=", "!=", "LIKE", "ILIKE", "IN", "NOT IN", "IS NULL", "IS NOT NULL"])
    if op.startswith("IS"):
        return f"{field} {op}"
    if op.endswith("IN"):
        values = rng.sample(VALUES, rng.randint(1, 3))
        return f"{field} {op} ({', '.join(_quote(v) for v in values)})"
    if "LIKE" in op:
        return f"{field} {op} {_quote(rng.choice(PATTERNS))}"
    return f"{field} {op} {_quote(rng.choice(VALUES))}"


def _filter(rng: random.Random, stamps: list[int]) -> str | None:
    shape = rng.choice(["none", "one", "and", "or", "nested"])
    if shape == "none":
        return None
    a, b, c = (_clause(rng, stamps) for _ in range(3))
    return {
        "one": a,
        "and": f"{a} AND {b}",
        "or": f"{a} OR {b}",
        "nested": f"({a} OR {b}) AND NOT ({c})",
    }[shape]


def _order(rng: random.Random) -> list[str] | None:
    keys = rng.sample(ORDERABLE, rng.randint(0, 2))
    return [f"{k} {rng.choice(['ASC', 'DESC', ''])}".strip() for k in keys] or None


def _walk(client: Client, filter_string: str | None, order_by: Any, limit: int) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = client.search_traces(None, filter_string, order_by, limit, token)
        ids.extend(t.info.trace_id for t in page)
        token = page.token
        if token is None:
            return ids
        assert len(page) == limit


@pytest.mark.parametrize("seed", range(6))
def test_single_node_and_cluster_answer_alike(copies: Copies, seed: int) -> None:
    rng = random.Random(seed)
    stamps = sorted({t["timestamp_ms"] for t in copies.final})
    for _ in range(8):
        filter_string, order_by = _filter(rng, stamps), _order(rng)
        limit = rng.choice([1, 7, 50, 1000])
        expected = ref.search(copies.final, None, filter_string, order_by, None)
        if len(expected) > 40 * limit:
            limit = 100
        group_by = rng.choice(GROUPS)
        answers = {
            name: (
                _walk(one.client, filter_string, order_by, limit),
                one.client.count(filter_string),
                one.client.stats(filter_string, group_by=group_by),
            )
            for name, one in copies.loaded.items()
        }
        case = (filter_string, order_by, limit, group_by)
        assert answers["single P=1"] == answers["single P=16"] == answers["cluster P=16"], case
        walked, counted, _ = answers["cluster P=16"]
        assert walked == expected, case
        assert counted == len(expected), case


def test_stats_percentiles_merge_the_partitions_durations(copies: Copies) -> None:
    """A percentile of 16 partitions is the percentile of all durations, not a mean of the
    partitions' percentiles (exactly as on one partition)."""
    import statistics

    got = copies.loaded["cluster P=16"].client.stats("status = 'OK'")
    (row,) = got
    durations = sorted(
        t["execution_time_ms"]
        for t in copies.final
        if t["status"] == "OK" and t["execution_time_ms"] is not None
    )
    qs = statistics.quantiles(durations, n=100, method="inclusive")
    assert row["count"] == len(durations)
    assert row["p50"] == pytest.approx(statistics.median(durations))
    assert row["p95"] == pytest.approx(qs[94])
    assert row["p99"] == pytest.approx(qs[98])
    assert row["avg"] == pytest.approx(statistics.fmean(durations))


def test_point_reads_route_to_the_partitions_node(copies: Copies) -> None:
    client = copies.loaded["cluster P=16"].client
    for trace in copies.final[:40]:
        got = client.get_trace(trace["trace_id"])
        assert got is not None
        assert got.info.tags == trace["tags"]
        assert got.info.experiment_id == trace["experiment_id"]
    assert client.get_trace("tr-absent") is None


def test_status_names_the_primary_and_slot_of_every_partition(
    redis_cluster: LocalCluster, copies: Copies
) -> None:
    loaded = copies.loaded["cluster P=16"]
    report = loaded.client.status()
    assert report.cluster and report.condition is None
    keys = Keys(loaded.namespace)
    assert [row.partition for row in report.partitions] == list(range(16))
    for row in report.partitions:
        assert row.slot == partition_slot(keys, row.partition)
        owner = redis_cluster.owner_of_slot(row.slot)
        assert row.node == f"127.0.0.1:{owner.port}"
        expected = sum(1 for t in copies.final if partition_of(t["trace_id"], 16) == row.partition)
        assert row.traces == expected
    assert len(report.nodes) == 3
    assert sorted(p for n in report.nodes for p in n.partitions) == list(range(16))
    assert all(n.used_memory_bytes and n.error is None for n in report.nodes)
    assert report.used_memory_bytes == sum(n.used_memory_bytes or 0 for n in report.nodes)
    # status only reads: no node's stream got an entry
    assert all(row.stream_length == 0 for row in report.partitions)
    single = copies.loaded["single P=16"].client.status()
    assert not single.cluster and len(single.nodes) == 1
    assert {row.node for row in single.partitions} == {single.nodes[0].address}
    assert all(row.slot is None for row in single.partitions)


def test_status_reports_a_primary_that_does_not_answer(
    redis_cluster: LocalCluster, copies: Copies
) -> None:
    """A node is read on its own: one that refuses connections (here the client's
    connection to one primary points at a closed port: a primary down, not yet failed
    over) is reported, the others still are."""
    loaded = copies.loaded["cluster P=16"]
    client = Client(loaded.settings)
    try:
        victim = client.redis.get_primaries()[0]
        held = [row.partition for row in client.status().partitions if row.node == victim.name]
        assert held
        victim.redis_connection = redis.Redis(
            port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        report = client.status()
        assert report.condition == "UNREACHABLE"
        assert report.condition_detail is not None
        assert report.condition_detail.startswith(f"node {victim.name}: ")
        (down,) = [n for n in report.nodes if n.error is not None]
        assert down.address == victim.name and down.partitions == held
        assert [r.partition for r in report.partitions] == [p for p in range(16) if p not in held]
    finally:
        client.close()


def _cli(url: str, namespace: str, *args: str) -> Any:
    result = runner.invoke(app, ["--redis-url", url, "--namespace", namespace, *args])
    assert result.exit_code == 0, (args, result.output)
    return result


@pytest.fixture
def cluster_ns(redis_cluster: LocalCluster) -> Iterator[Settings]:
    namespace = f"tt-cc-{uuid.uuid4().hex[:10]}"
    settings = Settings(redis_url=redis_cluster.url, namespace=namespace, flush_interval_ms=2)
    yield settings
    client = Client(settings)
    try:
        drop_namespace(client.redis, namespace)
    finally:
        client.close()


def test_every_read_and_admin_command_works_on_a_cluster_url(
    redis_cluster: LocalCluster, cluster_ns: Settings
) -> None:
    url, ns = redis_cluster.url, cluster_ns.namespace
    traces, _ = qd.generate(5, 200)
    client = Client(cluster_ns)
    try:
        for trace in traces:
            _emit(client, trace)
        # an entry the fold cannot decode: dead-lettered on its partition's node
        client.redis.xadd(client.keys.stream(3), {schemas.ENTRY_FIELD: b"\xc1"})
        client.producer.flush()
        folded = fold_all(client.redis, cluster_ns, client.partitions)
        assert folded == len(traces) + 1
        assert client.partitions == 16
    finally:
        client.close()
    expected = ref.search(traces, None, "tags.env = 'production'", None, None)
    ids = _cli(url, ns, "search", "tags.env = 'production'", "--format", "ids",
               "--max-results", "1000").stdout.split()  # fmt: skip
    assert ids == expected
    assert int(_cli(url, ns, "count", "tags.env = 'production'").stdout) == len(expected)
    groups = json.loads(_cli(url, ns, "stats", "--group-by", "status", "--format", "json").stdout)
    assert sum(g["count"] for g in groups) == len(traces)
    got = json.loads(_cli(url, ns, "get", expected[0], "--format", "json").stdout)
    assert got["trace_id"] == expected[0] and got["tags"]["env"] == "production"
    assert "partition 15:" in _cli(url, ns, "explain", "tags.env = 'production'").stdout
    logged = _cli(url, ns, "log").stdout.splitlines()
    assert len(logged) == len(traces) + 1
    status = json.loads(_cli(url, ns, "status", "--format", "json").stdout)
    assert status["cluster"] and len(status["nodes"]) == 3
    assert sum(p["traces"] for p in status["partitions"]) == len(traces)
    assert sum(p["dead_letters"] for p in status["partitions"]) == 1
    assert "Redis Cluster: 3 primaries" in _cli(url, ns, "status").stdout
    dead = _cli(url, ns, "dead-letters", "list", "--format", "json").stdout.splitlines()
    assert [json.loads(line)["partition"] for line in dead] == [3]
    _cli(url, ns, "dead-letters", "retry")
    assert fold_all_settings(cluster_ns) == 1  # retried: back on the log, dead again
    _cli(url, ns, "tag", "set", "--filter", "tags.env = 'production'", "reviewed", "yes",
         "--no-wait")  # fmt: skip
    _cli(url, ns, "tag", "set", expected[0], "pinned", "1", "--no-wait")
    _cli(url, ns, "tag", "delete", expected[0], "env", "--no-wait")
    assert fold_all_settings(cluster_ns) == len(expected) + 2
    assert int(_cli(url, ns, "count", "tags.reviewed = 'yes'").stdout) == len(expected)
    got = json.loads(_cli(url, ns, "get", expected[0], "--format", "json").stdout)
    assert got["tags"]["pinned"] == "1" and "env" not in got["tags"]
    digest = json.loads(_cli(url, ns, "digest", "--format", "json").stdout)
    assert digest["traces"] == len(traces)
    _cli(url, ns, "verify", ns, ns)
    _cli(url, ns, "lookups", "drop", "tags.env")


def _emit(client: Client, trace: dict[str, Any]) -> None:
    common = {
        "experiment_id": trace["experiment_id"],
        "timestamp_ms": trace["timestamp_ms"],
        "name": trace.get("name"),
        "client_request_id": trace.get("client_request_id"),
        "metadata": trace["metadata"],
        "tags": trace["tags"],
    }
    if trace.get("execution_time_ms") is None:
        client.producer.trace_started(trace["trace_id"], **common)
    else:
        client.producer.trace_finished(
            trace["trace_id"],
            execution_time_ms=trace["execution_time_ms"],
            status=trace["status"],
            **common,
        )


def fold_all_settings(settings: Settings) -> int:
    client = Client(settings)
    try:
        return fold_all(client.redis, settings, client.partitions)
    finally:
        client.close()


@pytest.mark.parametrize("where", ["single", "cluster"])
def test_a_page_taken_from_one_partition_asks_it_again(
    redis_url: str, redis_cluster: LocalCluster, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition first shows a few more rows than its share of a page; when the page
    needs more of them (here the newest traces all hash to partition 0), that partition is
    asked again for a whole page, and the page equals the reference."""
    traces, _ = qd.generate(3, 400)
    for trace in traces:
        if partition_of(trace["trace_id"], 16) == 0:
            trace["timestamp_ms"] += 1_000_000
    loaded = Loaded(redis_url if where == "single" else redis_cluster.url, 16, traces, [])
    runs: list[int] = []
    real_run = pages.run_pages

    def counted(client: Any, keys: Keys, plans: Any, *rest: Any) -> list[Any]:
        runs.append(len(plans))
        return real_run(client, keys, plans, *rest)

    monkeypatch.setattr(pages, "run_pages", counted)
    try:
        in_first = sum(1 for t in traces if partition_of(t["trace_id"], 16) == 0)
        assert in_first > 20
        for limit in (20, in_first + 5):
            expected = ref.search(traces, None, None, ["timestamp_ms DESC"], None)
            runs.clear()
            assert _walk(loaded.client, None, ["timestamp_ms DESC"], limit) == expected
            assert runs[:2] == [16, 1]  # the first page: all 16, then partition 0 again
    finally:
        loaded.drop()


def test_queries_during_a_slot_migration_are_never_half_read(
    redis_cluster: LocalCluster, copies: Copies
) -> None:
    """While a partition's slot moves to another primary key batch by key batch, searches
    and counts that read it wait for the move (refused mid-way: TRYAGAIN) and answer as
    the reference does; none reads a partition half moved."""
    import threading
    import time

    loaded = copies.loaded["cluster P=16"]
    client = Client(loaded.settings)
    keys = Keys(loaded.namespace)
    slot = partition_slot(keys, 5)
    source = redis_cluster.owner_of_slot(slot)
    target = next(n for n in redis_cluster.primaries() if n is not source)
    asked = [("tags.env = 'production'", None), (None, ["timestamp_ms DESC"]),
             ("status = 'OK' OR tags.user LIKE 'user_1%'", ["tags.user"])]  # fmt: skip
    expected = [ref.search(copies.final, None, f, o, None) for f, o in asked]
    answers: list[bool] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            for (filter_string, order_by), wanted in zip(asked, expected, strict=True):
                try:
                    page = client.search_traces(None, filter_string, order_by, 50)
                    answers.append([t.info.trace_id for t in page] == wanted[:50])
                    answers.append(client.count(filter_string) == len(wanted))
                except Exception as exc:  # noqa: BLE001 - every failure is reported below
                    failures.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    try:
        for node in (target, source):  # there and back: the session's layout is kept
            redis_cluster.migrate_slot(slot, node, batch=15, pause_s=0.2)
            assert redis_cluster.owner_of_slot(slot) is node
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(60)
        client.close()
    assert failures == []
    assert answers and all(answers), answers.count(False)
    assert len(answers) > 20
