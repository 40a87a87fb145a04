"""Hostile input: junk on every socket never crashes a role or loses real calls."""

from __future__ import annotations

import asyncio
import os

import pytest
import zmq
import zmq.asyncio

from gaterpc.core import Context, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.utils import interface, msg_pack
from local_cluster import local_cluster

JUNK = [
    [b""],
    [b"", b""],
    [b"", b"MDPC01"],
    [b"", b"MDPC01", b"Calc"],
    [b"", b"MDPC01", b"Calc", os.urandom(16)],
    [b"", b"MDPC01", b"Calc", os.urandom(16), b"\xc1"],                   # invalid msgpack
    [b"", b"MDPC01", b"Calc", os.urandom(16), b"\xa3ad"],                 # truncated msgpack
    [b"", b"MDPC01", b"Calc", os.urandom(16), msg_pack(1), b"\x90", b"\x80"],  # func not a str
    [b"", b"MDPC01", b"Calc", os.urandom(16), msg_pack("add"), msg_pack({}), b"\x80"],
    [b"", b"MDPC01", b"Calc", os.urandom(16), msg_pack("add"), b"\x90", msg_pack([1])],
    [b"", b"MDPC01", b"Calc", os.urandom(16), msg_pack("add"), b"\x90", msg_pack({1: 2})],
    [b"", b"MDPC01", b"Calc", os.urandom(16), msg_pack("add"), b"\x90", b"\x80", b"extra"],
    [b"", b"MDPC01", b"\xff\xfe", os.urandom(16), msg_pack("add")],      # non-UTF-8 service
    [b"", b"MDPC01", b"Gate", os.urandom(16), b"\xff"],
    [b"", b"MDPC01", b"Gate", os.urandom(16), msg_pack("get_services"), msg_pack("x")],
    [b"", b"MDPC01", b"Gate", os.urandom(16), msg_pack("keepalive")],    # missing argument
    [b"x", b"MDPC01", b"Calc", os.urandom(16), msg_pack("add")],
    [b"", b"MDPW01", b"\x02"],
    [b"", b"MDPC99", b"Calc", os.urandom(16), msg_pack("add")],
    [b"", b"MDPC01", b"Calc", os.urandom(16), msg_pack("add"), b"\xdd\xff\xff\xff\xff"],  # huge array header
    [b"", b"MDPC01", b"Calc", os.urandom(16), msg_pack("add"), b"\x92\x01", b"\x80"],        # truncated array
    [b"", b"MDPC01", b"Calc", os.urandom(16), msg_pack("x" * 100_000)],
    [os.urandom(40) for _ in range(20)],
]

BACKEND_JUNK = [
    [b""],
    [b"", b"MDPW01"],
    [b"", b"MDPW01", b"\x01"],                       # READY without body
    [b"", b"MDPW01", b"\x01", b"no-colons"],
    [b"", b"MDPW01", b"\x01", b"a:b:c:d"],
    [b"", b"MDPW01", b"\x01", b"Svc:desc:notanumber"],
    [b"", b"MDPW01", b"\x01", b"Svc:desc:-5"],
    [b"", b"MDPW01", b"\x01", b"\xff\xfe:\x00:1"],
    [b"", b"MDPW01", b"\x03", os.urandom(16), b"", os.urandom(16), b"body"],  # REPLY from unknown worker
    [b"", b"MDPW01", b"\x04", b"extra"],
    [b"", b"MDPW01", b"\x05"],
    [b"", b"MDPW01", b"\x09"],
    [b"", b"MDPW01", b"\x05", b"a", b"b"],
    [os.urandom(8)],
]

WORKER_JUNK = [
    [b""],
    [b"", b"MDPW01"],
    [b"", b"MDPW01", b"\x02"],
    [b"", b"MDPW01", b"\x02", b"client"],
    [b"", b"MDPW01", b"\x02", b"client", b"x", b"rid", msg_pack("add")],
    [b"", b"MDPW01", b"\x02", b"client", b"", b"rid", b"\xc1"],
    [b"", b"MDPW01", b"\x02", b"client", b"", b"rid", msg_pack("add"), b"\x90", b"\x80", b"x", b"y"],
    [b"", b"MDPW01", b"\x07"],
    [b"", b"MDPW01", b"\x03", b"x"],
    [b"junk"],
]


class Calc(Worker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    @interface
    async def add(self, a, b):
        self.calls += 1
        return a + b


@pytest.fixture
async def setup(tmp_path):
    async with local_cluster(tmp_path, Calc, "Calc") as c:
        raw_ctx = zmq.asyncio.Context()
        try:
            yield c.ctx, raw_ctx, c.broker, c.worker, c.client, c.front, c.back
        finally:
            raw_ctx.destroy(linger=0)


async def _replies(sock, timeout=0.5):
    out = []
    while await sock.poll(int(timeout * 1000)):
        out.append(await sock.recv_multipart())
    return out


async def test_frontend_junk(setup):
    ctx, raw_ctx, broker, worker, client, front, back = setup
    with raw_ctx.socket(zmq.DEALER) as junk:
        junk.linger = 0
        junk.connect(front)
        for _ in range(3):
            for msg in JUNK:
                await junk.send_multipart(msg)
        replies = await _replies(junk)
        # Requests that carry a request id get an error reply, never a result.
        for r in replies:
            assert r[0] == b"" and r[1] == b"MDPC01"
            assert b"exception" in r[-1] and b"\xa6result\xc0" in r[-1]
        assert await client.Calc.add(2, 3) == 5
        assert worker.calls == 1, "no junk request reached the worker's method"
        assert len(broker.services) == 1


async def test_backend_junk(setup):
    ctx, raw_ctx, broker, worker, client, front, back = setup
    with raw_ctx.socket(zmq.DEALER) as junk:
        junk.linger = 0
        junk.connect(back)
        for msg in BACKEND_JUNK:
            await junk.send_multipart(msg)
        await asyncio.sleep(0.2)
        assert list(broker.services) == ["Calc"], "malformed READY bodies register nothing"
        assert len(broker.workers) == 1
        results = await asyncio.gather(*(client.Calc.add(i, 1) for i in range(100)))
        assert results == [i + 1 for i in range(100)]


async def test_spoofed_reply_is_dropped(setup):
    ctx, raw_ctx, broker, worker, client, front, back = setup
    # A registered rogue worker answers a request id it was never given.
    with raw_ctx.socket(zmq.DEALER) as rogue:
        rogue.linger = 0
        rogue.connect(back)
        await rogue.send_multipart([b"", b"MDPW01", b"\x01", b"Other:rogue:10"])
        await asyncio.sleep(0.1)
        call = asyncio.ensure_future(client.Calc.add(20, 22))
        await asyncio.sleep(0)
        for rid in list(client.replies):
            await rogue.send_multipart([b"", b"MDPW01", b"\x03", client.identity, b"", rid,
                                        b"\x82\xa6result\xa5owned\xa9exception\xc0"])
        assert await call == 42


async def test_worker_junk(tmp_path):
    raw_ctx = zmq.asyncio.Context()
    broker = raw_ctx.socket(zmq.ROUTER)
    broker.linger = 0
    broker.bind(f"ipc://{tmp_path}/b")
    ctx = Context()
    worker = Service(name="Calc").create_worker(Calc, f"ipc://{tmp_path}/b", context=ctx)
    worker.run()
    try:
        ready = await asyncio.wait_for(broker.recv_multipart(), 3)
        wid = ready[0]
        for msg in WORKER_JUNK:
            await broker.send_multipart([wid, *msg])
        await broker.send_multipart([wid, b"", b"MDPW01", b"\x02", b"cli", b"", b"rid",
                                     msg_pack("add"), msg_pack([1, 2]), b"\x80"])
        got = []
        while await broker.poll(500):
            got.append(await broker.recv_multipart())
        results = [m for m in got if m[3] == b"\x03" and m[4] == b"cli"]
        assert len(results) == 1 and b"\xa6result\x03" in results[0][-1]
        # junk that names a client and request id is answered with an error
        errors = [m for m in got if m[3] == b"\x03" and m[4] == b"client"]
        assert errors and all(b"\xa6result\xc0" in m[-1] for m in errors)
        assert worker.calls == 1
        assert worker._recv_task is not None and not worker._recv_task.done()
    finally:
        worker.stop()
        await asyncio.sleep(0.05)
        raw_ctx.destroy(linger=0)
        ctx.destroy(linger=0)


async def test_client_ignores_junk_replies(setup):
    ctx, raw_ctx, broker, worker, client, front, back = setup
    # Forge replies from the broker's side: unknown ids, bad bodies.
    for body in ([b"\xc1"], [b"GateStreamGenerator"], [b"Unknown", b"x"], []):
        broker._lfront.send((client.identity, b"", b"MDPC01", b"Calc", os.urandom(16), *body))
    await asyncio.sleep(0.05)
    assert await client.Calc.add(1, 1) == 2


async def test_remote_error_for_malformed_reply_body(setup):
    ctx, raw_ctx, broker, worker, client, front, back = setup
    call = asyncio.ensure_future(client.Calc.add(1, 1))
    await asyncio.sleep(0)
    (rid,) = list(client.replies)
    broker._lfront.send((client.identity, b"", b"MDPC01", b"Calc", rid, b"\xc1"))
    with pytest.raises(ValueError):
        await call
    with pytest.raises(RemoteException):
        await client.Calc.add(1)
