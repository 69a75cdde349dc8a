"""Throwaway ``redis-server`` processes on loopback, for the load test (``geodispatch loadtest``), the
benchmark's Redis peer and the tests: one server (:class:`RedisServer`), or a Redis Cluster of several
(:class:`RedisClusterServers`: masters and their replicas, made into a cluster with ``redis-cli --cluster create``).

Each runs from a private directory on a free port and is stopped on exit. It needs the ``redis-server``
binary (Debian package ``redis-server``; ``redis-cli``, for a cluster, comes with it); when one is missing, or a
server does not come up, :class:`ServerUnavailable` says why.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from dispatcher.errors import DispatchError

__all__ = ["RedisClusterServers", "RedisServer", "ServerUnavailable", "free_port"]

#: How long a server may take to answer its first PING.
_START_TIMEOUT_S = 10.0


class ServerUnavailable(DispatchError, RuntimeError):
    """The server's binary is not installed, or the server did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``restart`` keeps the port and, with AOF on, the data."""

    def __init__(self, workdir: Path, *, appendonly: bool = True, appendfsync: str = "always",
                 port: int | None = None, extra_args: Sequence[str] = (), unix_socket: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not installed (apt-get install -y redis-server)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        #: "always" for the tests (a restart loses nothing acknowledged); "everysec", Redis's default, for load.
        self.appendfsync = appendfsync
        self.port = port or free_port()
        #: More ``redis-server`` options (a cluster node's), after ours.
        self.extra_args = list(extra_args)
        #: With ``unix_socket``, the server listens on this socket too (owner only), in a directory of its own
        #: under the system's temporary one: a socket path has at most ~100 bytes, a test's directory may not.
        self.socket: Path | None = Path(tempfile.mkdtemp(prefix="gd-redis-")) / "redis.sock" if unix_socket else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str:
        """The URL of the unix socket (``unix_socket=True``)."""
        if self.socket is None:
            raise ServerUnavailable("this server listens on TCP only (RedisServer(unix_socket=True))")
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
                "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.workdir / "redis.log"),
                # A day of the owners' gate is one hash of every owner notified that day: its expiry is freed in
                # the background, not while every client waits.
                "--lazyfree-lazy-expire", "yes",
                *(("--unixsocket", str(self.socket), "--unixsocketperm", "700") if self.socket else ()),
                *self.extra_args]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5) as c:
                    if c.ping():
                        return self
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise ServerUnavailable(f"redis-server did not start on port {self.port}: {log}")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.socket is not None:
            shutil.rmtree(self.socket.parent, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10_000 < 65_536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port
    raise ServerUnavailable("no free port pair (port, port + 10000) for a cluster node")


class RedisClusterServers:
    """A Redis Cluster on 127.0.0.1: ``masters`` masters and ``replicas`` replicas of each, every node a
    :class:`RedisServer` with ``--cluster-enabled yes`` and AOF in a directory of its own, joined by
    ``redis-cli --cluster create`` (the slots split evenly over the masters, in port order) and ready when every
    node's ``CLUSTER INFO`` says ``cluster_state:ok``. ``node_timeout_ms`` is how long a master may be unreachable
    before its replica is promoted (short here, so that a failover test takes seconds)."""

    def __init__(self, workdir: Path, *, masters: int = 3, replicas: int = 1, appendfsync: str = "always",
                 node_timeout_ms: int = 1000) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ServerUnavailable("redis-cli is not installed (apt-get install -y redis-server)")
        if masters < 3:
            raise ServerUnavailable(f"a Redis Cluster needs at least 3 masters, got {masters}")
        self.cli = cli
        self.workdir = Path(workdir)
        self.masters, self.replicas = masters, replicas
        self.nodes = [RedisServer(self.workdir / f"node{k}", appendfsync=appendfsync, port=_cluster_port(),
                                  extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                              "--cluster-node-timeout", str(node_timeout_ms),
                                              "--cluster-replica-validity-factor", "0"])
                      for k in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        """The URL a cluster client starts from (any node: it learns the others), with ``cluster=true``."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=true"

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            created = subprocess.run([self.cli, "--cluster", "create",
                                      *(f"127.0.0.1:{n.port}" for n in self.nodes),
                                      "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                                     capture_output=True, text=True, timeout=60, check=False)
            if created.returncode != 0:
                raise ServerUnavailable(f"redis-cli --cluster create failed: {created.stdout[-2000:]}"
                                        f"{created.stderr[-2000:]}")
            self.wait_ok()
            # the replicas' first sync too: until then a write's WAIT blocks its whole timeout
            self.wait_replicated(timeout=60.0)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0, nodes: Sequence[RedisServer] | None = None) -> None:
        """Until every running node (or those of ``nodes``) says ``cluster_state:ok`` and knows every slot."""
        deadline = time.monotonic() + timeout
        for node in nodes or [n for n in self.nodes if n.proc is not None]:
            while True:
                try:
                    with node.client() as c:
                        info = c.execute_command("CLUSTER", "INFO")
                        text = info.decode() if isinstance(info, bytes) else str(info)
                        if "cluster_state:ok" in text and "cluster_slots_ok:16384" in text:
                            break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"cluster node {node.port} not ok after {timeout:.0f} s")
                time.sleep(0.05)

    def master_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now (asked of a running node)."""
        slot = _key_slot(key)
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                with node.client() as c:
                    for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                        if int(start) <= slot <= int(end):
                            return next(n for n in self.nodes if n.port == int(master[1]))
            except redis.RedisError:
                continue
        raise ServerUnavailable(f"no running node knows who serves slot {slot}")

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Until every master's replicas (``replicas`` each) are online and hold everything it was sent (their
        offsets equal to the master's). A replica still in its first sync has offset 0, as a new master has."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.proc is None:
                continue
            while True:
                with node.client() as c:
                    info: dict[str, Any] = c.info("replication")
                if info.get("role") != "master":
                    break
                links = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
                if len(links) >= self.replicas and all(v.get("state") == "online" and
                                                       int(v["offset"]) >= int(info["master_repl_offset"])
                                                       for v in links):
                    break
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"the replicas of {node.port} did not catch up in {timeout:.0f} s")
                time.sleep(0.02)

    def kill_master_of(self, key: str, timeout: float = 30.0) -> RedisServer:
        """SIGKILL the master serving ``key``, then wait until its replica took over and the cluster is ok again
        (the slot served by another node). Returns the killed node (``revive`` starts it again)."""
        dead = self.master_of(key)
        dead.stop(kill=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.master_of(key) is not dead:
                    break
            except ServerUnavailable:
                pass
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"no replica took over from {dead.port} in {timeout:.0f} s")
            time.sleep(0.05)
        self.wait_ok(timeout=timeout)
        return dead

    def revive(self, timeout: float = 30.0) -> None:
        """Start again every node that was stopped (it rejoins from its own files, as a replica if another took
        over), and wait until the cluster is ok on every node."""
        revived = [n for n in self.nodes if n.proc is None]
        for node in revived:
            node.start()
        if revived:
            self.wait_ok(timeout=timeout)

    def flush(self) -> None:
        """Empty every master, and give its replicas up to 5 s to follow. The client waits longer than the
        ``WAIT`` (redis-py's default socket timeout is 5 s too: a replica still syncing made the read time out
        before the ``WAIT`` returned)."""
        for node in self.nodes:
            with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=15) as c:
                role = c.execute_command("ROLE")
                if role[0] in (b"master", "master"):
                    c.flushall()
                    c.execute_command("WAIT", self.replicas, 5000)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _key_slot(key: str) -> int:
    from redis.crc import key_slot
    return int(key_slot(key.encode()))
