"""A fault-injecting TCP proxy for Redis, written for the tests (asyncio, loopback, bounded).

It forwards one command at a time (a pipeline is relayed command by command, replies kept in
order), so a test can act *between* two commands of one pipeline: run an admin command on
the real server (make it read-only, out of memory...), cut the connection before or after
the server saw the command, or hold all traffic (a network black hole).  Every refusal the
client sees comes from the real server; the proxy never makes up a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Final, Literal

Action = Literal["forward", "cut_before", "cut_after", "hold"]
#: Called in the proxy's thread before each command with (command number, command); may act
#: on the server (synchronously) and says what to do with the command.
Hook = Callable[[int, list[bytes]], Action]

MAX_CONNECTIONS: Final = 64
_LINE_TYPES: Final = frozenset(b"+ - : , # _ (".split())
_BULK_TYPES: Final = frozenset(b"$ ! =".split())
_MAP_TYPES: Final = frozenset(b"% |".split())


class _Cut(Exception):
    pass


async def _read_command(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    header = await reader.readuntil(b"\r\n")
    raw = [header]
    if not header.startswith(b"*"):  # inline command
        return header.strip().split(), header
    parts: list[bytes] = []
    for _ in range(int(header[1:-2])):
        size_line = await reader.readuntil(b"\r\n")
        data = await reader.readexactly(int(size_line[1:-2]) + 2)
        raw += [size_line, data]
        parts.append(data[:-2])
    return parts, b"".join(raw)


async def _read_reply(reader: asyncio.StreamReader, out: list[bytes]) -> None:
    line = await reader.readuntil(b"\r\n")
    out.append(line)
    kind = line[:1]
    if kind in _LINE_TYPES:
        return
    count = int(line[1:-2])
    if kind in _BULK_TYPES:
        if count >= 0:
            out.append(await reader.readexactly(count + 2))
        return
    if kind in _MAP_TYPES:
        count *= 2
    for _ in range(max(count, 0)):
        await _read_reply(reader, out)


class FaultProxy:
    """``FaultProxy(upstream_port).start()`` listens on ``port``; ``hook`` decides per command."""

    def __init__(self, upstream_port: int, hook: Hook | None = None) -> None:
        self.upstream_port = upstream_port
        self.hook = hook
        #: How long a command the hook answers "hold" waits before it is forwarded (its
        #: connection alone waits; the client may give up and close meanwhile).
        self.hold_s = 1.0
        self.port = 0
        self.commands = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def blackhole(self, on: bool) -> None:
        """Hold every byte in both directions (connections stay open) until turned off."""
        self._loop.call_soon_threadsafe(self._flowing.clear if on else self._flowing.set)

    def blackhole_now(self) -> None:
        """:meth:`blackhole` from inside a hook (the proxy's own thread): the command being
        forwarded still reaches the server, its reply is held."""
        self._flowing.clear()

    def cut_all(self) -> None:
        """Close every current connection (as a network reset would)."""
        self._call(self._cut_all())

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._cut_all()

    async def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS * 2:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        try:
            while True:
                command, raw = await _read_command(client_r)
                await self._flowing.wait()
                self.commands += 1
                action: Action = "forward"
                if self.hook is not None:
                    action = self.hook(self.commands, command)
                if action == "cut_before":
                    raise _Cut
                if action == "hold":
                    await asyncio.sleep(self.hold_s)
                server_w.write(raw)
                reply: list[bytes] = []
                await _read_reply(server_r, reply)
                if action == "cut_after":
                    raise _Cut
                await self._flowing.wait()
                client_w.write(b"".join(reply))
                await client_w.drain()
        except (_Cut, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.transport.abort()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
