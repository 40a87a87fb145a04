"""Metrics of the roles in this process, in-process and in Prometheus text format.

Every figure is read from the roles' own state when it is asked for (a
scrape, :func:`snapshot`, the broker's internal ``stats`` function): the
only per-message work is a handful of integer increments the roles do
anyway (per-service request/reply/error counts, per-socket message and byte
counts in the batch I/O layer).

In-process::

    from gaterpc import metrics
    metrics.register(broker, worker)      # roles to report (weakly held)
    metrics.snapshot()                    # {"roles": [...], "drops": {...}, "events": {...}}

Served to Prometheus (``prometheus_client``, a pure-Python dependency)::

    server = metrics.start_metrics_server("127.0.0.1:9464")   # only where asked
    ...
    server.close()

Every metric name starts with ``gaterpc_``; labels: ``role`` (broker, gate,
worker, client), ``id`` (the role's identity, hex), ``service``, ``socket``,
``direction``, ``reason``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Optional

from gaterpc.counters import drops_snapshot, events_snapshot

__all__ = (
    "register", "unregister", "registered_roles", "role_stats", "broker_stats", "worker_stats",
    "client_stats", "snapshot", "start_metrics_server", "MetricsServer", "LATENCY_BUCKETS",
)

#: Upper bounds (seconds) of the client call latency histogram buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

_roles: "weakref.WeakSet[Any]" = weakref.WeakSet()
_lock = threading.Lock()


def register(*roles: Any) -> None:
    """Report these roles (brokers, gates, workers, clients) in :func:`snapshot` and the endpoint.

    A registered client also starts keeping its call latency histogram."""
    with _lock:
        for role in roles:
            _roles.add(role)
            if "_latency" in vars(role) and vars(role)["_latency"] is None:
                role._latency = {}


def unregister(*roles: Any) -> None:
    """Stop reporting these roles."""
    with _lock:
        for role in roles:
            _roles.discard(role)


def registered_roles() -> list[Any]:
    """The roles currently reported."""
    with _lock:
        return list(_roles)


# -- reading the roles ---------------------------------------------------------------------


def _hex(identity: Any) -> str:
    return identity.hex() if isinstance(identity, (bytes, bytearray)) else str(identity)


def _socket_stats(lsock: Any) -> dict[str, Any] | None:
    if lsock is None:
        return None
    io = getattr(lsock, "io", None)
    out: dict[str, Any] = {
        "backlog": lsock.backlog_size() if hasattr(lsock, "backlog_size") else None,
        "dropped": getattr(lsock, "dropped", None),
    }
    for key in ("rx_msgs", "rx_bytes", "tx_msgs", "tx_bytes", "rx_nocopy_frames", "tx_nocopy_frames"):
        value = getattr(io, key, None) if io is not None else None
        out[key] = int(value) if value is not None else None
    return out


def _role_kind(role: Any) -> str:
    from gaterpc.broker import AMajordomo
    from gaterpc.client import Client
    from gaterpc.worker import Worker

    if isinstance(role, AMajordomo):
        return "gate" if hasattr(role, "gate_cluster") else "broker"
    if isinstance(role, Worker):
        return "worker"
    if isinstance(role, Client):
        return "client"
    return type(role).__name__.lower()


def broker_stats(broker: Any) -> dict[str, Any]:
    """What a broker (or gate) knows: services, their workers, load, counts, sockets."""
    services: dict[str, dict[str, Any]] = {}
    for name, svc in list(broker.services.items()):
        workers = list(svc.workers.values())
        services[name] = {
            "workers": len(workers),
            "in_flight": sum(len(getattr(w, "_inflight", ())) for w in workers),
            "free_capacity": sum(max(0, int(getattr(w, "max_allowed_request", 0))) for w in workers),
            "waiting": len(getattr(svc, "_waiting", ())),
            "requests": getattr(svc, "stat_requests", 0),
            "served": getattr(svc, "stat_served", 0),
            "errors": getattr(svc, "stat_errors", 0),
            "description": getattr(svc, "description", None),
        }
    out: dict[str, Any] = {
        "role": _role_kind(broker),
        "id": _hex(broker.identity),
        "services": services,
        "workers": len(broker.workers),
        "sockets": {"frontend": _socket_stats(getattr(broker, "_lfront", None)),
                    "backend": _socket_stats(getattr(broker, "_lback", None))},
        "errors": getattr(broker, "_errors", 0),
    }
    cluster = getattr(broker, "gate_cluster", None)
    if cluster is not None:
        out["peers"] = len(getattr(cluster, "workers", ()))
        out["peer_services"] = sorted(s for s in getattr(cluster, "services", ()) if s not in services)
    return out


def worker_stats(worker: Any) -> dict[str, Any]:
    """A worker's view: its service, connection, load and counts."""
    service = getattr(worker, "service", None)
    return {
        "role": "worker",
        "id": _hex(worker.identity),
        "service": getattr(service, "name", None),
        "connected": bool(getattr(worker, "ready", False)),
        "in_flight": len(getattr(worker, "requests", ())),
        "capacity": getattr(worker, "max_allowed_request", None),
        "requests": getattr(worker, "stat_requests", 0),
        "errors": getattr(worker, "stat_errors", 0),
        "sockets": {"broker": _socket_stats(getattr(worker, "_lsock", None))},
    }


def client_stats(client: Any) -> dict[str, Any]:
    """A client's view: calls, errors, in flight, latency histogram per service."""
    latency = getattr(client, "_latency", None) or {}
    return {
        "role": "client",
        "id": _hex(client.identity),
        "in_flight": len(getattr(client, "replies", ())),
        "streams": len(getattr(client, "_streams", ())),
        "calls": getattr(client, "_stat_calls", 0),
        "errors": getattr(client, "_stat_errors", 0),
        "latency": {svc: {"buckets": list(h[0]), "count": h[1], "sum": h[2]} for svc, h in latency.items()},
        "sockets": {"broker": _socket_stats(getattr(client, "_lsock", None))},
    }


def role_stats(role: Any) -> dict[str, Any]:
    """The stats of one role, whatever its kind."""
    kind = _role_kind(role)
    if kind in ("broker", "gate"):
        return broker_stats(role)
    if kind == "worker":
        return worker_stats(role)
    if kind == "client":
        return client_stats(role)
    raise TypeError(f"no metrics for {type(role).__name__}")


def snapshot() -> dict[str, Any]:
    """Every registered role's stats, plus the process-wide drop and event counters."""
    return {"roles": [role_stats(r) for r in registered_roles()], "drops": drops_snapshot(),
            "events": events_snapshot()}


# -- Prometheus ----------------------------------------------------------------------------


class _Collector:
    """A ``prometheus_client`` collector reading the registered roles at each scrape."""

    def describe(self) -> list[Any]:
        return []  # dynamic: no description ahead of collection

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return CounterMetricFamily(f"gaterpc_{name}", doc, labels=labels)

        def gauge(name: str, doc: str, labels: list[str]) -> Any:
            return GaugeMetricFamily(f"gaterpc_{name}", doc, labels=labels)

        svc_labels = ["role", "id", "service"]
        requests = counter("requests", "Requests received (broker: routed to the service; worker: handled)",
                           svc_labels)
        replies = counter("replies", "Requests answered to completion", svc_labels)
        errors = counter("errors", "Requests answered with an error", svc_labels)
        in_flight = gauge("in_flight", "Requests being served now", svc_labels)
        workers = gauge("workers", "Workers registered with the broker", ["role", "id", "service"])
        waiting = gauge("queue_depth", "Requests waiting for a unit of capacity", ["role", "id", "service"])
        free = gauge("free_capacity", "Units of capacity free among the service's workers",
                     ["role", "id", "service"])
        peers = gauge("gate_peers", "Peer gates joined", ["role", "id"])
        connected = gauge("connected", "1 while the worker is registered with its broker", ["role", "id"])
        sock_labels = ["role", "id", "socket", "direction"]
        msgs = counter("messages", "Multipart messages through the role's sockets", sock_labels)
        nbytes = counter("bytes", "Payload bytes through the role's sockets", sock_labels)
        backlog = gauge("backlog_messages", "Messages waiting for a socket to become writable",
                        ["role", "id", "socket"])
        latency = HistogramMetricFamily("gaterpc_call_latency_seconds", "Client call latency (until the "
                                        "reply, or the start of a stream)", labels=["role", "id", "service"])
        drops = counter("dropped", "Messages or requests dropped, by reason (process-wide)", ["reason"])
        events = counter("events", "Notable events, by name (process-wide)", ["event"])

        for role in registered_roles():
            try:
                st = role_stats(role)
            except Exception:  # a role being torn down: skip it this time
                continue
            kind, rid = st["role"], st["id"]
            if kind in ("broker", "gate"):
                for name, s in st["services"].items():
                    lab = [kind, rid, name]
                    requests.add_metric(lab, s["requests"])
                    replies.add_metric(lab, s["served"])
                    errors.add_metric(lab, s["errors"])
                    in_flight.add_metric(lab, s["in_flight"])
                    workers.add_metric(lab, s["workers"])
                    waiting.add_metric(lab, s["waiting"])
                    free.add_metric(lab, s["free_capacity"])
                if "peers" in st:
                    peers.add_metric([kind, rid], st["peers"])
            elif kind == "worker":
                lab = [kind, rid, st["service"] or ""]
                requests.add_metric(lab, st["requests"])
                errors.add_metric(lab, st["errors"])
                in_flight.add_metric(lab, st["in_flight"])
                connected.add_metric([kind, rid], 1 if st["connected"] else 0)
            elif kind == "client":
                lab = [kind, rid, ""]
                requests.add_metric(lab, st["calls"])
                errors.add_metric(lab, st["errors"])
                in_flight.add_metric(lab, st["in_flight"])
                for svc, h in st["latency"].items():
                    cumulative = 0
                    buckets = []
                    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), h["buckets"]):
                        cumulative += count
                        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                    latency.add_metric([kind, rid, svc], buckets, h["sum"])
            for sname, s in st["sockets"].items():
                if s is None:
                    continue
                if s["rx_msgs"] is not None:
                    msgs.add_metric([kind, rid, sname, "in"], s["rx_msgs"])
                    msgs.add_metric([kind, rid, sname, "out"], s["tx_msgs"])
                    nbytes.add_metric([kind, rid, sname, "in"], s["rx_bytes"])
                    nbytes.add_metric([kind, rid, sname, "out"], s["tx_bytes"])
                if s["backlog"] is not None:
                    backlog.add_metric([kind, rid, sname], s["backlog"])
        for reason, count in sorted(drops_snapshot().items()):
            drops.add_metric([reason], count)
        for name, count in sorted(events_snapshot().items()):
            events.add_metric([name], count)
        yield from (requests, replies, errors, in_flight, workers, waiting, free, peers, connected, msgs,
                    nbytes, backlog, latency, drops, events)


class MetricsServer:
    """An HTTP endpoint serving the registered roles' metrics (``/metrics``) in Prometheus text format.

    When an event loop is given (or one runs in the calling thread), the
    endpoint is served by that loop: a scrape is a few hundred microseconds of
    work between two batches of messages, and no other thread competes with
    the roles for the GIL (a thread answering a scrape in a process whose
    loop is busy slows the roles down while it waits for the GIL). The socket
    is bound here, so an address in use fails at once; the loop answers once
    it runs. Without a loop, ``prometheus_client``'s server thread answers.
    """

    def __init__(self, host: str, port: int, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector())
        self.host = host
        self._http: Any = None
        self._thread: Optional[threading.Thread] = None
        self._aserver: Optional[asyncio.base_events.Server] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._sock: Optional[socket.socket] = None
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is None or loop.is_closed():
            from prometheus_client import start_http_server

            self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
            self.port = int(self._http.server_address[1])
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        sock.setblocking(False)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._task = loop.create_task(self._serve(sock))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def in_loop(self) -> bool:
        """True when the event loop answers the scrapes (no server thread)."""
        return self._sock is not None

    def render(self) -> bytes:
        """The text a scrape gets."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    async def _serve(self, sock: socket.socket) -> None:
        self._aserver = await asyncio.start_server(self._answer, sock=sock, limit=_MAX_REQUEST)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP/1.x request: ``GET``/``HEAD`` of ``/metrics`` (or ``/``); anything else is a 404/405."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].split()
            method = parts[0] if parts else b""
            path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
            if method not in (b"GET", b"HEAD"):
                status, body, ctype = b"405 Method Not Allowed", b"only GET and HEAD\n", b"text/plain"
            elif path not in (b"/metrics", b"/"):
                status, body, ctype = b"404 Not Found", b"metrics are at /metrics\n", b"text/plain"
            else:
                from prometheus_client import CONTENT_TYPE_LATEST

                status, body, ctype = b"200 OK", self.render(), CONTENT_TYPE_LATEST.encode()
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                         + b"\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + (body if method != b"HEAD" else b""))
            await asyncio.wait_for(writer.drain(), _REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError,
                ValueError):
            pass  # a client that hung up, sent too much or too slowly: nothing to answer
        finally:
            writer.close()

    def close(self) -> None:
        """Stop serving."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._http = None
            return
        if self._aserver is not None:
            self._aserver.close()  # closes the listening socket
            self._aserver = None
        elif self._task is not None and not self._task.done():
            self._task.cancel()
        if self._sock is not None and self._aserver is None:
            self._sock.close()


#: Seconds a scrape may take to send its request and read the answer.
_REQUEST_TIMEOUT = 10.0
#: Bytes a scrape's request (line and headers) may have.
_MAX_REQUEST = 16 * 1024


def parse_hostport(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:9464"`` / ``":9464"`` (loopback) -> ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def start_metrics_server(address: str, roles: Iterable[Any] = (),
                         loop: Optional[asyncio.AbstractEventLoop] = None) -> MetricsServer:
    """Serve ``/metrics`` on ``address`` (``HOST:PORT``); register ``roles`` first.

    Served by ``loop``, else by the loop running in this thread, else by the
    loop the roles were built on (it answers once it runs), else by a thread.
    """
    roles = list(roles)
    register(*roles)
    host, port = parse_hostport(address)
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loops = [getattr(r, "_loop", None) for r in roles]
            loop = next((lp for lp in loops if isinstance(lp, asyncio.AbstractEventLoop) and not lp.is_closed()),
                        None)
    return MetricsServer(host, port, loop)
