"""The whole tracetags exception tree.

Every error the library raises derives from :class:`TracetagsError`; each leaf also
derives from the builtin it refines, so ``except ValueError`` keeps working for callers
that do not know tracetags.
"""

from __future__ import annotations


class TracetagsError(Exception):
    """Root of every error tracetags raises."""


class ConfigError(TracetagsError, ValueError):
    """A setting (argument or ``TRACETAGS_*`` variable) has a bad value."""


class RedisUnavailableError(TracetagsError, ConnectionError):
    """Redis could not be reached (refused, timed out, or the connection dropped) while a
    read-side call (``Client``) talked to it; the message names the URL.  The producer never
    raises it: it buffers and retries instead."""


class RedisTlsError(RedisUnavailableError):
    """The TLS handshake with Redis failed (typically: the URL's ``ssl_ca_certs`` did not
    sign the server's certificate).  Not retried quickly: the configuration must change."""


class RedisRefusedError(TracetagsError, PermissionError):
    """Redis answered but refuses this client until an operator acts: wrong credentials or
    an ACL rule.  Never retried quickly; the message names the URL (redacted) and the rule."""


class RedisAuthError(RedisRefusedError):
    """Redis refused the URL's user name or password (``WRONGPASS``, ``NOAUTH``)."""


class RedisPermissionError(RedisRefusedError):
    """Redis's ACL refused a command or key to this user (``NOPERM``): see docs/security.md
    for the rules each role needs."""


class RedisBusyError(TracetagsError, ConnectionError):
    """Redis answers but cannot serve now: a script or Function is running (``BUSY``) or it
    is loading its data (``LOADING``).  Transient: try again shortly."""


class LibraryVersionError(TracetagsError, RuntimeError):
    """Redis runs a newer version of the Functions library than this tracetags: it is shared
    by every namespace of the server, so an older consumer will not replace it."""


class ValidationError(TracetagsError, ValueError):
    """An event, tag key, tag value or argument breaks a rule; the message names it."""


class InvalidTagKeyError(ValidationError):
    """A tag or metadata key breaks MLflow's key rule or length limit."""


class InvalidTagValueError(ValidationError):
    """A tag or metadata value is not a string or is too long."""


class DecodeError(TracetagsError, ValueError):
    """A stream entry could not be decoded into an event (dead-lettered by the consumer)."""


class TracetagsTimeoutError(TracetagsError, TimeoutError):
    """A bounded wait (flush, wait_applied) ran out of time."""


class BufferFullError(TracetagsTimeoutError):
    """A producer with ``overflow="block"`` found its buffer full for longer than
    ``overflow_timeout_ms`` (or, in the asyncio flavour, full at the call)."""


class BulkWriteError(TracetagsError, RuntimeError):
    """A bulk operation wrote fewer events than it had matches; ``written`` says how many."""

    def __init__(self, message: str, *, written: int, total: int) -> None:
        super().__init__(message)
        self.written = written
        self.total = total


class ProducerClosedError(TracetagsError, RuntimeError):
    """An event was submitted to a producer after ``close()``."""


class FilterError(TracetagsError, ValueError):
    """A filter string or order_by could not be used; the message shows where."""


class FilterSyntaxError(FilterError):
    """The filter string does not parse (unknown token, missing value, ...)."""


class FilterSemanticError(FilterError):
    """The filter parses but asks for something invalid (bad comparator for a field, ...)."""


class EmbeddedRedisError(TracetagsError, RuntimeError):
    """The embedded local Redis could not be started."""


class FoldError(TracetagsError, RuntimeError):
    """The fold Function refused a batch with a ``TT_<CODE>`` error reply.

    ``code`` is the reply's code (``TT_BADARGS``, ...).  The Function checks a batch before
    its first write, so a refused batch has applied and acknowledged nothing.
    """

    def __init__(self, message: str, code: str = "TT_ERROR") -> None:
        super().__init__(message)
        self.code = code


class FoldArgumentsError(FoldError, ValueError):
    """The batch given to the fold Function is malformed (``TT_BADARGS``, ``TT_BADKEYS``)."""


class ReplayError(TracetagsError, RuntimeError):
    """A replay (``tracetags replay``) cannot go on; the message says why."""


class ReplayTargetError(ReplayError, ValueError):
    """The replay's target namespace is not empty (or not a replay of the same source to
    resume), or the source has no partitions."""


class LogGapError(ReplayError):
    """Entries of a partition were trimmed from the stream and no archive holds them: a
    replay would silently miss events, so it stops."""


class PageTokenError(FilterError):
    """A ``page_token`` is malformed or belongs to another query (filter, order, experiments)."""


class QueryError(TracetagsError, RuntimeError):
    """The query Function refused a plan (``TT_<CODE>`` error reply): a bug, not bad input."""

    def __init__(self, message: str, code: str = "TT_ERROR") -> None:
        super().__init__(message)
        self.code = code


class ArchiveStoreError(TracetagsError, OSError):
    """The archive store could not be reached, read or written (unreachable, permission
    denied, disk full); the message names the store's URL, the object and the cause.  The
    archiver retries with backoff and trims nothing meanwhile: no event is lost."""


class ArchiveCorruptError(TracetagsError, ValueError):
    """An archive object does not match its manifest entry (size or sha256), or does not
    parse as a segment."""


class EventLimitError(ValidationError):
    """An event over a limit of docs/limits.md (keys or bytes per event, tags per trace)."""


class QueryLimitError(TracetagsError, RuntimeError):
    """A query whose answer is over a limit of docs/limits.md (e.g. too many stats groups)."""
