"""Streaming replies across implementations.

The original 0.2.11 client cannot receive any stream (its ``StreamReply``
passes ``loop=`` to ``asyncio.Queue`` and fails, so the call times out), so
streams are received by our client only: through their broker from their
worker and from ours, and through our broker from their worker.  The
original worker streams async generators but not plain generators.
"""

from __future__ import annotations

import sys

import pytest

from .conftest import Topology, topology_id

OUR_CLIENT = [
    ("ours", "orig", "orig"),   # (a) our client -> their broker -> their worker
    ("ours", "orig", "ours"),   # (c) our client -> their broker -> our worker
    ("ours", "ours", "orig"),   #     our client -> our broker -> their worker
]
THEIR_CLIENT = [
    ("orig", "orig", "orig"),   # baseline
    ("orig", "ours", "ours"),   # (b)
    ("orig", "ours", "orig"),   # (c)
]


@pytest.fixture(params=OUR_CLIENT, ids=topology_id)
def topo(request, fleet):
    return Topology(fleet, *request.param)


def items(n):
    return [[i, f"i{i}"] for i in range(n)]


def test_async_generator_stream(topo):
    r = topo.call("agen", 5, mode="stream")
    assert r["ok"], r
    assert r["type"] == "StreamReply"
    assert r["items"] == items(5)
    assert r["exited"] is True


def test_empty_async_generator_stream(topo):
    r = topo.call("agen", 0, mode="stream")
    assert r["ok"] and r["items"] == [] and r["exited"] is True, r


def test_long_stream_keeps_order(topo):
    r = topo.call("agen", 2000, mode="stream")
    assert r["ok"], {k: v for k, v in r.items() if k != "items"}
    assert r["items"] == items(2000)


def test_concurrent_streams_do_not_mix(topo):
    results = topo.run([{"method": "agen", "args": [n], "mode": "stream"} for n in (3, 1, 4)])
    assert [r["items"] for r in results] == [items(3), items(1), items(4)], results


def test_stream_error_after_k_items(topo):
    r = topo.call("agen_fail", 3, mode="stream")
    assert not r["ok"] and r["remote"], r
    assert r["items"] == [0, 1, 2]
    assert r["text"].startswith("\n  RemoteTraceback (ValueError):\n  ValueError('stream boom after 3')"), r["text"]


def test_stream_error_before_any_item(topo):
    r = topo.call("agen_fail", 0, mode="stream")
    assert not r["ok"] and r["remote"], r
    assert r["items"] == [] and "stream boom after 0" in r["text"]


def _timeout_type(client_impl):
    """The name of the time-out a client raises: the builtin ``TimeoutError`` (our client's
    is a subclass that is also ``asyncio.TimeoutError`` on 3.10, where the two differ)."""
    if client_impl == "ours" and sys.version_info < (3, 11):
        return "ReplyTimeout"
    return "TimeoutError"


def test_sync_generator_stream(topo):
    if topo.worker_impl == "orig":
        # Documented 0.2.11 behaviour: the worker wraps the generator but then
        # tries to msgpack the wrapper (MsgPackError, logged) and sends no reply.
        r = topo.call("gen", 3, mode="stream", reply_timeout=1.5)
        assert not r["ok"] and r["timeout"] and r["exc_type"] == _timeout_type(topo.client_impl), r
        assert r["text"] == "Timeout while requesting the Majordomo service."
        assert 1.4 < r["elapsed"] < 6, r
        assert topo.value("echo", "still alive") == [["still alive"], {}]
    else:
        r = topo.call("gen", 3, mode="stream")
        assert r["ok"] and r["items"] == items(3) and r["exited"] is True, r
        r = topo.call("gen_fail", 2, mode="stream")
        assert not r["ok"] and r["remote"] and r["items"] == [0, 1], r
        assert "stream boom after 2" in r["text"]


@pytest.mark.parametrize("t", THEIR_CLIENT, ids=topology_id)
def test_their_client_cannot_receive_streams_but_survives(fleet, t):
    """The original client times out on any stream; our broker/worker must not break it."""
    topo = Topology(fleet, *t)
    r = topo.call("agen", 3, mode="stream", reply_timeout=1.5)
    assert not r["ok"] and r["exc_type"] == "TimeoutError", r
    assert r["items"] == []
    assert topo.value("echo", 1, (2,)) == [[1, [2]], {}]
