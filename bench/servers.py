"""Throwaway servers on loopback for the benchmarks and the tests: ``redis-server`` and a PostgreSQL cluster.

Each runs from a private directory on a free port and is stopped (and, for PostgreSQL, deleted) on exit. They
need the Debian packages (``redis-server``; ``postgresql`` and ``postgresql-15-postgis-3``); when a binary is
missing, :class:`ServerUnavailable` says which package to install.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


class ServerUnavailable(RuntimeError):
    """The server's binaries are not installed, or it did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``restart`` keeps the port and, with AOF on, the data."""

    def __init__(self, workdir: Path, *, appendonly: bool = True, appendfsync: str = "always",
                 port: int | None = None) -> None:
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
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
                "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.workdir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
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


def _pg_bin() -> Path:
    for version in ("17", "16", "15"):
        d = Path(f"/usr/lib/postgresql/{version}/bin")
        if (d / "initdb").exists():
            return d
    raise ServerUnavailable("PostgreSQL is not installed (apt-get install -y postgresql postgresql-15-postgis-3)")


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port, in a temporary directory removed on stop.

    PostgreSQL refuses to run as root, so when we are root the cluster belongs to the ``postgres`` system
    user the Debian package creates. Connect with :attr:`dsn` (trust authentication, loopback only).
    """

    def __init__(self, port: int | None = None) -> None:
        self.bin = _pg_bin()
        self.port = port or free_port()
        self.dir: Path | None = None
        self._user: pwd.struct_passwd | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=10"

    def _run(self, *args: str) -> None:
        kw: dict[str, object] = {}
        if self._user is not None:
            uid, gid = self._user.pw_uid, self._user.pw_gid
            kw = {"user": uid, "group": gid, "extra_groups": []}
        p = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True,
                           cwd="/", **kw)  # type: ignore[call-overload]
        if p.returncode != 0:
            raise ServerUnavailable(f"{args[0]} failed: {p.stdout[-1500:]} {p.stderr[-1500:]}")

    def start(self) -> PostgresServer:
        self.dir = Path(tempfile.mkdtemp(prefix="geodispatch-pg-"))
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerUnavailable("running as root and there is no 'postgres' user") from exc
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=512MB -c work_mem=64MB "
                "-c max_parallel_workers_per_gather=2")
        self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
