"""One frozen :class:`Settings` for every part of tracetags, and ``Settings.from_env()``.

Nothing here reads the environment at import time; ``from_env`` does, when called.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from tracetags import schemas
from tracetags.errors import ConfigError

ENV_PREFIX = "TRACETAGS_"
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_SOURCE_RE = re.compile(schemas.SOURCE_PATTERN)


def default_source() -> str:
    """``<program>@<host>``: the script or command that runs, and the machine."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if program in ("", "-c", "-m", "__main__.py"):
        program = "python"
    return schemas.source_name(f"{program.removesuffix('.py')}@{socket.gethostname()}")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob, with its default; each field ``x`` is read from ``TRACETAGS_X``.

    ``redis_url=None`` means the embedded default: ``tracetags serve`` starts a private
    ``redis-server`` under ``embedded_dir``; library calls use ``redis://127.0.0.1:6379/0``
    unless a URL is given.
    """

    redis_url: str | None = None
    #: Prefix of every Redis key; letters, digits, ``_ . -``.
    namespace: str = "tracetags"
    #: Number of partition streams, fixed when the namespace is first used.
    partitions: int = 1
    #: Who writes: the ``source`` every event of this process's producers carries (a
    #: ``set_tags(..., source=...)`` overrides it per call).  None: ``<program>@<host>``;
    #: the CLI writes ``cli:<os user>``.  1-128 characters: letters, digits, ``_ . @ : / + -``.
    source: str | None = None
    #: Experiment that the fluent ``@tracetags.trace`` API logs to (MLflow's default is "0").
    experiment_id: str = "0"
    #: Consumer group that folds the log.
    consumer_group: str = "tracetags-fold"
    #: Stream entries read per consumer batch (XREADGROUP COUNT).
    consumer_batch_size: int = 500
    #: A consumer process moves the objects it holds once started (imports, the app) out of
    #: the cyclic collector's reach (``gc.freeze()``): full collections of them stall the
    #: fold while they run.  Turn off when embedding the consumer app in a
    #: process that relies on collecting cycles among its start-up objects.
    consumer_gc_freeze: bool = True
    #: Entries pending longer than this are reclaimed by a live consumer (XAUTOCLAIM).
    claim_idle_ms: int = 30_000
    #: Deliveries after which a failing entry is dead-lettered instead of retried.
    max_deliveries: int = 5
    #: Events per pipelined XADD batch written by the producer.
    producer_batch_size: int = 500
    #: The producer's flusher writes at least this often while events are buffered.
    flush_interval_ms: int = 5
    #: Events the producer buffers (besides one batch in flight) before ``overflow`` applies.
    buffer_size: int = 100_000
    #: What a producer does with a new event when its buffer is full: ``drop_oldest`` (never
    #: block the caller; for a request path) or ``block`` (wait for room up to
    #: ``overflow_timeout_ms``, then raise ``BufferFullError``; for backfills and scripts).
    overflow: str = "drop_oldest"
    overflow_timeout_ms: int = 30_000
    #: First and largest pause between retries while Redis is unreachable.
    retry_initial_ms: int = 50
    retry_max_ms: int = 5_000
    #: Socket connect/read timeout of the producer's connection.
    socket_timeout_ms: int = 5_000
    #: ``tracetags serve`` kills and restarts a worker whose fold call has been in flight
    #: (or whose event loop has been silent) this long: a fold stuck for good, not waiting.
    watchdog_ms: int = 60_000
    #: How long the atexit hook may spend flushing a producer.
    atexit_flush_timeout_ms: int = 2_000
    #: Where the embedded Redis keeps its data (``tracetags serve`` without a URL).
    embedded_dir: str = ".tracetags"
    #: Tag and metadata keys (``tags.user_id,metadata.tenant``; comma-separated in the
    #: environment) whose values get lookup fingerprints: 2 bytes per trace and key, kept by the
    #: fold and built by the consumer at start.  For keys of many sparse values (user or
    #: session ids) that filters match by pattern: a newest-first page of ``LIKE
    #: 'user_12%'`` then tests 2 bytes per walked trace instead of reading its hash.
    lookup_keys: tuple[str, ...] = ()
    #: The consumer keeps a history index of the live tail (per trace, the entry ids of its
    #: entries; ~66 B per entry while it is in the tail, expiring with the live retention),
    #: so that a trace's history reads its own entries instead of scanning the stream
    #: (100k entries: 1 ms instead of 185 ms).  It costs the fold ~17 % of its rate
    #: (benchmarks/README.md), hence off by default.  Readers and consumers must agree.
    history_index: bool = False
    #: Where archive segments go: ``file://PATH`` or ``s3://BUCKET/PREFIX`` (options in the
    #: query string: ``?endpoint=http://host:9000&region=us-east-1``).  None: under
    #: ``embedded_dir``/archive when the embedded Redis is used; with a Redis URL given and
    #: no archive URL nothing is archived or trimmed (the log is unbounded).
    archive_url: str | None = None
    #: Endpoint of an S3-compatible service (MinIO, Ceph, ...) for ``s3://`` URLs; None: AWS.
    archive_s3_endpoint: str | None = None
    #: Region of the bucket for ``s3://`` URLs; None: the AWS SDK's default chain.
    archive_s3_region: str | None = None
    #: How often the archiver of ``tracetags serve`` archives and trims each partition
    #: (a duration: ``500ms``, ``10s``, ``5m``, ``1h``; a bare number is seconds).
    archive_interval: str = "10s"
    #: Most rows in one archive segment.
    archive_max_rows: int = 100_000
    #: How long an entry stays in the stream after it is archived (a duration; ``0``: trim
    #: as soon as it is archived and acknowledged by every group).
    log_retention: str = "5m"

    def __post_init__(self) -> None:
        _check(
            _NAMESPACE_RE.fullmatch(self.namespace) is not None,
            "namespace",
            self.namespace,
            "letters, digits, '_', '.', '-' only (1-64 chars)",
        )
        _check(
            _NAME_RE.fullmatch(self.consumer_group) is not None,
            "consumer_group",
            self.consumer_group,
            "letters, digits, '_', '.', '-' only (1-128 chars)",
        )
        _check(1 <= self.partitions <= 1024, "partitions", self.partitions, "must be 1..1024")
        if self.source is not None:
            _check(
                _SOURCE_RE.fullmatch(self.source) is not None
                and len(self.source) <= schemas.MAX_SOURCE_LENGTH,
                "source",
                self.source,
                schemas.SOURCE_RULE,
            )
        _check(self.experiment_id != "", "experiment_id", self.experiment_id, "must not be empty")
        for name in (
            "consumer_batch_size",
            "producer_batch_size",
            "buffer_size",
            "max_deliveries",
            "retry_initial_ms",
            "retry_max_ms",
            "socket_timeout_ms",
            "flush_interval_ms",
            "claim_idle_ms",
            "overflow_timeout_ms",
            "watchdog_ms",
        ):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        _check(
            self.atexit_flush_timeout_ms >= 0,
            "atexit_flush_timeout_ms",
            self.atexit_flush_timeout_ms,
            "must be >= 0",
        )
        _check(
            self.retry_max_ms >= self.retry_initial_ms,
            "retry_max_ms",
            self.retry_max_ms,
            "must be >= retry_initial_ms",
        )
        _check(
            self.overflow in ("drop_oldest", "block"),
            "overflow",
            self.overflow,
            "must be drop_oldest or block",
        )
        for key in self.lookup_keys:
            _check(
                key.startswith(("tags.", "metadata.")) and key.split(".", 1)[1] != "",
                "lookup_keys",
                key,
                "each must be tags.<key> or metadata.<key>",
            )
        for name in ("archive_interval", "log_retention"):
            _check(
                parse_duration_ms(getattr(self, name)) is not None,
                name,
                getattr(self, name),
                "must be a duration such as 0, 500ms, 90s, 5m, 1h",
            )
        _check(
            parse_duration_ms(self.archive_interval) != 0,
            "archive_interval",
            self.archive_interval,
            "must be more than 0",
        )
        _check(
            self.archive_max_rows >= 1, "archive_max_rows", self.archive_max_rows, "must be >= 1"
        )
        if self.archive_url is not None:
            _check(
                self.archive_url.startswith(("file://", "s3://")),
                "archive_url",
                self.archive_url,
                "must start with file:// or s3://",
            )
        if self.redis_url is not None:
            _check(
                self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                "redis_url",
                self.redis_url,
                "must start with redis://, rediss:// or unix://",
            )

    @property
    def effective_redis_url(self) -> str:
        """The URL library calls connect to (the local default when none is set)."""
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def effective_source(self) -> str:
        """The ``source`` written on events: ``source``, else ``<program>@<host>``."""
        if self.source is not None:
            return self.source
        return default_source()

    @property
    def archive_location(self) -> str | None:
        """The archive URL in force: ``archive_url``; else ``file://`` under
        ``embedded_dir``/archive when the embedded Redis is used (no ``redis_url``); else
        None (no archiving).  Callers that start the embedded Redis and then set
        ``redis_url`` pin this first (``replace(archive_url=settings.archive_location)``)."""
        if self.archive_url is not None:
            return self.archive_url
        if self.redis_url is None:
            return "file://" + os.path.abspath(os.path.join(self.embedded_dir, "archive"))
        return None

    @property
    def history_index_ttl_ms(self) -> int | None:
        """How long a trace's history index outlives its last entry: the live retention and
        two archive runs, plus a minute (None: nothing is archived, the log is never trimmed
        and the index is kept as long)."""
        if self.archive_location is None:
            return None
        return self.log_retention_ms + 2 * self.archive_interval_ms + 60_000

    @property
    def archive_interval_ms(self) -> int:
        return parse_duration_ms(self.archive_interval) or 0

    @property
    def log_retention_ms(self) -> int:
        return parse_duration_ms(self.log_retention) or 0

    @property
    def lookup_fields(self) -> tuple[str, ...]:
        """The trace-hash fields (``t<key>``, ``m<key>``) of :attr:`lookup_keys`."""
        return tuple(
            ("t" if key.startswith("tags.") else "m") + key.split(".", 1)[1]
            for key in self.lookup_keys
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``TRACETAGS_*`` variables; ``overrides`` win over the env."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            var = ENV_PREFIX + field.name.upper()
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(var, raw, field.default)
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(_with_variable(str(exc), values, overrides)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated)."""
        return msgspec.structs.replace(self, **changes)


_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int | None:
    """Milliseconds of a duration such as ``0``, ``500ms``, ``90s``, ``5m``, ``1h``, ``2d``
    (a bare number is seconds); None when ``text`` is not one."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        return None
    return round(float(match[1]) * _DURATION_UNIT_MS[match[2] or "s"])


def _parse(var: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        word = raw.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ConfigError(
            f"{var}={raw!r} is not a boolean (use one of 1/0, true/false, yes/no, on/off)"
        )
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(default, int):
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a whole number") from None
    return raw


def _check(ok: bool, name: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r}: {rule}")


def _with_variable(message: str, values: dict[str, Any], overrides: dict[str, Any]) -> str:
    name = message.split("=", 1)[0]
    if name in values and name not in overrides:
        return f"{ENV_PREFIX}{name.upper()}: {message}"
    return message
