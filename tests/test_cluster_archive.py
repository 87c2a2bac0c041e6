"""The log's life on a Redis Cluster: archive and trim, replay into the cluster (from the
cluster and from one Redis), digest and verify, through the CLI, each partition on its
primary."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.support.cluster import LocalCluster
from tests.support.fold import fold_all
from tests.support.helpers import drop_namespace
from tracetags import TagProducer
from tracetags.cli import app
from tracetags.client import Client
from tracetags.connections import sync_client
from tracetags.settings import Settings

runner = CliRunner()


@pytest.fixture
def names(redis_url: str, redis_cluster: LocalCluster) -> Iterator[dict[str, str]]:
    made = {k: f"tt-ca-{k}-{uuid.uuid4().hex[:8]}" for k in ("src", "copy", "single", "moved")}
    yield made
    for url in (redis_url, redis_cluster.url):
        client = sync_client(url)
        try:
            for namespace in made.values():
                drop_namespace(client, namespace)
        finally:
            client.close()


def _write(settings: Settings, seed: int, events: int) -> None:
    """Traces started, tagged, untagged and finished, in a random order of calls."""
    rng = random.Random(seed)
    producer = TagProducer(settings)
    try:
        ids = [f"tr-{seed}-{i:04d}" for i in range(events // 4)]
        for trace_id in ids:
            producer.trace_started(
                trace_id,
                experiment_id=str(rng.randrange(3)),
                timestamp_ms=1_700_000_000_000 + rng.randrange(10**6),
                tags={"env": rng.choice(["prod", "dev"])},
            )
        for _ in range(events - 2 * len(ids)):
            trace_id = rng.choice(ids)
            if rng.random() < 0.8:
                producer.set_tags(trace_id, {rng.choice("abc"): str(rng.randrange(5))})
            else:
                producer.delete_tags(trace_id, [rng.choice("abc")])
        for trace_id in ids:
            producer.trace_finished(
                trace_id,
                experiment_id="0",
                timestamp_ms=1_700_000_000_000,
                execution_time_ms=rng.randrange(1000),
                status=rng.choice(["OK", "ERROR"]),
            )
        producer.flush()
    finally:
        producer.close()


def _fold(settings: Settings) -> int:
    client = Client(settings)
    try:
        return fold_all(client.redis, settings, client.partitions)
    finally:
        client.close()


def _cli(url: str, namespace: str, *args: str, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(app, ["--redis-url", url, "--namespace", namespace, *args], env=env)
    assert result.exit_code == 0, (args, result.output)
    return result


def test_archive_replay_digest_round_trip_on_a_cluster(
    redis_url: str, redis_cluster: LocalCluster, names: dict[str, str], tmp_path: Path
) -> None:
    url = redis_cluster.url
    env = {"TRACETAGS_ARCHIVE_URL": f"file://{tmp_path / 'archive'}",
           "TRACETAGS_LOG_RETENTION": "0", "TRACETAGS_ARCHIVE_MAX_ROWS": "100"}  # fmt: skip
    source = Settings(redis_url=url, namespace=names["src"], flush_interval_ms=2)
    _write(source, seed=1, events=1200)
    assert _fold(source) == 1200
    archived = _cli(url, names["src"], "archive", env=env).stdout
    assert archived.count("partition ") == 16
    status = json.loads(_cli(url, names["src"], "status", "--format", "json", env=env).stdout)
    assert sum(p["stream_length"] for p in status["partitions"]) == 0  # archived and trimmed
    assert sum(p["archive"]["archived_rows"] for p in status["partitions"]) == 1200
    # later events stay in the tail: the replay reads the archive, then the tail
    _write(source, seed=2, events=400)
    assert _fold(source) == 400

    args = ("replay", "--into", names["copy"], "--format", "json")
    replayed = json.loads(_cli(url, names["src"], *args, env=env).stdout)
    assert replayed["entries"] == 1600
    assert sum(p["from_archive"] for p in replayed["partitions"]) == 1200
    _cli(url, names["src"], "verify", names["src"], names["copy"])
    a = json.loads(_cli(url, names["src"], "digest", "--format", "json").stdout)
    b = json.loads(_cli(url, names["copy"], "digest", "--format", "json").stdout)
    assert a["digest"] == b["digest"] and a["traces"] == b["traces"] == 300 + 100

    # from one Redis into the cluster: the same state, the partition count kept
    single = Settings(redis_url=redis_url, namespace=names["single"], flush_interval_ms=2)
    _write(single, seed=3, events=800)
    assert _fold(single) == 800
    _cli(redis_url, names["single"], "replay", "--into", names["moved"],
         "--redis-url-into", url)  # fmt: skip
    _cli(redis_url, names["single"], "verify", names["single"], names["moved"],
         "--redis-url-b", url)  # fmt: skip
    with Client(single) as one, Client(Settings(redis_url=url, namespace=names["moved"])) as two:
        assert two.partitions == one.partitions == 1
        for number in range(0, 200, 17):
            trace_id = f"tr-3-{number:04d}"
            a_trace, b_trace = one.get_trace(trace_id), two.get_trace(trace_id)
            assert a_trace is not None and b_trace is not None
            assert a_trace.info == b_trace.info
