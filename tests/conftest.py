from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from dispatcher.service.servers import RedisClusterServers, RedisServer

# CI runs the same examples every time (derandomize); locally HYPOTHESIS_PROFILE=dev explores more.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def _redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    with RedisServer(tmp_path_factory.mktemp("redis"), unix_socket=True) as server:  # TCP and a unix socket
        yield server


@pytest.fixture
def redis_server(_redis_session: RedisServer) -> RedisServer:
    """The session's real Redis server, emptied before the test."""
    with _redis_session.client() as c:
        c.flushall()
    return _redis_session

@pytest.fixture(scope="session")
def _cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed (.ci/run installs them)")
    with RedisClusterServers(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(_cluster_session: RedisClusterServers) -> RedisClusterServers:
    """The session's real Redis Cluster (3 masters, a replica each), every master emptied and every node back
    up (a test may have killed one) before the test."""
    _cluster_session.revive()
    _cluster_session.flush()
    return _cluster_session

# headless Chromium for the page tests
from tests.browser import browser, visit  # noqa: E402, F401

#: The files that take longest, run first: with the suite in two processes (a file each at a time), one starting
#: them while the other works through the rest ends both at about the same time.
_LONGEST_FIRST = ("test_loadtest.py", "test_faults.py", "test_index.py", "test_cli.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: k for k, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
