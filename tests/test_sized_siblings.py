"""A pattern over a key of many values beside a small term (a narrow time range, a rare
value, a few listed ids): the probe's VALUES call sizes the siblings first
(`ValuesPlan.beside`) and, when the smallest holds at most one trace per
`DEFERRED_VALUES_PER_CANDIDATE` values of the key, answers with a sample, so the page
tests the pattern on those few traces instead of reading and matching every value.
Patterns that match one trace, none, or most; siblings that are empty, small or large;
every page equals the reference evaluator's, and the plan says which way it went."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags import functions
from tracetags.client import Client
from tracetags.query.plan import ValuesPlan

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(tuple[int, list[str | float | int], int])
TESTED = "each candidate's value tested"


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    with qd.loaded(redis_url, "sizedsiblings", 1, TRACES) as got:
        yield got


def _traces() -> list[dict[str, Any]]:
    rng = random.Random(29)
    traces: list[dict[str, Any]] = []
    for i in range(4000):
        traces.append(
            {
                "trace_id": f"tr-{i:05d}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + i * 10 + (i % 3),
                "execution_time_ms": rng.randrange(50),
                "status": rng.choice(("OK", "ERROR")),
                "name": "n",
                "client_request_id": None,
                # ~3,000 distinct values: a pattern over them is read in one window
                "tags": {
                    "u": f"{rng.choice(('Ab', 'cd', 'EF'))}-{rng.randrange(3000):04d}",
                    "rare": "yes" if i % 997 == 5 else "no",
                },
                "metadata": {},
            }
        )
    return traces


TRACES = _traces()
T = qd.BASE_MS
CASES = [
    # (filter, whether the pattern is tested on each candidate; None: an empty term)
    (f"timestamp_ms = {T + 20_002} AND tags.u LIKE '%b-%'", True),  # one trace in range
    (f"timestamp_ms = {T + 20_001} AND tags.u ILIKE '%ab%'", None),  # none in range
    (f"timestamp_ms >= {T + 39_900} AND tags.u LIKE '%-00%'", True),
    ("tags.rare = 'yes' AND tags.u RLIKE 'd-[0-9]'", True),
    ("tags.rare = 'yes' AND tags.u LIKE 'cd-1%'", False),  # a lead: sought, not sampled
    ("request_id IN ('tr-00007', 'tr-03999', 'tr-nope') AND tags.u LIKE '%7'", True),
    ("request_id = 'tr-00007' AND tags.u ILIKE '%B-%'", True),
    # large siblings: the values are read and matched as before
    (f"timestamp_ms > {T} AND tags.u LIKE '%-0001'", False),
    ("tags.rare = 'no' AND tags.u ILIKE 'EF-12%'", False),
]


@pytest.mark.parametrize(("filter_string", "tested"), CASES)
def test_a_pattern_beside_a_small_term_equals_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str, tested: bool | None
) -> None:
    client, final = loaded
    for order in (None, ["tags.u DESC"], ["timestamp_ms ASC"]):
        expected = ref.search(final, None, filter_string, order, None)
        for size in (1, 3, 100):
            assert all_pages(client, filter_string, order, size, None) == expected, (order, size)
    plan = client.explain(filter_string)
    if tested is None:
        assert "empty term" in plan, plan
    else:
        assert (TESTED in plan) == tested, plan


def test_the_one_trace_a_sparse_pattern_matches_is_found(
    loaded: tuple[Client, list[dict[str, object]]],
) -> None:
    client, final = loaded
    one = TRACES[1234]
    value = one["tags"]["u"]
    # (no literal lead: a lead is sought in the byte-order index, never sampled)
    filter_string = f"timestamp_ms = {one['timestamp_ms']} AND tags.u LIKE '%{value[1:]}'"
    expected = ref.search(final, None, filter_string, None, None)
    assert one["trace_id"] in expected
    assert all_pages(client, filter_string, None, 100, None) == expected
    assert TESTED in client.explain(filter_string)


@pytest.mark.parametrize(
    ("bound", "per", "sampled"),
    [
        (0, 60, 16),  # an empty sibling: the page is empty whatever the sample says
        (2, 60, 16),  # two listed ids: a few values are enough
        (40, 60, 40),  # as many values as the sibling's traces
        (300, 1, 256),  # never more than asked
        (100, 60, None),  # too many traces beside for the values: no sample
    ],
)
def test_the_sample_beside_a_small_term_is_no_larger_than_its_traces(
    loaded: tuple[Client, list[dict[str, object]]], bound: int, per: int, sampled: int | None
) -> None:
    """The sample only tells how many of the sibling's traces may match, which they bound
    anyway: a ZRANDMEMBER of 256 values (~1 us each on a large key) is cut to the sibling's
    size, at least 16."""
    client, _ = loaded
    dkey = client.keys.tag_values(0, "u")
    values = client.redis.zcard(dkey)
    assert 40 * 60 <= values < 100 * 60  # (the cases above rely on it)
    plan = ValuesPlan(
        dkey=dkey, runs=(), lead=(), window=[0, 5_000], sample=256,
        beside=[["n", bound]], beside_per=per,
    )  # fmt: skip
    [reply] = functions.query_partitions(client.redis, client.keys, [(0, _ENCODER.encode(plan))])
    kind, flat, third = _DECODER.decode(reply)
    if sampled is None:
        assert kind == 0 and third == -1 and len(flat) == 2 * values  # every value read
    else:
        assert (kind, len(flat), third) == (2, 2 * sampled, values)
        assert len(set(flat[::2])) == sampled  # distinct values, each with its count
