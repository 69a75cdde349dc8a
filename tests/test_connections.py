"""The lean pipelines of dispatcher.connections against redis-py's own, on a real Redis: the same replies, scripts
by SHA without a SCRIPT EXISTS each time, NOSCRIPT recovered from, errors raised only after every reply is read,
MULTI/EXEC all or nothing, and a connection held per thread that reconnects after it is dropped."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from dispatcher.connections import held_connection, pipeline, script, transaction, with_retries
from dispatcher.dispatch.settings import QueueSettings


def _queue(p: Any) -> None:
    """A mix of the commands the store, the sink and the worker pipeline, with their reply conversions."""
    p.hset("h", mapping={"state": "approved", "payload": b"{}"})
    p.hmget("h", ["state", "payload", "missing"])
    p.hgetall("h")
    p.zadd("z", {"a": 1.5, "b": 3})
    p.zcount("z", 2, "+inf")
    p.zrange("z", 0, -1, withscores=True)
    p.sadd("s", 1, 2, 3)
    p.smembers("s")
    p.xgroup_create("st", "g", id="0", mkstream=True)  # a command name of two words
    p.xadd("st", {"cmd": b"x"})
    p.xack("st", "g", "0-1")
    p.hkeys("h")
    p.incr("n")
    p.get("nothing")


def test_replies_match_redis_py(redis_server):
    c = redis_server.client()
    ours = pipeline(c)
    _queue(ours)
    got = ours.execute()
    c.flushall()
    theirs = c.pipeline(transaction=False)
    _queue(theirs)
    want = theirs.execute()
    assert len(got) == len(want) == 14
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if k == 9:  # stream entry ids differ by time; both are ids
            assert isinstance(g, bytes) and b"-" in g and isinstance(w, bytes)
        else:
            assert g == w, k
    c.flushall()
    tx = transaction(c)
    _queue(tx)
    got_tx = tx.execute()
    assert [g for k, g in enumerate(got_tx) if k != 9] == [w for k, w in enumerate(want) if k != 9]


def test_scripts_go_by_sha_without_asking_each_time(redis_server):
    c = redis_server.client()
    add = script(c, "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    c.config_resetstat()
    for n in range(1, 6):
        p = pipeline(c)
        add(keys=["k"], args=[2], client=p)
        p.get("k")
        assert p.execute() == [2 * n, str(2 * n).encode()]
    stats = c.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 5
    # redis-py's own pipeline asks SCRIPT EXISTS before every execute; ours at most once per server
    assert stats.get("cmdstat_script|exists", {"calls": 0})["calls"] <= 1


def test_noscript_loads_and_runs_again(redis_server):
    c = redis_server.client()
    add = script(c, "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    p = pipeline(c)
    add(keys=["k"], args=[1], client=p)
    assert p.execute() == [1]
    c.script_flush()  # as a server restarted empty would: the SHA is remembered, the script is gone
    p = pipeline(c)
    p.rpush("ran", "x")
    add(keys=["k"], args=[10], client=p)
    assert p.execute() == [2, 11]  # the second run's replies: the whole pipeline ran again, the script once
    assert c.llen("ran") == 2 and c.get("k") == b"11"


def test_an_error_reply_raises_after_every_reply_is_read(redis_server):
    c = redis_server.client()
    p = pipeline(c)
    p.set("k", "v")
    p.lpush("k", "x")  # WRONGTYPE
    p.get("k")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        p.execute()
    p = pipeline(c)  # the connection held is in step: the next replies are this pipeline's
    p.get("k")
    p.lpush("k", "x")
    got = p.execute(raise_on_error=False)
    assert got[0] == b"v" and isinstance(got[1], redis.ResponseError)


def test_a_transaction_refused_as_queued_runs_nothing(redis_server):
    c = redis_server.client()
    tx = transaction(c)
    tx.set("a", "1")
    tx.execute_command("SET", "b")  # wrong number of arguments: refused at queueing, EXECABORT
    with pytest.raises(redis.ResponseError):
        tx.execute()
    assert c.get("a") is None
    tx = transaction(c)
    tx.set("a", "2")
    tx.get("a")
    assert tx.execute() == [True, b"2"]


def test_each_thread_holds_its_connection_and_a_dropped_one_comes_back(redis_server):
    c = redis_server.client()
    pool = c.connection_pool
    mine = held_connection(pool)
    assert held_connection(pool) is mine
    other: list[Any] = []
    t = threading.Thread(target=lambda: other.append(held_connection(pool)))
    t.start()
    t.join()
    assert other[0] is not mine
    p = pipeline(c)
    p.client_id()
    (cid,) = p.execute()
    redis_server.client().client_kill_filter(_id=cid)
    settings = QueueSettings(url=redis_server.url, retries=3, backoff_base=0.01, backoff_max=0.02)

    def run() -> list[Any]:
        p = pipeline(c)
        p.set("k", "v")
        p.get("k")
        return list(p.execute())
    assert with_retries(settings, "after a kill", run) == [True, b"v"]
    assert held_connection(pool) is mine  # reconnected, not replaced
