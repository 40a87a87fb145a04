"""Errors a person understands: bad addresses, oversized values, unpackable types."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.helpers import check_socket_addr
from gaterpc.serialization import MsgPackError, MsgUnpackError, msg_pack, msg_unpack
from gaterpc.utils import interface

FORMS = ("tcp://HOST:PORT", "ipc://PATH", "inproc://NAME")
BIG = 33 * 1024 * 1024  # over the 32 MiB default limit of msgpack str/bin


@pytest.mark.parametrize("addr", ["localhost:5555", "127.0.0.1:5555", "/tmp/sock", "", "tcp://"])
def test_address_without_scheme_is_a_valueerror_showing_the_forms(addr):
    with pytest.raises(ValueError) as info:
        check_socket_addr(addr)
    for form in FORMS:
        assert form in str(info.value)
    # code written for the original (which raised SystemError) still catches it
    assert isinstance(info.value, SystemError)


def test_roles_reject_an_address_without_scheme_clearly(sync_loop):
    ctx = Context()
    try:
        broker = AMajordomo(context=ctx)
        with pytest.raises(ValueError, match="tcp://HOST:PORT"):
            broker.bind_frontend("127.0.0.1:5555")
        with pytest.raises(ValueError, match="ipc://PATH"):
            Service(name="X").create_worker(Worker, "localhost:5556", context=ctx)
        broker.stop()
    finally:
        ctx.destroy(linger=0)


async def test_client_connect_rejects_an_address_without_scheme():
    client = Client("localhost:5555")
    try:
        with pytest.raises(ValueError, match="inproc://NAME"):
            await client.connect()
    finally:
        client.close()
        client.ctx.destroy(linger=0)  # the context the client made itself: close() leaves it open


def test_unsupported_scheme_keeps_the_original_message():
    with pytest.raises(ValueError) as info:
        check_socket_addr("udp://1.2.3.4:5")
    assert str(info.value) == 'The protocol "udp" is not supported.'


def test_msgpackerror_names_the_type():
    class Point:
        def __str__(self):
            return "P" * 10_000

    with pytest.raises(MsgPackError) as info:
        msg_pack({"where": Point()})
    text = str(info.value)
    assert "'Point'" in text and "pack failed" in text
    assert len(text) < 1000  # the object's text is cut short
    with pytest.raises(MsgPackError, match="'set'"):
        msg_pack([1, {2, 3}])


def test_oversized_value_names_the_limit_and_hugedata_without_payload():
    data = msg_pack(b"\xab" * BIG)
    with pytest.raises(MsgUnpackError) as info:
        msg_unpack(data)
    text = str(info.value)
    assert "max_bin_len" in text and "33554432" in text and "32 MiB" in text and "HugeData" in text
    assert "\\xab" not in text and len(text) < 600
    with pytest.raises(MsgUnpackError, match="max_str_len.*HugeData"):
        msg_unpack(msg_pack("a" * BIG))


def test_undecodable_bytes_show_a_short_preview_only():
    with pytest.raises(MsgUnpackError) as info:
        msg_unpack(b"\xc1" * 100_000)
    assert len(str(info.value)) < 1200 and "100000 bytes" in str(info.value)


class Big(Worker):
    @interface
    def size(self, blob):
        return len(blob)

    @interface
    def make(self, n):
        return b"z" * n

    @interface
    def a_set(self):
        return {1, 2}


@pytest.fixture
async def rpc():
    ctx = Context()
    name = uuid.uuid4().hex
    # generous heartbeats: moving 33 MiB through one loop on a loaded machine takes a while
    broker = AMajordomo(context=ctx, heartbeat=3000)
    broker.bind_frontend(f"inproc://{name}-f")
    broker.bind_backend(f"inproc://{name}-b")
    broker.run()
    worker = Service(name="Big").create_worker(Big, f"inproc://{name}-b", workers_heartbeat=3000, context=ctx)
    worker.run()
    client = Client(f"inproc://{name}-f", context=ctx, reply_timeout=30)
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if broker.services.get("Big") and broker.services["Big"].workers:
                break
        await client.connect()
        yield client
    finally:
        client.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


async def test_oversized_call_argument_is_refused_before_sending(rpc):
    assert await rpc.Big.size(b"x" * 1000) == 1000
    with pytest.raises(ValueError) as info:
        await rpc.Big.size(b"x" * BIG)
    text = str(info.value)
    assert "32 MiB" in text and "HugeData" in text
    assert "xxxxxxxx" not in text and len(text) < 2000
    assert await rpc.Big.size(b"x" * 10) == 10  # nothing was sent; the client still works


async def test_oversized_result_gives_a_clear_error(rpc):
    with pytest.raises(ValueError) as info:
        await rpc.Big.make(BIG)
    text = str(info.value)
    assert "max_bin_len" in text and "HugeData" in text
    assert "zzzzzzzz" not in text and len(text) < 2000
    assert await rpc.Big.make(3) == b"zzz"  # the client still works


async def test_unpackable_result_names_the_type(rpc):
    with pytest.raises(RemoteException) as info:
        await rpc.Big.a_set()
    assert info.value.remote_type == "MsgPackError"
    assert "'set'" in str(info.value)
