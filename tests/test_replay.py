"""Replay, digest and verify against a real Redis: random workloads folded by the real fold,
replayed into fresh namespaces, compared with the model (tests/model.py) and each other."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import redis
from typer.testing import CliRunner

from tests.support.helpers import drop_namespace, scratch_namespace, wait_until
from tests.support.model import FoldModel, dump, parse_entry_id
from tracetags import consumer, functions, schemas
from tracetags.archive import archive_once, manifest, segments
from tracetags.archive import digest as digests
from tracetags.archive import replay as replaying
from tracetags.archive.store import open_store
from tracetags.cli import app
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.errors import LogGapError, ReplayTargetError, ValidationError
from tracetags.keys import Keys, partition_of
from tracetags.settings import Settings

runner = CliRunner()
GROUP = "tracetags-fold"
BASE_MS = 1_780_000_000_000
TAG_KEYS = ["env", "model", "user", "mlflow.traceName", "a:b", "x y"]
VALUES = ["", "prod", "staging", "v1", "v2", "b:c", "é✓", "u1", "u2", "u3"]
GARBAGE = b"\xc1 not msgpack"

Entry = tuple[int, str, dict[bytes, bytes]]  # partition, entry id, fields


@pytest.fixture
def target(redis_url: str) -> Iterator[str]:
    """A second fresh namespace: where a replay goes."""
    with scratch_namespace(redis_url) as ns:
        yield ns


def _event(rng: random.Random, trace_id: str) -> schemas.Event:
    common: dict[str, Any] = {
        "trace_id": trace_id,
        "event_id": schemas.new_event_id(),
        "emitted_at_ms": 1,
    }

    def tags(n: int) -> dict[str, str]:
        return {rng.choice(TAG_KEYS): rng.choice(VALUES) for _ in range(rng.randrange(n))}

    kind = rng.choices(["S", "F", "T", "D", "X"], weights=[3, 3, 6, 2, 1])[0]
    if kind == "T":
        return schemas.TagsSet(**common, tags=tags(4) or {"env": "prod"})
    if kind == "D":
        return schemas.TagsDeleted(**common, keys=rng.sample(TAG_KEYS, rng.randrange(1, 3)))
    if kind == "X":
        return schemas.TraceDeleted(**common)
    fields: dict[str, Any] = {
        "experiment_id": rng.choice(["1", "2", "3"]),
        "timestamp_ms": BASE_MS + rng.randrange(10**6),
        "name": rng.choice([None, "chat", "embed"]),
        "client_request_id": rng.choice([None, "req-1", "req-2"]),
        "tags": tags(4),
        "metadata": {rng.choice(["region", "run"]): rng.choice(VALUES)},
    }
    if kind == "S":
        return schemas.TraceStarted(**common, **fields)
    return schemas.TraceFinished(
        **common,
        **fields,
        execution_time_ms=rng.randrange(10_000),
        status=rng.choice(schemas.TRACE_STATES),
    )


def produce(
    client: redis.Redis, namespace: str, *, seed: int, events: int, traces: int, partitions: int
) -> list[Entry]:
    """Write a random workload into the partitions' streams (with the explicit, increasing
    entry ids of a log spread over time, ms gaps of 0-50) and return it."""
    rng = random.Random(seed)
    keys = Keys(namespace)
    client.hset(keys.meta, mapping={"partitions": partitions, "created_ms": 1})
    ids = [f"tr-{seed}-{i}" for i in range(traces)]
    ms, written = BASE_MS, []
    pipe = client.pipeline(transaction=False)
    for n in range(events):
        ms += rng.choice([0, 0, 1, 3, 50])
        trace_id = rng.choice(ids)
        p = partition_of(trace_id, partitions)
        fields = {schemas.ENTRY_FIELD: schemas.encode(_event(rng, trace_id))}
        if rng.random() < 0.01:
            fields = {schemas.ENTRY_FIELD: GARBAGE + str(n).encode()}
        entry_id = f"{ms}-{n}"
        pipe.xadd(keys.stream(p), fields, id=entry_id)  # type: ignore[arg-type]
        written.append((p, entry_id, fields))
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    return written


def fold(client: redis.Redis, namespace: str, partitions: int, batch: int = 200) -> None:
    """Fold every partition's log with the consumer's decoding and the real Function."""
    keys = Keys(namespace)
    for p in range(partitions):
        stream = keys.stream(p)
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        while True:
            reply: Any = client.xreadgroup(GROUP, "c1", {stream: ">"}, count=batch)
            if not reply or not reply[0][1]:
                break
            items = consumer.decode_entries(reply[0][1])
            functions.apply_batch(client, keys, p, GROUP, items)


def models(entries: list[Entry], partitions: int, until: tuple[int, int] | None = None):  # type: ignore[no-untyped-def]
    out = {p: FoldModel() for p in range(partitions)}
    for p, entry_id, fields in entries:
        if until is not None and parse_entry_id(entry_id) > until:
            continue
        try:
            event = schemas.decode(fields[schemas.ENTRY_FIELD])
        except ValueError:
            continue
        out[p].apply(entry_id, event)
    return out


def assert_state(client: redis.Redis, namespace: str, expected: dict[int, FoldModel]) -> None:
    keys = Keys(namespace)
    for p, model in expected.items():
        assert dump(client, keys, p) == model.expected(keys, p), f"partition {p}"


def dead_letters(client: redis.Redis, namespace: str, partitions: int) -> list[str]:
    keys = Keys(namespace)
    out = []
    for p in range(partitions):
        for _, fields in client.xrange(keys.dead_letters(p)):
            out.append(fields[b"entry_id"].decode())
    return sorted(out)


def garbage_ids(entries: list[Entry], until: tuple[int, int] | None = None) -> list[str]:
    return sorted(
        e
        for _, e, f in entries
        if f[schemas.ENTRY_FIELD].startswith(GARBAGE)
        and (until is None or parse_entry_id(e) <= until)
    )


def cli(redis_url: str, namespace: str, *args: str) -> Any:
    return runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, *args])


# --- replay --------------------------------------------------------------------------------


def test_replay_into_a_fresh_namespace_equals_the_source_and_the_model(
    r: redis.Redis, redis_url: str, namespace: str, target: str
) -> None:
    entries = produce(r, namespace, seed=1, events=3_000, traces=300, partitions=3)
    fold(r, namespace, 3)
    result = cli(redis_url, namespace, "replay", "--into", target, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["entries"] == len(entries)
    assert report["dead_lettered"] == len(garbage_ids(entries)) > 0
    assert report["applied"] == len(entries) - len(garbage_ids(entries))
    assert sum(p["from_tail"] for p in report["partitions"]) == len(entries)
    assert all(p["duplicates"] == 0 for p in report["partitions"])

    assert_state(r, target, models(entries, 3))
    assert dead_letters(r, target, 3) == garbage_ids(entries)
    with Client(Settings(redis_url=redis_url, namespace=namespace)) as a:
        source_digest = a.digest()
    with Client(Settings(redis_url=redis_url, namespace=target)) as b:
        target_digest = b.digest()
    assert source_digest.traces > 0
    assert [(p.digest, p.traces) for p in source_digest.partitions] == [
        (p.digest, p.traces) for p in target_digest.partitions
    ]
    # the target's log stays empty; its meta and record say where it came from
    keys = Keys(target)
    assert all(r.xlen(keys.stream(p)) == 0 for p in range(3))
    assert r.hget(keys.meta, "partitions") == b"3"
    record = {k.decode(): v.decode() for k, v in r.hgetall(keys.replay_progress()).items()}
    assert record["source"] == namespace and "finished_ms" in record
    last = {p: max((e for q, e, _ in entries if q == p), key=parse_entry_id) for p in range(3)}
    assert {p: record[f"p{p:02d}"] for p in range(3)} == last

    verified = cli(redis_url, namespace, "verify", namespace, target)
    assert verified.exit_code == 0, verified.output
    assert f"equal: {source_digest.traces:,} traces" in verified.stderr


def test_until_gives_the_state_of_the_log_up_to_a_cut(
    r: redis.Redis, redis_url: str, namespace: str
) -> None:
    entries = produce(r, namespace, seed=2, events=1_500, traces=120, partitions=2)
    fold(r, namespace, 2)
    rng = random.Random(2)
    cuts: list[tuple[str, tuple[int, int]]] = []
    for _ in range(3):
        _, entry_id, _ = rng.choice(entries)
        cuts.append((entry_id, parse_entry_id(entry_id)))  # an entry id, inclusive
        ms = parse_entry_id(rng.choice(entries)[1])[0]
        cuts.append((str(ms), (ms, replaying.MAX_SEQ)))  # epoch ms: every entry of that ms
    ms = parse_entry_id(rng.choice(entries)[1])[0] // 1000 * 1000 + 999
    iso = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.999Z")
    cuts.append((iso, (ms, replaying.MAX_SEQ)))
    cuts.append(((iso[:-1]).replace(".999", ".999+00:00"), (ms, replaying.MAX_SEQ)))
    cuts.append(("1000-0", (1000, 0)))  # before everything
    for text, bound in cuts:
        into = f"{namespace}-cut-{uuid.uuid4().hex[:6]}"
        try:
            result = cli(redis_url, namespace, "replay", "--into", into, "--until", text)
            assert result.exit_code == 0, (text, result.output)
            expected = models(entries, 2, bound)
            assert_state(r, into, expected)
            assert dead_letters(r, into, 2) == garbage_ids(entries, bound)
        finally:
            drop_namespace(r, into)


def test_until_refuses_what_it_does_not_understand() -> None:
    assert replaying.parse_until("2026-12-06T01:30:00Z") == (1_796_520_600_000, replaying.MAX_SEQ)
    assert replaying.parse_until("2026-12-06T02:30:00+01:00") == replaying.parse_until(
        "2026-12-06T01:30:00"
    )
    assert replaying.parse_until("17-3") == (17, 3)
    assert replaying.parse_until(42) == (42, replaying.MAX_SEQ)
    with pytest.raises(ValidationError) as caught:
        replaying.parse_until("yesterday")
    assert str(caught.value) == (
        "--until 'yesterday' is neither an entry id (ms-seq), epoch milliseconds nor an "
        "ISO-8601 time (2026-12-06T01:30:00Z)"
    )


def test_one_partition_at_a_time_and_into_another_redis(
    r: redis.Redis, redis_url: str, namespace: str, target: str, own_redis: RedisServer
) -> None:
    entries = produce(r, namespace, seed=3, events=1_000, traces=100, partitions=3)
    fold(r, namespace, 3)
    other = redis.Redis.from_url(own_redis.url)
    try:
        for p in (2, 0, 1):  # each a replay of its own, into another server
            result = cli(redis_url, namespace, "replay", "--into", target, "--partition", str(p),
                         "--redis-url-into", own_redis.url)  # fmt: skip
            assert result.exit_code == 0, result.output
        assert_state(other, target, models(entries, 3))
        verified = cli(redis_url, namespace, "verify", namespace, target,
                       "--redis-url-b", own_redis.url)  # fmt: skip
        assert verified.exit_code == 0, verified.output
    finally:
        other.close()


def test_a_non_empty_target_is_refused(
    r: redis.Redis, redis_url: str, namespace: str, target: str
) -> None:
    produce(r, namespace, seed=4, events=200, traces=20, partitions=2)
    fold(r, namespace, 2)
    # a namespace something else wrote to
    r.hset(Keys(target).meta, "partitions", 2)
    result = cli(redis_url, namespace, "replay", "--into", target)
    assert result.exit_code == 2
    assert f"target namespace {target!r} is not empty" in result.stderr
    assert "was not made by a replay" in result.stderr
    r.delete(Keys(target).meta)
    # a finished replay: again only with --resume
    assert cli(redis_url, namespace, "replay", "--into", target).exit_code == 0
    again = cli(redis_url, namespace, "replay", "--into", target)
    assert again.exit_code == 2
    assert "(partition 0 has state)" in again.stderr and "--resume" in again.stderr
    # a replay of another source
    other = Settings(redis_url=redis_url, namespace=f"{namespace}x")
    r.hset(Keys(other.namespace).meta, "partitions", 2)
    try:
        with pytest.raises(ReplayTargetError, match="holds a replay of"):
            replaying.replay(other, other.replace(namespace=target), resume=True)
    finally:
        r.delete(Keys(other.namespace).meta)
    # the source itself
    same = cli(redis_url, namespace, "replay", "--into", namespace)
    assert same.exit_code == 2 and "the target is the source" in same.stderr
    # and --resume past --until cannot go back
    back = cli(redis_url, namespace, "replay", "--into", target, "--resume", "--until", "1-0")
    assert back.exit_code == 2 and "is already replayed up to" in back.stderr


def test_resume_after_a_replay_killed_midway_ends_equal(
    r: redis.Redis, redis_url: str, namespace: str, target: str
) -> None:
    entries = produce(r, namespace, seed=5, events=20_000, traces=2_000, partitions=2)
    fold(r, namespace, 2, batch=500)
    env = {**os.environ, "TRACETAGS_CONSUMER_BATCH_SIZE": "20"}
    argv = [sys.executable, "-m", "tracetags.cli", "--redis-url", redis_url,
            "--namespace", namespace, "replay", "--into", target]  # fmt: skip
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    record = Keys(target).replay_progress()
    try:
        wait_until(lambda: r.hexists(record, "p00"), timeout=60, interval=0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert not r.hexists(record, "finished_ms")
    assert not r.hexists(record, "p01"), "the replay finished before it was killed"
    killed_at = r.hget(record, "p00")

    result = cli(redis_url, namespace, "replay", "--into", target, "--resume", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["partitions"][0]["resumed_after"] == killed_at.decode()
    assert report["partitions"][1]["resumed_after"] is None
    assert_state(r, target, models(entries, 2))
    assert dead_letters(r, target, 2) == garbage_ids(entries)  # none written twice
    assert cli(redis_url, namespace, "verify", namespace, target).exit_code == 0


def test_resume_catches_up_with_what_the_source_received_since(
    r: redis.Redis, redis_url: str, namespace: str, target: str
) -> None:
    first = produce(r, namespace, seed=6, events=800, traces=80, partitions=2)
    fold(r, namespace, 2)
    assert cli(redis_url, namespace, "replay", "--into", target).exit_code == 0
    # more events (later ids) arrive at the source and are folded
    keys = Keys(namespace)
    more = produce(r, f"{namespace}-more", seed=7, events=500, traces=80, partitions=2)
    pipe = r.pipeline(transaction=False)
    later = []
    for p, entry_id, fields in more:
        ms, seq = parse_entry_id(entry_id)
        moved = f"{ms + 10**7}-{seq}"
        pipe.xadd(keys.stream(p), fields, id=moved)  # type: ignore[arg-type]
        later.append((p, moved, fields))
    pipe.execute()
    drop_namespace(r, f"{namespace}-more")
    for p in range(2):
        reply: Any = r.xreadgroup(GROUP, "c1", {keys.stream(p): ">"})
        if reply:
            functions.apply_batch(r, keys, p, GROUP, consumer.decode_entries(reply[0][1]))
    result = cli(redis_url, namespace, "replay", "--into", target, "--resume", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entries"] == len(later)
    assert_state(r, target, models(first + later, 2))
    assert cli(redis_url, namespace, "verify", namespace, target).exit_code == 0


def test_a_trimmed_log_without_its_archive_is_a_gap(
    r: redis.Redis, redis_url: str, namespace: str, target: str
) -> None:
    entries = produce(r, namespace, seed=8, events=300, traces=30, partitions=1)
    fold(r, namespace, 1)
    cut = entries[100][1]
    r.xtrim(Keys(namespace).stream(0), minid=cut, approximate=False)
    result = cli(redis_url, namespace, "replay", "--into", target)
    assert result.exit_code == 1
    assert (
        f"partition 0: 100 entries were removed from the stream (it now starts at {cut}) but "
        "the archive holds 0 and nothing after the start: the entries between are not in the "
        "archive (is the archive configured for this namespace?)"
    ) in " ".join(result.stderr.split())
    with pytest.raises(LogGapError):
        replaying.replay(
            Settings(redis_url=redis_url, namespace=namespace),
            Settings(redis_url=redis_url, namespace=target),
            resume=True,
        )


# --- digest and verify ---------------------------------------------------------------------


def test_the_digest_ignores_stamps_numbers_and_fold_order(
    r: redis.Redis, redis_url: str, namespace: str, target: str
) -> None:
    """The same events folded in another order, with duplicates, into another namespace:
    other trace numbers and batches, the same digest (and the same as the model's traces)."""
    entries = produce(r, namespace, seed=9, events=1_000, traces=100, partitions=2)
    fold(r, namespace, 2, batch=500)
    keys = Keys(target)
    r.hset(keys.meta, "partitions", 2)
    rng = random.Random(9)
    shuffled = entries + rng.sample(entries, 300)
    rng.shuffle(shuffled)
    for start in range(0, len(shuffled), 37):
        for p in range(2):
            chunk = [(e, f) for q, e, f in shuffled[start : start + 37] if q == p]
            if chunk:
                items = consumer.decode_entries([(e.encode(), f) for e, f in chunk])
                functions.apply_batch(r, keys, p, GROUP, items)
    a = digests.digest(r, namespace)
    b = digests.digest(r, target)
    assert a.traces == b.traces == sum(len(m.traces) for m in models(entries, 2).values())
    assert (a.digest, [p.digest for p in a.partitions]) == (
        b.digest,
        [p.digest for p in b.partitions],
    )
    numbers_a = {t: r.hget(Keys(namespace).trace_ids(0), t) for t in models(entries, 2)[0].traces}
    numbers_b = {t: r.hget(keys.trace_ids(0), t) for t in models(entries, 2)[0].traces}
    assert numbers_a != numbers_b  # the digest did not depend on them
    shown = cli(redis_url, namespace, "digest", "--format", "json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == json.loads(schemas.msgspec.json.encode(a))  # type: ignore[attr-defined]


def _later(entry: str, n: int) -> str:
    return f"{parse_entry_id(entry)[0] + 1}-{n}"


def test_verify_names_a_changed_tag_a_deleted_trace_and_an_extra_trace(
    r: redis.Redis, redis_url: str, namespace: str, target: str
) -> None:
    entries = produce(r, namespace, seed=10, events=2_000, traces=200, partitions=3)
    fold(r, namespace, 3)
    assert cli(redis_url, namespace, "replay", "--into", target).exit_code == 0
    model = models(entries, 3)
    live = sorted(t for m in model.values() for t in m.traces)
    changed, deleted = live[3], live[7]
    with_tag = [t for m in model.values() for t, s in m.traces.items() if s.value("tenv")]
    changed = with_tag[0]
    deleted = next(t for t in live if t != changed)
    extra = "tr-extra"
    keys = Keys(target)
    last = max((e for _, e, _ in entries), key=parse_entry_id)
    common: dict[str, Any] = {"event_id": schemas.new_event_id(), "emitted_at_ms": 1}
    old = model[partition_of(changed, 3)].traces[changed].value("tenv")
    corruption: list[tuple[str, schemas.Event]] = [
        (changed, schemas.TagsSet(trace_id=changed, tags={"env": f"{old}!"}, **common)),
        (deleted, schemas.TraceDeleted(trace_id=deleted, **common)),
        (
            extra,
            schemas.TraceStarted(
                trace_id=extra, experiment_id="9", timestamp_ms=5, tags={"env": "prod"}, **common
            ),
        ),
    ]
    for n, (trace_id, event) in enumerate(corruption):
        p = partition_of(trace_id, 3)
        functions.apply_batch(r, keys, p, GROUP, [(_later(last, n), event)])

    result = cli(redis_url, namespace, "verify", namespace, target, "--format", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["equal"] is False and report["differing_traces"] == 3
    by_id = {d["trace_id"]: d for d in report["differences"]}
    assert sorted(by_id) == sorted([changed, deleted, extra])
    assert by_id[changed]["kind"] == "differs"
    assert by_id[changed]["fields"] == [{"field": "tags.env", "a": old, "b": f"{old}!"}]
    assert by_id[deleted]["kind"] == "only in A"
    assert by_id[extra]["kind"] == "only in B"
    assert {"field": "experiment_id", "a": None, "b": "9"} in by_id[extra]["fields"]
    assert sorted(report["partitions"]) == sorted(
        {partition_of(t, 3) for t in (changed, deleted, extra)}
    )
    table = cli(redis_url, namespace, "verify", namespace, target)
    assert table.exit_code == 1
    assert f"{changed}: differs" in table.stdout
    assert f"tags.env: A={old!r} B={old + '!'!r}" in table.stdout
    assert f"{deleted}: only in A" in table.stdout and f"{extra}: only in B" in table.stdout
    assert "differ: 3 traces in partition" in table.stderr
    # a value changed behind the fold's back (the register rewritten in place) shows too
    p = partition_of(changed, 3)
    number = r.hget(keys.trace_ids(p), changed).decode()
    stamp = cast(bytes, r.hget(keys.trace(p, number), "tenv")).split(b":", 1)[0]
    r.hset(keys.trace(p, number), "tenv", stamp + b":" + old.encode())
    again = json.loads(cli(redis_url, namespace, "verify", namespace, target,
                           "--format", "json").stdout)  # fmt: skip
    assert again["differing_traces"] == 2 and changed not in {
        d["trace_id"] for d in again["differences"]
    }


def test_digest_of_an_empty_and_a_missing_namespace(
    r: redis.Redis, redis_url: str, namespace: str
) -> None:
    assert digests.digest(r, namespace).partitions == []
    r.hset(Keys(namespace).meta, "partitions", 2)
    empty = digests.digest(r, namespace)
    assert [(p.traces, p.digest) for p in empty.partitions] == [(0, "0" * 32)] * 2
    assert empty.traces == 0


def test_the_digest_walks_a_1000_trace_partition_in_chunks(r: redis.Redis, namespace: str) -> None:
    """More traces than one chunk of the ``all`` index holds (512), one of them deleted."""
    keys = Keys(namespace)
    r.hset(keys.meta, "partitions", 1)
    items: list[functions.BatchItem] = []
    for n in range(1_200):
        event = schemas.TagsSet(trace_id=f"t{n}", event_id=schemas.new_event_id(),
                                emitted_at_ms=1, tags={"n": str(n)})  # fmt: skip
        items.append((f"{BASE_MS + n}-0", event))
    functions.apply_batch(r, keys, 0, GROUP, items)
    gone = schemas.TraceDeleted(trace_id="t700", event_id=schemas.new_event_id(), emitted_at_ms=1)
    functions.apply_batch(r, keys, 0, GROUP, [(f"{BASE_MS + 5000}-0", gone)])
    hashes = {t: h for _, t, h in digests.iter_hashes(r, keys, 0)}
    assert len(hashes) == 1_199 and b"t700" not in hashes and None not in hashes
    expected = sum(hashes.values()) % 2**128
    assert digests.digest(r, namespace).partitions[0].digest == f"{expected:032x}"
    # a trace's hash is of its values, not of its stamps
    number = r.hget(keys.trace_ids(0), "t1100").decode()
    fields = cast(list[tuple[bytes, bytes]], list(r.hgetall(keys.trace(0, number)).items()))
    assert digests.trace_hash(fields) == (b"t1100", hashes[b"t1100"])
    restamped = [(f, b"7:1100" if v.endswith(b":1100") else v) for f, v in fields]
    assert restamped != fields
    assert digests.trace_hash(restamped) == (b"t1100", hashes[b"t1100"])
    changed = [(f, b"7:1101" if v.endswith(b":1100") else v) for f, v in fields]
    assert digests.trace_hash(changed)[1] != hashes[b"t1100"]


# --- with an archive (file:// and S3) --------------------------------------------------------


def archive_entries(store: Any, namespace: str, entries: list[Entry], *, rows: int = 97) -> int:
    """Archive ``entries`` (of one partition, in order) as the archiver does: segments of at
    most ``rows`` rows, each published meta-last; returns how many it archived."""
    by_partition: dict[int, list[segments.Row]] = {}
    for p, entry_id, fields in entries:
        item = consumer.decode_fields(fields)
        row = item.payload if isinstance(item, functions.DeadLetter) else item
        by_partition.setdefault(p, []).append((entry_id, row))
    for p, items in by_partition.items():
        for start in range(0, len(items), rows):
            chunk = items[start : start + rows]
            first, last = parse_entry_id(chunk[0][0]), parse_entry_id(chunk[-1][0])
            data = segments.write_segment(chunk)
            manifest.publish(store, namespace, p, first, last, len(chunk), data, schemas.now_ms())
    return len(entries)


def trim(client: redis.Redis, namespace: str, partition: int, before: str) -> int:
    """XTRIM MINID: remove the partition's entries older than ``before`` (exactly)."""
    trimmed: Any = client.xtrim(Keys(namespace).stream(partition), minid=before, approximate=False)
    return int(trimmed)


def of_partition(entries: list[Entry], p: int) -> list[Entry]:
    return [e for e in entries if e[0] == p]


@pytest.fixture(params=["file", "s3"])
def archive_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/archive"
    url: str = request.getfixturevalue("s3_url")
    return url


def test_replay_of_archive_plus_trimmed_tail_equals_the_live_state_and_the_model(
    r: redis.Redis, redis_url: str, namespace: str, target: str, archive_url: str
) -> None:
    """Two partitions, each ~70% archived in segments and trimmed to ~50% (the entries
    between are both archived and still in the stream, as the live retention keeps them)."""
    entries = produce(r, namespace, seed=21, events=3_000, traces=250, partitions=2)
    fold(r, namespace, 2)
    source = Settings(redis_url=redis_url, namespace=namespace, archive_url=archive_url)
    store = open_store(source)
    archived = {}
    for p in range(2):
        mine = of_partition(entries, p)
        archived[p] = archive_entries(store, namespace, mine[: len(mine) * 7 // 10])
        assert trim(r, namespace, p, mine[len(mine) // 2][1]) == len(mine) // 2
    env = {"TRACETAGS_ARCHIVE_URL": archive_url}
    result = runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, "replay",
                                 "--into", target, "--format", "json"], env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = {p["partition"]: p for p in json.loads(result.stdout)["partitions"]}
    for p in range(2):
        assert report[p]["from_archive"] == archived[p]
        assert report[p]["from_tail"] == len(of_partition(entries, p)) - archived[p]
        assert report[p]["duplicates"] == 0
    assert_state(r, target, models(entries, 2))
    assert dead_letters(r, target, 2) == garbage_ids(entries)
    assert cli(redis_url, namespace, "verify", namespace, target).exit_code == 0

    # --until inside the archive and inside the tail
    for cut in (entries[len(entries) // 4][1], entries[len(entries) * 9 // 10][1]):
        into = f"{target}-u"
        try:
            counts = replaying.replay(source, source.replace(namespace=into), until=cut)
            bound = parse_entry_id(cut)
            assert counts.entries == sum(1 for e in entries if parse_entry_id(e[1]) <= bound)
            assert_state(r, into, models(entries, 2, bound))
        finally:
            drop_namespace(r, into)


class _RacingArchive:
    """An archive that the archiver extends (and trims behind) while the replay reads it:
    after the replay took the first part, the next part is archived and the stream trimmed
    past everything the replay has seen."""

    def __init__(self, inner: replaying.ArchiveReader, on_first_read: Any) -> None:
        self.inner = inner
        self.on_first_read = on_first_read
        self.reads = 0

    def entries(self, partition: int, after: str | None, until_ms: int | None) -> Any:
        self.reads += 1
        yield from self.inner.entries(partition, after, until_ms)
        if self.reads == 1:
            self.on_first_read()

    def rows(self, partition: int) -> int:
        return self.inner.rows(partition)


def test_an_archiver_trimming_during_the_replay_sends_it_back_to_the_archive(
    r: redis.Redis, redis_url: str, namespace: str, target: str, tmp_path: Any
) -> None:
    entries = produce(r, namespace, seed=22, events=1_000, traces=100, partitions=1)
    fold(r, namespace, 1)
    source = Settings(redis_url=redis_url, namespace=namespace, archive_url=f"file://{tmp_path}")
    store = open_store(source)
    archive_entries(store, namespace, entries[:300])
    trim(r, namespace, 0, entries[200][1])

    def archiver_runs() -> None:
        archive_entries(store, namespace, entries[300:800])
        trim(r, namespace, 0, entries[700][1])

    racing = _RacingArchive(replaying.archive_of(source), archiver_runs)
    result = replaying.replay(source, source.replace(namespace=target), archive=racing)
    counts = result.partitions[0]
    assert racing.reads == 2
    assert (counts.from_archive, counts.from_tail, counts.duplicates) == (800, 200, 0)
    assert_state(r, target, models(entries, 1))


def test_entries_trimmed_and_not_archived_are_a_gap_even_with_an_archive(
    r: redis.Redis, redis_url: str, namespace: str, target: str, tmp_path: Any
) -> None:
    entries = produce(r, namespace, seed=23, events=600, traces=60, partitions=1)
    fold(r, namespace, 1)
    source = Settings(redis_url=redis_url, namespace=namespace, archive_url=f"file://{tmp_path}")
    archive_entries(open_store(source), namespace, entries[:200])
    trim(r, namespace, 0, entries[400][1])
    with pytest.raises(LogGapError) as caught:
        replaying.replay(source, source.replace(namespace=target))
    assert str(caught.value) == (
        f"partition 0: 400 entries were removed from the stream (it now starts at "
        f"{entries[400][1]}) but the archive holds 200 and nothing after {entries[199][1]}: "
        "the entries between are not in the archive (is the archive configured for this "
        "namespace?)"
    )


def test_a_corrupted_archive_segment_stops_the_replay(
    r: redis.Redis, redis_url: str, namespace: str, target: str, tmp_path: Any
) -> None:
    entries = produce(r, namespace, seed=24, events=400, traces=40, partitions=1)
    fold(r, namespace, 1)
    url = f"file://{tmp_path}/archive"
    archive_entries(open_store(Settings(archive_url=url)), namespace, entries[:200], rows=100)
    trim(r, namespace, 0, entries[150][1])
    (segment,) = (tmp_path / "archive").rglob(f"{entries[100][1]}_*.parquet")  # the second
    segment.write_bytes(segment.read_bytes()[:-1] + b"\0")
    result = runner.invoke(app, ["--redis-url", redis_url, "--namespace", namespace, "replay",
                                 "--into", target], env={"TRACETAGS_ARCHIVE_URL": url})  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "does not match its manifest entry" in result.stderr


def test_the_demo_folded_by_the_shipped_consumer_replays_equal(
    redis_url: str, namespace: str, target: str
) -> None:
    """End to end: TagProducer writes, the FastStream consumer (tracetags serve's supervisor)
    folds; replay then digest says equal, and a --until before everything gives nothing."""
    demo = cli(redis_url, namespace, "demo", "--traces", "300")
    assert demo.exit_code == 0, demo.output
    result = cli(redis_url, namespace, "replay", "--into", target)
    assert result.exit_code == 0, result.output
    assert "replayed " in result.stderr and "events/s" in result.stderr
    assert f"replay of {namespace!r} into {target!r}" in result.stdout
    verified = cli(redis_url, namespace, "verify", namespace, target)
    assert verified.exit_code == 0, verified.output
    assert "equal: 300 traces" in verified.stderr
    digest_a = json.loads(cli(redis_url, namespace, "digest", "--format", "json").stdout)
    digest_b = json.loads(cli(redis_url, target, "digest", "--format", "json").stdout)
    assert digest_a["traces"] == 300 and digest_a["digest"] == digest_b["digest"]
    assert digest_a["namespace"] == namespace and digest_b["namespace"] == target


def test_the_archivers_archive_and_trim_then_more_events_replay_equal(
    r: redis.Redis, redis_url: str, namespace: str, target: str, archive_url: str
) -> None:
    """The real archiver (tracetags.archive.archive_once: segments, manifest, tt_trim with no
    live retention) archives and trims what the fold acknowledged; later events stay in the
    tail; replay folds both into a state equal to the model's and the live one's, and
    --until a point inside the archive gives the model's state then."""
    entries = produce(r, namespace, seed=25, events=2_000, traces=200, partitions=2)
    fold(r, namespace, 2)
    source = Settings(redis_url=redis_url, namespace=namespace, archive_url=archive_url,
                      log_retention="0", archive_max_rows=300)  # fmt: skip
    reports = archive_once(source)
    assert [x.error for x in reports] == [None, None]
    assert sum(x.archived for x in reports) == len(entries)
    assert all(x.trimmed == x.archived for x in reports)
    assert all(r.xlen(Keys(namespace).stream(p)) == 0 for p in range(2))
    # more events land in the tail (later ids), folded, not archived
    keys = Keys(namespace)
    more = produce(r, f"{namespace}-more", seed=26, events=500, traces=200, partitions=2)
    drop_namespace(r, f"{namespace}-more")
    later = []
    for p, entry_id, fields in more:
        ms, seq = parse_entry_id(entry_id)
        moved = f"{ms + 10**7}-{seq}"
        r.xadd(keys.stream(p), fields, id=moved)  # type: ignore[arg-type]
        later.append((p, moved, fields))
    for p in range(2):
        reply: Any = r.xreadgroup(GROUP, "c1", {keys.stream(p): ">"})
        functions.apply_batch(r, keys, p, GROUP, consumer.decode_entries(reply[0][1]))

    result = replaying.replay(source, source.replace(namespace=target))
    assert sum(p.from_archive for p in result.partitions) == len(entries)
    assert sum(p.from_tail for p in result.partitions) == len(later)
    assert_state(r, target, models(entries + later, 2))
    assert dead_letters(r, target, 2) == garbage_ids(entries + later)
    assert digests.verify(r, namespace, r, target).equal

    cut = entries[len(entries) // 3][1]
    into = f"{target}-u"
    try:
        replaying.replay(source, source.replace(namespace=into), until=cut)
        assert_state(r, into, models(entries + later, 2, parse_entry_id(cut)))
    finally:
        drop_namespace(r, into)


def test_a_listed_trace_without_its_hash_counts_as_broken(
    r: redis.Redis, redis_url: str, namespace: str, target: str
) -> None:
    produce(r, namespace, seed=27, events=300, traces=30, partitions=1)
    fold(r, namespace, 1)
    assert cli(redis_url, namespace, "replay", "--into", target).exit_code == 0
    keys = Keys(target)
    number = next(iter(r.hvals(keys.trace_ids(0)))).decode()
    r.delete(keys.trace(0, number))  # behind the fold's back: listed in `all`, no state
    shown = digests.digest(r, target)
    assert shown.partitions[0].broken == 1
    assert shown.traces == digests.digest(r, namespace).traces - 1
    result = cli(redis_url, namespace, "verify", namespace, target)
    assert result.exit_code == 1
    digest_table = cli(redis_url, target, "digest")
    assert "1 listed traces have no state" in digest_table.stderr
