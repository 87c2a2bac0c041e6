"""A server that answers a write later than the socket timeout: the producer waits for the
replies instead of closing the connection, so the write is neither lost nor written twice.

The proxy holds one transaction's ``EXEC`` past the producer's socket timeout, as a stalled
server would (a long fsync, a slow script), and then lets it run even if the producer has
closed its connection meanwhile: a server that has a pipeline in its socket runs it."""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from tests.faults.proxy import Action, FaultProxy
from tests.support.helpers import exactly_once_problems, wait_until
from tracetags import AsyncTagProducer, Settings, TagProducer, log, schemas

EVENTS = 40
HOLD_S = 1.5


class HoldFirstExec:
    """Holds the first ``EXEC`` after it is armed (once)."""

    def __init__(self) -> None:
        self.armed = False
        self.held = 0
        self.execs = 0

    def __call__(self, _: int, command: list[bytes]) -> Action:
        if command[0].upper() != b"EXEC" or not self.armed:
            return "forward"
        self.execs += 1
        if self.held == 0:
            self.held += 1
            return "hold"
        return "forward"


def logged_numbers(admin: redis.Redis, namespace: str) -> list[int]:
    out = []
    for entry in log.read_log(admin, namespace):
        assert isinstance(entry.event, schemas.TagsSet), entry
        out.append(int(entry.event.tags["n"]))
    return out


def stalled_settings(proxy: FaultProxy, namespace: str, reply_wait_ms: int) -> Settings:
    return Settings(
        redis_url=proxy.url,
        namespace=namespace,
        socket_timeout_ms=300,
        producer_reply_wait_ms=reply_wait_ms,
        retry_initial_ms=10,
        retry_max_ms=50,
        flush_interval_ms=50,
    )


def run_stalled(proxy: FaultProxy, namespace: str, reply_wait_ms: int) -> tuple[Any, Any]:
    """One event written, then EVENTS with the first EXEC held; (the hook, the stats)."""
    hook = HoldFirstExec()
    proxy.hook, proxy.hold_s = hook, HOLD_S
    with TagProducer(stalled_settings(proxy, namespace, reply_wait_ms)) as producer:
        producer.set_tags("t0", {"n": "-1"})
        producer.flush(10)
        hook.armed = True
        for i in range(EVENTS):
            producer.set_tags(f"t{i % 7}", {"n": str(i)})
        producer.flush(15)
        return hook, producer.stats()


def test_a_write_answered_after_the_socket_timeout_lands_once(
    admin: redis.Redis, proxy: FaultProxy
) -> None:
    hook, stats = run_stalled(proxy, "stall", reply_wait_ms=10_000)
    numbers = logged_numbers(admin, "stall")[1:]
    assert hook.held == 1 and hook.execs == 1, vars(hook)  # held, answered late, not resent
    assert exactly_once_problems(numbers, EVENTS) == ""
    assert numbers == list(range(EVENTS))
    assert (stats.sent, stats.dropped) == (EVENTS + 1, 0)


def test_the_async_producer_waits_for_late_replies_too(
    admin: redis.Redis, proxy: FaultProxy
) -> None:
    hook = HoldFirstExec()
    proxy.hook, proxy.hold_s = hook, HOLD_S

    async def main() -> None:
        settings = stalled_settings(proxy, "astall", reply_wait_ms=10_000)
        async with AsyncTagProducer(settings) as producer:
            producer.set_tags("t0", {"n": "-1"})
            await producer.flush(10)
            hook.armed = True
            for i in range(EVENTS):
                producer.set_tags(f"t{i % 7}", {"n": str(i)})
            await producer.flush(15)

    asyncio.run(main())
    numbers = logged_numbers(admin, "astall")[1:]
    assert hook.held == 1 and hook.execs == 1, vars(hook)
    assert numbers == list(range(EVENTS))


def test_past_the_reply_wait_a_late_write_can_land_twice(
    admin: redis.Redis, proxy: FaultProxy
) -> None:
    """The limit, documented in docs/faults.md: a producer that gives the connection up
    (here at once) looks for the write before the stalled server has run it, resends it, and
    the server then runs both.  This proves the scenario above reproduces the race."""
    hook, _ = run_stalled(proxy, "gaveup", reply_wait_ms=1)
    wait_until(lambda: len(logged_numbers(admin, "gaveup")) >= 2 * EVENTS + 1, timeout=5)
    numbers = logged_numbers(admin, "gaveup")[1:]
    assert hook.execs == 2, vars(hook)  # the held EXEC, then the resend's
    assert sorted(numbers) == sorted(list(range(EVENTS)) * 2)
