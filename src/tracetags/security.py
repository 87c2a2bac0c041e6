"""Least privilege: the Redis ACL rules of each tracetags role, for one namespace.

docs/security.md prints them for ``myns`` and the test suite runs every role with exactly
these rules (tests/test_security.py), so the documented rules are the tested ones.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

__all__ = ["ROLES", "Role", "acl_rules", "acl_setuser"]

Role: TypeAlias = Literal["producer", "consumer", "query", "archiver"]

#: Every connection: redis-py's handshake (HELLO) and health checks (PING).  Its CLIENT
#: SETINFO (Redis 7.2+) may be refused: redis-py ignores the refusal.
_CONNECT: Final = ("+ping", "+hello")
#: Commands a key pattern does not confine (they list or count every key of the database):
#: taken back from the categories that include them.
_KEYSPACE_WIDE: Final = ("-keys", "-scan", "-randomkey", "-dbsize")

_RULES: Final[dict[Role, tuple[str, ...]]] = {
    # Appends events (a MULTI of XADDs), creates the namespace's meta hash, reads the server
    # clock, and after a lost connection reads back the stream to drop duplicates.
    "producer": (
        *_CONNECT,
        "+time",
        "+hsetnx",
        "+hget",
        "+multi",
        "+exec",
        "+discard",
        "+xadd",
        "+xrange",
    ),
    # Folds the log: consumer groups, the fold Function (which writes every index), its
    # heartbeat, and loading the Functions library (global to the server: see the docs).
    "consumer": (
        *_CONNECT,
        "+client|setname",
        "+time",
        "+multi",
        "+exec",
        "+discard",
        "+@stream",
        "+@hash",
        "+@set",
        "+@sortedset",
        "+@string",
        "+@bitmap",
        "+del",
        "+exists",
        "+fcall",
        "+fcall_ro",
        "+function|list",
        "+function|load",
        "+function|delete",
        *_KEYSPACE_WIDE,
    ),
    # Searches, counts, stats, get and status: reads and the read-only query Function.  It
    # never loads the library: a consumer of the same version must have loaded it.  TIME:
    # a budgeted scan reads the clock inside tt_query to stop within its budget.
    "query": (*_CONNECT, "+@read", "+time", "+fcall_ro", "+function|list", *_KEYSPACE_WIDE),
    # Archives folded entries and trims the log (the tt_trim Function: XTRIM, and the
    # archive marks), keeps its cache, and holds a per-partition lock (redis-py's Lock: SET
    # NX PX, and small scripts that GET, PEXPIRE and DEL it).
    "archiver": (
        *_CONNECT,
        "+client|setname",
        "+time",
        "+@read",
        "+set",
        "+del",
        "+pexpire",
        "+xtrim",
        "+zremrangebyscore",
        "+hset",
        "+hsetnx",
        "+hdel",
        "+hincrby",
        "+zadd",
        "+multi",
        "+exec",
        "+evalsha",
        "+eval",
        "+script|load",
        "+fcall",
        "+function|list",
        *_KEYSPACE_WIDE,
    ),
}

ROLES: Final[tuple[Role, ...]] = tuple(_RULES)


def acl_rules(role: Role, namespace: str) -> list[str]:
    """The ACL rules of ``role`` confined to ``namespace``'s keys (``~ns:*``: a namespace
    holds no ``:``, so no other namespace matches), no Pub/Sub channel."""
    return [f"~{namespace}:*", "resetchannels", "-@all", *_RULES[role]]


def acl_setuser(role: Role, namespace: str, user: str, password: str) -> list[str]:
    """The arguments of ``ACL SETUSER`` that create (or reset) ``user`` for ``role``."""
    return [user, "reset", "on", f">{password}", *acl_rules(role, namespace)]
