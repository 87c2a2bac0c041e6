"""Contradictions and pinned keys decided before any read (query/simplify.py): the rewritten
terms, and the answers of such filters against the reference evaluator."""

from __future__ import annotations

import os
from collections.abc import Iterator

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import drop_namespace
from tracetags.client import Client
from tracetags.query import executor
from tracetags.query.logical import (
    LAnd,
    LConst,
    LIds,
    LNot,
    LOr,
    LPresent,
    LRange,
    LValues,
    pattern_predicate,
)
from tracetags.settings import Settings

NOTHING = [
    "tags.env = 'production' AND tags.env = 'staging'",
    "timestamp_ms > 1700000005000 AND timestamp_ms < 1700000004000",
    "timestamp_ms > 1700000005000 AND timestamp_ms <= 1700000005000",
    "tags.env IS NULL AND tags.env = 'production'",
    "tags.env IS NULL AND tags.env LIKE 'p%'",
    "tags.env = 'production' AND tags.env != 'production'",
    "request_id = 'a' AND request_id = 'b'",
    "status = 'OK' AND status = 'ERROR'",
    "client_request_id = 'req-1' AND client_request_id LIKE 'req-2%'",
    "tags.env = 'dev' AND tags.env NOT LIKE 'd%'",
    "status = 'OK' AND (tags.user = 'user_1' AND tags.user = 'user_2')",
    # patterns on one key whose literal starts (or LIKE's literal ends) disagree
    "metadata.mlflow.sourceRun LIKE 'ze_a-29' AND metadata.mlflow.sourceRun LIKE 'de_ta-43'",
    "tags.env LIKE '%ion' AND tags.env LIKE '%ing'",
    "tags.env ILIKE 'pr%' AND tags.env LIKE 'st%'",
    "tags.env RLIKE '^pro' AND tags.env LIKE 'sta%'",
    "request_id LIKE 'tr-a%' AND request_id RLIKE '^tr-b'",
    # terms on the trace id beside a list of ids are decided on those ids
    "request_id IN ('tr-a1', 'tr-b2') AND request_id RLIKE '[0-9]{2}'",
    "request_id = 'tr-a1' AND request_id != 'tr-a1'",
    "request_id IN ('tr-a1', 'tr-b2') AND request_id NOT IN ('tr-b2', 'tr-a1')",
    "request_id = 'tr-a1' AND request_id NOT LIKE 'tr-%'",
]
SOMETHING = [
    "tags.env IN ('production', 'staging') AND tags.env = 'staging'",
    "tags.env IN ('production', 'staging', 'dev') AND tags.env != 'dev'",
    "client_request_id = 'req-1' AND client_request_id LIKE 'req-%'",
    "status = 'OK' AND status != 'ERROR' AND tags.env IS NOT NULL",
    "execution_time_ms > 10 AND execution_time_ms < 400 AND execution_time_ms >= 20",
    "tags.env = 'production' AND tags.env ILIKE 'PROD%'",
    "NOT (tags.env = 'a' AND tags.env = 'b')",
    "tags.env = 'production' OR (status = 'OK' AND status = 'ERROR')",
    "timestamp_ms >= 1700000005000 AND timestamp_ms <= 1700000005000",
    # a pattern of only % is presence (every trace for request_id), NOT LIKE '%' nothing
    "request_id LIKE '%'",
    "request_id ILIKE '%%' AND status = 'ERROR'",
    "client_request_id ILIKE '%'",
    "tags.env LIKE '%'",
    "tags.env NOT LIKE '%'",
    "status LIKE '%'",
    "metadata.source NOT ILIKE '%' OR tags.retries LIKE '%%%'",
    "tags.env LIKE 'pro%' AND tags.env LIKE 'p%tion'",
    "tags.env ILIKE 'PRO%' AND tags.env LIKE 'pro%'",
    "tags.env LIKE 'prod%' AND tags.env NOT LIKE 'sta%'",
    "tags.env LIKE 'prod%' AND tags.user LIKE 'sta%'",
]
#: ORs whose children share terms (taken out of the OR).
FACTORED = [
    "(timestamp_ms < 1700000004000 AND tags.env != 'x') OR (timestamp_ms > 1700000009000"
    " AND tags.env != 'x')",
    "(status = 'OK' AND tags.env = 'production') OR (tags.env = 'production' AND"
    " execution_time_ms > 100) OR (tags.env = 'production' AND status = 'ERROR')",
    "tags.env = 'production' OR (tags.env = 'production' AND status = 'OK')",
    "(status = 'OK' AND tags.env = 'dev') OR (status = 'OK' AND (tags.env = 'production'"
    " OR tags.env = 'staging'))",
    "NOT ((tags.env = 'dev' AND status = 'OK') OR (tags.env = 'dev' AND tags.user IS NULL))",
    "(tags.env = 'dev' AND status = 'OK') OR (tags.env = 'dev' AND status = 'OK')",
]


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from(("LIKE", "ILIKE", "RLIKE")),
    st.text(alphabet="ab%_A^", min_size=1, max_size=4),
    st.sampled_from(("LIKE", "ILIKE", "RLIKE")),
    st.text(alphabet="ab%_A^", min_size=1, max_size=4),
    st.lists(st.text(alphabet="abAB", max_size=5), min_size=1, max_size=30),
)
def test_patterns_said_disjoint_match_no_value_together(
    op1: str, p1: str, op2: str, p2: str, values: list[str]
) -> None:
    filter_string = f"tags.k {op1} '{p1}' AND tags.k {op2} '{p2}'"
    root = executor.prepare(None, filter_string).root
    if not (isinstance(root, LConst) and not root.value):
        return
    first, second = pattern_predicate(op1, p1), pattern_predicate(op2, p2)
    for value in [*values, p1, p2, p1.replace("%", ""), p2.replace("%", "")]:
        assert not (first(value) and second(value)), (filter_string, value)


@pytest.mark.parametrize("filter_string", NOTHING)
def test_a_contradiction_is_nothing(filter_string: str) -> None:
    root = executor.prepare(None, filter_string).root
    assert isinstance(root, LConst) and not root.value, root


def test_a_pinned_key_narrows_its_values() -> None:
    root = executor.prepare(None, "tags.k IN ('a', 'b', 'c') AND tags.k != 'b'").root
    assert isinstance(root, LValues) and root.values == ("a", "c")
    root = executor.prepare(None, "client_request_id = 'r1' AND client_request_id LIKE 'r%'").root
    assert isinstance(root, LValues) and root.values == ("r1",)


def test_listed_ids_decide_the_other_terms_on_the_id() -> None:
    root = executor.prepare(
        None, "request_id IN ('tr-a1', 'tr-b2', 'tr-c') AND request_id RLIKE '[0-9]$'"
    ).root
    assert isinstance(root, LIds) and root.ids == ("tr-a1", "tr-b2")
    root = executor.prepare(
        None, "request_id IN ('tr-a1', 'tr-b2') AND status = 'OK' AND request_id != 'tr-a1'"
    ).root
    assert isinstance(root, LAnd) and root.children[0] == LIds(("tr-b2",), root.children[0].text)
    root = executor.prepare(None, "request_id = 'tr-a1' AND request_id ILIKE 'TR-A%'").root
    assert isinstance(root, LIds) and root.ids == ("tr-a1",)


def test_terms_common_to_every_child_of_an_or_are_taken_out() -> None:
    root = executor.prepare(None, FACTORED[0]).root
    # (!= is "present and not the value": two terms, both taken out)
    assert isinstance(root, LAnd) and [type(c) for c in root.children] == [LPresent, LNot, LOr]
    assert all(isinstance(c, LRange) for c in root.children[2].children)
    # x OR (x AND y) is x
    assert isinstance(executor.prepare(None, FACTORED[2]).root, LValues)
    # identical children: the one conjunction
    root = executor.prepare(None, FACTORED[5]).root
    assert isinstance(root, LAnd) and len(root.children) == 2
    # nothing in common: unchanged
    root = executor.prepare(None, "tags.env = 'a' OR status = 'OK'").root
    assert isinstance(root, LOr) and len(root.children) == 2


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    traces, mutations = qd.generate(29, 400, n_mutations=60)
    c = Client(
        Settings(redis_url=redis_url, namespace=f"tt-simp-{os.urandom(4).hex()}", partitions=2)
    )
    qd.load(c.redis, c.keys, 2, traces, mutations)
    yield c, ref.apply_mutations(traces, mutations)
    drop_namespace(c.redis, c.keys.namespace)
    c.close()


@pytest.mark.parametrize("filter_string", NOTHING + SOMETHING + FACTORED)
def test_simplified_filters_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], filter_string: str
) -> None:
    client, final = loaded
    expected = ref.search(final, None, filter_string, None, 1000)
    page = client.search_traces(filter_string=filter_string, max_results=1000)
    assert [t.info.trace_id for t in page] == expected
    assert client.count(filter_string) == len(expected)
    if filter_string in SOMETHING[:6]:
        assert expected  # the dataset has matches: the rewrite kept them
