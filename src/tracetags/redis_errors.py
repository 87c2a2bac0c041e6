"""Every Redis failure classified in one place: a transient condition to wait out, or poison.

Transient: the connection is lost or times out, or the server refuses for a while (``OOM``,
``READONLY``, ``LOADING``, ``BUSY``, ``MASTERDOWN``, ``TRYAGAIN``, ``CLUSTERDOWN``,
``MISCONF``, ``NOREPLICAS``).  Refused: wrong credentials (``AUTH``) or an ACL rule
(``NOPERM``) — permanent until an operator acts, so never retried quickly, but never a
reason to drop or dead-letter an event either.  Poison: only our Function's own ``TT_*``
refusals and entries that do not decode.  Anything else (an unknown error reply) is
neither: it is never a reason to dead-letter an event, so callers treat it as transient and
log it.  :func:`library_error` turns any of them into the tracetags error a caller raises.
"""

from __future__ import annotations

import ssl
from typing import Final

import redis

from tracetags.errors import (
    DecodeError,
    FoldError,
    RedisAuthError,
    RedisBusyError,
    RedisPermissionError,
    RedisTlsError,
    RedisUnavailableError,
    TracetagsError,
)
from tracetags.settings import redact_url

#: Error-reply codes of conditions the server recovers from on its own (or after a failover).
TRANSIENT_CODES: Final = frozenset(
    {
        "OOM",
        "READONLY",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MISCONF",
        "NOREPLICAS",
        "UNBLOCKED",
    }
)

# redis-py strips the code from the message of the errors it maps to a class of its own.
_CODE_OF_CLASS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),  # a ClusterDownError: first
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
)

#: Conditions an operator must end (credentials, ACL, a TLS certificate the client does not
#: trust): retried only at the slowest pace.
REFUSED_CODES: Final = frozenset({"AUTH", "NOPERM", "TLS"})

#: What a call to Redis can raise besides a reply: redis-py's errors, socket errors, and
#: the cluster client's own (no node of the cluster reachable, a slot table it cannot
#: build), which are not RedisErrors.
FAILURES: Final = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)

UNREACHABLE: Final = "unreachable"
TIMEOUT: Final = "timeout"
POISON: Final = "poison"
UNKNOWN: Final = "error"


def error_code(exc: BaseException) -> str | None:
    """The reply's code (``OOM``, ``READONLY``, ``TT_BADARGS``...) or None for a non-reply."""
    if isinstance(exc, FoldError):
        return exc.code
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return "LOADING"
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return "AUTH"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return "NOPERM"
    if not isinstance(exc, redis.ResponseError):
        return None
    for cls, code in _CODE_OF_CLASS:
        if isinstance(exc, cls):
            return code
    word = str(exc).split(" ", 1)[0]
    return word if word.isupper() and word.replace("_", "").isalnum() else None


def condition(exc: BaseException) -> str:
    """A short name for what went wrong: a transient code, ``unreachable``, ``timeout``,
    ``poison``, or ``error`` (an unknown reply: not poison, so waited out like a transient)."""
    if isinstance(exc, FoldError | DecodeError):
        return POISON
    if _tls_failure(exc) is not None:
        return "TLS"
    code = error_code(exc)  # first: redis-py's LOADING and AUTH errors are ConnectionErrors
    if code is not None and code in TRANSIENT_CODES | REFUSED_CODES:
        return code
    if code in ("WRONGPASS", "NOAUTH"):
        return "AUTH"
    if isinstance(exc, redis.exceptions.RedisClusterException):
        return UNREACHABLE
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return TIMEOUT
    if isinstance(exc, redis.ConnectionError | OSError):
        return UNREACHABLE
    if isinstance(exc, redis.exceptions.ExecAbortError):
        # The transaction was refused at EXEC: the reason is in the message when a queued
        # command was refused by a condition (e.g. "... OOM command not allowed ...").
        text = str(exc)
        return next((c for c in TRANSIENT_CODES if c in text), UNKNOWN)
    return UNKNOWN


def is_transient(exc: BaseException) -> bool:
    """True unless the error is poison: waiting and retrying is the right response."""
    return condition(exc) != POISON


def is_poison(exc: BaseException) -> bool:
    """Only our Function's ``TT_*`` refusals and decode failures."""
    return condition(exc) == POISON


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS handshake's failure behind ``exc`` (redis-py wraps it in a ConnectionError)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_refused(exc: BaseException) -> bool:
    """Wrong credentials or an ACL rule: waiting alone will not end it."""
    return condition(exc) in REFUSED_CODES


def library_error(exc: BaseException, url: str) -> TracetagsError | None:
    """The tracetags error to raise for redis-py's ``exc`` talking to ``url`` (redacted in
    the message), or None for an error that is not about reaching or using Redis."""
    if isinstance(exc, TracetagsError):
        return None  # already ours (TracetagsTimeoutError is an OSError too)
    shown = redact_url(url)
    name = condition(exc)
    if name == "AUTH":
        return RedisAuthError(
            f"Redis at {shown} refused the credentials: {exc} "
            "(check the user name and password in the URL)"
        )
    if name == "NOPERM":
        return RedisPermissionError(
            f"Redis at {shown} refused by its ACL: {exc} "
            "(docs/security.md lists the rules each role needs)"
        )
    if name == "TLS":
        return RedisTlsError(
            f"TLS with Redis at {shown} failed: {_tls_failure(exc)} "
            "(check ssl_ca_certs in the URL: the CA that signed the server's certificate)"
        )
    if name in ("BUSY", "LOADING"):
        what = "busy running a script or Function" if name == "BUSY" else "loading its data"
        return RedisBusyError(f"Redis at {shown} is {what} ({name}: {exc}); try again shortly")
    if name in (UNREACHABLE, TIMEOUT):
        return RedisUnavailableError(f"Redis unreachable at {shown}: {exc}")
    return None
