"""Patterns whose values (or trace ids) are sought by their literal lead instead of read in
full: ILIKE on tags and metadata (each case variant of the lead in the byte-order index),
and request_id LIKE / ILIKE (in the ids' byte order).  Unicode folding makes the variants
more than ASCII pairs ('K' KELVIN SIGN folds to 'k', 'İ' to 'i̇'); answers must equal the
reference evaluator's, with and without the indexes, and over dense prefixes (which fall
back to reading every id).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages, drop_namespace
from tracetags.client import Client
from tracetags.query.logical import id_prefixes
from tracetags.settings import Settings

WORDS = ("key", "Key", "KEY", "\u212aey", "ice", "\u0130ce", "Ice", "kiwi", "k", "", "ki_")


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    rng = random.Random(3)
    traces = []
    for i in range(1500):
        word = rng.choice(WORDS)
        traces.append(
            {
                "trace_id": rng.choice(("tr-", "TR-", "\u212a-", "k-", "Tr-")) + f"{i:04d}",
                "experiment_id": "1",
                "timestamp_ms": qd.BASE_MS + rng.randrange(100_000),
                "execution_time_ms": 5,
                "status": "OK",
                "name": "n",
                "client_request_id": None,
                "tags": {"w": f"{word}{rng.randrange(40)}", "many": f"v{rng.randrange(900)}"},
                "metadata": {"m": word},
            }
        )
    c = Client(Settings(redis_url=redis_url, namespace=f"tt-seek-{os.urandom(4).hex()}"))
    qd.load(c.redis, c.keys, 1, traces)
    yield c, ref.apply_mutations(traces, [])
    drop_namespace(c.redis, c.keys.namespace)
    c.close()


FILTERS = [
    "tags.w ILIKE 'key%'",
    "tags.w ILIKE 'KEY1%'",
    "tags.w ILIKE 'ice%'",
    "tags.w ILIKE 'i%'",
    "tags.w ILIKE 'k_y%'",
    "metadata.m ILIKE 'KI%'",
    "tags.many ILIKE 'V1%'",
    "tags.many ILIKE 'V%'",
    "request_id LIKE 'tr-01%'",
    "request_id ILIKE 'TR-01%'",
    "request_id ILIKE 'k-%'",
    "request_id ILIKE 'T%'",
    "request_id LIKE '%1'",
]


@pytest.mark.parametrize("filter_string", FILTERS)
def test_sought_patterns_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str
) -> None:
    client, final = loaded
    for order in (None, ["request_id DESC"], ["tags.w"]):
        expected = ref.search(final, None, filter_string, order, None)
        assert all_pages(client, filter_string, order, 211) == expected, (filter_string, order)
        assert client.count(filter_string) == len(expected)


def test_case_variants_include_the_unicode_folds() -> None:
    assert id_prefixes("LIKE", "tr-1%") == ("tr-1",)
    assert id_prefixes("LIKE", "%x") is None
    assert set(id_prefixes("ILIKE", "k%") or ()) == {"k", "K", "\u212a"}
    assert set(id_prefixes("ILIKE", "i1_") or ()) == {"i1", "I1", "\u01301"}
    assert id_prefixes("ILIKE", "é%") is None  # non-ASCII lead: every value is read
    assert id_prefixes("ILIKE", "abcdefg%") is None  # 128 variants: too many


def test_without_the_ids_byte_order_every_id_is_read(
    loaded: tuple[Client, list[dict[str, object]]],
) -> None:
    """A partition folded before the ids' byte order existed: the seek reads every id (the
    answers, and the other tests' answers, stay the same)."""
    client, final = loaded
    prefix = client.keys.prefix(0)
    for key in [*client.redis.scan_iter(match=f"{prefix}:ri*", count=1000)]:
        client.redis.delete(key)
    for filter_string in ("request_id ILIKE 'TR-01%'", "request_id LIKE 'k-1%'"):
        expected = ref.search(final, None, filter_string, None, 1000)
        page = client.search_traces(filter_string=filter_string, max_results=1000)
        assert [t.info.trace_id for t in page] == expected
