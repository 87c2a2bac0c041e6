"""Raw pipelines on a Redis Cluster: a command list is cut into units (one ``MULTI`` … ``EXEC``
transaction with the ``WAIT`` that may follow it, or one command), each unit is sent to the
primary of its key's slot, the units of one node pipelined on one connection, every node at
once; a ``MOVED`` or ``ASK`` reply is followed (slot table refreshed, unit resent).

The replies come back in the order of the commands, as one Redis would have given them (a
unit a node could not be reached for gets the error in each of its places), so the
producer's core reads a cluster's replies exactly as a single node's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import redis
import redis.asyncio.cluster
import redis.cluster

from tracetags import redis_errors
from tracetags.connections import read_reply, read_reply_async

#: Redirections followed for one unit before its error reply is handed back.
MAX_REDIRECTS: Final = 5

Command = tuple[Any, ...]


class Unit(NamedTuple):
    """Commands that go to one node together: their first and end index in the list."""

    start: int
    end: int
    key: Any


def units_of(commands: Sequence[Command]) -> list[Unit]:
    """Cut ``commands`` into units: ``MULTI`` … ``EXEC``/``DISCARD`` (plus a ``WAIT`` right
    after it: WAIT counts the writes of its own connection), or a single command.  A unit is
    routed by the first key it names (a keyless one with the unit before it; None: any
    primary)."""
    units: list[Unit] = []
    i, n = 0, len(commands)
    previous: Any = None
    while i < n:
        start = i
        if _name(commands[i]) == "MULTI":
            while i < n and _name(commands[i]) not in ("EXEC", "DISCARD"):
                i += 1
        i += 1
        if i < n and _name(commands[i]) == "WAIT":
            i += 1
        # A keyless command (TIME) goes where the command before it went.
        key = next((c[1] for c in commands[start:i] if len(c) > 1 and _keyed(c)), previous)
        units.append(Unit(start, min(i, n), key))
        previous = key
    return units


def _name(command: Command) -> str:
    head = command[0]
    return (head.decode() if isinstance(head, bytes) else str(head)).upper()


def _keyed(command: Command) -> bool:
    return _name(command) not in ("MULTI", "EXEC", "DISCARD", "WAIT", "TIME", "ASKING", "PING")


def _redirect(replies: Sequence[Any]) -> redis.exceptions.AskError | None:
    """The MOVED or ASK among a unit's replies: the unit ran nowhere and must be resent."""
    return next((r for r in replies if isinstance(r, redis.exceptions.AskError)), None)


def _sort_replies(
    sent: Iterable[tuple[Unit, list[Any]]], replies: list[Any]
) -> tuple[list[tuple[Unit, Any, bool]], bool]:
    """Place each unit's replies in ``replies`` and list the units to resend: after MOVED
    to the slot's new primary (the slot table is read again: the flag), after ASK to the
    importing node with ASKING (the node and True)."""
    retry: list[tuple[Unit, Any, bool]] = []
    moved = False
    for unit, got in sent:
        redirect = _redirect(got)
        if redirect is not None:
            if isinstance(redirect, redis.exceptions.MovedError):
                moved = True
                retry.append((unit, None, False))
            else:
                retry.append((unit, (redirect.host, redirect.port), True))
        replies[unit.start : unit.end] = got
    return retry, moved


class SyncRouter:
    """Runs raw command lists on a ``redis.cluster.RedisCluster`` (see the module docstring)."""

    def __init__(self, client: redis.cluster.RedisCluster, *, reply_wait_s: float = 0.0) -> None:
        self.client = client
        #: How long replies are waited for past socket timeouts (see ``read_reply``).
        self.reply_wait_s = reply_wait_s
        # The client's slot table may be older than a failover: read it on first use.
        self._stale = True

    def execute(self, commands: Sequence[Command]) -> list[Any] | BaseException:
        """The replies of ``commands`` in order (an error reply in its place), or the
        exception that kept every unit from being sent (no node reachable)."""
        client = self.client
        try:
            if self._stale:
                client.nodes_manager.initialize()
                self._stale = False
            targets = [(unit, self._node_of(unit.key), False) for unit in units_of(commands)]
        except redis_errors.FAILURES as exc:
            self._stale = True
            return exc
        replies: list[Any] = [None] * len(commands)
        for _ in range(MAX_REDIRECTS + 1):
            retry, moved = _sort_replies(self._send(commands, targets), replies)
            if not retry:
                break
            try:
                if moved:
                    client.nodes_manager.initialize()
                targets = [
                    (
                        unit,
                        self._node_of(unit.key) if where is None else self._node_at(where),
                        asking,
                    )
                    for unit, where, asking in retry
                ]
            except redis_errors.FAILURES:
                self._stale = True
                break
        return replies

    def _node_of(self, key: Any) -> Any:
        if key is None:
            return self.client.get_default_node()  # type: ignore[no-untyped-call]
        return self.client.get_node_from_key(key)  # type: ignore[no-untyped-call]

    def _node_at(self, where: tuple[str, int]) -> Any:
        node = self.client.get_node(host=where[0], port=where[1])  # type: ignore[no-untyped-call]
        if node is None:
            self.client.nodes_manager.initialize()
            node = self.client.get_node(host=where[0], port=where[1])  # type: ignore[no-untyped-call]
        return node

    def _send(
        self, commands: Sequence[Command], targets: list[tuple[Unit, Any, bool]]
    ) -> list[tuple[Unit, list[Any]]]:
        """Every node's units written out on one of its connections, then read back."""
        # By name: older redis-py's ClusterNode is not hashable.
        nodes: dict[str, Any] = {}
        by_name: dict[str, list[tuple[Unit, bool]]] = {}
        for unit, node, asking in targets:
            nodes[node.name] = node
            by_name.setdefault(node.name, []).append((unit, asking))
        by_node = [(nodes[name], units) for name, units in by_name.items()]
        sent: list[tuple[Any, Any, list[tuple[Unit, bool]], BaseException | None]] = []
        for node, units in by_node:
            pool = self.client.get_redis_connection(node).connection_pool
            conn: Any = None
            try:
                conn = pool.get_connection()
                packed: list[Command] = []
                for unit, asking in units:
                    if asking:
                        packed.append(("ASKING",))
                    packed.extend(commands[unit.start : unit.end])
                conn.send_packed_command(conn.pack_commands(packed))
                sent.append((pool, conn, units, None))
            except redis_errors.FAILURES as exc:
                sent.append((pool, conn, units, exc))
        out: list[tuple[Unit, list[Any]]] = []
        deadline = time.monotonic() + self.reply_wait_s
        for pool, conn, units, error in sent:
            try:
                for unit, asking in units:
                    if error is not None:
                        out.append((unit, [error] * (unit.end - unit.start)))
                        continue
                    try:
                        if asking:
                            read_reply(conn, deadline)
                        got = [read_reply(conn, deadline) for _ in range(unit.end - unit.start)]
                        out.append((unit, got))
                    except redis_errors.FAILURES as exc:
                        error = exc
                        out.append((unit, [exc] * (unit.end - unit.start)))
            finally:
                if error is not None:
                    self._stale = True  # a failover moves slots: read the table again
                if conn is not None:
                    if error is not None:
                        conn.disconnect()
                    pool.release(conn)
        return out


class AsyncRouter:
    """:class:`SyncRouter` for ``redis.asyncio.cluster.RedisCluster``."""

    def __init__(
        self, client: redis.asyncio.cluster.RedisCluster, *, reply_wait_s: float = 0.0
    ) -> None:
        self.client = client
        self.reply_wait_s = reply_wait_s
        self._stale = True  # the client discovers the cluster on first use
        # A pool per node, made from the node's own connection settings: the async
        # ClusterNode lends connections only to its own commands (and older redis-py has
        # no public way to hand one back).
        self._pools: dict[str, redis.asyncio.ConnectionPool] = {}

    def _pool_of(self, node: Any) -> redis.asyncio.ConnectionPool:
        pool = self._pools.get(node.name)
        if pool is None:
            pool = redis.asyncio.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
            self._pools[node.name] = pool
        return pool

    async def aclose(self) -> None:
        """Close the router's own connections (the client's are the client's)."""
        for pool in self._pools.values():
            await pool.disconnect()
        self._pools.clear()

    async def execute(self, commands: Sequence[Command]) -> list[Any] | BaseException:
        client = self.client
        try:
            if self._stale:
                await client.nodes_manager.initialize()
                self._stale = False
            targets = [(unit, self._node_of(unit.key), False) for unit in units_of(commands)]
        except redis_errors.FAILURES as exc:
            self._stale = True
            return exc
        replies: list[Any] = [None] * len(commands)
        for _ in range(MAX_REDIRECTS + 1):
            retry, moved = _sort_replies(await self._send(commands, targets), replies)
            if not retry:
                break
            try:
                if moved:
                    await client.nodes_manager.initialize()
                targets = []
                for unit, where, asking in retry:
                    node = self._node_of(unit.key) if where is None else None
                    if where is not None:
                        node = client.get_node(host=where[0], port=where[1])
                        if node is None:
                            await client.nodes_manager.initialize()
                            node = client.get_node(host=where[0], port=where[1])
                    targets.append((unit, node, asking))
            except redis_errors.FAILURES:
                self._stale = True
                break
        return replies

    def _node_of(self, key: Any) -> Any:
        if key is None:
            return self.client.get_default_node()
        return self.client.get_node_from_key(key)

    async def _send(
        self, commands: Sequence[Command], targets: list[tuple[Unit, Any, bool]]
    ) -> list[tuple[Unit, list[Any]]]:
        # By name: older redis-py's ClusterNode is not hashable.
        nodes: dict[str, Any] = {}
        by_name: dict[str, list[tuple[Unit, bool]]] = {}
        for unit, node, asking in targets:
            nodes[node.name] = node
            by_name.setdefault(node.name, []).append((unit, asking))
        by_node = [(nodes[name], units) for name, units in by_name.items()]
        sent: list[tuple[Any, Any, list[tuple[Unit, bool]], BaseException | None]] = []
        for node, units in by_node:
            conn: Any = None
            pool = self._pool_of(node)
            try:
                conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                packed: list[Command] = []
                for unit, asking in units:
                    if asking:
                        packed.append(("ASKING",))
                    packed.extend(commands[unit.start : unit.end])
                await conn.send_packed_command(conn.pack_commands(packed))
                sent.append((pool, conn, units, None))
            except redis_errors.FAILURES as exc:
                sent.append((pool, conn, units, exc))
        out: list[tuple[Unit, list[Any]]] = []
        deadline = time.monotonic() + self.reply_wait_s
        for pool, conn, units, error in sent:
            try:
                for unit, asking in units:
                    if error is not None:
                        out.append((unit, [error] * (unit.end - unit.start)))
                        continue
                    try:
                        if asking:
                            await read_reply_async(conn, deadline)
                        got = [
                            await read_reply_async(conn, deadline)
                            for _ in range(unit.end - unit.start)
                        ]
                        out.append((unit, got))
                    except redis_errors.FAILURES as exc:
                        error = exc
                        out.append((unit, [exc] * (unit.end - unit.start)))
            finally:
                if error is not None:
                    self._stale = True
                if conn is not None:
                    if error is not None:
                        await conn.disconnect()
                    await pool.release(conn)
        return out
