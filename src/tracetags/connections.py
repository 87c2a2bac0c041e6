"""Socket options of every tracetags connection, set here rather than left to redis-py's
defaults (which changed across versions): a timeout on connect and on every read, and TCP
keepalive, so that a network black hole becomes an error within seconds, never a hang."""

from __future__ import annotations

import socket
from typing import Any, Final

from tracetags.settings import Settings

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
