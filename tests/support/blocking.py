"""How long Redis was blocked: a PING loop on its own connection (in a thread) and SLOWLOG.

``Blocking`` pings Redis back to back while a test works and keeps the slowest round trip;
SLOWLOG (reset at the start, every command logged) gives the longest single command as
Redis measured it.  The suite's budget: no Function call holds Redis longer than
BLOCK_BUDGET_MS (docs/limits.md).
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType
from typing import Any

import redis

#: The longest a Function call may hold Redis (the query and fold budget).
BLOCK_BUDGET_MS = float(os.environ.get("TRACETAGS_TEST_BLOCK_BUDGET_MS", "50"))
#: PING round trips also wait for this process's other threads (the GIL) and for a busy
#: machine's scheduler; a block of seconds (the failures this guards against) is far above.
PING_SLACK_MS = 150.0


class Blocking:
    """``with Blocking(url) as b: ...`` then ``b.longest_ping_ms``, ``b.longest_command()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.longest_ping_ms = 0.0
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._admin = redis.Redis.from_url(url)
        self._saved: dict[Any, Any] = {}

    def __enter__(self) -> Blocking:
        self._saved = self._admin.config_get("slowlog-*")
        self._admin.config_set("slowlog-log-slower-than", 0)
        self._admin.config_set("slowlog-max-len", 100_000)
        self._admin.slowlog_reset()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.log = self._admin.slowlog_get(100_000)
        for name, value in self._saved.items():
            self._admin.config_set(name, value)
        self._admin.close()

    def _loop(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=60)
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                client.ping()
                took = (time.perf_counter() - start) * 1000
                self.pings += 1
                self.longest_ping_ms = max(self.longest_ping_ms, took)
        finally:
            client.close()

    def longest_command(self, prefix: bytes = b"FCALL") -> tuple[float, bytes]:
        """The longest logged command starting with ``prefix``: (ms, its first 80 bytes)."""
        best = (0.0, b"")
        for entry in self.log:
            command = entry["command"]
            if command.startswith(prefix) and entry["duration"] / 1000 > best[0]:
                best = (entry["duration"] / 1000, command[:80])
        return best

    def assert_within_budget(self) -> None:
        """No Function call over the budget, and no PING waited much longer."""
        took, command = self.longest_command()
        assert took <= BLOCK_BUDGET_MS, f"a Function call held Redis {took:.1f} ms: {command!r}"
        assert self.pings > 0
        assert self.longest_ping_ms <= BLOCK_BUDGET_MS + PING_SLACK_MS, (
            f"a PING waited {self.longest_ping_ms:.1f} ms"
        )
