"""Limits on events: keys and bytes per event at the producer and in the fold, live tags per
trace in the fold (deterministic on replay, idempotent on redelivery), fold calls within the
budget."""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pytest
import redis

from tests.support.blocking import Blocking
from tests.support.consumer import consumer, wait_applied
from tracetags import Settings, TagProducer, schemas
from tracetags.client import Client
from tracetags.consumer import decode_entries
from tracetags.errors import EventLimitError
from tracetags.functions import apply_batch
from tracetags.keys import Keys
from tracetags.limits import EventLimits, split_batch

GROUP = "limits-test"


def test_the_producer_refuses_an_event_over_a_limit(settings: Settings) -> None:
    producer = TagProducer(settings)
    try:
        # The event: 250,000 keys (3.3 MB) blocked the fold for seconds.
        with pytest.raises(EventLimitError) as info:
            producer.set_tags("t", {f"k{i}": "v" for i in range(250_000)})
        assert str(info.value) == (
            "trace 't': event has 250000 keys, over the limit of 500 (max_keys_per_event)"
        )
        with pytest.raises(EventLimitError, match=r"over the limit of 1000000 \(max_event_bytes\)"):
            producer.trace_started(
                "t", experiment_id="1", metadata={f"m{i}": "x" * 8000 for i in range(200)}
            )
        with pytest.raises(EventLimitError, match=r"over the limit of 500 \(max_keys_per_event\)"):
            producer.delete_tags("t", [f"k{i}" for i in range(501)])
        producer.set_tags("t", {f"k{i}": "v" for i in range(500)})
        assert producer.stats().dropped == 0
    finally:
        producer.close()
    small = TagProducer(settings.replace(max_tags_per_trace=3))
    try:
        with pytest.raises(EventLimitError) as info:
            small.set_tags("t", {"a": "1", "b": "2", "c": "3", "d": "4"})
        assert str(info.value) == (
            "trace 't': event sets 4 tags, over the limit of 3 tags per trace (max_tags_per_trace)"
        )
    finally:
        small.close()


def _entry(event: schemas.Event) -> dict[Any, Any]:
    return {schemas.ENTRY_FIELD: schemas.encode(event)}


def _event_id() -> bytes:
    return schemas.new_event_id()


def _tags_set(trace_id: str, tags: dict[str, str]) -> schemas.TagsSet:
    return schemas.TagsSet(trace_id=trace_id, event_id=_event_id(), emitted_at_ms=1, tags=tags)


async def test_the_fold_dead_letters_events_over_a_limit_from_other_publishers(
    settings: Settings, r: redis.Redis
) -> None:
    keys = Keys(settings.namespace)
    producer = TagProducer(settings)
    client = Client(settings)
    stream = keys.stream(0)
    producer.set_tags("tr", {"before": "1"})
    producer.flush()
    too_many = r.xadd(stream, _entry(_tags_set("tr", {f"k{i}": "v" for i in range(501)})))
    too_big = r.xadd(stream, _entry(_tags_set("tr", {f"k{i}": "x" * 7000 for i in range(200)})))
    producer.set_tags("tr", {"after": "1"})
    async with consumer(settings):
        await wait_applied(client, producer)
    trace = client.get_trace("tr")
    assert trace is not None and trace.info.tags == {"before": "1", "after": "1"}
    dead: Any = r.xrange(keys.dead_letters(0))
    assert [d[1][b"entry_id"] for d in dead] == [too_many, too_big]
    assert (
        dead[0][1][b"reason"] == b"event has 501 keys, over the limit of 500 (max_keys_per_event)"
    )
    assert dead[1][1][b"reason"].startswith(b"event is 14")
    assert dead[1][1][b"reason"].endswith(b"over the limit of 1000000 (max_event_bytes)")
    producer.close()
    client.close()


def _fold(
    r: redis.Redis, keys: Keys, events: list[schemas.Event], batch: int, max_tags: int
) -> list[tuple[str, str]]:
    """Write events to partition 0's stream and fold them ``batch`` at a time; returns the
    dead letters as (entry id, reason)."""
    stream = keys.stream(0)
    r.hsetnx(keys.meta, "partitions", 1)
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for event in events:
        r.xadd(stream, _entry(event))
    entries: Any = r.xreadgroup(GROUP, "c", {stream: ">"})[0][1]
    for start in range(0, len(entries), batch):
        items = decode_entries(entries[start : start + batch])
        apply_batch(r, keys, 0, GROUP, items, max_tags)
    return [
        (d[1][b"entry_id"].decode(), d[1][b"reason"].decode())
        for d in r.xrange(keys.dead_letters(0))
    ]


def _tags(client: Client, trace_id: str) -> dict[str, str]:
    trace = client.get_trace(trace_id)
    assert trace is not None
    return dict(trace.info.tags)


def _limit_events() -> list[schemas.Event]:
    def deleted(keys: list[str]) -> schemas.TagsDeleted:
        return schemas.TagsDeleted(trace_id="tr", event_id=_event_id(), emitted_at_ms=1, keys=keys)

    return [
        _tags_set("tr", {"a": "1", "b": "1", "c": "1"}),
        _tags_set("tr", {"d": "1", "e": "1"}),  # 5: at the limit
        _tags_set("tr", {"f": "1"}),  # 6: refused
        _tags_set("tr", {"a": "2", "b": "2"}),  # keys it holds: fine
        deleted(["a"]),
        _tags_set("tr", {"f": "1", "a": "3"}),  # 6 again: refused whole
        _tags_set("tr", {"f": "1"}),  # 5: fine
        _tags_set("other", {"x": "1"}),
    ]


def test_tags_per_trace_is_enforced_by_the_fold_the_same_way_on_any_replay(
    redis_url: str, r: redis.Redis
) -> None:
    events = _limit_events()
    outcomes = []
    for batch in (1, 3, len(events)):
        namespace = f"tt-lim-{os.urandom(4).hex()}"
        keys = Keys(namespace)
        dead = _fold(r, keys, events, batch, 5)
        with Client(Settings(redis_url=redis_url, namespace=namespace)) as client:
            outcomes.append((dead, _tags(client, "tr"), _tags(client, "other")))
        entry_ids = [e for e, *_ in r.xrange(keys.stream(0))]
        assert [d[0] for d in dead] == [entry_ids[2].decode(), entry_ids[5].decode()]
        for key in r.scan_iter(match=f"{namespace}:*"):
            r.delete(key)
    first = outcomes[0]
    assert [reason for _, reason in first[0]] == [
        "the trace would hold 6 live tags, over the limit of 5 (max_tags_per_trace)"
    ] * 2
    assert first[1] == {"b": "2", "c": "1", "d": "1", "e": "1", "f": "1"}
    assert first[2] == {"x": "1"}
    for dead, tags, other in outcomes[1:]:
        assert [reason for _, reason in dead] == [reason for _, reason in first[0]]
        assert (tags, other) == (first[1], first[2])


def test_a_redelivered_batch_at_the_tag_limit_changes_nothing(
    redis_url: str, r: redis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    events: list[schemas.Event] = [_tags_set("tr", {f"k{i}": "1" for i in range(5)})]
    assert _fold(r, keys, events, 1, 5) == []
    # The same entry folded again (a redelivery after a crash): its keys are all there.
    entries: Any = r.xrange(keys.stream(0))
    result = apply_batch(r, keys, 0, GROUP, decode_entries(entries), 5)
    assert (result.applied, result.dead_lettered) == (1, 0)
    with Client(Settings(redis_url=redis_url, namespace=namespace)) as client:
        assert _tags(client, "tr") == {f"k{i}": "1" for i in range(5)}


def test_a_consumer_batch_is_cut_into_fold_calls_of_bounded_keys() -> None:
    items: Any = [(f"1-{i}", _tags_set("t", {f"k{j}": "v" for j in range(n)})) for i, n in
                  enumerate([600, 600, 600, 600, 1000, 0, 3000, 1])]  # fmt: skip
    runs = split_batch(items, EventLimits(fold_max_keys=2000))  # (default 500)
    assert [len(run) for run in runs] == [3, 3, 1, 1]
    assert [entry for run in runs for entry, _ in run] == [entry for entry, _ in items]


async def test_folding_the_largest_accepted_events_stays_within_the_budget(
    settings: Settings, redis_url: str
) -> None:
    # 20 events of 500 new keys each (the most one event may hold), every key a new index:
    # one consumer batch.
    producer = TagProducer(settings)
    client = Client(settings)
    for n in range(20):
        producer.set_tags(f"t{n}", {f"k{n}_{i}": "v" * 100 for i in range(500)})
    producer.flush()
    with Blocking(redis_url) as blocking:
        async with consumer(settings):
            await wait_applied(client, producer)
    assert len(_tags(client, "t19")) == 500
    took, command = blocking.longest_command(b"FCALL tt_apply")
    assert took > 0, command
    blocking.assert_within_budget()
    producer.close()
    client.close()


def test_event_limits_come_from_the_environment() -> None:
    env = {
        "TRACETAGS_MAX_KEYS_PER_EVENT": "50",
        "TRACETAGS_MAX_EVENT_BYTES": "5000",
        "TRACETAGS_MAX_TAGS_PER_TRACE": "20",
        "TRACETAGS_FOLD_MAX_KEYS": "500",
    }
    limits = EventLimits.of(Settings.from_env(env))
    assert msgspec.structs.asdict(limits) == {
        "max_keys_per_event": 50,
        "max_event_bytes": 5000,
        "max_tags_per_trace": 20,
        "fold_max_keys": 500,
    }
