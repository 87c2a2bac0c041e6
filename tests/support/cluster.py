"""A real Redis Cluster for the tests: 3 primaries, each with one replica, on loopback.

Six ``redis-server`` children (cluster mode) in a temp dir, joined by ``redis-cli --cluster
create``; ``cluster-node-timeout`` is short so that a killed primary's replica is promoted
within seconds, and ``cluster-require-full-coverage no`` keeps the other slots answering
while one is being failed over.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from tracetags.embedded import RedisServer
from tracetags.errors import EmbeddedRedisError

#: How long a primary may be silent before its replica takes over.
NODE_TIMEOUT_MS = 1500
#: Cluster ports and their bus ports (port + 10000) stay below Linux's ephemeral range
#: (32768 and up by default), which outgoing connections take ports from: a bus port
#: found free there could be taken by a client socket before the node binds it.
_PORT_RANGE = (12000, 22000)
#: A node whose port was taken between the check and its bind starts on another this
#: many times.
_START_ATTEMPTS = 3


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A loopback port that is free, and whose bus port (port + 10000) is free too."""
    while True:
        port = random.randint(*_PORT_RANGE)
        if _bindable(port) and _bindable(port + 10_000):
            return port


class ClusterNode(RedisServer):
    """One cluster-mode ``redis-server``; its ``nodes.conf`` survives a restart."""

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage",
            "no",
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-allow-replica-migration",
            "no",
            "--appendfsync",
            "no",
        ]

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, **kwargs)


class LocalCluster:
    """3 primaries + 3 replicas; ``url`` names it (any node is a seed)."""

    def __init__(self, directory: str | Path, primaries: int = 3) -> None:
        self.directory = Path(directory)
        self.nodes = [
            ClusterNode(self.directory / f"node{i}", port=cluster_port())
            for i in range(primaries * 2)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.seed.port}"

    @property
    def seed(self) -> ClusterNode:
        return next(node for node in self.nodes if self.is_alive(node))

    def start(self) -> LocalCluster:
        for i, node in enumerate(self.nodes):
            for attempt in range(_START_ATTEMPTS):
                try:
                    node.start()
                    break
                except EmbeddedRedisError:
                    if attempt == _START_ATTEMPTS - 1:
                        self.stop()
                        raise
                    shutil.rmtree(node.directory, ignore_errors=True)  # (its nodes.conf)
                    node = self.nodes[i] = ClusterNode(node.directory, port=cluster_port())
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        done = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_healthy()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()

    @staticmethod
    def is_alive(node: ClusterNode) -> bool:
        return node.process is not None and node.process.poll() is None

    def info(self, node: ClusterNode, section: str) -> dict[str, Any]:
        client = node.client()
        try:
            reply: dict[str, Any] = client.info(section)
            return reply
        finally:
            client.close()

    def primaries(self) -> list[ClusterNode]:
        return [
            node
            for node in self.nodes
            if self.is_alive(node) and self.info(node, "replication")["role"] == "master"
        ]

    def node_of_port(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def owner_of_slot(self, slot: int) -> ClusterNode:
        """The primary serving ``slot`` (as the seed's slot table says)."""
        client = self.seed.client()
        try:
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.node_of_port(int(primary[1]))
        finally:
            client.close()
        raise LookupError(f"no node serves slot {slot}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        client = primary.client()
        try:
            own_id = client.execute_command("CLUSTER MYID")
        finally:
            client.close()
        for node in self.nodes:
            if not self.is_alive(node) or node is primary:
                continue
            info = self.info(node, "replication")
            if info["role"] == "slave" and int(info["master_port"]) == primary.port:
                return node
        raise LookupError(f"no live replica of {own_id!r}")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every live node says ``cluster_state:ok``, knows every slot, and every live
        replica's link to its primary is up."""

        def healthy() -> bool:
            for node in self.nodes:
                if not self.is_alive(node):
                    continue
                client = node.client()
                try:
                    info = client.execute_command("CLUSTER INFO")
                    if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                        return False
                    replication = client.info("replication")
                    if replication["role"] == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
                finally:
                    client.close()
            return True

        wait_for(healthy, timeout, "the cluster to be healthy")

    def kill_primary_of_slot(self, slot: int) -> tuple[ClusterNode, ClusterNode]:
        """SIGKILL the primary of ``slot``; returns (killed, its replica that will take over)."""
        primary = self.owner_of_slot(slot)
        replica = self.replica_of(primary)
        primary.kill()
        return primary, replica

    def wait_promoted(self, replica: ClusterNode, timeout: float = 30.0) -> None:
        wait_for(
            lambda: self.info(replica, "replication")["role"] == "master",
            timeout,
            f"the replica on port {replica.port} to be promoted",
        )

    def rejoin(self, node: ClusterNode) -> None:
        """Start a killed node again: its nodes.conf makes it a replica of whoever took over."""
        node.start()
        self.wait_healthy()

    def node_id(self, node: ClusterNode) -> str:
        client = node.client()
        try:
            reply = client.execute_command("CLUSTER MYID")
        finally:
            client.close()
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def migrate_slot(
        self,
        slot: int,
        target: ClusterNode,
        *,
        last: Sequence[str] = (),
        batch: int = 20,
        pause_s: float = 0.0,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        """Move ``slot`` to ``target`` as ``redis-cli --cluster reshard`` does (SETSLOT
        IMPORTING / MIGRATING, MIGRATE in batches, SETSLOT NODE everywhere), the keys in
        ``last`` moved together after every other key; ``pause_s`` between steps widens the
        windows in which clients meet ASK and MOVED."""
        source = self.owner_of_slot(slot)
        assert source is not target, "the slot is already there"
        src, dst = source.client(), target.client()
        step = on_step or (lambda _: None)
        try:
            source_id, target_id = self.node_id(source), self.node_id(target)
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            step("migrating")
            time.sleep(pause_s)
            held = {name.encode() for name in last}
            present: list[bytes] = []
            while True:
                in_slot = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
                present = [k for k in in_slot if k in held]
                keys = [k for k in in_slot if k not in held]
                if not keys:
                    break
                for start in range(0, len(keys), batch):
                    part = keys[start : start + batch]
                    src.execute_command(
                        "MIGRATE", "127.0.0.1", target.port, "", 0, 10_000, "KEYS", *part
                    )
                    time.sleep(pause_s / 10)
            step("moved the other keys")
            time.sleep(pause_s)
            if present:
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 10_000, "KEYS", *present
                )
            step("moved the last keys")
            time.sleep(pause_s)
            others = [n for n in self.primaries() if n is not target and n is not source]
            for node in [target, source, *others]:  # the target first, as redis-cli does
                client = node.client()
                try:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
                finally:
                    client.close()
            step("done")
        finally:
            src.close()
            dst.close()
        wait_for(lambda: self.owner_of_slot(slot) is target, 30.0, f"slot {slot} to move")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def cluster_available() -> str | None:
    """None when a local cluster can be started, else why not."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            return f"the cluster tests need {binary} (apt-get install redis-server)"
    return None
