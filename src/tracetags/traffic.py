"""Realistic synthetic traffic (environments, models, users, sessions, errors, slow calls,
A/B variants, SLA tiers) for the demo and the benchmarks."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from tracetags.producer import TagProducer

ENVIRONMENTS = ("production", "staging", "development")
MODEL_VERSIONS = ("v1.4.2", "v2.0.0", "v2.1.0-rc1")
SLA_TIERS = ("critical", "standard", "best_effort")
VARIANTS = ("control", "treatment_a", "treatment_b")
ROUTES = ("chat", "summarize", "classify", "embed")


class TraceSpec(msgspec.Struct, frozen=True, kw_only=True):
    trace_id: str
    experiment_id: str
    name: str
    timestamp_ms: int
    execution_time_ms: int
    status: str
    tags: dict[str, str]
    metadata: dict[str, str]


def generate(
    count: int, *, seed: int = 7, start_ms: int = 1_780_000_000_000, experiments: int = 2
) -> Iterator[TraceSpec]:
    """``count`` traces, spread over a day, reproducible for a given ``seed``."""
    rng = random.Random(seed)
    users = max(50, count // 20)
    sessions = max(100, count // 5)
    for i in range(count):
        env = rng.choices(ENVIRONMENTS, weights=(70, 20, 10))[0]
        model = rng.choices(MODEL_VERSIONS, weights=(30, 55, 15))[0]
        error = rng.random() < (0.35 if model == "v2.1.0-rc1" else 0.17)
        duration = int(rng.lognormvariate(6.5, 1.1))  # median ~700 ms, long tail
        tier = rng.choices(SLA_TIERS, weights=(15, 60, 25))[0]
        tags = {
            "environment": env,
            "model_version": model,
            "user_id": f"user_{rng.randrange(users)}",
            "session_id": f"session_{rng.randrange(sessions)}",
            "sla_tier": tier,
            "ab_variant": rng.choice(VARIANTS),
        }
        if error or duration > 5_000:
            tags["needs_review"] = "true"
        if rng.random() < 0.3:
            tags["priority"] = rng.choice(("high", "medium", "low"))
        yield TraceSpec(
            trace_id=f"tr-{rng.getrandbits(128):032x}",
            experiment_id=str(1 + i % experiments),
            name=rng.choice(ROUTES),
            timestamp_ms=start_ms + i * 86_400_000 // max(count, 1),
            execution_time_ms=duration,
            status="ERROR" if error else "OK",
            tags=tags,
            metadata={"mlflow.sourceRun": f"run-{i % 17}", "region": rng.choice(("eu", "us"))},
        )


def emit(
    producer: TagProducer,
    specs: Iterable[TraceSpec],
    *,
    on_trace: Callable[[], None] | None = None,
) -> int:
    """Send each trace as its life would: started (with tags), finished, and a late tag
    (needs_review) where it applies.  Returns how many traces were sent."""
    sent = 0
    for spec in specs:
        producer.trace_started(
            spec.trace_id,
            experiment_id=spec.experiment_id,
            timestamp_ms=spec.timestamp_ms,
            name=spec.name,
            metadata=spec.metadata,
            tags={k: v for k, v in spec.tags.items() if k != "needs_review"},
        )
        producer.trace_finished(
            spec.trace_id,
            experiment_id=spec.experiment_id,
            timestamp_ms=spec.timestamp_ms,
            execution_time_ms=spec.execution_time_ms,
            status=spec.status,
        )
        if "needs_review" in spec.tags:
            producer.set_tags(spec.trace_id, {"needs_review": "true"})
        sent += 1
        if on_trace is not None:
            on_trace()
    return sent
