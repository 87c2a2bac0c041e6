"""A page whose filter holds one term only the client decides (RLIKE, a numeric tag
comparison) that matches many traces walks the rest of the filter and tests the term on
each candidate in the client (query/residual.py): random such filters over three
partitions, every page in several orders equal to the reference evaluator's; the walk is
taken when the sample says the term is dense, not when it is sparse; and a walk that meets
far fewer matches than the sample said gives the page to the usual way, still exact."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.helpers import all_pages
from tracetags.client import Client
from tracetags.query import budget, residual

WORDS = ("alpha", "Beta", "GAMMA", "delta", "zeta", "é", "日本", "x-1", "q_7")


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, object]]]]:
    rng = random.Random(21)
    traces = []
    for i in range(3000):
        word, head = rng.choice(WORDS), rng.choice(("tr-", "TR-", "x"))
        traces.append(
            {
                "trace_id": f"{head}{rng.randrange(16**6):06x}{i}",
                "experiment_id": rng.choice(("1", "2")),
                "timestamp_ms": qd.BASE_MS + rng.randrange(2_000),  # ties
                "execution_time_ms": rng.randrange(100),
                "status": rng.choice(("OK", "ERROR")),
                "name": rng.choice(("a", "b")),
                "client_request_id": None if rng.random() < 0.3 else f"{word}-{i % 500}",
                "tags": {
                    **({"u": f"{word}{i % 700}"} if rng.random() < 0.85 else {}),
                    "w": rng.choice(("x", "y", "z")),
                    "h": head,
                    **({"n": str(rng.randrange(-50, 50))} if rng.random() < 0.7 else {}),
                },
                "metadata": {"m": f"{rng.choice(WORDS)}.{i % 300}"},
            }
        )
    with qd.loaded(redis_url, "resid", 3, traces) as got:
        yield got


DENSE = (
    "request_id RLIKE '[0-9]{1}'",
    "request_id RLIKE '^[a-z]{1}'",
    "request_id NOT RLIKE 'f[f]{1}'",
    "client_request_id RLIKE '[a-z]{1}-'",
    "tags.u RLIKE '[0-9]{1}$'",
    "tags.u NOT RLIKE '^GAMMA'",
    "metadata.m RLIKE '\\.[1-9]{1}'",
    "tags.n > -20",
    "tags.n <= 10",
)
OTHERS = (
    "",
    "status = 'OK'",
    "tags.w IN ('x', 'y')",
    "timestamp_ms > 1700000000500",
    "name = 'b' AND tags.w != 'z'",
)
ORDERS: tuple[list[str] | None, ...] = (
    None,
    ["tags.u DESC"],
    ["request_id DESC"],
    ["status", "timestamp_ms"],
    ["metadata.m", "execution_time_ms DESC"],
)


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each page call was answered by a residual walk (calls without a deadline: a
    loaded machine must not decide the path)."""
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 10_000_000)
    taken: list[bool] = []
    real = residual.residual_page

    def spy(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        taken.append(got is not None)
        return got

    monkeypatch.setattr("tracetags.query.executor.residual_page", spy)
    return taken


@pytest.mark.parametrize("seed", range(4))
def test_random_dense_terms_equal_the_reference(
    loaded: tuple[Client, list[dict[str, object]]], walks: list[bool], seed: int
) -> None:
    client, final = loaded
    rng = random.Random(seed)
    for _ in range(8):
        term, other = rng.choice(DENSE), rng.choice(OTHERS)
        filter_string = f"{term} AND {other}" if other else term
        order = rng.choice(ORDERS)
        size = rng.choice((37, 100, 600))
        scope = rng.choice((None, ["1"]))
        expected = ref.search(final, scope, filter_string, order, None)
        got = all_pages(client, filter_string, order, size, experiment_ids=scope)
        assert got == expected, (filter_string, order, size, scope)
    assert any(walks)


# (a class with a count such as '[0]{1}' keeps an RLIKE a regex the client decides: a
# literal one is planned as the LIKE that holds for the same values,
# logical.regex_as_like, and one of query/rlike.py's simple form is tested in Lua)
@pytest.mark.parametrize(
    ("filter_string", "walked"),
    [
        ("request_id RLIKE '[0-9]{1}' AND status = 'OK'", True),
        ("tags.u RLIKE '^alpha'", False),  # anchored: its lead is sought
        ("tags.u RLIKE 'a1[0-9]{1}5$'", False),  # sparse by the sample: values read once
        ("request_id RLIKE 'ab[c]{1}' AND status = 'OK'", False),
        ("request_id RLIKE '[1]{1}' AND tags.u RLIKE '[2]{1}'", False),  # two such terms
        # another term on the same key: the probe merges both into the values of both
        ("tags.u RLIKE '[0-9]{1}' AND tags.u LIKE '%1%'", False),
        # sparse, but the rest holds fewer than SPARSE_ROWS traces a partition: one call
        ("request_id RLIKE 'f[0]{1}' AND tags.w = 'x' AND name = 'a'", True),
        ("client_request_id RLIKE 'zeta-[1]{1}' AND tags.w = 'y' AND tags.h = 'x'", True),
    ],
)
def test_the_sample_decides_the_walk(
    loaded: tuple[Client, list[dict[str, object]]],
    walks: list[bool],
    filter_string: str,
    walked: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (these keys hold under FEW_VALUES values a partition: walked only without that rule)
    monkeypatch.setattr(residual, "FEW_VALUES", 0)
    client, final = loaded
    page = client.search_traces(filter_string=filter_string, max_results=50)
    expected = ref.search(final, None, filter_string, None, None)[:50]
    assert [t.info.trace_id for t in page] == expected
    assert walks == [walked]


def test_a_walk_meeting_fewer_matches_than_sampled_gives_the_page_to_the_usual_way(
    loaded: tuple[Client, list[dict[str, object]]],
    walks: list[bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The term matches a third of the traces (the ids with an 'x'), all of which the rest
    excludes (tag h is the id's head): the walk tests candidates, finds none, and gives up
    past MAX_CANDIDATES; the usual way answers."""
    monkeypatch.setattr(residual, "MAX_CANDIDATES", 100)
    client, final = loaded
    filter_string = "request_id RLIKE '[x]{1}' AND tags.h = 'tr-'"
    assert all_pages(client, filter_string, None, 40) == []
    assert walks == [False]
    other = "request_id RLIKE '[x]{1}' AND tags.h != 'TR-'"
    assert all_pages(client, other, None, 40) == ref.search(final, None, other, None, None)


def test_a_walk_whose_calls_give_up_gives_the_page_to_the_usual_way(
    loaded: tuple[Client, list[dict[str, object]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call passes its deadline: the walk's batches shrink to the least, then the
    usual way (and its budgeted calls) answers, exactly."""
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 1)
    client, final = loaded
    filter_string = "request_id RLIKE '[0-9]{1}' AND status = 'OK'"
    expected = ref.search(final, None, filter_string, None, None)
    page = client.search_traces(filter_string=filter_string, max_results=50)
    assert [t.info.trace_id for t in page] == expected[:50]


@pytest.mark.parametrize(
    ("filter_string", "distinct"),
    [
        (
            "client_request_id RLIKE 'zeta-1[2]{1}$' AND tags.w = 'y' AND tags.h = 'x'",
            lambda keys, p: keys.client_request_ids(p),
        ),
        (
            "metadata.m RLIKE 'a\\.[7]{1}$' AND status = 'OK'",
            lambda k, p: k.metadata_values(p, "m"),
        ),
        ("tags.n > 45", lambda keys, p: keys.tag_values(p, "n")),
    ],
)
def test_a_key_of_few_values_is_read_whole_not_walked(
    loaded: tuple[Client, list[dict[str, object]]],
    walks: list[bool],
    filter_string: str,
    distinct: Any,
) -> None:
    """Every partition's key holds at most FEW_VALUES values, at most FEW_MATCHED of them
    match: the probe reads them all in one call and the term becomes value sets, whatever
    share of the traces the sample says they hold."""
    client, final = loaded
    sizes = [client.redis.zcard(distinct(client.keys, p)) for p in range(client.partitions)]
    assert 0 < max(sizes) <= residual.FEW_VALUES, sizes
    page = client.search_traces(filter_string=filter_string, max_results=50)
    expected = ref.search(final, None, filter_string, None, None)[:50]
    assert [t.info.trace_id for t in page] == expected
    assert walks == [False]


def test_a_key_of_few_values_many_matching_is_walked(
    loaded: tuple[Client, list[dict[str, object]]], walks: list[bool]
) -> None:
    """More than FEW_MATCHED of a small key's values match: as value sets they would be
    tested one by one, so the page walks the rest and tests the term in the client."""
    client, final = loaded
    filter_string = "tags.n > -20 AND status = 'OK'"
    page = client.search_traces(filter_string=filter_string, max_results=50)
    assert [t.info.trace_id for t in page] == ref.search(final, None, filter_string, None, None)[
        :50
    ]
    assert walks == [True]


@pytest.mark.parametrize(
    ("filter_string", "few_values", "walked"),
    [
        # an id term beside terms over keys of few values (the probe reads those whole):
        # the page walks the rest, which holds them as value sets
        ("request_id RLIKE '[0-9]{1}' AND tags.w RLIKE '[xy]{1}'", residual.FEW_VALUES, True),
        (
            "request_id NOT RLIKE 'f[f]{1}' AND metadata.m RLIKE '\\.[1-9]{1}' AND status = 'OK'",
            residual.FEW_VALUES,
            True,
        ),
        # ... not when such a key holds more values than FEW_VALUES: every value is read
        ("request_id RLIKE '[0-9]{1}' AND tags.w RLIKE '[xy]{1}'", 2, False),
        # two id terms: every id is read anyway
        (
            "request_id RLIKE '[0-9]{1}' AND request_id RLIKE '[a-f]{1}$'",
            residual.FEW_VALUES,
            False,
        ),
    ],
)
def test_an_id_term_beside_terms_over_few_values_is_walked(
    loaded: tuple[Client, list[dict[str, object]]],
    walks: list[bool],
    filter_string: str,
    few_values: int,
    walked: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(residual, "FEW_VALUES", few_values)
    client, final = loaded
    page = client.search_traces(filter_string=filter_string, max_results=50)
    expected = ref.search(final, None, filter_string, None, None)
    assert [t.info.trace_id for t in page] == expected[:50]
    assert walks == [walked]
    for order in (None, ["tags.u DESC"], ["request_id DESC"]):
        got = all_pages(client, filter_string, order, 37)
        assert got == ref.search(final, None, filter_string, order, None), order
