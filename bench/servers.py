"""A throwaway PostgreSQL cluster on loopback for the benchmark's PostGIS peer and its test.

It runs from a private directory on a free port and is stopped and deleted on exit. It needs the Debian packages
``postgresql`` and ``postgresql-15-postgis-3``; when they are missing, :class:`ServerUnavailable` says which to
install. The ``redis-server`` counterpart is :class:`dispatcher.service.servers.RedisServer`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from dispatcher.service.servers import ServerUnavailable, free_port


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
