from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.service.servers import RedisServer


@pytest.mark.redis
def test_session_server_is_real_and_empty(redis_server: RedisServer) -> None:
    with redis_server.client() as c:
        assert c.dbsize() == 0
        c.xadd("s", {"k": "v"})
        assert c.xlen("s") == 1
        assert c.info("server")["tcp_port"] == redis_server.port


@pytest.mark.redis
def test_restart_keeps_data_with_aof(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        with server.client() as c:
            c.set("kept", "1")
        server.restart()
        with server.client() as c:
            assert c.get("kept") == b"1"
