"""Metrics: in-process snapshot and the Prometheus endpoint, read from real roles."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from gaterpc import metrics
from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.counters import count_drop, count_event
from gaterpc.utils import interface


class Echo(Worker):
    @interface
    def echo(self, x):
        return x

    @interface
    def fail(self):
        raise ValueError("no")


@pytest.fixture
async def roles(tmp_path):
    ctx = Context()
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    broker = AMajordomo(context=ctx)
    broker.bind_frontend(front)
    broker.bind_backend(back)
    broker.run()
    worker = Service(name="Echo").create_worker(Echo, back, context=ctx)
    worker.run()
    client = Client(front, context=ctx)
    for _ in range(200):
        if "Echo" in broker.services and broker.services["Echo"].workers:
            break
        await asyncio.sleep(0.01)
    metrics.register(broker, worker, client)
    try:
        yield broker, worker, client
    finally:
        metrics.unregister(broker, worker, client)
        client.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


def _scrape(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def _value(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


async def test_snapshot_reads_the_roles(roles):
    broker, worker, client = roles
    for i in range(5):
        assert await client.Echo.echo(i) == i
    snap = metrics.snapshot()
    by_role = {r["role"]: r for r in snap["roles"]}
    svc = by_role["broker"]["services"]["Echo"]
    assert svc["workers"] == 1 and svc["in_flight"] == 0 and svc["waiting"] == 0
    assert svc["requests"] == 5 and svc["served"] == 5 and svc["errors"] == 0
    # the broker's internal service reports the same figures (what 'gaterpc info' reads)
    remote = await client.knock("Gate", "stats")
    assert remote["services"]["Echo"]["served"] == 5 and remote["workers"] == 1
    assert by_role["worker"]["service"] == "Echo" and by_role["worker"]["connected"] is True
    assert by_role["client"]["in_flight"] == 0
    assert by_role["broker"]["id"] == broker.identity.hex()


async def test_endpoint_serves_prometheus_text_on_loopback(roles):
    broker, worker, client = roles
    for i in range(3):
        assert await client.Echo.echo(i) == i
    count_drop("test_reason")
    count_event("test_event")
    server = metrics.start_metrics_server("127.0.0.1:0")
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        text = await asyncio.get_running_loop().run_in_executor(None, _scrape, server.url)
    finally:
        server.close()
    assert "# TYPE gaterpc_workers gauge" in text
    assert "# TYPE gaterpc_dropped_total counter" in text
    assert _value(text, "gaterpc_workers", role="broker", service="Echo") == 1
    assert _value(text, "gaterpc_in_flight", role="broker", service="Echo") == 0
    assert _value(text, "gaterpc_dropped_total", reason="test_reason") >= 1
    assert _value(text, "gaterpc_events_total", event="test_event") >= 1
    assert _value(text, "gaterpc_connected", role="worker") == 1
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.startswith("gaterpc_"), line


def test_metrics_address_must_name_a_port():
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.parse_hostport("localhost")
    assert metrics.parse_hostport(":9464") == ("127.0.0.1", 9464)
    assert metrics.parse_hostport("[::1]:9") == ("::1", 9)


async def test_registered_client_keeps_a_latency_histogram(roles):
    broker, worker, client = roles
    for i in range(4):
        assert await client.Echo.echo(i) == i
    with pytest.raises(Exception):
        await client.Echo.fail()
    st = metrics.client_stats(client)
    assert st["calls"] >= 5 and st["errors"] >= 1
    hist = st["latency"]["Echo"]
    assert hist["count"] == 5 and sum(hist["buckets"]) == 5 and hist["sum"] > 0
    server = metrics.start_metrics_server("127.0.0.1:0")
    try:
        text = await asyncio.get_running_loop().run_in_executor(None, _scrape, server.url)
    finally:
        server.close()
    assert "# TYPE gaterpc_call_latency_seconds histogram" in text
    assert _value(text, "gaterpc_call_latency_seconds_count", role="client", service="Echo") == 5
    assert _value(text, "gaterpc_call_latency_seconds_bucket", role="client", service="Echo", le="+Inf") == 5


async def test_oversized_argument_is_refused_before_sending(roles):
    broker, worker, client = roles
    big = b"x" * (32 * 1024 * 1024 + 1)
    with pytest.raises(ValueError) as info:
        await client.Echo.echo(big)
    text = str(info.value)
    assert "33,554,433 bytes" in text and "HugeData" in text and "xxxx" not in text
    # several values that are each under the limit still go
    half = b"y" * (17 * 1024 * 1024)
    assert await client.Echo.echo([half, half]) == [half, half]


def _http(url: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_endpoint_is_served_by_the_running_loop_without_a_thread():
    """In a running loop the loop answers scrapes: no server thread competes with the roles for the GIL."""
    import socket
    import threading

    before = set(threading.enumerate())
    server = metrics.start_metrics_server("127.0.0.1:0")
    loop = asyncio.get_running_loop()
    try:
        # no new thread (one that other tests left may end meanwhile: compare identities, not counts)
        assert server.in_loop and set(threading.enumerate()) <= before
        status, body = await loop.run_in_executor(None, _http, server.url)
        assert status == 200 and b"# TYPE gaterpc_dropped_total counter" in body
        base = server.url.rsplit("/", 1)[0]
        assert (await loop.run_in_executor(None, _http, base + "/nothing"))[0] == 404
        assert (await loop.run_in_executor(None, _http, server.url, "POST"))[0] == 405
        assert await loop.run_in_executor(None, _http, server.url, "HEAD") == (200, b"")

        def garbage() -> None:  # a request that never ends its headers, then hangs up
            with socket.create_connection((server.host, server.port), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 40000)

        await loop.run_in_executor(None, garbage)
        status, body = await loop.run_in_executor(None, _http, server.url)
        assert status == 200 and b"gaterpc_" in body
    finally:
        server.close()
    with pytest.raises(OSError):  # closed: nothing listens any more
        await loop.run_in_executor(None, _http, server.url)


def test_endpoint_without_a_loop_is_served_by_a_thread():
    server = metrics.start_metrics_server("127.0.0.1:0")
    try:
        assert not server.in_loop
        status, body = _http(server.url)
        assert status == 200 and b"gaterpc_" in body
    finally:
        server.close()
