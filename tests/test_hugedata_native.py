"""HugeData chunk size for clients of this implementation (``Settings.HUGE_DATA_NATIVE_SIZEOF``).

A HugeData whose ``blksize`` was left at its default goes to one of our
clients in chunks of ``HUGE_DATA_NATIVE_SIZEOF`` bytes, recognised by the mark
in its request ids (``gaterpc.protocol.own_request_id``); every other caller
(the original's clients send UUID4 ids) and every explicit ``blksize`` get
``blksize``-byte chunks, as before.  Real broker, worker and client in one
process; the raw client speaks the wire itself.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import uuid

import pytest
import zmq

import gaterpc.hugereceive as receive_mod
from gaterpc.core import Worker
from gaterpc.global_settings import Settings
from gaterpc.hugedata import HugeData
from gaterpc.protocol import HUGE_END, HUGE_TAG, OWN_RID_MARK, own_request_id
from gaterpc.serialization import msg_pack, msg_unpack
from gaterpc.utils import interface
from local_cluster import local_cluster

N = 600_000  # about 600 KB compressed (random bytes): many 1000-byte chunks, several 64 KiB ones


def payload(n: int) -> bytes:
    return random.Random(n).randbytes(n)


class Big(Worker):
    @interface
    async def blob(self, n, module, blksize=None, later=None):
        sized = {} if blksize is None else {"blksize": blksize}
        hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, compress_module=module,
                      data=msg_pack(payload(n)), **sized)
        if later is not None:
            hd.blksize = later  # set after construction: chosen too
        return hd


@pytest.fixture
async def cluster(tmp_path):
    async with local_cluster(tmp_path, Big, "Big", reply_timeout=60) as c:
        yield c.ctx, c.front, c.client


@pytest.fixture
def fed(monkeypatch):
    """The size of every chunk our client's HugeData receivers are fed."""
    sizes: list[int] = []
    feed = receive_mod.HugeDataReceiver.feed

    def spy(self, chunk, *args, **kwargs):
        sizes.append(len(chunk))
        return feed(self, chunk, *args, **kwargs)

    monkeypatch.setattr(receive_mod.HugeDataReceiver, "feed", spy)
    return sizes


@pytest.mark.parametrize("module", ["gzip", "lz4"])
async def test_our_client_gets_large_chunks_when_blksize_is_the_default(cluster, fed, module):
    _, _, cli = cluster
    assert await cli.Big.blob(N, module) == payload(N)
    native = Settings.HUGE_DATA_NATIVE_SIZEOF
    data = [s for s in fed if s]
    assert max(data) == native  # cut at the native size, not at 1000
    assert len(data) <= N // native + 2  # a few large chunks instead of ~600 small ones


@pytest.mark.parametrize("module", ["gzip", "lz4"])
async def test_an_explicit_blksize_is_kept_for_our_client(cluster, fed, module):
    _, _, cli = cluster
    assert await cli.Big.blob(N, module, 1000) == payload(N)
    data = [s for s in fed if s]
    assert max(data) == 1000 and len(data) > N // 1000


async def test_a_blksize_set_after_construction_is_kept(cluster, fed):
    _, _, cli = cluster
    assert await cli.Big.blob(N, "lz4", None, 5000) == payload(N)
    assert max(fed) == 5000


async def test_native_size_zero_keeps_blksize_for_every_client(cluster, fed, monkeypatch):
    _, _, cli = cluster
    monkeypatch.setattr(Settings, "HUGE_DATA_NATIVE_SIZEOF", 0)
    assert await cli.Big.blob(N, "lz4") == payload(N)
    assert max(fed) == 1000


@pytest.mark.parametrize("bad, error", [("big", TypeError), (True, TypeError), (65536.0, TypeError),
                                        (-1, ValueError)])
def test_a_bad_native_size_is_refused_and_the_setting_kept(bad, error):
    before = Settings.HUGE_DATA_NATIVE_SIZEOF
    with pytest.raises(error, match="chunk size"):
        Settings.configure("HUGE_DATA_NATIVE_SIZEOF", bad)
    assert Settings.HUGE_DATA_NATIVE_SIZEOF == before == 64 * 1024
    Settings.configure("HUGE_DATA_NATIVE_SIZEOF", 1 << 20)
    assert Settings.HUGE_DATA_NATIVE_SIZEOF == 1 << 20


async def test_our_clients_ids_carry_the_mark(cluster):
    _, _, cli = cluster
    calls = [asyncio.ensure_future(cli.Big.blob(10, "gzip")) for _ in range(50)]
    await asyncio.sleep(0)  # sent, not answered yet
    ids = list(cli.replies)
    assert len(ids) == 50 and all(own_request_id(r) and r[8:10] == OWN_RID_MARK for r in ids)
    assert await asyncio.gather(*calls) == [payload(10)] * 50


def test_blksize_chosen_tells_a_passed_or_later_set_size_from_the_default():
    end, exc = Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG
    hd = HugeData(end, exc)
    assert hd.blksize == 1000 and not hd.blksize_chosen
    assert HugeData(end, exc, blksize=1000).blksize_chosen  # the same size, but passed
    hd.blksize = 5000
    assert hd.blksize_chosen


def test_the_originals_ids_never_carry_the_mark():
    # UUID4: byte 8 holds the variant bits (0x80-0xbf), never the mark's 0x00
    assert not any(own_request_id(uuid.uuid4().bytes) for _ in range(20_000))
    assert not own_request_id(uuid.uuid4().hex.encode())  # the original's tests use 32-char hex ids
    assert not own_request_id(bytes(8) + OWN_RID_MARK)  # too short
    assert not own_request_id(bytes(8) + OWN_RID_MARK + bytes(7))  # too long
    assert own_request_id(bytes(8) + OWN_RID_MARK + bytes(6))


async def raw_call(ctx, front: str, rid: bytes, args: list) -> list[bytes]:
    """One HugeData call from a bare DEALER (the wire as any client speaks it); the chunks received."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(front)
        await sock.send_multipart([b"", Settings.MDP_CLIENT, b"Big", rid, msg_pack("blob"), msg_pack(args),
                                   msg_pack({})])
        chunks: list[bytes] = []
        for _ in range(5000):  # bounded: ~600 chunks, an empty one and the end
            frames = await asyncio.wait_for(sock.recv_multipart(), 30)
            assert frames[3] == rid and frames[4] == HUGE_TAG, frames[:6]
            if frames[5] == HUGE_END:
                return chunks
            chunks.append(frames[5])
        raise AssertionError("no end of the transfer")
    finally:
        sock.close(linger=0)


async def test_the_wire_a_uuid4_caller_gets_blksize_chunks_a_marked_one_large(cluster):
    ctx, front, _ = cluster
    theirs = await raw_call(ctx, front, uuid.uuid4().bytes, [N, "gzip"])
    ours = await raw_call(ctx, front, random.randbytes(8) + OWN_RID_MARK + bytes(5) + b"\x01", [N, "gzip"])
    for chunks in (theirs, ours):
        assert chunks[-1] == b""  # the empty chunk the original always sends
        assert msg_unpack(gzip.decompress(b"".join(chunks))) == payload(N)
    assert max(map(len, theirs)) == 1000 and len(theirs) > N // 1000
    assert max(map(len, ours)) == Settings.HUGE_DATA_NATIVE_SIZEOF
