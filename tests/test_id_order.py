"""The byte order of the trace ids (``<prefix>:ri``, functions/lua/id_order.lua) under the
fold, and pages ordered by request_id that walk it (``walk-ids``), against the reference.

Traces are created in batches, deleted, re-created (a new number) and deleted again; after
each round every live trace's number must be in exactly the bucket whose head range holds
its id, no bucket past the intset size, and every page walk ordered by request_id (with and
without filters, both directions, small pages) must equal the reference evaluator.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import drop_namespace
from tracetags import schemas
from tracetags.client import Client
from tracetags.settings import Settings

ID_BUCKET = 512


def _trace(rng: random.Random, index: int) -> dict[str, object]:
    return {
        "trace_id": f"tr-{rng.getrandbits(40):010x}" if index % 7 else f"TR-{index:05d}",
        "experiment_id": rng.choice(("1", "2")),
        "timestamp_ms": qd.BASE_MS + rng.randrange(5000),
        "execution_time_ms": rng.randrange(1, 900),
        "status": rng.choice(("OK", "ERROR")),
        "name": rng.choice(("chat", "embed")),
        "client_request_id": None,
        "tags": {"env": rng.choice(("prod", "dev"))} if rng.random() < 0.8 else {},
        "metadata": {},
    }


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    namespace = f"tt-ri-{os.urandom(5).hex()}"
    c = Client(Settings(redis_url=redis_url, namespace=namespace, partitions=1))
    yield c
    drop_namespace(c.redis, namespace)
    c.close()


def _check_buckets(r: Any, prefix: str) -> None:
    ids = {k.decode(): v.decode() for k, v in r.hgetall(f"{prefix}:ids").items()}
    heads = sorted(h.decode() for h in r.zrange(f"{prefix}:ri", 0, -1))
    assert heads[0] == ""
    seen: dict[str, str] = {}
    for i, head in enumerate(heads):
        members = {m.decode() for m in r.smembers(f"{prefix}:ri:{len(head.encode())}:{head}")}
        assert len(members) <= ID_BUCKET
        assert members or head == ""
        upper = heads[i + 1] if i + 1 < len(heads) else None
        for no in members:
            trace_id = r.hget(f"{prefix}:t:{no}", "i").decode()
            assert trace_id.encode() >= head.encode()
            assert upper is None or trace_id.encode() < upper.encode()
            seen[trace_id] = no
    assert seen == ids


def _pages(c: Client, f: str | None, order: list[str], size: int) -> list[str]:
    out: list[str] = []
    token = None
    while True:
        page = c.search_traces(
            experiment_ids=["1", "2"],
            filter_string=f,
            order_by=order,
            max_results=size,
            page_token=token,
        )
        out += [t.info.trace_id for t in page]
        token = page.token
        if token is None:
            return out


def test_the_id_order_follows_creates_and_deletes(client: Client) -> None:
    rng = random.Random(5)
    r, prefix = client.redis, f"{client.keys.namespace}:{{p00}}"
    live: dict[str, dict[str, object]] = {}
    for round_ in range(3):
        fresh = [_trace(rng, round_ * 1500 + i) for i in range(1500)]
        qd.load(r, client.keys, 1, fresh)
        live.update({str(t["trace_id"]): t for t in fresh})
        doomed = rng.sample(sorted(live), 300)
        events: list[schemas.Event] = [
            schemas.TraceDeleted(trace_id=t, event_id=os.urandom(16), emitted_at_ms=1)
            for t in doomed
        ]
        # Some come back in the same batch as their deletion: a new number.
        back = [live[t] for t in doomed[:60]]
        events += [e for t in back for e in qd.trace_events(t)]
        qd.apply_events(r, client.keys, 1, events)
        for t in doomed[60:]:
            del live[t]
        _check_buckets(r, prefix)
        traces = ref.apply_mutations(list(live.values()), [])
        for f in (None, "tags.env = 'prod'", "status = 'ERROR' AND execution_time_ms > 450"):
            for order in (["request_id"], ["request_id DESC"], ["request_id", "status"]):
                want = ref.search(traces, ["1", "2"], f, order, None)
                assert _pages(client, f, order, 97) == want, (f, order)
    assert r.zcard(f"{prefix}:ri") > 5  # the buckets were split


def test_walk_ids_is_the_plan_for_broad_filters(client: Client) -> None:
    rng = random.Random(9)
    qd.load(client.redis, client.keys, 1, [_trace(rng, i) for i in range(3000)])
    text = client.explain(None, ["1", "2"], ["request_id DESC"])
    assert "strategy: walk-ids" in text
    selective = client.explain("request_id = 'TR-00007'", ["1", "2"], ["request_id DESC"])
    assert "strategy: walk-ids" not in selective


def test_a_partition_without_the_index_collects(client: Client) -> None:
    rng = random.Random(11)
    traces = [_trace(rng, i) for i in range(800)]
    qd.load(client.redis, client.keys, 1, traces)
    prefix = f"{client.keys.namespace}:{{p00}}"
    for key in client.redis.scan_iter(match=f"{prefix}:ri*"):
        client.redis.delete(key)  # as a partition folded before the index existed
    want = ref.search(ref.apply_mutations(traces, []), ["1", "2"], None, ["request_id"], None)
    assert _pages(client, None, ["request_id"], 150) == want
    qd.load(client.redis, client.keys, 1, [_trace(rng, 900 + i) for i in range(50)])
    assert client.redis.exists(f"{prefix}:ri") == 0  # not started mid-life


def test_walk_ids_over_a_table_of_the_matches(client: Client) -> None:
    """A filter of a tenth of the traces or less, ordered by request_id: the matches are
    collected first and each visited bucket's traces looked up among them (``id_table``),
    rather than every match's id read and sorted; pages from every cursor equal the
    reference, in both directions, with tied next keys."""
    rng = random.Random(21)
    traces = []
    for i in range(12_000):
        trace = _trace(rng, i)
        if rng.random() < 0.2:
            trace["tags"] = {**trace["tags"], "rare": rng.choice(("x", "y"))}  # type: ignore[dict-item]
        traces.append(trace)
    qd.load(client.redis, client.keys, 1, traces)
    final = ref.apply_mutations(traces, [])
    table = "looked up among"
    for f in ("tags.rare = 'x'", "tags.rare IN ('x', 'y') AND status = 'ERROR'"):
        for order in (["request_id"], ["request_id DESC"], ["request_id", "status DESC"]):
            text = client.explain(f, ["1", "2"], order)
            assert "strategy: walk-ids" in text and table in text, text
            want = ref.search(final, ["1", "2"], f, order, None)
            assert want
            for size in (7, 100):
                assert _pages(client, f, order, size) == want, (f, order, size)
    # dense: each bucket's traces tested against the filter, as before
    assert table not in client.explain("tags.env = 'prod'", ["1", "2"], ["request_id"])
