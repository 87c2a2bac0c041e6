"""Every tracetags connection is made here: to one Redis or, for a ``redis+cluster://`` URL,
to a Redis Cluster (redis-py's ``RedisCluster``), with socket options set rather than left to
redis-py's defaults (which changed across versions): a timeout on connect and on every read,
and TCP keepalive, so that a network black hole becomes an error within seconds, never a
hang."""

from __future__ import annotations

import socket
import time
from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tracetags.errors import RedisUnavailableError
from tracetags.settings import CLUSTER_SCHEMES, Settings, redact_url

#: Keepalive probes start after this much silence, then every interval, this many times.
KEEPALIVE_IDLE_S: Final = 5
KEEPALIVE_INTERVAL_S: Final = 2
KEEPALIVE_COUNT: Final = 3


def keepalive_options() -> dict[int, int]:
    """TCP keepalive timing, for the platforms that let a socket set it (Linux, macOS)."""
    options: dict[int, int] = {}
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        constant = getattr(socket, name, None)
        if constant is not None:
            options[constant] = value
    return options


def socket_options(settings: Settings, *, timeout_s: float | None = None) -> dict[str, Any]:
    """redis-py connection keyword arguments: timeouts (``socket_timeout_ms`` unless
    ``timeout_s``) and keepalive.  A blocking read (XREADGROUP BLOCK) must block for less."""
    timeout = settings.socket_timeout_ms / 1000 if timeout_s is None else timeout_s
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
    }


#: A connection to one Redis or to a Redis Cluster (by ``Settings.redis_url``).
SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def pool_of(client: SyncClient) -> object:
    """What caches keyed per connection are keyed by: the connection pool of a single-node
    client, the client itself for a cluster (whose pools are per node)."""
    return client if isinstance(client, redis.cluster.RedisCluster) else client.connection_pool


def cluster_seed_url(url: str) -> str | None:
    """The seed URL redis-py parses for a ``redis+cluster://`` / ``rediss+cluster://`` URL
    (the same URL with the plain scheme), or None when ``url`` names a single Redis."""
    scheme, separator, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return None if plain is None or not separator else f"{plain}://{rest}"


def sync_client(url: str, **kwargs: Any) -> SyncClient:
    """A redis-py client for ``url``: a ``RedisCluster`` (seeded by the node the URL names)
    for a cluster URL, else ``Redis.from_url``; ``kwargs`` go to either.  Raises
    RedisUnavailableError when no node of the cluster answers (the cluster client connects
    as it is made)."""
    seed = cluster_seed_url(url)
    if seed is None:
        return redis.Redis.from_url(url, **kwargs)
    try:
        return redis.cluster.RedisCluster.from_url(seed, **kwargs)
    except redis.exceptions.RedisClusterException as exc:
        # The cluster client reads the slot table as it is made: no node answering is a
        # RedisClusterException (RedisClusterUnreachableError in newer redis-py), not a
        # redis.ConnectionError.
        raise RedisUnavailableError(f"Redis unreachable at {redact_url(url)}: {exc}") from exc


def async_client(url: str, **kwargs: Any) -> AsyncClient:
    """:func:`sync_client` for redis.asyncio."""
    seed = cluster_seed_url(url)
    if seed is None:
        return redis.asyncio.Redis.from_url(url, **kwargs)
    return redis.asyncio.cluster.RedisCluster.from_url(seed, **kwargs)


def read_reply(conn: Any, deadline: float) -> Any:
    """The next reply on ``conn`` (an error reply returned, not raised), waiting past socket
    timeouts until ``deadline`` (``time.monotonic()``).

    A write pipeline whose replies are late must not be given up early: once its connection
    is closed, its fate is unknown, yet a stalled server may still run it after the writer
    has looked for it and resent it.  Reading on (the parser keeps what it has read) lets the
    replies say what happened.
    """
    while True:
        try:
            return conn.read_response(disconnect_on_error=False)
        except redis.ResponseError as exc:
            return exc
        except redis.TimeoutError:
            if time.monotonic() >= deadline:
                raise


async def read_reply_async(conn: Any, deadline: float) -> Any:
    """:func:`read_reply` on a ``redis.asyncio`` connection."""
    while True:
        try:
            return await conn.read_response(disconnect_on_error=False)
        except redis.ResponseError as exc:
            return exc
        except redis.TimeoutError:
            if time.monotonic() >= deadline:
                raise
