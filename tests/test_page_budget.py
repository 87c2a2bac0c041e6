"""Pages within the call budget (query/pages.py): a page call that would pass its deadline
gives up, and the page is found by value windows or a budgeted scan; the answers stay the
reference evaluator's, page after page, and no call holds Redis past the budget."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import query_data as qd
from tests.support import query_reference as ref
from tests.support.blocking import Blocking
from tests.support.helpers import drop_namespace
from tracetags.client import Client
from tracetags.errors import QueryLimitError
from tracetags.query import budget, executor
from tracetags.settings import Settings

#: No call may hold Redis past 25 ms: run alone (scripts/test), not beside other tests' load.
pytestmark = pytest.mark.serial

BASE = qd.BASE_MS
#: A call's deadline past a test's forced give-ups, as a multiple of its budget.
GENEROUS = 50


def _traces(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tags = {"u": f"u{i}", "g": f"g{rng.randrange(300)}", "env": rng.choice(("a", "b", "c"))}
        if rng.random() < 0.2:
            del tags["g"]
        unfinished = rng.random() < 0.05
        out.append(
            {
                "trace_id": f"t{rng.getrandbits(32):08x}{i:05d}",
                "experiment_id": rng.choice(("1", "2")),
                # ties: many traces share a millisecond
                "timestamp_ms": BASE + rng.randrange(n // 4),
                "execution_time_ms": None if unfinished else rng.randrange(5000),
                "status": "IN_PROGRESS" if unfinished else rng.choice(("OK", "OK", "ERROR")),
                "name": rng.choice(("chat", "embed", None)),
                "client_request_id": None,
                "tags": tags,
                "metadata": {},
            }
        )
    return out


@pytest.fixture(scope="module")
def loaded(redis_url: str) -> Iterator[tuple[Client, list[dict[str, Any]]]]:
    traces = _traces(4000, 11)
    settings = Settings(
        redis_url=redis_url, namespace=f"tt-pb-{uuid.uuid4().hex[:10]}", partitions=2
    )
    client = Client(settings)
    qd.load(client.redis, client.keys, 2, traces)
    yield client, ref.apply_mutations(traces, [])
    drop_namespace(client.redis, settings.namespace)
    client.close()


IN_150 = "tags.u IN (" + ", ".join(f"'u{i * 7}'" for i in range(150)) + ")"
FILTERS = [
    None,
    IN_150,
    IN_150 + " AND status = 'OK'",
    "tags.u LIKE '%77'",
    "tags.u LIKE '%77' AND tags.env != 'a'",
    "tags.g IN ('g1', 'g2', 'g3') OR tags.u LIKE 'u12%'",
    "NOT (tags.env = 'a') AND execution_time_ms > 2500",
    "tags.g IS NULL",
    "tags.env = 'b'",
    # scanned by their one source (a LIKE sought by its lead, a few dense values), or by
    # every trace when a value's set is plain (IN_PROGRESS)
    "tags.env LIKE 'b%' AND execution_time_ms > 2500",
    "tags.env IN ('a', 'c') AND name = 'chat'",
    "status IN ('ERROR', 'IN_PROGRESS')",
]
ORDERS: list[list[str] | None] = [
    None,
    ["execution_time_ms DESC"],
    ["tags.g"],
    ["request_id DESC"],
    ["status", "name DESC"],
]


def _walk(
    client: Client,
    filter_string: str | None,
    order: list[str] | None,
    size: int,
    token: str | None = None,
) -> list[str]:
    ids: list[str] = []
    while True:
        page = client.search_traces(
            filter_string=filter_string, order_by=order, max_results=size, page_token=token
        )
        ids.extend(t.info.trace_id for t in page)
        token = page.token
        if token is None:
            return ids


@pytest.mark.parametrize("filter_string", FILTERS)
def test_pages_found_by_the_budgeted_ways_equal_the_reference(
    loaded: tuple[Client, list[dict[str, Any]]],
    filter_string: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, final = loaded
    # every page call gives up at once: value windows (shrinking to one value) and scans
    # answer every page
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 1)
    for order in ORDERS:
        executor.clear_caches()
        expected = ref.search(final, None, filter_string, order, None)
        first = client.search_traces(filter_string=filter_string, order_by=order, max_results=50)
        assert [t.info.trace_id for t in first] == expected[:50], (filter_string, order)
        assert (first.token is None) == (len(expected) <= 50)
        if order is None:
            assert _walk(client, filter_string, order, 333) == expected, (filter_string, order)


def test_a_page_that_gives_up_answers_as_one_that_does_not(
    loaded: tuple[Client, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = loaded
    rng = random.Random(5)
    cases = [(rng.choice(FILTERS), rng.choice(ORDERS), rng.choice((1, 10, 200))) for _ in range(12)]
    direct = [
        [t.info.trace_id for t in client.search_traces(filter_string=f, order_by=o, max_results=n)]
        for f, o, n in cases
    ]
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 1)
    executor.clear_caches()
    budgeted = [
        [t.info.trace_id for t in client.search_traces(filter_string=f, order_by=o, max_results=n)]
        for f, o, n in cases
    ]
    assert budgeted == direct


@pytest.fixture(scope="module")
def big(redis_url: str) -> Iterator[Client]:
    """60,000 traces, a tag unique per trace: pages whose one call held Redis 45-75 ms at
    300k traces (a LIKE of 3,000 values, an IN of 10,000)."""
    traces = _traces(60_000, 3)
    settings = Settings(redis_url=redis_url, namespace=f"tt-pbb-{uuid.uuid4().hex[:10]}")
    client = Client(settings)
    qd.load(client.redis, client.keys, 1, traces)
    yield client
    drop_namespace(client.redis, settings.namespace)
    client.close()


def test_big_pages_stay_within_the_budget(big: Client) -> None:
    in_wide = "tags.u IN (" + ", ".join(f"'u{i * 6}'" for i in range(10_000)) + ")"
    budget = big.settings.replace(query_call_budget_ms=5)
    client = Client(budget)
    try:
        with Blocking(budget.effective_redis_url) as blocking:
            for f in (in_wide, "tags.u LIKE '%55'", "tags.u LIKE '%5' AND tags.env = 'a'"):
                executor.clear_caches()
                page = client.search_traces(filter_string=f, max_results=500)
                assert len(page) == 500
        took, command = blocking.longest_command()
        # 5 ms calls, plus one batch
        assert took <= 25, f"a call held Redis {took:.1f} ms: {command!r}"
        blocking.assert_within_budget()
    finally:
        client.close()


COUNTED = [f for f in FILTERS if f is not None] + [
    "status = 'OK' AND execution_time_ms > 1000",
    "tags.env = 'a' OR tags.env = 'b'",
    "tags.g LIKE 'g1%' AND NOT (status = 'ERROR')",
]


@pytest.mark.parametrize("filter_string", COUNTED)
def test_counts_and_stats_that_give_up_are_scanned_to_the_same_answer(
    loaded: tuple[Client, list[dict[str, Any]]],
    filter_string: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, final = loaded
    expected = ref.search(final, None, filter_string, None, None)
    stats = client.stats(filter_string, group_by=["tags.env"], metrics=["count", "max"])
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 1)
    scanned: list[int] = []
    real_scanned = budget.scanned

    def spy(*args: Any) -> Any:
        scanned.append(len(args[2]))
        return real_scanned(*args)

    monkeypatch.setattr(budget, "scanned", spy)
    executor.clear_caches()
    assert client.count(filter_string) == len(expected)
    assert client.stats(filter_string, group_by=["tags.env"], metrics=["count", "max"]) == stats
    # every stats call gave up and was scanned (a count by a few Redis calls may finish
    # before the clock is first read)
    assert scanned[-1] == 2


def test_a_page_of_many_rows_is_read_in_calls_within_the_budget(big: Client) -> None:
    # 30,000 hashes in one call held Redis ~100 ms: the page call gives up, the rows are
    # found by a budgeted scan and their hashes read a budget's worth a call.
    client = Client(big.settings.replace(query_call_budget_ms=5))
    try:
        executor.clear_caches()
        with Blocking(big.settings.effective_redis_url) as blocking:
            page = client.search_traces(filter_string="status = 'OK'", max_results=30_000)
        took, command = blocking.longest_command()
        assert took <= 25, f"a call held Redis {took:.1f} ms: {command!r}"
        executor.clear_caches()
        ids = [t.info.trace_id for t in page]
        assert len(ids) == 30_000 and len(set(ids)) == 30_000
        # the same page found in one call (a budget of 10 s)
        direct = big.search_traces(filter_string="status = 'OK'", max_results=30_000)
        assert ids == [t.info.trace_id for t in direct]
        assert [t.info for t in page][:50] == [t.info for t in direct][:50]
        assert page.token == direct.token
    finally:
        client.close()


def test_a_pattern_of_many_values_outside_a_conjunction_is_refused_when_budgeted(
    big: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inside an OR the values cannot be the page's source: every call of a scan would read
    # them all before testing a trace; past the size a call can read, the query is refused.
    in_list = ", ".join(f"'u{i * 11}'" for i in range(5000))
    conjunction = f"tags.u IN ({in_list}) AND status = 'ERROR'"
    expected = big.count(conjunction)
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 1)
    monkeypatch.setattr(budget, "SCAN_PLAN_MAX_BYTES", 16 * 1024)
    executor.clear_caches()
    f = "tags.u RLIKE '[1-9]{1}$' OR status = 'ERROR'"
    with pytest.raises(QueryLimitError) as info:
        big.search_traces(filter_string=f)
    assert re.fullmatch(
        r"the filter's patterns or IN lists hold [\d,]+ KB of values outside a conjunction,"
        r" more than a budgeted call can read \(16 KB\); narrow the patterns or split the query",
        str(info.value),
    ), str(info.value)
    with pytest.raises(QueryLimitError):
        big.count(f)
    # values that are a conjunct are the source of windows: answered (a complement, as
    # the planner makes of a pattern matching most values, is not); the first call gives
    # up, the windows have their budget
    deadlines = iter([1])
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: next(deadlines, budget_us))
    executor.clear_caches()
    assert big.count(conjunction) == expected
    assert next(deadlines, None) is None


def test_a_scan_under_a_not_of_thousands_of_values_makes_progress_each_call(
    big: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RLIKE matching most of a key of 60,000 values is planned as 'present AND NOT (the
    ~6,000 other values)'. Sizing those values' sets took each scan call its whole budget,
    so every call tested one batch of 8 traces (at 100k traces: 12,500 calls of 120+ ms).
    Such a leaf is tested by the candidates' registers, unsized: calls test thousands."""
    from tracetags import functions

    filter_string = "tags.u RLIKE '[0-8]{1}$'"
    direct = [t.info.trace_id for t in big.search_traces(filter_string=filter_string)]
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 1)
    calls: list[int] = []
    real = functions.query_partitions

    def spy(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(functions, "query_partitions", spy)
    executor.clear_caches()
    text = big.explain(filter_string=filter_string)
    assert "NOT" in text, text
    page = big.search_traces(filter_string=filter_string)
    assert [t.info.trace_id for t in page] == direct
    assert len(calls) < 100, len(calls)  # 60,000 traces: ~600+ a call at the least


@pytest.mark.parametrize("gives_up", [1, 2, 3])
def test_a_page_that_gives_up_once_is_found_in_steps(
    loaded: tuple[Client, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, gives_up: int
) -> None:
    """The first ``gives_up`` calls of each page give up; a page whose one call gives up
    (its deadline twice the budget) is found a few rows a call from the last row's
    position (pages.py: steps), not by a scan of every trace, unless two steps in a row
    give up or the call gave up collecting every candidate; every page equals the
    reference's, tokens too."""
    from tracetags.query import pages

    client, final = loaded
    scanned: list[tuple[str | None, tuple[str, ...] | None]] = []
    # (page, order, partition) of each partition's page that was stepped, or scanned
    stepped_parts: set[tuple[Any, ...]] = set()
    scanned_parts: set[tuple[Any, ...]] = set()
    collects: set[tuple[str | None, tuple[str, ...] | None]] = set()
    real = pages._budgeted_page
    # the first page being asked (None: a later page, not recorded)
    at: list[tuple[str | None, tuple[str, ...] | None] | None] = []

    def spy(*args: Any) -> Any:
        if at[-1] is not None:
            scanned.append(at[-1])
            scanned_parts.add((*at[-1], args[2].partition))
        return real(*args)

    monkeypatch.setattr(pages, "_budgeted_page", spy)
    stepped: list[tuple[str | None, tuple[str, ...] | None]] = []
    real_steps = pages._stepped_page

    def steps_spy(*args: Any, **kwargs: Any) -> Any:
        if at[-1] is not None:
            stepped.append(at[-1])
            stepped_parts.add((*at[-1], args[2].partition))
        return real_steps(*args, **kwargs)

    monkeypatch.setattr(pages, "_stepped_page", steps_spy)
    for filter_string in FILTERS:
        for order in ORDERS:
            here = (filter_string, None if order is None else tuple(order))
            at.append(here)
            # (a walk over a table of the matches collects every candidate first, too)
            text = client.explain(filter_string=filter_string, order_by=order)
            if "strategy: collect" in text or "a table of the matches" in text:
                collects.add(here)
            left = [gives_up]

            # Past the forced give-ups a call's deadline is generous: on a slow or loaded
            # machine a step could give up by its real budget too, and the page be both
            # stepped and scanned by timing rather than by the rule under test.
            def deadline(budget_us: int, left: list[int] = left) -> int:
                left[0] -= 1
                return 1 if left[0] >= 0 else GENEROUS * budget_us

            monkeypatch.setattr(budget, "call_deadline_us", deadline)
            executor.clear_caches()
            expected = ref.search(final, None, filter_string, order, None)
            page = client.search_traces(filter_string=filter_string, order_by=order, max_results=70)
            assert [t.info.trace_id for t in page] == expected[:70], (filter_string, order)
            assert (page.token is None) == (len(expected) <= 70)
            monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: budget_us)
            if page.token is not None:
                # (the later pages run by the real budget: a give-up there is timing, not
                # recorded as the first page's way)
                at.append(None)
                rest = _walk(client, filter_string, order, 333, page.token)
                assert rest == expected[70:], (filter_string, order)
    # two partitions: a page's first call is one pipeline of both; steps then per
    # partition
    if gives_up == 1:
        # A page whose call gave up collecting every candidate goes to the budgeted ways at
        # once (a step would collect them all again); every other page's first step finds it.
        assert scanned and not scanned_parts & stepped_parts, (scanned_parts, stepped_parts)
        assert stepped
    elif gives_up == 2:
        # A collect's one step gave up: the budgeted ways answer it; a walk's steps go on.
        # (Which partition's step meets the second give-up depends on the order of the
        # steps: some page with a collect, never one without, is scanned.)
        assert scanned and set(scanned) <= collects, (scanned, collects)
    else:  # the first call and two steps give up: the budgeted ways answer
        assert scanned


def _scan_reads(client: Client, filter_string: str) -> tuple[list[str], dict[str, int]]:
    client.redis.config_resetstat()
    page = client.search_traces(filter_string=filter_string, max_results=50)
    stats: dict[str, Any] = client.redis.info("commandstats")
    calls = {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("smembers", "sunion")}
    return [t.info.trace_id for t in page], calls


@pytest.mark.parametrize(
    ("filter_string", "union"),
    [
        ("tags.env LIKE 'b%' AND execution_time_ms > 2500", False),
        ("tags.env IN ('a', 'c') AND tags.g IS NOT NULL", True),
    ],
)
def test_a_scan_reads_its_one_source_not_every_trace(
    loaded: tuple[Client, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    filter_string: str,
    union: bool,
) -> None:
    """A scan whose one source is a LIKE sought by its lead, or a few values each a chunked
    set, reads the source's chunks (SMEMBERS of one, SUNION of several) and tests the rest
    of the filter: Redis's own counters show no chunk of every trace read."""
    client, final = loaded
    monkeypatch.setattr(budget, "call_deadline_us", lambda budget_us: 1)
    executor.clear_caches()
    ids, calls = _scan_reads(client, filter_string)
    assert ids == ref.search(final, None, filter_string, None, None)[:50]
    chunks = sum(
        client.redis.scard(k) > 0
        for k in client.redis.scan_iter(f"{client.keys.namespace}:*:all:*")
    )
    assert chunks > 0
    if union:
        assert calls["sunion"] >= chunks and calls["smembers"] < chunks
    else:
        assert calls["sunion"] == 0 and calls["smembers"] >= chunks
    # the same page with every value set plain except one is scanned over every trace
    monkeypatch.setattr(budget, "one_value_source", lambda sources: False)
    executor.clear_caches()
    bare_ids, bare = _scan_reads(client, filter_string)
    assert bare_ids == ids
    assert bare["sunion"] == 0
