"""Trace history, state as of a time, one writer's changes and their undo, against the model
(tests/support/model.py), with a real Redis, the real fold Function and a real archive
(local directory; one test on the S3-compatible server)."""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from tests.support.model import FoldModel, TraceModel, parse_entry_id
from tracetags import consumer, functions, history, schemas
from tracetags.archive import archive_once, manifest
from tracetags.archive.store import open_store
from tracetags.cli import app, cli_source
from tracetags.client import Client, TraceInfo
from tracetags.errors import ValidationError
from tracetags.keys import NAME_TAG, Keys, partition_of
from tracetags.settings import Settings

runner = CliRunner()
GROUP = "tracetags-fold"
BASE_MS = 1_780_000_000_000
TAG_KEYS = ["env", "model", "user", NAME_TAG, "a:b"]
VALUES = ["", "prod", "staging", "v1", "v2", "é✓"]
SOURCES = [None, "etl@host-1", "cli:alice", "labeler/v2"]

Entry = tuple[int, str, dict[bytes, bytes]]  # partition, entry id, fields


def random_event(rng: random.Random, trace_id: str, emitted_at_ms: int) -> schemas.Event:
    common: dict[str, Any] = {
        "trace_id": trace_id,
        "event_id": schemas.new_event_id(),
        "emitted_at_ms": emitted_at_ms,
        "source": rng.choice(SOURCES),
    }

    def tags(n: int) -> dict[str, str]:
        return {rng.choice(TAG_KEYS): rng.choice(VALUES) for _ in range(rng.randrange(n))}

    kind = rng.choices(["S", "F", "T", "D", "X"], weights=[2, 2, 8, 3, 1])[0]
    if kind == "T":
        return schemas.TagsSet(**common, tags=tags(4) or {"env": "prod"})
    if kind == "D":
        return schemas.TagsDeleted(**common, keys=rng.sample(TAG_KEYS, rng.randrange(1, 3)))
    if kind == "X":
        return schemas.TraceDeleted(**common)
    fields: dict[str, Any] = {
        "experiment_id": rng.choice(["1", "2"]),
        "timestamp_ms": BASE_MS + rng.randrange(10**6),
        "name": rng.choice([None, "chat"]),
        "client_request_id": rng.choice([None, "req-1"]),
        "tags": tags(3),
        "metadata": {rng.choice(["region", "run"]): rng.choice(VALUES)},
    }
    if kind == "S":
        return schemas.TraceStarted(**common, **fields)
    return schemas.TraceFinished(
        **common, **fields, execution_time_ms=rng.randrange(10_000), status="OK"
    )


def produce(
    client: redis.Redis, namespace: str, *, seed: int, events: int, traces: int, partitions: int
) -> list[Entry]:
    """A random log: increasing entry ids spread over time; ~10% of events arrive late (made
    before the events logged ahead of them) and ~5% are logged twice (a producer's resend)."""
    rng = random.Random(seed)
    keys = Keys(namespace)
    client.hset(keys.meta, mapping={"partitions": partitions, "created_ms": 1})
    ids = [f"tr-{seed}-{i}" for i in range(traces)]
    ms, written = BASE_MS, []
    resend: list[bytes] = []
    pipe = client.pipeline(transaction=False)
    for n in range(events):
        ms += rng.choice([0, 0, 1, 3, 50])
        if resend and rng.random() < 0.05:
            payload = resend.pop(rng.randrange(len(resend)))
        else:
            emitted = ms - (rng.randrange(5_000) if rng.random() < 0.1 else 0)
            payload = schemas.encode(random_event(rng, rng.choice(ids), emitted))
            if rng.random() < 0.1:
                resend.append(payload)
        trace_id = schemas.decode(payload).trace_id
        p = partition_of(trace_id, partitions)
        entry_id = f"{ms}-{n}"
        fields = {schemas.ENTRY_FIELD: payload}
        pipe.xadd(keys.stream(p), fields, id=entry_id)  # type: ignore[arg-type]
        written.append((p, entry_id, fields))
    pipe.execute()
    return written


def fold_shuffled(client: redis.Redis, namespace: str, partitions: int, seed: int) -> None:
    """Fold with the real Function as consumers may: batches applied out of order, and some
    delivered twice."""
    rng = random.Random(seed)
    keys = Keys(namespace)
    for p in range(partitions):
        stream = keys.stream(p)
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        batches = []
        while True:
            reply: Any = client.xreadgroup(GROUP, "c1", {stream: ">"}, count=rng.randrange(5, 60))
            if not reply or not reply[0][1]:
                break
            batches.append(consumer.decode_entries(reply[0][1]))
        batches += rng.sample(batches, len(batches) // 5)
        rng.shuffle(batches)
        for items in batches:
            functions.apply_batch(client, keys, p, GROUP, items)


def events_of(entries: list[Entry], trace_id: str) -> list[tuple[str, schemas.Event]]:
    """The model's event list of a trace: its events in entry-id order."""
    out = []
    for _, entry_id, fields in entries:
        event = schemas.decode(fields[schemas.ENTRY_FIELD])
        if event.trace_id == trace_id:
            out.append((entry_id, event))
    return sorted(out, key=lambda e: parse_entry_id(e[0]))


def model_info(trace: TraceModel | None, trace_id: str) -> TraceInfo | None:
    if trace is None:
        return None
    values = {n: v for n, (_, v) in trace.registers.items() if v is not None}
    return TraceInfo(
        trace_id=trace_id,
        experiment_id=values.get("e"),
        timestamp_ms=int(values["s"]) if "s" in values else None,
        execution_time_ms=int(values["d"]) if "d" in values else None,
        status=values.get("S"),
        client_request_id=values.get("c"),
        tags={n[1:]: v for n, v in values.items() if len(n) > 1 and n[0] == "t"},
        request_metadata={n[1:]: v for n, v in values.items() if len(n) > 1 and n[0] == "m"},
    )


def assert_history_matches_model(
    found: list[history.HistoryEntry], events: list[tuple[str, schemas.Event]], partition: int
) -> None:
    assert [(h.entry_id, h.event_id, h.source) for h in found] == [
        (entry_id, str(uuid.UUID(bytes=e.event_id)), e.source) for entry_id, e in events
    ]
    assert all(h.partition == partition and h.time_ms == parse_entry_id(h.entry_id)[0]
               for h in found)  # fmt: skip
    # Every change: the value before is the model's register before the event, and it was
    # replaced by the next event that wrote the same register (a trace_deleted writes every
    # register that holds a value).
    model = FoldModel()
    writes: list[tuple[int, str]] = []  # (entry index, register) of every change, in order
    for i, ((entry_id, event), entry) in enumerate(zip(events, found, strict=True)):
        trace = model.traces.get(event.trace_id)
        if isinstance(event, schemas.TraceDeleted):
            registers = sorted(
                n for n, (_, v) in (trace.registers.items() if trace else []) if v is not None
            )
            expected: list[tuple[str, str | None, str | None]] = [
                (n, trace.value(n) if trace else None, None) for n in registers
            ]
        else:
            expected = [(n, trace.value(n) if trace else None, v)
                        for n, v in history.registers_of(event)]  # fmt: skip
        got = [(history.register_of(c.field), c.before, c.after) for c in entry.changes]
        assert sorted(got, key=str) == sorted(expected, key=str), entry_id
        writes += [(i, n) for n, _, _ in expected]
        model.apply(entry_id, event)
    for i, entry in enumerate(found):
        for change in entry.changes:
            name = history.register_of(change.field)
            later = [j for j, n in writes if n == name and j > i]
            assert change.overwritten_by == (found[later[0]].entry_id if later else None)
        assert entry.lost == (bool(entry.changes)
                              and all(c.overwritten_by for c in entry.changes))  # fmt: skip


@pytest.fixture
def archive_dir(tmp_path: Any) -> str:
    return f"file://{tmp_path}/archive"


def archived_settings(redis_url: str, namespace: str, archive_url: str) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, archive_url=archive_url,
                    log_retention="0", archive_max_rows=150)  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_history_equals_the_models_event_list_across_archive_and_tail(
    r: redis.Redis, redis_url: str, namespace: str, archive_dir: str, seed: int
) -> None:
    """Late, duplicate and re-ordered delivery; history read with part of the log archived
    (and trimmed), then with all of it archived: the same, and equal to the model."""
    entries = produce(r, namespace, seed=seed, events=1_500, traces=40, partitions=2)
    fold_shuffled(r, namespace, 2, seed)
    settings = archived_settings(redis_url, namespace, archive_dir)
    archive_once(settings, max_segments=2)
    keys = Keys(namespace)
    assert 0 < r.xlen(keys.stream(0)) < len([e for e in entries if e[0] == 0])
    trace_ids = sorted({schemas.decode(f[schemas.ENTRY_FIELD]).trace_id for _, _, f in entries})
    with Client(settings) as client:
        before = {t: client.trace_history(t) for t in trace_ids}
        for trace_id in trace_ids:
            p = partition_of(trace_id, 2)
            assert_history_matches_model(before[trace_id], events_of(entries, trace_id), p)
            # the history's fold ends where the real fold did
            _, rows = history.trace_entries(settings, r, trace_id, 2)
            live = client.get_trace(trace_id)
            assert history.fold(rows).info(trace_id) == (live.info if live else None)
        archive_once(settings)
        assert r.xlen(keys.stream(0)) == 0 and r.xlen(keys.stream(1)) == 0
        assert {t: client.trace_history(t) for t in trace_ids} == before


def test_as_of_equals_the_models_fold_at_every_event_boundary(
    r: redis.Redis, redis_url: str, namespace: str, archive_dir: str
) -> None:
    entries = produce(r, namespace, seed=11, events=900, traces=6, partitions=1)
    fold_shuffled(r, namespace, 1, 11)
    settings = archived_settings(redis_url, namespace, archive_dir)
    archive_once(settings, max_segments=3)
    trace_id = "tr-11-0"
    events = events_of(entries, trace_id)
    assert len(events) > 100
    boundaries = sorted({parse_entry_id(e)[0] + d for e, _ in events for d in (-1, 0)})
    with Client(settings) as client:
        for ms in boundaries:
            model = FoldModel()
            for entry_id, event in events:
                if parse_entry_id(entry_id)[0] <= ms:
                    model.apply(entry_id, event)
            expected = model_info(model.traces.get(trace_id), trace_id)
            got = client.get_trace(trace_id, as_of=ms)
            assert (got.info if got else None) == expected, ms
        # the same point given as a datetime, ISO text and an entry id
        entry_id, _ = events[len(events) // 2]
        ms = parse_entry_id(entry_id)[0]
        when = datetime.fromtimestamp(ms / 1000, UTC)
        as_ms = client.get_trace(trace_id, as_of=ms)
        assert client.get_trace(trace_id, as_of=when) == as_ms
        assert client.get_trace(trace_id, as_of=when.isoformat()) == as_ms
        model = FoldModel()
        for e, event in events:
            if parse_entry_id(e) <= parse_entry_id(entry_id):
                model.apply(e, event)
        got = client.get_trace(trace_id, as_of=entry_id)
        assert (got.info if got else None) == model_info(model.traces.get(trace_id), trace_id)


def _write(client: Client, trace_id: str, tags: dict[str, str], source: str) -> None:
    client.producer.set_tags(trace_id, tags, source=source)


def test_a_writers_changes_across_traces_and_their_undo(
    r: redis.Redis, redis_url: str, namespace: str, archive_dir: str
) -> None:
    """A bulk job (``job-7``) retags 30 traces; one of its changes is changed again by a
    person afterwards.  ``source_history`` finds exactly its events (part archived, part in
    the tail), and undo restores every other tag to the model's state before the job."""
    settings = Settings(redis_url=redis_url, namespace=namespace, archive_url=archive_dir,
                        log_retention="0", archive_max_rows=20, source="seed")  # fmt: skip
    ids = [f"t{i}" for i in range(30)]
    with Client(settings) as client:
        for i, trace_id in enumerate(ids):
            _write(client, trace_id, {"label": f"good-{i}", "env": "prod"}, "seed")
        _apply_all(client, r, namespace)
        archive_once(settings)
        cut = _now_ms(r)
        for trace_id in ids:
            _write(client, trace_id, {"label": "bad", "owner": "job"}, "job-7")
        _apply_all(client, r, namespace)
        archive_once(settings, max_segments=1)  # part of the job archived, part in the tail
        _write(client, "t3", {"label": "fixed-by-hand"}, "cli:alice")
        _apply_all(client, r, namespace)

        report = client.source_history("job-7", since=cut)
        assert report.count == 30 and report.trace_ids == sorted(ids)
        assert all(e.source == "job-7" and e.type == "tags_set" for e in report.entries)
        t3 = next(e for e in report.entries if e.trace_id == "t3")
        change = next(c for c in t3.changes if c.field == "tags.label")
        assert (change.before, change.after) == ("good-3", "bad")
        assert change.overwritten_by is not None
        assert client.source_history("job-7", until=cut - 1).count == 0
        assert client.source_history("nobody").count == 0

        plan = client.undo_source("job-7", since=cut)
        assert len(plan) == 30
        step = next(s for s in plan if s.trace_id == "t3")
        assert step.skipped == {"tags.label": "changed since by cli:alice"}
        assert step.delete == ["owner"] and step.set == {}
        other = next(s for s in plan if s.trace_id == "t4")
        assert other.set == {"label": "good-4"} and other.delete == ["owner"]
        assert client.get_trace("t4").info.tags["label"] == "bad"

        client.undo_source("job-7", since=cut, apply=True, wait=False)
        _apply_all(client, r, namespace)
        for i, trace_id in enumerate(ids):
            trace = client.get_trace(trace_id)
            assert trace is not None
            label = "fixed-by-hand" if trace_id == "t3" else f"good-{i}"
            assert trace.info.tags == {"label": label, "env": "prod"}
        last = client.trace_history("t4")[-1]
        assert last.source == "undo:job-7" and last.type == "tags_deleted"
        # undone already: a second undo has nothing left to do
        assert all(not s.set and not s.delete for s in client.undo_source("job-7", since=cut))


def _now_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _apply_all(client: Client, r: redis.Redis, namespace: str) -> None:
    client.producer.flush()
    keys = Keys(namespace)
    for p in range(client.partitions):
        stream = keys.stream(p)
        with contextlib.suppress(redis.ResponseError):  # the group exists already
            r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        while True:
            reply: Any = r.xreadgroup(GROUP, "c1", {stream: ">"}, count=500)
            if not reply or not reply[0][1]:
                break
            functions.apply_batch(r, keys, p, GROUP, consumer.decode_entries(reply[0][1]))


def test_undo_restores_the_models_state_before_the_writer(
    r: redis.Redis, redis_url: str, namespace: str, archive_dir: str
) -> None:
    """Random tag writes by several writers, then a burst of one writer's changes; undo of
    that burst gives back, per tag it touched and nobody touched after it, the model's value
    from before the burst."""
    rng = random.Random(5)
    settings = Settings(redis_url=redis_url, namespace=namespace, archive_url=archive_dir,
                        log_retention="0", archive_max_rows=50)  # fmt: skip
    ids = [f"u{i}" for i in range(12)]
    keys_ = ["a", "b", "c"]
    with Client(settings) as client:
        for _ in range(200):
            trace_id = rng.choice(ids)
            if rng.random() < 0.2:
                client.producer.delete_tags(trace_id, [rng.choice(keys_)], source="other")
            else:
                _write(client, trace_id, {rng.choice(keys_): rng.choice(VALUES)}, "other")
        _apply_all(client, r, namespace)
        archive_once(settings, max_segments=2)
        cut = _now_ms(r) + 1
        while _now_ms(r) <= cut:
            pass
        for _ in range(60):
            trace_id = rng.choice(ids)
            if rng.random() < 0.3:
                client.producer.delete_tags(trace_id, [rng.choice(keys_)], source="bulk")
            else:
                _write(client, trace_id, {rng.choice(keys_): rng.choice(VALUES)}, "bulk")
        _apply_all(client, r, namespace)
        before = {t: client.get_trace(t, as_of=cut - 1) for t in ids}
        client.undo_source("bulk", since=cut, apply=True, wait=False)
        _apply_all(client, r, namespace)
        for trace_id in ids:
            now, then = client.get_trace(trace_id), before[trace_id]
            assert (now.info.tags if now else {}) == (then.info.tags if then else {}), trace_id


def test_history_on_the_s3_archive(
    r: redis.Redis, redis_url: str, namespace: str, s3_url: str
) -> None:
    entries = produce(r, namespace, seed=31, events=400, traces=10, partitions=1)
    fold_shuffled(r, namespace, 1, 31)
    settings = archived_settings(redis_url, namespace, s3_url)
    archive_once(settings, max_segments=1)
    store = open_store(settings)
    assert store is not None and manifest.list_visible(store, namespace, 0)
    with Client(settings) as client:
        for trace_id in ("tr-31-0", "tr-31-1"):
            assert_history_matches_model(
                client.trace_history(trace_id), events_of(entries, trace_id), 0
            )


def test_follow_one_key_and_validation(settings: Settings, r: redis.Redis) -> None:
    with Client(settings.replace(source="me")) as client:
        client.producer.set_tags("k1", {"a": "1", "b": "1"})
        client.producer.set_tags("k1", {"a": "2"}, source="you")
        client.producer.delete_tags("k1", ["a"])
        client.producer.flush()
        followed = client.trace_history("k1", key="tags.a")
        assert [(e.source, [(c.before, c.after) for c in e.changes]) for e in followed] == [
            ("me", [(None, "1")]),
            ("you", [("1", "2")]),
            ("me", [("2", None)]),
        ]
        assert [e.lost for e in followed] == [True, True, False]
        assert client.trace_history("k1", key="tags.b")[0].lost is False
        assert client.trace_history("nothing") == []
        with pytest.raises(ValidationError, match="--key 'status'"):
            client.trace_history("k1", key="status")
        with pytest.raises(ValidationError):
            client.get_trace("k1", as_of="yesterday")
    two_hours_ago = history.parse_time("2h")
    assert two_hours_ago is not None
    assert abs(two_hours_ago[0] - (schemas.now_ms() - 7_200_000)) < 5_000


# --- source on events ---------------------------------------------------------------------


def test_producers_write_the_settings_source_and_a_call_overrides_it(
    settings: Settings, r: redis.Redis
) -> None:
    from tracetags.producer import TagProducer

    with TagProducer(settings.replace(source="svc@box")) as producer:
        producer.trace_started("s1", experiment_id="1")
        producer.set_tags("s1", {"k": "v"})
        producer.set_tags("s1", {"k": "w"}, source="labeler")
        producer.delete_tags("s1", ["k"], source="labeler")
        producer.delete_trace("s1")
        producer.flush()
        with pytest.raises(ValidationError, match="source 'two words'"):
            producer.set_tags("s1", {"k": "v"}, source="two words")
        with pytest.raises(ValidationError):
            producer.set_tags("s1", {"k": "v"}, source="x" * 129)
    stream = Keys(settings.namespace).stream(0)
    entries: Any = r.xrange(stream)
    found = [schemas.decode(f[schemas.ENTRY_FIELD]).source for _, f in entries]
    assert found == ["svc@box", "svc@box", "labeler", "labeler", "svc@box"]


async def test_the_async_producer_and_the_fluent_api_write_sources_too(
    settings: Settings, r: redis.Redis
) -> None:
    import tracetags
    from tracetags.producer import AsyncTagProducer

    async with AsyncTagProducer(settings.replace(source="async-svc")) as producer:
        producer.set_tags("a1", {"k": "v"})
        producer.delete_tags("a1", ["k"], source="async-job")
        await producer.flush()
    tracetags.configure(settings.replace(source="fluent-app"))
    try:
        tracetags.set_trace_tag("a1", "k", "w")
        tracetags.delete_trace_tag("a1", "k", source="fluent-job")
        tracetags.default_producer().flush()
    finally:
        tracetags.default_producer().close()
    entries: Any = r.xrange(Keys(settings.namespace).stream(0))
    found = [schemas.decode(f[schemas.ENTRY_FIELD]).source for _, f in entries]
    assert found == ["async-svc", "async-job", "fluent-app", "fluent-job"]


def test_the_default_source_names_program_and_host() -> None:
    import socket

    assert Settings().effective_source.endswith("@" + schemas.source_name(socket.gethostname()))
    assert Settings.from_env({"TRACETAGS_SOURCE": "etl"}).source == "etl"
    assert cli_source().startswith("cli:")
    assert schemas.source_name("a b/c") == "a_b/c"


@pytest.fixture
def cli_env(redis_url: str, namespace: str, tmp_path: Any) -> Iterator[dict[str, str]]:
    yield {"TRACETAGS_REDIS_URL": redis_url, "TRACETAGS_NAMESPACE": namespace,
           "TRACETAGS_ARCHIVE_URL": f"file://{tmp_path}/archive"}  # fmt: skip


def _cli(env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, list(args), env=env)


def test_cli_history_get_as_of_and_log_show_the_source(
    r: redis.Redis, redis_url: str, namespace: str, cli_env: dict[str, str]
) -> None:
    settings = Settings(redis_url=redis_url, namespace=namespace,
                        archive_url=cli_env["TRACETAGS_ARCHIVE_URL"])  # fmt: skip
    with Client(settings) as client:
        _write(client, "c1", {"env": "staging"}, "deployer")
        _apply_all(client, r, namespace)
        staged = _now_ms(r)
        while _now_ms(r) <= staged:
            pass
    result = _cli(cli_env, "tag", "set", "c1", "env", "prod", "--no-wait")
    assert result.exit_code == 0, result.output
    with Client(settings) as client:
        _apply_all(client, r, namespace)

    log = [json.loads(line) for line in _cli(cli_env, "log").stdout.splitlines()]
    assert [e["source"] for e in log] == ["deployer", cli_source()]

    result = _cli(cli_env, "history", "c1", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["source"], x["changes"][0]["before"], x["changes"][0]["after"]) for x in rows] == [
        ("deployer", None, "staging"),
        (cli_source(), "staging", "prod"),
    ]
    assert (
        rows[0]["lost"] is True and rows[0]["changes"][0]["overwritten_by"] == rows[1]["entry_id"]
    )
    as_json = json.loads(_cli(cli_env, "history", "c1", "--format", "json").stdout)
    assert as_json == rows
    table = _cli(cli_env, "history", "c1", "--key", "tags.env")
    assert table.exit_code == 0 and "deployer" in table.stdout and "overwritten" in table.stdout

    then = _cli(cli_env, "get", "c1", "--as-of", str(staged), "--format", "json")
    assert then.exit_code == 0, then.output
    assert json.loads(then.stdout)["tags"] == {"env": "staging"}
    now = _cli(cli_env, "get", "c1", "--format", "json")
    record = json.loads(now.stdout)
    assert record["tags"] == {"env": "prod"}
    assert record["last_set"]["tags.env"]["source"] == cli_source()
    shown = _cli(cli_env, "get", "c1")
    assert cli_source() in shown.stdout
    before = _cli(cli_env, "get", "c1", "--as-of", str(BASE_MS))
    assert before.exit_code == 1

    # one writer across traces, and its undo: a dry run first, then --yes
    listed = _cli(cli_env, "history", "--source", cli_source(), "--since", str(staged),
                  "--format", "json")  # fmt: skip
    assert listed.exit_code == 0, listed.output
    summary = json.loads(listed.stdout)
    assert summary["count"] == 1 and summary["trace_ids"] == ["c1"]
    dry = _cli(cli_env, "history", "--source", cli_source(), "--since", str(staged), "--undo")
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.stderr and "env" in dry.stdout
    with Client(settings) as client:
        assert client.get_trace("c1").info.tags == {"env": "prod"}
    done = _cli(cli_env, "history", "--source", cli_source(), "--since", str(staged), "--undo",
                "--yes", "--no-wait")  # fmt: skip
    assert done.exit_code == 0, done.output
    with Client(settings) as client:
        _apply_all(client, r, namespace)
        assert client.get_trace("c1").info.tags == {"env": "staging"}
        assert client.trace_history("c1")[-1].source == f"undo:{cli_source()}"
    assert _cli(cli_env, "history").exit_code == 2


def test_the_archive_keeps_the_source_dictionary_encoded_with_statistics() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tracetags.archive import segments

    rows: list[segments.Row] = [
        (f"{BASE_MS + i}-0", schemas.TagsSet(trace_id=f"t{i % 7}", event_id=schemas.new_event_id(),
                                             emitted_at_ms=i, tags={"k": "v"},
                                             source=None if i % 5 == 0 else f"job-{i % 3}"))
        for i in range(1_000)
    ]  # fmt: skip
    data = segments.write_segment(rows)
    assert segments.read_segment(data) == sorted(rows, key=lambda r: parse_entry_id(r[0]))
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    group = meta.row_group(0)
    (column,) = [group.column(i) for i in range(group.num_columns)
                 if group.column(i).path_in_schema == "source"]  # fmt: skip
    assert "RLE_DICTIONARY" in column.encodings
    assert (column.statistics.min, column.statistics.max) == ("job-0", "job-2")
    assert column.statistics.null_count == 200


# --- the history index of the live tail ---------------------------------------------------


async def test_the_live_tails_history_index_answers_like_the_scan(
    r: redis.Redis, redis_url: str, namespace: str, archive_dir: str
) -> None:
    """The real consumer folds (and indexes) a workload; part of it is archived; then some
    entries are delivered but not folded (pending) and some not delivered at all: the
    history through the index equals the history by a scan, equals the model's event list,
    and the index keys expire with the live retention."""
    from tests.support.consumer import consumer, wait_applied
    from tracetags.producer import TagProducer

    settings = Settings(redis_url=redis_url, namespace=namespace, archive_url=archive_dir,
                        log_retention="0", archive_max_rows=100, archive_interval="1s",
                        history_index=True)  # fmt: skip
    rng = random.Random(8)
    ids = [f"ix{i}" for i in range(15)]
    with Client(settings) as client, TagProducer(settings) as producer:
        async with consumer(settings):
            for n in range(600):
                trace_id = rng.choice(ids)
                if rng.random() < 0.2:
                    producer.delete_tags(trace_id, [rng.choice(["a", "b"])], source="w2")
                else:
                    producer.set_tags(trace_id, {rng.choice(["a", "b"]): str(n)}, source="w1")
            await wait_applied(client, producer)
        archive_once(settings, max_segments=2)
        keys = Keys(namespace)
        stream = keys.stream(0)
        # delivered, not folded: pending for a consumer that went away
        for trace_id in ids[:5]:
            producer.set_tags(trace_id, {"a": "pending"}, source="w3")
        producer.flush()
        r.xreadgroup(settings.consumer_group, "gone", {stream: ">"})
        # not delivered at all
        for trace_id in ids[3:8]:
            producer.set_tags(trace_id, {"b": "lagging"}, source="w4")
        producer.flush()

        ttl = r.pttl(keys.history_index(0, ids[0]))
        assert 0 < ttl <= settings.history_index_ttl_ms  # type: ignore[operator]
        assert r.hget(keys.history_index_start(0), "ttl_ms") == str(ttl_of(settings)).encode()
        log = _whole_log(r, stream, settings)
        scanning = settings.replace(history_index=False)
        with Client(scanning) as scan:
            for trace_id in ids:
                indexed = client.trace_history(trace_id)
                assert indexed == scan.trace_history(trace_id)
                assert_history_matches_model(indexed, events_of(log, trace_id), 0)
        _, rows = history.trace_entries(settings, r, ids[0], 1)
        assert rows[-1][1].source == "w3"
        through_index = history.indexed_tail(settings, r, 0, {ids[4]})
        assert through_index is not None
        tail: Any = r.xrange(stream)
        in_stream = [e.decode() for e, f in tail
                     if schemas.decode(f[schemas.ENTRY_FIELD]).trace_id == ids[4]]  # fmt: skip
        assert [e for e, _ in through_index] == in_stream and in_stream
        # an index that expired: the entries it held are found by the scan of the older part
        r.hset(keys.history_index_start(0), "ttl_ms", 1)
        r.delete(keys.history_index(0, ids[9]))
        with Client(scanning) as scan:
            assert client.trace_history(ids[9]) == scan.trace_history(ids[9])


def ttl_of(settings: Settings) -> int:
    ttl = settings.history_index_ttl_ms
    assert ttl is not None
    return ttl


def _whole_log(r: redis.Redis, stream: str, settings: Settings) -> list[Entry]:
    """Every entry of the log: the archive's, then the stream's."""
    from tracetags.archive import read_partition

    out: list[Entry] = []
    seen = set()
    for entry_id, item in read_partition(settings, settings.namespace, 0):
        assert not isinstance(item, bytes)
        out.append((0, entry_id, {schemas.ENTRY_FIELD: schemas.encode(item)}))
        seen.add(entry_id)
    entries: Any = r.xrange(stream)
    for raw_id, fields in entries:
        if raw_id.decode() not in seen:
            out.append((0, raw_id.decode(), fields))
    return out


def test_an_archiver_trimming_between_the_reads_loses_nothing_at_the_seam(
    r: redis.Redis, redis_url: str, namespace: str, archive_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The archive's end is listed, then the archiver archives and trims everything, then
    the tail is read (empty now): the entries in between come from the archive's second
    listing."""
    entries = produce(r, namespace, seed=41, events=600, traces=5, partitions=1)
    fold_shuffled(r, namespace, 1, 41)
    settings = archived_settings(redis_url, namespace, archive_dir)
    archive_once(settings, max_segments=1)
    real = history.tail_entries
    runs: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> Iterator[history.Entry]:
        if not runs:
            runs.append(len(archive_once(settings)))
        return real(*args, **kwargs)

    monkeypatch.setattr(history, "tail_entries", racing)
    with Client(settings) as client:
        found = client.trace_history("tr-41-0")
    assert runs and r.xlen(Keys(namespace).stream(0)) == 0
    assert_history_matches_model(found, events_of(entries, "tr-41-0"), 0)
