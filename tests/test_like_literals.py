"""A pattern that names one value (``LIKE 'x'`` without a wildcard, a literal regex
``RLIKE '^x$'``) is that value's term, as ``=`` makes it: over request_id the id looked up
in the ids hash (``HMGET``), not sought in the ids' byte order (a bucket of ids read for
one); over a tag, metadata key, status or client_request_id the value's set, not a read of
the key's values.  Pages and counts equal the reference evaluator's for values present,
absent, of another case, and holding regex or LIKE metacharacters."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client
from tracetags.query.logical import LAnd, LIdMatch, LIds, LMatch, LNot, LValues, logical
from tracetags.query.parser import parse_filter

IDS = [f"tr-{i:04x}" for i in range(600)] + ["TR-00a1", "tr.dot+1", "tr-1$x", "tr-\\x"]


def _traces() -> list[dict[str, object]]:
    rng = random.Random(41)
    return [
        {
            "trace_id": trace_id,
            "experiment_id": rng.choice(("1", "2")),
            "timestamp_ms": qd.BASE_MS + rng.randrange(5_000),
            "execution_time_ms": rng.randrange(1, 900),
            "status": rng.choice(("OK", "ERROR")),
            "name": "n",
            "client_request_id": rng.choice((None, f"cr-{rng.randrange(20)}", "CR.1+")),
            "tags": {"env": rng.choice(("prod", "dev", "Prod", "p.r+d"))},
            "metadata": {"m": f"m-{rng.randrange(30)}"} if rng.random() < 0.7 else {},
        }
        for trace_id in IDS
    ]


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    with qd.loaded(redis_url, "idliterals", 1, _traces()) as got:
        yield got


CASES = [
    ("request_id LIKE 'tr-0042'", LIds),
    ("request_id LIKE 'TR-0042'", LIds),  # LIKE is case-sensitive: no trace
    ("request_id LIKE 'TR-00a1'", LIds),
    ("request_id LIKE 'tr-nope'", LIds),
    ("request_id LIKE 'tr.dot+1'", LIds),
    ("request_id LIKE 'tr-1$x'", LIds),
    ("request_id LIKE 'tr-\\x'", LIds),
    ("request_id RLIKE '^tr\\-0042$'", LIds),
    ("request_id RLIKE '^tr\\.dot\\+1$'", LIds),
    ("request_id NOT LIKE 'tr-0042'", LNot),
    ("request_id LIKE 'tr-0042' AND tags.env = 'prod'", None),
    ("request_id LIKE 'tr-0042' AND request_id LIKE 'tr-0043'", None),
    # wildcards: still patterns
    ("request_id LIKE 'tr-004_'", LIdMatch),
    ("request_id LIKE 'tr-004%'", LIdMatch),
    ("request_id RLIKE '^tr-004'", LIdMatch),
    # the values of other keys
    ("tags.env LIKE 'prod'", LValues),
    ("tags.env LIKE 'PROD'", LValues),
    ("tags.env LIKE 'p.r+d'", LValues),
    ("tags.env RLIKE '^p\\.r\\+d$'", LValues),
    ("tags.env LIKE 'none'", LValues),
    ("metadata.m LIKE 'm-7' AND tags.env LIKE 'dev'", None),
    ("client_request_id LIKE 'CR.1+'", LValues),
    ("client_request_id LIKE 'cr-3' AND request_id LIKE 'tr-00%'", None),
    ("status LIKE 'OK'", LValues),
    ("status LIKE 'ok'", LValues),
    ("tags.env NOT LIKE 'prod'", LAnd),  # as != : the key present, not that value
    ("status NOT LIKE 'OK'", LMatch),  # as != on the status: the other statuses
    ("tags.env LIKE 'pro_'", LMatch),
]


@pytest.mark.parametrize(("filter_string", "kind"), CASES)
def test_a_pattern_naming_one_id_is_looked_up_and_equals_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str, kind: type | None
) -> None:
    client, final = loaded
    if kind is not None:
        node = logical(parse_filter(filter_string), None)
        assert isinstance(node, kind), node
        if kind is LNot:
            assert isinstance(node.child, LIds), node
    for order in (None, ["request_id DESC"]):
        expected = ref.search(final, None, filter_string, order, None)
        for size in (1, 100):
            assert all_pages(client, filter_string, order, size, None) == expected, (order, size)
    assert client.count(filter_string) == len(ref.search(final, None, filter_string, None, None))
