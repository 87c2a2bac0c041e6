"""request_id patterns with a literal end and no usable lead (``LIKE '%-a1'``, ``ILIKE
'%A1'``, ``RLIKE '3839$'``): the probe seeks the end in the byte order of the reversed ids
(``<prefix>:rr``, functions/lua/id_order.lua) instead of reading every id.

The fold keeps the reversed order through creates, deletes and re-creates (checked bucket
by bucket); the seek itself, called directly, returns exactly the ids ending so, or says
the end is dense; pages and counts equal the reference evaluator's with the order, without
it (a partition folded before it existed), over dense ends, and for generated patterns over
ids of a small alphabet (hypothesis).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages, drop_namespace
from tracetags import functions, schemas
from tracetags.client import Client
from tracetags.query.logical import id_prefixes, id_suffixes
from tracetags.query.plan import IdsPlan
from tracetags.settings import Settings

ID_BUCKET = 512
ENDS = ("", "a", "A", "k", "\u212a", "-zz", "_x", "é")


def _trace(rng: random.Random, index: int) -> dict[str, object]:
    head = rng.choice(("tr-", "TR-", "k-"))
    return {
        "trace_id": f"{head}{rng.getrandbits(36):09x}{rng.choice(ENDS)}",
        "experiment_id": rng.choice(("1", "2")),
        "timestamp_ms": qd.BASE_MS + rng.randrange(50_000),
        "execution_time_ms": rng.randrange(1, 900),
        "status": rng.choice(("OK", "ERROR")),
        "name": "n",
        "client_request_id": None,
        "tags": {"env": rng.choice(("prod", "dev"))} if index % 3 else {},
        "metadata": {},
    }


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    """4,000 traces (the reversed order split into buckets), 500 of them deleted and 100 of
    those re-created (a new number)."""
    rng = random.Random(21)
    traces = [_trace(rng, i) for i in range(4000)]
    c = Client(Settings(redis_url=redis_url, namespace=f"tt-sfx-{os.urandom(4).hex()}"))
    qd.load(c.redis, c.keys, 1, traces)
    doomed = rng.sample([str(t["trace_id"]) for t in traces], 500)
    events: list[schemas.Event] = [
        schemas.TraceDeleted(trace_id=t, event_id=os.urandom(16), emitted_at_ms=1) for t in doomed
    ]
    by_id = {str(t["trace_id"]): t for t in traces}
    events += [e for t in doomed[:100] for e in qd.trace_events(by_id[t])]
    qd.apply_events(c.redis, c.keys, 1, events)
    live = [t for t in traces if str(t["trace_id"]) not in set(doomed[100:])]
    yield c, ref.apply_mutations(live, [])
    drop_namespace(c.redis, c.keys.namespace)
    c.close()


def _ids(final: list[dict[str, object]]) -> list[str]:
    return [str(t["trace_id"]) for t in final]


def test_literal_ends_and_their_case_variants() -> None:
    assert id_suffixes("LIKE", "%-zz") == ("-zz",)
    assert id_suffixes("LIKE", "tr-%3839") == ("3839",)
    assert id_suffixes("LIKE", "%a_b") == ("b",)
    assert id_suffixes("LIKE", "tr-1") is None  # no wildcard: the id itself is its prefix
    assert id_suffixes("LIKE", "%") is None
    assert id_suffixes("LIKE", "a%_") is None
    assert id_suffixes("RLIKE", "3839$") is None  # a literal RLIKE is planned as its LIKE
    assert set(id_suffixes("ILIKE", "%-Zz") or ()) == {"-zz", "-zZ", "-Zz", "-ZZ"}
    assert set(id_suffixes("ILIKE", "%k") or ()) == {"k", "K", "\u212a"}
    assert id_suffixes("ILIKE", "%é") is None  # non-ASCII end: every id is read
    assert id_suffixes("ILIKE", "%abcdefg") is None  # 128 variants: too many


def test_the_fold_keeps_the_reversed_order(loaded: tuple[Client, list[dict[str, object]]]) -> None:
    client, final = loaded
    r, prefix = client.redis, client.keys.prefix(0)
    numbers = {k.decode(): v.decode() for k, v in r.hgetall(f"{prefix}:ids").items()}
    assert sorted(numbers) == sorted(_ids(final))
    raw: Any = r.zrange(client.keys.reversed_id_order(0), 0, -1)
    heads: list[bytes] = sorted(raw)
    assert heads[0] == b"" and len(heads) > 5  # the buckets were split
    placed: dict[str, str] = {}
    for i, head in enumerate(heads):
        key = f"{prefix}:rr:{len(head)}:".encode() + head
        members = {m.decode() for m in r.smembers(key)}
        assert len(members) <= ID_BUCKET and r.object("encoding", key) in (b"intset", None)
        assert members or head == b""
        upper = heads[i + 1] if i + 1 < len(heads) else None
        for no in members:
            trace_id = r.hget(f"{prefix}:t:{no}", "i").decode()
            backwards = trace_id.encode()[::-1]
            assert backwards >= head and (upper is None or backwards < upper), (trace_id, head)
            assert trace_id not in placed
            placed[trace_id] = no
    assert placed == numbers


def _seek(client: Client, suffixes: list[str], prefixes: tuple[str, ...] = ()) -> Any:
    plan = msgspec.msgpack.encode(IdsPlan(prefixes=list(prefixes), suffixes=suffixes))
    (reply,) = functions.query_partitions(client.redis, client.keys, [(0, plan)])
    return msgspec.msgpack.decode(reply)


@pytest.mark.parametrize(
    "suffixes",
    [["zz"], ["-zz"], ["a"], ["7a"], ["\u212a"], ["é"], ["x", "X"], ["nothing-ends-so"]],
)
def test_the_seek_returns_exactly_the_ids_ending_so(
    loaded: tuple[Client, list[dict[str, object]]], suffixes: list[str]
) -> None:
    client, final = loaded
    found, flat = _seek(client, suffixes)
    assert found == 1
    got = dict(zip(flat[::2], flat[1::2], strict=True))
    assert sorted(got) == sorted(i for i in _ids(final) if i.endswith(tuple(suffixes)))
    numbers: list[Any] = client.redis.hmget(client.keys.trace_ids(0), list(got)) if got else []
    assert [int(n) for n in numbers] == list(map(int, got.values()))


def test_a_dense_end_or_lead_gives_up(redis_url: str) -> None:
    """Past SEEK_BUCKETS (24) buckets an affix is dense: a dense lead falls to the end, and
    when both are dense the client reads every id (``[0]``); of two sparse ones, the one
    spanning fewer buckets is read."""
    rng = random.Random(13)
    traces = [_trace(rng, i) for i in range(13_000)]
    c = Client(Settings(redis_url=redis_url, namespace=f"tt-sfx-{os.urandom(4).hex()}"))
    try:
        qd.load(c.redis, c.keys, 1, traces)
        assert c.redis.zcard(c.keys.reversed_id_order(0)) > 24
        ids = _ids(traces)
        assert _seek(c, [""]) == [0]
        # every end an id has: all the buckets (each counted once, however many of the
        # affixes a bucket holds)
        digits = [*"0123456789abcdef", "A", "k", "\u212a", "z", "x", "\u00e9"]
        assert _seek(c, digits) == [0]
        found, flat = _seek(c, ["-zz"], prefixes=("tr-", "TR-"))
        assert found == 1 and sorted(flat[::2]) == sorted(i for i in ids if i.endswith("-zz"))
        assert _seek(c, digits, prefixes=("tr-", "TR-", "k-")) == [0]
        # both sparse: whichever spans fewer buckets is sought
        found, flat = _seek(c, ["-zz"], prefixes=("TR-a",))
        assert found == 1 and sorted(flat[::2]) == sorted(i for i in ids if i.startswith("TR-a"))
        found, flat = _seek(c, ["3-zz"], prefixes=("tr-",))
        assert found == 1 and sorted(flat[::2]) == sorted(i for i in ids if i.endswith("3-zz"))
        # an ILIKE's 32 case variants (more than SEEK_BUCKETS): most name no id and share
        # a bucket with another
        variants = id_prefixes("ILIKE", "TR-ABC%") or ()
        assert len(variants) == 32
        found, flat = _seek(c, [], prefixes=variants)
        expected = sorted(i for i in ids if i.lower().startswith("tr-abc"))
        assert found == 1 and expected and sorted(flat[::2]) == expected
    finally:
        drop_namespace(c.redis, c.keys.namespace)
        c.close()


FILTERS = [
    "request_id LIKE '%-zz'",
    "request_id LIKE '%a'",
    "request_id LIKE 'tr-%a'",
    "request_id LIKE '%3_a'",
    "request_id LIKE '%\u212a'",
    "request_id ILIKE '%-ZZ'",
    "request_id ILIKE '%K'",
    "request_id ILIKE '%_X'",
    "request_id NOT LIKE '%a'",
    "request_id RLIKE 'a$'",
    "request_id RLIKE '-zz$' AND tags.env = 'prod'",
    "request_id LIKE '%0' OR request_id LIKE '%zz'",
    "request_id LIKE '%-zz' AND request_id LIKE 'k-%'",
    "request_id LIKE '%a' AND request_id LIKE '%b'",
    "request_id LIKE '%é'",
]


@pytest.mark.parametrize("filter_string", FILTERS)
def test_pages_and_counts_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str
) -> None:
    client, final = loaded
    for order in (None, ["request_id DESC"], ["tags.env", "timestamp_ms"]):
        expected = ref.search(final, None, filter_string, order, None)
        assert all_pages(client, filter_string, order, 173) == expected, (filter_string, order)
    assert client.count(filter_string) == len(ref.search(final, None, filter_string, None, None))


def test_without_the_reversed_order_every_id_is_read(redis_url: str) -> None:
    """A partition folded before the reversed order existed keeps none (it is not started
    mid-life) and answers the same by reading every id."""
    rng = random.Random(8)
    traces = [_trace(rng, i) for i in range(1200)]
    c = Client(Settings(redis_url=redis_url, namespace=f"tt-sfx-{os.urandom(4).hex()}"))
    try:
        qd.load(c.redis, c.keys, 1, traces[:600])
        for key in [*c.redis.scan_iter(match=f"{c.keys.prefix(0)}:rr*", count=1000)]:
            c.redis.delete(key)
        qd.load(c.redis, c.keys, 1, traces[600:])
        assert c.redis.exists(c.keys.reversed_id_order(0)) == 0
        assert _seek(c, ["-zz"]) == [0]
        final = ref.apply_mutations(traces, [])
        for filter_string in ("request_id LIKE '%-zz'", "request_id ILIKE '%A'"):
            assert all_pages(c, filter_string, None, 500) == ref.search(
                final, None, filter_string, None, None
            )
    finally:
        drop_namespace(c.redis, c.keys.namespace)
        c.close()


def _calls(client: Client, *commands: str) -> int:
    stats = client.redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands)


@pytest.mark.parametrize(
    "filter_string",
    ["request_id LIKE '%-zz'", "request_id ILIKE '%7A'", "request_id RLIKE '3_x$'"],
)
def test_a_sparse_end_reads_no_list_of_every_id(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str
) -> None:
    client, final = loaded
    client.redis.config_resetstat()
    page = client.search_traces(filter_string=filter_string, max_results=100)
    assert [t.info.trace_id for t in page] == ref.search(final, None, filter_string, None, 100)
    assert _calls(client, "hkeys", "hscan", "hrandfield") == 0
    assert _calls(client, "hgetall") == len(page)  # the rows' hashes, not the ids hash


def test_two_literal_ends_that_differ_match_nothing(
    loaded: tuple[Client, list[dict[str, object]]],
) -> None:
    client, _ = loaded
    filter_string = "request_id LIKE '%a' AND request_id LIKE '%-zz'"
    text = str(client.explain(filter_string))
    assert "no value ends as both" in text, text
    assert client.search_traces(filter_string=filter_string) == []


ALPHABET = "ab-_%Ké1"


@pytest.fixture(scope="module")
def random_ids(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    """2,500 ids over a small alphabet (literal '_' and '%', a non-ASCII letter, the Kelvin
    sign) so that generated ends match many, few or no ids."""
    rng = random.Random(4)
    traces = []
    for i in range(2500):
        trace = _trace(rng, i)
        tail = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 5)))
        trace["trace_id"] = f"t{i:05d}{tail}"
        traces.append(trace)
    c = Client(Settings(redis_url=redis_url, namespace=f"tt-sfx-{os.urandom(4).hex()}"))
    qd.load(c.redis, c.keys, 1, traces)
    yield c, ref.apply_mutations(traces, [])
    drop_namespace(c.redis, c.keys.namespace)
    c.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    op=st.sampled_from(["LIKE", "ILIKE", "NOT LIKE", "RLIKE"]),
    head=st.sampled_from(["", "%", "_", "t0%", "%a", "t_"]),
    end=st.text(alphabet=ALPHABET + "AkE", min_size=1, max_size=4),
)
def test_generated_ends_equal_the_reference(
    random_ids: tuple[Client, list[dict[str, object]]], op: str, head: str, end: str
) -> None:
    client, final = random_ids
    if op == "RLIKE":
        pattern = "".join("\\" + ch if ch in "-" else ch for ch in end) + "$"
        pattern = pattern.replace("%", "[%]").replace("_", "[_]")
    else:
        pattern = head + end
    filter_string = f"request_id {op} '{pattern}'"
    expected = ref.search(final, None, filter_string, None, None)
    assert all_pages(client, filter_string, None, 500) == expected, filter_string
