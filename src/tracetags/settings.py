"""One frozen :class:`Settings` for every part of tracetags, and ``Settings.from_env()``.

Nothing here reads the environment at import time; ``from_env`` does, when called.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from typing import Any, Final, get_args
from urllib.parse import unquote

import msgspec
import redis

from tracetags import schemas
from tracetags.errors import ConfigError

ENV_PREFIX = "TRACETAGS_"
#: URL schemes that name a Redis Cluster (any node is a seed), and the plain scheme redis-py
#: parses the rest of the URL with.
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: Partitions of a namespace first created on a cluster, unless ``partitions`` is set: each
#: partition is one slot (its keys share the ``{pNN}`` tag), so the count bounds how many
#: primaries the fold and the data spread over; 16 spreads over up to a dozen or so primaries
#: while costing a single-primary cluster little (one fold call per partition and batch).
CLUSTER_DEFAULT_PARTITIONS: Final = 16
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_SOURCE_RE = re.compile(schemas.SOURCE_PATTERN)


def plain_redis_url(url: str) -> str:
    """``url`` with a cluster scheme (``redis+cluster://``...) mapped to the plain one
    redis-py parses (the rest of the URL means the same)."""
    scheme, separator, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return url if plain is None or not separator else f"{plain}://{rest}"


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

    #: ``redis://``, ``rediss://`` or ``unix://`` for one Redis; ``redis+cluster://host:port``
    #: or ``rediss+cluster://`` for a Redis Cluster (any node as the seed).
    redis_url: str | None = None
    #: Prefix of every Redis key; letters, digits, ``_ . -``.
    namespace: str = "tracetags"
    #: Number of partition streams, fixed when the namespace is first used (None: 1 on one
    #: Redis, ``CLUSTER_DEFAULT_PARTITIONS`` on a cluster).
    partitions: int | None = None
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
    #: Replicas that must acknowledge each producer write (``WAIT``) before it counts as
    #: written; 0 (the default): none, a write counts once its primary has it, and a primary
    #: that dies before its replica got the write loses it (see docs/cluster.md).
    producer_wait_replicas: int = 0
    #: How long a producer write waits for those acknowledgements; without them in time,
    #: the write is treated as possibly lost: checked and resent if it is not there.
    producer_wait_timeout_ms: int = 1_000
    #: Socket connect/read timeout of the producer's connection.
    socket_timeout_ms: int = 5_000
    #: How long the producer keeps waiting for the replies of a write it has sent before it
    #: gives the connection up.  A stalled server (a slow fsync, a long script) answers late:
    #: closing the connection then would leave the write's fate unknown while the server may
    #: still run it after the producer looked for it (written twice).  Past this wait the
    #: producer reconnects, finds what landed and resends the rest.
    producer_reply_wait_ms: int = 15_000
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
    #: Compaction merges a partition's small segments into sorted ones of at most this many
    #: rows (0: never compact).  Fewer, larger segments make a trace's history cheaper.
    archive_compact_rows: int = 500_000
    #: How long compacted-away segments stay in the store after their replacement is
    #: visible, for readers that listed them before (a DuckDB query over the files; the
    #: archive's own readers list again when a segment vanishes).
    archive_compact_grace: str = "1m"
    #: How long an entry stays in the stream after it is archived (a duration; ``0``: trim
    #: as soon as it is archived and acknowledged by every group).
    log_retention: str = "5m"
    #: Limits on events (docs/limits.md): an event over one is refused at the producer call
    #: (``EventLimitError``) and dead-lettered by the fold when another publisher wrote it.
    max_keys_per_event: int = 500
    max_event_bytes: int = 1_000_000
    #: A tags_set (or start/finish) that would leave its trace with more live tags is
    #: dead-lettered by the fold.
    max_tags_per_trace: int = 1000
    #: One fold call folds at most this many keys of events (a consumer batch is cut).
    fold_max_keys: int = 500
    #: Limits on a filter's size (docs/limits.md); a larger filter is a FilterSemanticError.
    filter_max_terms: int = 500
    filter_max_or_width: int = 500
    filter_max_in_values: int = 10_000
    filter_max_pattern_chars: int = 1000
    #: A count or stats whose work would hold Redis longer runs in calls of about this many
    #: milliseconds each (a budgeted scan; a call may pass it by one batch of candidates).
    query_call_budget_ms: int = 20
    #: Most groups a stats answers; more is a QueryLimitError.
    stats_max_groups: int = 100_000

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
        _check(
            self.partitions is None or 1 <= self.partitions <= 1024,
            "partitions",
            self.partitions,
            "must be 1..1024",
        )
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
            "max_keys_per_event",
            "max_event_bytes",
            "max_tags_per_trace",
            "fold_max_keys",
            "filter_max_terms",
            "filter_max_or_width",
            "filter_max_in_values",
            "filter_max_pattern_chars",
            "query_call_budget_ms",
            "stats_max_groups",
            "producer_wait_timeout_ms",
            "producer_reply_wait_ms",
        ):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        _check(
            self.producer_wait_replicas >= 0,
            "producer_wait_replicas",
            self.producer_wait_replicas,
            "must be >= 0",
        )
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
        for name in ("archive_interval", "log_retention", "archive_compact_grace"):
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
        _check(
            self.archive_compact_rows >= 0,
            "archive_compact_rows",
            self.archive_compact_rows,
            "must be >= 0",
        )
        if self.archive_url is not None:
            _check(
                self.archive_url.startswith(("file://", "s3://")),
                "archive_url",
                redact_url(self.archive_url),
                "must start with file:// or s3://",
            )
        if self.redis_url is not None:
            _check(
                self.redis_url.startswith(("redis://", "rediss://", "unix://")) or self.is_cluster,
                "redis_url",
                redact_url(self.redis_url),
                "must start with redis://, rediss://, unix://, redis+cluster:// or "
                "rediss+cluster://",
            )
            try:
                # What redis-py will read from it, checked now rather than at first use.
                redis.connection.parse_url(plain_redis_url(self.redis_url))  # type: ignore[no-untyped-call]
            except ValueError as exc:
                raise ConfigError(f"redis_url={redact_url(self.redis_url)!r}: {exc}") from None

    @property
    def effective_redis_url(self) -> str:
        """The URL library calls connect to (the local default when none is set)."""
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def shown_redis_url(self) -> str:
        """:attr:`effective_redis_url` fit to print (its password redacted)."""
        return redact_url(self.effective_redis_url)

    @property
    def effective_source(self) -> str:
        """The ``source`` written on events: ``source``, else ``<program>@<host>``."""
        if self.source is not None:
            return self.source
        return default_source()

    @property
    def is_cluster(self) -> bool:
        """True when ``redis_url`` names a Redis Cluster (``redis+cluster://``...)."""
        if self.redis_url is None:
            return False
        scheme = self.redis_url.split("://", 1)[0].lower()
        return scheme in CLUSTER_SCHEMES

    @property
    def partition_count(self) -> int:
        """The partition count a namespace created with these settings gets."""
        if self.partitions is not None:
            return self.partitions
        return CLUSTER_DEFAULT_PARTITIONS if self.is_cluster else 1

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
    def archive_compact_grace_ms(self) -> int:
        return parse_duration_ms(self.archive_compact_grace) or 0

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
            # An optional whole number (None: a default that depends on other settings).
            sample = 0 if field.default is None and int in get_args(field.type) else field.default
            values[field.name] = _parse(var, raw, sample)
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(_with_variable(str(exc), values, overrides)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated)."""
        return msgspec.structs.replace(self, **changes)


#: Options of a URL's query string whose values are secrets (redis-py passes any unknown
#: option, ``?password=`` included, to the connection).
SECRET_OPTIONS: Final = frozenset(
    {"password", "ssl_password", "secret", "token", "access_key", "secret_key", "session_token"}
)
REDACTED: Final = "***"


def redact_url(url: str) -> str:
    """``url`` fit to print: its password (``user:PASSWORD@host``), secret query options
    (``?password=``) and the password of a URL inside an option (``?endpoint=``) become
    ``***``.  Every URL that tracetags prints, logs or raises goes through here."""
    head, _, fragment = url.partition("#")
    head, question, query = head.partition("?")
    scheme, sep, rest = head.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        userinfo, at, host = authority.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            authority = f"{user}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"
        head = f"{scheme}://{authority}{slash}{path}"
    if question:
        parts = []
        for part in query.split("&"):
            name, equals, value = part.partition("=")
            if equals and unquote(name).lower() in SECRET_OPTIONS:
                value = REDACTED
            elif equals and "@" in unquote(value):
                value = redact_url(unquote(value))
            parts.append(f"{name}{equals}{value}")
        head = f"{head}?{'&'.join(parts)}"
    return head + ("#" + REDACTED if fragment else "")


def has_secret(url: str) -> bool:
    """Whether printing ``url`` would show a secret (see :func:`redact_url`)."""
    return redact_url(url) != url


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
