"""The real ``redis-server`` the tests use: :class:`bench.servers.RedisServer` (started on a free loopback port
in a private directory, stopped after), re-exported here for the test modules."""

from __future__ import annotations

from bench.servers import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]
