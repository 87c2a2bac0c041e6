"""Finding 1: a batch refused in part (READONLY or OOM starting or ending mid-pipeline, a
connection cut) must never land out of call order."""

from __future__ import annotations

import threading
import time

import hypothesis.strategies as st
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from tests.faults.conftest import out_of_memory, read_only
from tests.faults.proxy import Action, FaultProxy
from tracetags import AsyncTagProducer, Settings, TagProducer, log, schemas
from tracetags.embedded import RedisServer


def logged_values(admin: redis.Redis, namespace: str) -> list[str]:
    out = []
    for entry in log.read_log(admin, namespace):
        assert isinstance(entry.event, schemas.TagsSet), entry
        out.append(entry.event.tags["n"])
    return out


class LiftReadOnlyBeforeV2:
    """A proxy hook that ends the read-only window just before v2's XADD reaches Redis
    (once): the failover ends in the middle of a pipeline."""

    def __init__(self, admin: redis.Redis) -> None:
        self.admin = admin
        self.lifted = False

    def __call__(self, _: int, command: list[bytes]) -> Action:
        if not self.lifted and command[0].upper() == b"XADD" and b"v2" in command[-1]:
            read_only(self.admin, False)
            self.lifted = True
        return "forward"


def test_a_read_only_window_ending_mid_pipeline_keeps_call_order(
    server: RedisServer, admin: redis.Redis, proxy: FaultProxy
) -> None:
    """The issue's reproduction: v1 refused (READONLY), the failover ends before v2 reaches
    the server; before the fix the log read v2, v3, v1 and the fold kept v1."""
    hook = LiftReadOnlyBeforeV2(admin)
    settings = Settings(
        redis_url=proxy.url, namespace="ro", flush_interval_ms=100, retry_initial_ms=10
    )
    with TagProducer(settings) as producer:
        producer.set_tags("t", {"n": "v0"})
        producer.flush(10)
        read_only(admin, True)
        proxy.hook = hook
        for value in ("v1", "v2", "v3"):
            producer.set_tags("t", {"n": value})
        producer.flush(10)
        stats = producer.stats()
    assert hook.lifted
    assert logged_values(admin, "ro") == ["v0", "v1", "v2", "v3"]
    assert stats.retries >= 1


FAULTS = ("readonly", "writable", "oom", "memory", "cut_before", "cut_after")


@given(
    events=st.integers(1, 120),
    batch=st.integers(1, 40),
    faults=st.dictionaries(st.integers(1, 200), st.sampled_from(FAULTS), max_size=12),
)
@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_log_order_is_call_order_whatever_fails_mid_pipeline(
    server: RedisServer,
    admin: redis.Redis,
    proxy: FaultProxy,
    events: int,
    batch: int,
    faults: dict[int, str],
) -> None:
    """At random commands of random pipelines the server turns read-only or out of memory
    (or back), or the connection is cut before or after the server saw the command: every
    event lands exactly once, in call order."""
    read_only(admin, False)
    out_of_memory(admin, False)
    namespace = f"order-{time.monotonic_ns()}"
    start = proxy.commands
    lock = threading.Lock()
    over = False

    def hook(number: int, command: list[bytes]) -> Action:
        with lock:
            return act(number, command) if not over else "forward"

    def act(number: int, command: list[bytes]) -> Action:
        fault = faults.get(number - start)
        if fault == "readonly":
            read_only(admin, True)
        elif fault == "writable":
            read_only(admin, False)
        elif fault == "oom":
            out_of_memory(admin, True)
        elif fault == "memory":
            out_of_memory(admin, False)
        elif fault in ("cut_before", "cut_after"):
            return fault  # type: ignore[return-value]
        return "forward"

    proxy.hook = hook
    settings = Settings(
        redis_url=proxy.url,
        namespace=namespace,
        producer_batch_size=batch,
        flush_interval_ms=1,
        retry_initial_ms=1,
        retry_max_ms=20,
    )
    producer = TagProducer(settings)
    try:
        for i in range(events):
            producer.set_tags(f"t{i % 3}", {"n": str(i)})
            if i % 17 == 0:
                time.sleep(0.002)
        with lock:  # end every fault for good, then everything must land
            over = True
            read_only(admin, False)
            out_of_memory(admin, False)
        producer.flush(30)
    finally:
        proxy.hook = None
        producer.close(5)
    assert logged_values(admin, namespace) == [str(i) for i in range(events)]


async def test_the_asyncio_producer_keeps_call_order_too(
    server: RedisServer, admin: redis.Redis, proxy: FaultProxy
) -> None:
    """The same reproduction through AsyncTagProducer (same core, its own I/O driver)."""
    hook = LiftReadOnlyBeforeV2(admin)
    settings = Settings(
        redis_url=proxy.url, namespace="ro-async", flush_interval_ms=100, retry_initial_ms=10
    )
    producer = AsyncTagProducer(settings)
    producer.set_tags("t", {"n": "v0"})
    await producer.flush(10)
    read_only(admin, True)
    proxy.hook = hook
    for value in ("v1", "v2", "v3"):
        producer.set_tags("t", {"n": value})
    await producer.flush(10)
    await producer.close(5)
    assert hook.lifted
    assert logged_values(admin, "ro-async") == ["v0", "v1", "v2", "v3"]
