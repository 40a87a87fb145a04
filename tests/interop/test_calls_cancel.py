"""The CANCEL command (``06``, broker -> worker) against both worker implementations.

Our broker sends ``[worker, '', MDPW01, 06, client_id, '', request_id]`` when
the caller of a request vanished.  It sends it to every worker, so the
original 0.2.x worker must ignore an unknown command byte harmlessly and keep
serving; ours stops producing for that request.  The test process plays the
broker with a raw ROUTER socket, so exactly these frames reach the worker.
"""

from __future__ import annotations

import time

import pytest
import zmq

from gaterpc.serialization import msg_pack, msg_unpack

MDPW = b"MDPW01"
STREAM_TAG = b"GateStreamGenerator"
STREAM_END = b"GateStreamEnd"


class RawBroker:
    def __init__(self, addr):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(addr)
        self.worker = None
        self.replies = {}   # request id -> list of bodies

    def close(self):
        self.sock.close(linger=0)
        self.ctx.term()

    def pump(self, seconds, until=None):
        """Read for up to ``seconds`` (bounded); answer heartbeats; collect replies."""
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            if until is not None and until():
                return n
            if not self.sock.poll(50):
                continue
            for _ in range(10000):
                try:
                    msg = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                n += 1
                wid, empty, header, command, *rest = msg
                assert empty == b"" and header == MDPW, msg[:4]
                if command == b"\x01":
                    self.worker = wid
                elif command == b"\x04":
                    self.sock.send_multipart([wid, b"", MDPW, b"\x04"])
                elif command == b"\x03":
                    # [client, '', rid, *body] (a worker without ZAP adds no frames)
                    client, sep, rid, *body = rest
                    self.replies.setdefault(rid, []).append(body)
        return n

    def request(self, rid, func, *args):
        self.sock.send_multipart([self.worker, b"", MDPW, b"\x02", b"client-1", b"", rid,
                                  msg_pack(func), msg_pack(list(args)), msg_pack({})])

    def cancel(self, rid):
        self.sock.send_multipart([self.worker, b"", MDPW, b"\x06", b"client-1", b"", rid])


@pytest.mark.parametrize("impl", ["orig", "ours"])
def test_calls_survive_cancel_command(impl, runner, tmp_path):
    addr = f"ipc://{tmp_path}/back"
    broker = RawBroker(addr)
    try:
        proc = runner.start("worker", impl, "--back", addr, "--service", "CancelSvc")
        broker.pump(20, until=lambda: broker.worker is not None)
        assert broker.worker is not None, proc.describe()
        broker.sock.send_multipart([broker.worker, b"", MDPW, b"\x04"])
        # a long stream, then CANCEL for it (and a CANCEL for an unknown request)
        # (the original has no backpressure: a shorter stream keeps it responsive)
        n = 3000 if impl == "orig" else 10 ** 7
        broker.request(b"s1", "agen", n)
        broker.pump(10, until=lambda: len(broker.replies.get(b"s1", ())) >= 20)
        assert len(broker.replies.get(b"s1", ())) >= 20, proc.describe()
        broker.cancel(b"s1")
        broker.cancel(b"no-such-request")
        # the worker keeps serving after the unknown (orig) / known (ours) command
        broker.request(b"w1", "whoami")
        broker.pump(20, until=lambda: b"w1" in broker.replies)
        assert b"w1" in broker.replies, proc.describe()
        body = broker.replies[b"w1"][0]
        value = msg_unpack(body[0])
        assert value["result"]["impl"] == impl and value["exception"] is None, value
        assert proc.popen.poll() is None, proc.describe()
        if impl == "ours":
            # ours stopped the stream: no more items after a quiet period, no end frame
            broker.pump(1.0)
            before = len(broker.replies[b"s1"])
            broker.pump(1.0)
            assert len(broker.replies[b"s1"]) == before
            assert [STREAM_TAG, STREAM_END] not in broker.replies[b"s1"]
        else:
            # the original ignored CANCEL: its stream ran to its normal end
            broker.pump(30, until=lambda: [STREAM_TAG, STREAM_END] in broker.replies[b"s1"])
            assert len(broker.replies[b"s1"]) == n + 1
            assert broker.replies[b"s1"][-1] == [STREAM_TAG, STREAM_END]
        # and it still serves a second call
        broker.request(b"w2", "echo", 1, "x")
        broker.pump(20, until=lambda: b"w2" in broker.replies)
        assert b"w2" in broker.replies, proc.describe()
        assert msg_unpack(broker.replies[b"w2"][0][0])["exception"] is None
    finally:
        broker.close()
