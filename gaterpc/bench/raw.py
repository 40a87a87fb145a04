"""Raw-pyzmq baseline of the echo benchmark (``gaterpc bench --vs-raw``).

The same message pattern as gaterpc (docs/PROTOCOL.md, "Client and broker"
and "Broker and worker"): client DEALER
``['', 'MDPC01', service, rid, mp(func), mp(args), mp(kwargs)]``, broker
ROUTER (clients) / ROUTER (workers), worker DEALER with ``MDPW01`` frames
(READY, REQUEST, REPLY), replies ``mp({"result": ..., "exception": None})``
and stream items ``['GateStreamGenerator', mp(item)]`` closed by
``['GateStreamGenerator', 'GateStreamEnd']``.

Each end is a hand-tuned asyncio program: plain (synchronous) pyzmq
sockets, event-driven reads through ``loop.add_reader(socket.FD)``, and on
every wake-up all sockets of the process are drained (``recv_multipart``
with NOBLOCK until EAGAIN) and the messages handled inline -- no task or
future per message.  Since the last thing a pump does is a receive that
returned EAGAIN on every socket, the edge-triggered FDs are re-armed after
any send.  The broker does no heartbeats, no ZAP and no capacity
bookkeeping (round robin over the registered workers).

The ``raw-sync`` row (config key ``"sync": true``; ``--mode latency
--vs-raw`` runs it) is the same three programs without an event loop: the
broker and the worker are the same classes driven by a blocking
``zmq.Poller`` loop (:class:`SyncLoop`), and the client
(:class:`SyncEchoClient`) sends a call and blocks in ``recv_multipart`` until
its reply, one call at a time -- plain synchronous pyzmq, the floor a
sequential call through a broker can reach in Python.  Same frames and the
same msgpack work per call as the asyncio rows.

Same command line and stdout protocol as ``roles.py``::

    python -m gaterpc.bench.raw ROLE CONFIG_JSON

with ROLE in ``broker``, ``worker``, ``client``, ``server``, ``all``.
Imports only pyzmq and msgpack.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

import msgpack
import zmq

SERVICE = b"EchoBench"
WORD = "hello world"
MDPC = b"MDPC01"
MDPW = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
STREAM_TAG = b"GateStreamGenerator"
STREAM_END = b"GateStreamEnd"
BATCH = 256

packb: Callable[[Any], bytes] = msgpack.packb
unpackb: Callable[[bytes], Any] = msgpack.unpackb

if TYPE_CHECKING:
    #: one multipart message
    Frames = list[bytes]
    #: handles one message of a socket, inline
    Handler = Callable[[Frames], None]
    Socket = zmq.Socket[bytes]


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def rusage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kib": ru.ru_maxrss}


def make_socket(ctx: zmq.Context[Any], kind: int) -> Socket:
    sock: Socket = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


class Pump:
    """Drains every registered socket until all of them report EAGAIN."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.handlers: list[tuple[Socket, Handler]] = []

    def add(self, sock: Socket, handler: Handler) -> None:
        self.handlers.append((sock, handler))
        self.loop.add_reader(sock.FD, self.run)

    def remove_all(self) -> None:
        for sock, _ in self.handlers:
            try:
                self.loop.remove_reader(sock.FD)
            except (zmq.ZMQError, ValueError, OSError):
                pass
        self.handlers = []

    def run(self) -> None:
        again = zmq.Again
        flags = zmq.NOBLOCK
        while True:
            progressed = False
            for sock, handler in self.handlers:
                recv = sock.recv_multipart
                for _ in range(BATCH):
                    try:
                        frames = recv(flags)
                    except again:
                        break
                    progressed = True
                    handler(frames)
            if not progressed:
                return
        # Every socket returned EAGAIN after the last send: edges re-armed.

    def kick(self) -> None:
        self.loop.call_soon(self.run)


class SyncLoop:
    """The synchronous twin of :class:`Pump`: one ``zmq.Poller`` over every socket of the process.

    :meth:`run_once` blocks in ``poll`` until a socket is readable, then drains
    each readable socket (NOBLOCK until EAGAIN, at most ``BATCH`` messages) and
    hands the messages to their handlers inline.  Broker and worker are the
    same classes as in the asyncio rows, driven by this loop instead."""

    def __init__(self) -> None:
        self.poller = zmq.Poller()
        self.handlers: dict[Socket, Handler] = {}

    def add(self, sock: Socket, handler: Handler) -> None:
        self.handlers[sock] = handler
        self.poller.register(sock, zmq.POLLIN)

    def kick(self) -> None:
        """Nothing to schedule: the next ``poll`` sees what is queued."""

    def run_once(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for readable sockets and handle their messages; False if none came."""
        if not self.handlers:
            time.sleep(timeout_ms / 1000)
            return False
        events = self.poller.poll(timeout_ms)
        again = zmq.Again
        flags = zmq.NOBLOCK
        for sock, _ in events:
            handler = self.handlers[sock]
            recv = sock.recv_multipart
            for _ in range(BATCH):
                try:
                    frames = recv(flags)
                except again:
                    break
                handler(frames)
        return bool(events)


class Broker:
    def __init__(self, ctx: zmq.Context[Any], pump: Pump | SyncLoop, front: str, back: str) -> None:
        self.front = make_socket(ctx, zmq.ROUTER)
        self.front.bind(front)
        self.back = make_socket(ctx, zmq.ROUTER)
        self.back.bind(back)
        self.workers: list[bytes] = []
        self.services: list[str] = []
        self.rr = 0
        pump.add(self.front, self.on_front)
        pump.add(self.back, self.on_back)

    def on_front(self, frames: Frames) -> None:
        # [cid, '', MDPC01, service, rid, func, args, kwargs]
        if len(frames) < 6 or frames[1] or frames[2] != MDPC:
            return
        cid, service, rid = frames[0], frames[3], frames[4]
        if service == b"Gate":
            func = unpackb(frames[5])
            if func == "get_services":
                body = packb({"result": self.services + ["Gate"], "exception": None})
            else:
                body = packb({"result": None, "exception": ["AttributeError", repr(func), ""]})
            self.front.send_multipart([cid, b"", MDPC, b"Gate", rid, body])
            return
        workers = self.workers
        if service != SERVICE or not workers:
            body = packb({"result": None, "exception": ["ServiceUnAvailableError", repr(service), ""]})
            self.front.send_multipart([cid, b"", MDPC, service, rid, body])
            return
        self.rr += 1
        wid = workers[self.rr % len(workers)]
        self.back.send_multipart([wid, b"", MDPW, REQUEST, cid, b"", rid, *frames[5:]])

    def on_back(self, frames: Frames) -> None:
        # [wid, '', MDPW01, command, ...]
        if len(frames) < 4 or frames[1] or frames[2] != MDPW:
            return
        command = frames[3]
        if command == REPLY:
            # [wid, '', MDPW01, REPLY, cid, '', rid, body...]
            self.front.send_multipart([frames[4], b"", MDPC, SERVICE, frames[6], *frames[7:]])
        elif command == READY:
            name = frames[4].decode().split(":")[0]
            if frames[0] not in self.workers:
                self.workers.append(frames[0])
            if name not in self.services:
                self.services.append(name)
            self.back.send_multipart([frames[0], b"", MDPW, HEARTBEAT])


class EchoWorker:
    def __init__(self, ctx: zmq.Context[Any], pump: Pump | SyncLoop, back: str, corrupt: Optional[int] = None) -> None:
        self.corrupt = corrupt  # test hook: reply with a wrong value for this call index
        self.sock = make_socket(ctx, zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, os.urandom(16))
        self.sock.connect(back)
        pump.add(self.sock, self.on_message)
        self.sock.send_multipart([b"", MDPW, READY, SERVICE + b":echo benchmark:5000"])
        pump.kick()

    def on_message(self, frames: Frames) -> None:
        # ['', MDPW01, REQUEST, cid, '', rid, func, args, kwargs]
        if len(frames) < 7 or frames[2] != REQUEST:
            return
        cid, rid = frames[3], frames[5]
        func = unpackb(frames[6])
        args = unpackb(frames[7]) if len(frames) > 7 else []
        kwargs = unpackb(frames[8]) if len(frames) > 8 else {}
        send = self.sock.send_multipart
        if func == "echo":
            if self.corrupt is not None and len(args) > 1 and args[1] == self.corrupt:
                args = [args[0], -2]
            send([b"", MDPW, REPLY, cid, b"", rid, packb({"result": args, "exception": None})])
        elif func == "gen":
            n = args[0]
            payload = args[1] if len(args) > 1 else kwargs.get("payload")
            head = [b"", MDPW, REPLY, cid, b"", rid, STREAM_TAG]
            for i in range(n):
                send(head + [packb(i if payload is None else [i, payload])])
            send(head + [STREAM_END])
        else:
            send([b"", MDPW, REPLY, cid, b"", rid,
                  packb({"result": None, "exception": ["AttributeError", func, ""]})])


class EchoClient:
    """Callback-driven client: keeps ``window`` requests in flight."""

    def __init__(self, ctx: zmq.Context[Any], pump: Pump, front: str) -> None:
        self.sock = make_socket(ctx, zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, os.urandom(16))
        self.sock.connect(front)
        self.pump = pump
        self.loop = pump.loop
        self.handler: Optional[Handler] = None
        pump.add(self.sock, self.on_message)

    def on_message(self, frames: Frames) -> None:
        if self.handler is not None and len(frames) >= 5:
            self.handler(frames)

    async def call_gate(self, func: str, timeout: float) -> Any:
        fut: asyncio.Future[Any] = self.loop.create_future()
        rid = os.urandom(16)

        def handler(frames: Frames) -> None:
            if frames[3] == rid and not fut.done():
                fut.set_result(unpackb(frames[4]))

        self.handler = handler
        self.sock.send_multipart([b"", MDPC, b"Gate", rid, packb(func), packb([]), packb({})])
        self.pump.kick()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.handler = None

    async def wait_service(self, deadline: float) -> None:
        while True:
            try:
                reply = await self.call_gate("get_services", 1.0)
                if SERVICE.decode() in reply["result"]:
                    return
            except asyncio.TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service not registered at the raw broker")
            await asyncio.sleep(0.05)

    async def run_calls(self, cfg: dict[str, Any], rec: Recorder, deadline: float) -> dict[str, Any]:
        n = int(cfg["n"])
        window = 1 if cfg["mode"] == "latency" else max(1, min(int(cfg["window"]), n))
        payload = "x" * int(cfg["payload"]) if cfg["payload"] else None
        perf = time.perf_counter
        sent_at = [0.0] * n
        samples = rec.samples
        send = self.sock.send_multipart
        func = packb("echo")
        kwargs = packb({})
        state: dict[str, Any] = {"next": 0, "sent_all": None}
        done: asyncio.Future[None] = self.loop.create_future()
        t_start = perf()

        def send_next() -> None:
            i = state["next"]
            if i >= n:
                return
            state["next"] = i + 1
            args = packb([WORD, i] if payload is None else [WORD, i, payload])
            sent_at[i] = perf()
            if i == n - 1:
                state["sent_all"] = sent_at[i] - t_start
            send([b"", MDPC, SERVICE, i.to_bytes(16, "big"), func, args, kwargs])

        def handler(frames: Frames) -> None:
            # ['', MDPC01, service, rid, body]
            i = int.from_bytes(frames[3], "big")
            if i >= n:
                return
            samples.append(perf() - sent_at[i])
            rec.done += 1
            reply = unpackb(frames[4])
            expected = [WORD, i] if payload is None else [WORD, i, payload]
            if reply.get("exception") is not None:
                rec.error(f"call {i}: {reply['exception']}")
            elif reply.get("result") != expected:
                rec.mismatch(i, reply.get("result"), expected)
            if rec.done >= n:
                if not done.done():
                    done.set_result(None)
            else:
                send_next()

        self.handler = handler
        for _ in range(window):
            send_next()
        self.pump.kick()
        try:
            await asyncio.wait_for(done, max(0.1, deadline - perf()))
        except asyncio.TimeoutError:
            rec.error(f"deadline reached after {rec.done} calls")
        self.handler = None
        total = perf() - t_start
        return {"calls": n, "window": window, "time_send_all": state["sent_all"], "time_total": total,
                "rate": rec.done / total if total > 0 else None}

    async def run_stream(self, cfg: dict[str, Any], rec: Recorder, deadline: float) -> dict[str, Any]:
        n = int(cfg["n"])
        payload = "x" * int(cfg["payload"]) if cfg["payload"] else None
        perf = time.perf_counter
        done: asyncio.Future[None] = self.loop.create_future()
        rid = os.urandom(16)
        state: dict[str, Any] = {"first": None, "next": 0}
        t_start = perf()

        def handler(frames: Frames) -> None:
            if frames[3] != rid:
                return
            if state["first"] is None:
                state["first"] = perf() - t_start
            if len(frames) >= 6 and frames[4] == STREAM_TAG:
                if frames[5] == STREAM_END:
                    if not done.done():
                        done.set_result(None)
                    return
                item = unpackb(frames[5])
                index = stream_index(item, payload)
                expected_index = state["next"]
                if index != expected_index:
                    rec.mismatch(rec.done, item, expected_index if payload is None else [expected_index, payload])
                state["next"] = (index if index is not None else expected_index) + 1
                rec.done += 1
            else:
                rec.error(f"unexpected reply frames {frames[4:]!r:.200}")

        self.handler = handler
        args = [n] if payload is None else [n, payload]
        self.sock.send_multipart([b"", MDPC, SERVICE, rid, packb("gen"), packb(args), packb({})])
        self.pump.kick()
        try:
            await asyncio.wait_for(done, max(0.1, deadline - perf()))
        except asyncio.TimeoutError:
            rec.error(f"deadline reached after {rec.done} items")
        self.handler = None
        if rec.done != n:
            rec.error(f"stream ended after {rec.done} of {n} items")
        total = perf() - t_start
        return {"calls": n, "window": 1, "time_first_item": state["first"], "time_send_all": None,
                "time_total": total, "rate": rec.done / total if total > 0 else None}


class SyncEchoClient:
    """Synchronous client: a blocking send, then a blocking receive of the reply, one call at a time.

    Alone in its process (layout 3proc/2proc) it receives with a plain blocking
    ``recv_multipart`` (the socket's RCVTIMEO is the run's deadline); sharing
    the process with the broker and worker (layout inproc) it waits in the
    process's :class:`SyncLoop`, which serves them meanwhile.  Same frames and
    the same msgpack work per call as :class:`EchoClient`."""

    def __init__(self, ctx: zmq.Context[Any], loop: SyncLoop, front: str) -> None:
        self.sock = make_socket(ctx, zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, os.urandom(16))
        self.sock.connect(front)
        self.loop = loop
        self.shared = bool(loop.handlers)
        self.inbox: deque[Frames] = deque()
        self.timeout_ms = 1000
        if self.shared:
            loop.add(self.sock, self.inbox.append)

    def set_timeout(self, seconds: float) -> None:
        """How long one receive may block before it raises ``zmq.Again``."""
        self.timeout_ms = max(100, int(seconds * 1000))
        self.sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)

    def recv(self) -> Frames:
        """The next message for this client (blocking); ``zmq.Again`` after the timeout."""
        if not self.shared:
            frames: Frames = self.sock.recv_multipart()
            return frames
        inbox = self.inbox
        while not inbox:
            if not self.loop.run_once(self.timeout_ms):
                raise zmq.Again()
        return inbox.popleft()

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass (serving the other sockets of the process meanwhile)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.loop.run_once(max(1, int(left * 1000)))
        self.inbox.clear()

    def call_gate(self, func: str, timeout: float) -> Any:
        """The broker's reply to ``Gate.func()``, or None after ``timeout``."""
        rid = os.urandom(16)
        self.set_timeout(timeout)
        self.sock.send_multipart([b"", MDPC, b"Gate", rid, packb(func), packb([]), packb({})])
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                frames = self.recv()
                if len(frames) >= 5 and frames[3] == rid:
                    return unpackb(frames[4])
        except zmq.Again:
            pass
        return None

    def wait_service(self, deadline: float) -> None:
        while True:
            reply = self.call_gate("get_services", 1.0)
            if reply is not None and SERVICE.decode() in reply["result"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("service not registered at the raw broker")
            self.idle(0.05)

    def run_calls(self, cfg: dict[str, Any], rec: Recorder, deadline: float) -> dict[str, Any]:
        n = int(cfg["n"])
        window = 1 if cfg["mode"] == "latency" else max(1, min(int(cfg["window"]), n))
        payload = "x" * int(cfg["payload"]) if cfg["payload"] else None
        perf = time.perf_counter
        sent_at = [0.0] * n
        samples = rec.samples
        send = self.sock.send_multipart
        recv = self.recv
        func = packb("echo")
        kwargs = packb({})
        tick = 0.2 if cfg.get("progress") else None
        self.set_timeout(deadline - perf())
        sent = 0
        sent_all = None
        t_start = perf()
        next_tick = t_start + tick if tick else float("inf")
        try:
            while sent < window:
                args = packb([WORD, sent] if payload is None else [WORD, sent, payload])
                sent_at[sent] = perf()
                send([b"", MDPC, SERVICE, sent.to_bytes(16, "big"), func, args, kwargs])
                sent += 1
            while rec.done < n:
                frames = recv()
                # ['', MDPC01, service, rid, body]
                i = int.from_bytes(frames[3], "big")
                if i >= n:
                    continue
                now = perf()
                samples.append(now - sent_at[i])
                rec.done += 1
                reply = unpackb(frames[4])
                expected = [WORD, i] if payload is None else [WORD, i, payload]
                if reply.get("exception") is not None:
                    rec.error(f"call {i}: {reply['exception']}")
                elif reply.get("result") != expected:
                    rec.mismatch(i, reply.get("result"), expected)
                if sent < n:
                    args = packb([WORD, sent] if payload is None else [WORD, sent, payload])
                    sent_at[sent] = now = perf()
                    send([b"", MDPC, SERVICE, sent.to_bytes(16, "big"), func, args, kwargs])
                    sent += 1
                    if sent == n:
                        sent_all = now - t_start
                if now >= next_tick:
                    next_tick = now + (tick or 0.0)
                    emit({"progress": rec.done, "of": n})
        except zmq.Again:
            rec.error(f"deadline reached after {rec.done} calls")
        if sent_all is None and sent == n:
            sent_all = sent_at[n - 1] - t_start
        total = perf() - t_start
        return {"calls": n, "window": window, "time_send_all": sent_all, "time_total": total,
                "rate": rec.done / total if total > 0 else None}

    def run_stream(self, cfg: dict[str, Any], rec: Recorder, deadline: float) -> dict[str, Any]:
        n = int(cfg["n"])
        payload = "x" * int(cfg["payload"]) if cfg["payload"] else None
        perf = time.perf_counter
        rid = os.urandom(16)
        first = None
        expected_index = 0
        self.set_timeout(deadline - perf())
        t_start = perf()
        args = [n] if payload is None else [n, payload]
        self.sock.send_multipart([b"", MDPC, SERVICE, rid, packb("gen"), packb(args), packb({})])
        try:
            while True:
                frames = self.recv()
                if frames[3] != rid:
                    continue
                if first is None:
                    first = perf() - t_start
                if len(frames) >= 6 and frames[4] == STREAM_TAG:
                    if frames[5] == STREAM_END:
                        break
                    item = unpackb(frames[5])
                    index = stream_index(item, payload)
                    if index != expected_index:
                        rec.mismatch(rec.done, item, expected_index if payload is None else [expected_index, payload])
                    expected_index = (index if index is not None else expected_index) + 1
                    rec.done += 1
                else:
                    rec.error(f"unexpected reply frames {frames[4:]!r:.200}")
        except zmq.Again:
            rec.error(f"deadline reached after {rec.done} items")
        if rec.done != n:
            rec.error(f"stream ended after {rec.done} of {n} items")
        total = perf() - t_start
        return {"calls": n, "window": 1, "time_first_item": first, "time_send_all": None,
                "time_total": total, "rate": rec.done / total if total > 0 else None}


def stream_index(item: Any, payload: Optional[str]) -> Optional[int]:
    """The index carried by a stream item (``i`` or ``[i, payload]``), or None if malformed."""
    if payload is None:
        return item if isinstance(item, int) and not isinstance(item, bool) else None
    if isinstance(item, (list, tuple)) and len(item) == 2 and item[1] == payload and isinstance(item[0], int):
        return item[0]
    return None


class Recorder:
    def __init__(self) -> None:
        self.errors = 0
        self.mismatches = 0
        self.done = 0
        self.samples: list[float] = []
        self.first_errors: list[str] = []

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(text)

    def mismatch(self, i: int, got: Any, expected: Any) -> None:
        self.mismatches += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"call {i}: got {got!r:.200} expected {expected!r:.200}")


def percentile(sorted_values: list[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


async def progress_task(rec: Recorder, n: int) -> None:
    while True:
        await asyncio.sleep(0.2)
        emit({"progress": rec.done, "of": n})


async def client_phase(cfg: dict[str, Any], ctx: zmq.Context[Any], pump: Pump,
                       loop: asyncio.AbstractEventLoop) -> Optional[dict[str, Any]]:
    deadline = time.monotonic() + float(cfg["timeout"])
    cli = EchoClient(ctx, pump, cfg["front"])
    await cli.wait_service(deadline)
    if cfg.get("settle"):
        await asyncio.sleep(float(cfg["settle"]))
    emit({"ready": "client", "impl": "raw", "version": zmq.__version__})
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return None
    rec = Recorder()
    ticker = loop.create_task(progress_task(rec, int(cfg["n"]))) if cfg.get("progress") else None
    ru0 = rusage()
    run_deadline = time.perf_counter() + float(cfg["timeout"])
    if cfg["mode"] == "stream":
        result = await cli.run_stream(cfg, rec, run_deadline)
    else:
        result = await cli.run_calls(cfg, rec, run_deadline)
    ru1 = rusage()
    if ticker is not None:
        ticker.cancel()
    emit({"result": summarize(result, rec, ru0, ru1)})
    return result


def summarize(result: dict[str, Any], rec: Recorder, ru0: dict[str, float], ru1: dict[str, float]) -> dict[str, Any]:
    """``result`` of a client run plus its counts, latency percentiles and CPU seconds."""
    samples = sorted(rec.samples)
    result.update(
        completed=rec.done, errors=rec.errors, mismatches=rec.mismatches, first_errors=rec.first_errors,
        latency_p50=percentile(samples, 0.50), latency_p99=percentile(samples, 0.99),
        latency_p999=percentile(samples, 0.999), latency_max=samples[-1] if samples else None,
        latency_mean=(sum(samples) / len(samples)) if samples else None,
        client_cpu=(ru1["utime"] + ru1["stime"]) - (ru0["utime"] + ru0["stime"]),
    )
    return result


async def main(role: str, cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    ctx: zmq.Context[Any] = zmq.Context()
    pump = Pump(loop)
    try:
        if role in ("broker", "server", "all"):
            Broker(ctx, pump, cfg["front"], cfg["back"])
        if role in ("worker", "server", "all"):
            for _ in range(int(cfg["workers"]) if role != "worker" else 1):
                EchoWorker(ctx, pump, cfg["back"], cfg.get("inject_mismatch"))
        info = {"impl": "raw", "version": zmq.__version__,
                "loop": type(loop).__module__ + "." + type(loop).__name__, "pid": os.getpid()}
        if role in ("client", "all"):
            emit(dict(info, starting=role))
            client = loop.create_task(client_phase(cfg, ctx, pump, loop))
            waiting: set[asyncio.Future[Any]] = {client, stop}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if client.done():
                client.result()
                await asyncio.wait({stop}, timeout=float(cfg["timeout"]))
            else:
                client.cancel()
        else:
            emit(dict(info, ready=role))
            await stop
    finally:
        pump.remove_all()
        ctx.destroy(linger=0)
        emit({"exit": role, "rusage": rusage()})


class _Stop(Exception):
    """SIGTERM or SIGINT in a synchronous role: leave the blocking call, clean up, exit."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def sync_client_phase(cfg: dict[str, Any], ctx: zmq.Context[Any], loop: SyncLoop) -> Optional[dict[str, Any]]:
    deadline = time.monotonic() + float(cfg["timeout"])
    cli = SyncEchoClient(ctx, loop, cfg["front"])
    cli.wait_service(deadline)
    if cfg.get("settle"):
        cli.idle(float(cfg["settle"]))
    emit({"ready": "client", "impl": "raw-sync", "version": zmq.__version__})
    if sys.stdin.readline().strip() != "go":
        return None
    rec = Recorder()
    ru0 = rusage()
    run_deadline = time.perf_counter() + float(cfg["timeout"])
    if cfg["mode"] == "stream":
        result = cli.run_stream(cfg, rec, run_deadline)
    else:
        result = cli.run_calls(cfg, rec, run_deadline)
    ru1 = rusage()
    emit({"result": summarize(result, rec, ru0, ru1)})
    return result


def sync_main(role: str, cfg: dict[str, Any]) -> None:
    """The raw synchronous row (``raw-sync``): every role a plain blocking pyzmq loop, no event loop."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stop)
    ctx: zmq.Context[Any] = zmq.Context()
    loop = SyncLoop()
    try:
        if role in ("broker", "server", "all"):
            Broker(ctx, loop, cfg["front"], cfg["back"])
        if role in ("worker", "server", "all"):
            for _ in range(int(cfg["workers"]) if role != "worker" else 1):
                EchoWorker(ctx, loop, cfg["back"], cfg.get("inject_mismatch"))
        info = {"impl": "raw-sync", "version": zmq.__version__, "loop": "sync (zmq.Poller)", "pid": os.getpid()}
        if role in ("client", "all"):
            emit(dict(info, starting=role))
            sync_client_phase(cfg, ctx, loop)
        else:
            emit(dict(info, ready=role))
        while True:  # serve until SIGTERM
            loop.run_once(200)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ctx.destroy(linger=0)
        emit({"exit": role, "rusage": rusage()})


def run(argv: list[str]) -> None:
    role, cfg = argv[0], json.loads(argv[1])
    if cfg.get("sync"):
        sync_main(role, cfg)
        return
    if cfg.get("uvloop"):
        try:
            import uvloop
        except ImportError:
            # Never run on another loop than asked: ratios compare like with like.
            raise SystemExit("uvloop was asked for but is not installed in this environment")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(role, cfg))


if __name__ == "__main__":
    run(sys.argv[1:])
