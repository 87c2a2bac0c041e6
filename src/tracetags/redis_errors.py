"""Every Redis failure classified in one place: a transient condition to wait out, or poison.

Transient: the connection is lost or times out, or the server refuses for a while (``OOM``,
``READONLY``, ``LOADING``, ``BUSY``, ``MASTERDOWN``, ``TRYAGAIN``, ``CLUSTERDOWN``,
``MISCONF``, ``NOREPLICAS``).  Poison: only our Function's own ``TT_*`` refusals and entries
that do not decode.  Anything else (an unknown error reply) is neither: it is never a reason
to dead-letter an event, so callers treat it as transient and log it.
"""

from __future__ import annotations

from typing import Final

import redis

from tracetags.errors import DecodeError, FoldError

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
    code = error_code(exc)  # first: redis-py's LOADING error is a ConnectionError
    if code is not None and code in TRANSIENT_CODES:
        return code
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
