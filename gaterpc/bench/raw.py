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

Same command line and stdout protocol as ``roles.py``::

    python -m gaterpc.bench.raw ROLE CONFIG_JSON

with ROLE in ``broker``, ``worker``, ``client``, ``server``, ``all``.
Imports only pyzmq and msgpack.
"""

import asyncio
import json
import os
import resource
import signal
import sys
import time

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

packb = msgpack.packb
unpackb = msgpack.unpackb


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def rusage():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kib": ru.ru_maxrss}


def make_socket(ctx, kind):
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


class Pump:
    """Drains every registered socket until all of them report EAGAIN."""

    def __init__(self, loop):
        self.loop = loop
        self.handlers = []  # (socket, handler(frames))

    def add(self, sock, handler):
        self.handlers.append((sock, handler))
        self.loop.add_reader(sock.FD, self.run)

    def remove_all(self):
        for sock, _ in self.handlers:
            try:
                self.loop.remove_reader(sock.FD)
            except (zmq.ZMQError, ValueError, OSError):
                pass
        self.handlers = []

    def run(self):
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

    def kick(self):
        self.loop.call_soon(self.run)


class Broker:
    def __init__(self, ctx, pump, front, back):
        self.front = make_socket(ctx, zmq.ROUTER)
        self.front.bind(front)
        self.back = make_socket(ctx, zmq.ROUTER)
        self.back.bind(back)
        self.workers = []
        self.services = []
        self.rr = 0
        pump.add(self.front, self.on_front)
        pump.add(self.back, self.on_back)

    def on_front(self, frames):
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

    def on_back(self, frames):
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
    def __init__(self, ctx, pump, back, corrupt=None):
        self.corrupt = corrupt  # test hook: reply with a wrong value for this call index
        self.sock = make_socket(ctx, zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, os.urandom(16))
        self.sock.connect(back)
        pump.add(self.sock, self.on_message)
        self.sock.send_multipart([b"", MDPW, READY, SERVICE + b":echo benchmark:5000"])
        pump.kick()

    def on_message(self, frames):
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

    def __init__(self, ctx, pump, front):
        self.sock = make_socket(ctx, zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, os.urandom(16))
        self.sock.connect(front)
        self.pump = pump
        self.loop = pump.loop
        self.handler = None
        pump.add(self.sock, self.on_message)

    def on_message(self, frames):
        if self.handler is not None and len(frames) >= 5:
            self.handler(frames)

    async def call_gate(self, func, timeout):
        fut = self.loop.create_future()
        rid = os.urandom(16)

        def handler(frames):
            if frames[3] == rid and not fut.done():
                fut.set_result(unpackb(frames[4]))

        self.handler = handler
        self.sock.send_multipart([b"", MDPC, b"Gate", rid, packb(func), packb([]), packb({})])
        self.pump.kick()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.handler = None

    async def wait_service(self, deadline):
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

    async def run_calls(self, cfg, rec, deadline):
        n = int(cfg["n"])
        window = 1 if cfg["mode"] == "latency" else max(1, min(int(cfg["window"]), n))
        payload = "x" * int(cfg["payload"]) if cfg["payload"] else None
        perf = time.perf_counter
        sent_at = [0.0] * n
        samples = rec.samples
        send = self.sock.send_multipart
        func = packb("echo")
        kwargs = packb({})
        state = {"next": 0, "sent_all": None}
        done = self.loop.create_future()
        t_start = perf()

        def send_next():
            i = state["next"]
            if i >= n:
                return
            state["next"] = i + 1
            args = packb([WORD, i] if payload is None else [WORD, i, payload])
            sent_at[i] = perf()
            if i == n - 1:
                state["sent_all"] = sent_at[i] - t_start
            send([b"", MDPC, SERVICE, i.to_bytes(16, "big"), func, args, kwargs])

        def handler(frames):
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

    async def run_stream(self, cfg, rec, deadline):
        n = int(cfg["n"])
        payload = "x" * int(cfg["payload"]) if cfg["payload"] else None
        perf = time.perf_counter
        done = self.loop.create_future()
        rid = os.urandom(16)
        state = {"first": None, "next": 0}
        t_start = perf()

        def handler(frames):
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


def stream_index(item, payload):
    """The index carried by a stream item (``i`` or ``[i, payload]``), or None if malformed."""
    if payload is None:
        return item if isinstance(item, int) and not isinstance(item, bool) else None
    if isinstance(item, (list, tuple)) and len(item) == 2 and item[1] == payload and isinstance(item[0], int):
        return item[0]
    return None


class Recorder:
    def __init__(self):
        self.errors = 0
        self.mismatches = 0
        self.done = 0
        self.samples = []
        self.first_errors = []

    def error(self, text):
        self.errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(text)

    def mismatch(self, i, got, expected):
        self.mismatches += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"call {i}: got {got!r:.200} expected {expected!r:.200}")


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


async def progress_task(rec, n):
    while True:
        await asyncio.sleep(0.2)
        emit({"progress": rec.done, "of": n})


async def client_phase(cfg, ctx, pump, loop):
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
    samples = sorted(rec.samples)
    result.update(
        completed=rec.done, errors=rec.errors, mismatches=rec.mismatches, first_errors=rec.first_errors,
        latency_p50=percentile(samples, 0.50), latency_p99=percentile(samples, 0.99),
        latency_p999=percentile(samples, 0.999), latency_max=samples[-1] if samples else None,
        latency_mean=(sum(samples) / len(samples)) if samples else None,
        client_cpu=(ru1["utime"] + ru1["stime"]) - (ru0["utime"] + ru0["stime"]),
    )
    emit({"result": result})
    return result


async def main(role, cfg):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    ctx = zmq.Context()
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
            await asyncio.wait({client, stop}, return_when=asyncio.FIRST_COMPLETED)
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


def run(argv):
    role, cfg = argv[0], json.loads(argv[1])
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
