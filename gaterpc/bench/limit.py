"""The "limit" row of the echo benchmark: the same three processes, no RPC work.

What is left when every role does nothing but move frames through libzmq:

* broker: ``zmq.proxy(ROUTER, DEALER)`` -- libzmq's own forwarding loop, in C:
  receive from a client, route to a worker (round robin), route the reply back
  by the client's routing id;
* worker: ``zmq.proxy(sock, sock)`` on its DEALER -- a reflector in C that
  sends every message straight back;
* client: a loop over the compiled batch I/O (``ZSocketIO``, one libzmq call
  per frame) that keeps ``window`` messages of the echo's size in flight and
  counts the replies.  Its only Python work per call is a counter and a
  send-time stamp (for the latency percentiles).

No msgpack, no request ids, no bookkeeping: what gaterpc reaches as a
percentage of this row is the share of the machine left to the RPC layer.

The "floor" row (``--vs-floor``; config key ``"floor": true``) is the same
client with the broker and the worker as Python loops over the same compiled
batch I/O: the broker drains up to 256 messages from one socket and sends
them on to the other (ROUTER -> DEALER, round robin, and back), the worker
sends every message it drains straight back.  Still no RPC work: the gap
between the limit and the floor is what the Python interpreter costs per
message, and the gap between the floor and gaterpc is what the RPC work
(msgpack, request ids, routing decisions, futures, the event loop) costs.

Both rows send short messages by default (delimiter, counter, body).  With
``--limit-frames protocol`` (config key ``"frames": "protocol"``) the client
sends the seven frames of a gaterpc echo request instead, and gets them back:
libzmq's cost per frame is then the protocol's, as in gaterpc's own rows.
``--limit-frames both`` runs each row both ways in one invocation, the
protocol's rows named ``limit:7f`` and ``floor:7f``.

Speaks the harness protocol of :mod:`gaterpc.bench.roles` (``ready`` / ``go``
/ ``result`` JSON lines).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Dict, List, Optional

import zmq

from gaterpc._speedups.zmqio import USE_C, ZSocketIO


def emit(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _socket(ctx: zmq.Context[Any], kind: int) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = ctx.socket(kind, socket_class=zmq.Socket)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def _info(role: str, impl: str = "limit") -> Dict[str, Any]:
    loop = "none (libzmq loops)" if impl == "limit" else "none (Python loops)"
    return {"ready": role, "impl": impl, "version": zmq.zmq_version(), "loop": loop,
            "pid": os.getpid(), "compiled_io": USE_C}


def _send_all(io: ZSocketIO, msgs: List[List[bytes]]) -> None:
    """Send every message of ``msgs`` in order, waiting for room if the socket would block."""
    sent = io.send_many(msgs)
    while sent < len(msgs):
        io.socket.poll(100, zmq.POLLOUT)
        sent += io.send_many(msgs[sent:])


def run_python_broker(ctx: zmq.Context[Any], cfg: Dict[str, Any]) -> None:
    """The floor's broker: a Python loop forwarding ROUTER -> DEALER (round robin) and back, in batches."""
    front = _socket(ctx, zmq.ROUTER)
    front.bind(cfg["front"])
    back = _socket(ctx, zmq.DEALER)
    back.bind(cfg["back"])
    fio, bio = ZSocketIO(front), ZSocketIO(back)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    emit(_info("broker", "floor"))
    while True:  # runs until the harness ends the process
        requests = fio.recv_batch(256)
        if requests:
            _send_all(bio, requests)
        replies = bio.recv_batch(256)
        if replies:
            _send_all(fio, replies)
        if not requests and not replies:
            poller.poll(1000)


def run_python_worker(ctx: zmq.Context[Any], cfg: Dict[str, Any]) -> None:
    """The floor's worker: a Python loop sending every message straight back, in batches."""
    sock = _socket(ctx, zmq.DEALER)
    sock.connect(cfg["back"])
    io = ZSocketIO(sock)
    emit(_info("worker", "floor"))
    while True:  # runs until the harness ends the process
        msgs = io.recv_batch(256)
        if msgs:
            _send_all(io, msgs)
        else:
            sock.poll(1000)


def _percentile(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


def run_client(ctx: zmq.Context[Any], cfg: Dict[str, Any]) -> None:
    n = int(cfg["n"])
    window = 1 if cfg["mode"] == "latency" else max(1, min(int(cfg["window"]), n))
    sock = _socket(ctx, zmq.DEALER)
    sock.connect(cfg["front"])
    io = ZSocketIO(sock)
    # Same sizes as the echo request/reply bodies (about 40 bytes of msgpack + a 16-byte id).
    body = b"\x92\xabhello world" + b"\x00" * (int(cfg.get("payload") or 0) + 3)
    # The counter travels in frame ``at``; "protocol" frames are those of a gaterpc echo
    # request (delimiter, header, service, 16-byte request id, function, args, kwargs).
    if cfg.get("frames") == "protocol":
        head, tail, at, pad = [b"", b"MDPC01", b"GateRPC"], [b"\xa4echo", body, b"\x80"], 3, bytes(12)
    else:
        head, tail, at, pad = [b""], [body], 1, b""
    width = len(head) + 1 + len(tail)
    # Wait until the path is up: one message through the whole chain.
    deadline = time.monotonic() + float(cfg["timeout"])
    while True:
        io.send([b"", b"ping"])
        if sock.poll(200):
            io.recv_batch(16)
            break
        if time.monotonic() > deadline:
            raise SystemExit("limit client: no echo from the broker/worker chain")
    emit(_info("client", "floor" if cfg.get("floor") else "limit"))
    if sys.stdin.readline().strip() != "go":
        return
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    sent_at = [0.0] * n
    samples: List[float] = []
    perf = time.perf_counter
    sent = done = 0
    t0 = perf()
    run_deadline = t0 + float(cfg["timeout"])
    time_send_all: Optional[float] = None
    while done < n:
        while sent < n and sent - done < window:
            sent_at[sent] = perf()
            if not io.send(head + [sent.to_bytes(4, "little") + pad] + tail):
                break
            sent += 1
        if sent == n and time_send_all is None:
            time_send_all = perf() - t0
        msgs = io.recv_batch(256)
        if not msgs:
            if perf() > run_deadline:
                break
            sock.poll(100)
            continue
        now = perf()
        for msg in msgs:
            if len(msg) == width:
                samples.append(now - sent_at[int.from_bytes(msg[at][:4], "little")])
                done += 1
    total = perf() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    samples.sort()
    emit({"result": {
        "window": window, "rate": done / total if total else None, "time_send_all": time_send_all,
        "time_total": total, "completed": done, "errors": 0 if done == n else 1, "mismatches": 0,
        "first_errors": [] if done == n else [f"only {done} of {n} echoes before the deadline"],
        "latency_p50": _percentile(samples, 0.5), "latency_p99": _percentile(samples, 0.99),
        "latency_p999": _percentile(samples, 0.999), "latency_max": samples[-1] if samples else None,
        "latency_mean": sum(samples) / len(samples) if samples else None,
        "client_cpu": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
    }})
    # Stay until the harness has read the CPU figures and ends us (bounded).
    sys.stdin.readline()


def main(argv: list[str]) -> None:
    role, cfg = argv[0], json.loads(argv[1])
    if cfg.get("mode") == "stream":
        raise SystemExit("the limit row has no stream mode")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        if role == "broker" and cfg.get("floor"):
            run_python_broker(ctx, cfg)
        elif role == "worker" and cfg.get("floor"):
            run_python_worker(ctx, cfg)
        elif role == "broker":
            front = _socket(ctx, zmq.ROUTER)
            front.bind(cfg["front"])
            back = _socket(ctx, zmq.DEALER)
            back.bind(cfg["back"])
            emit(_info("broker"))
            zmq.proxy(front, back)  # runs until the harness ends the process
        elif role == "worker":
            sock = _socket(ctx, zmq.DEALER)
            sock.connect(cfg["back"])
            emit(_info("worker"))
            zmq.proxy(sock, sock)
        elif role == "client":
            run_client(ctx, cfg)
        else:
            raise SystemExit(f"the limit row runs as three processes (no role {role!r})")
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    main(sys.argv[1:])
