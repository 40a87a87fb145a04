"""The broker's liveness probe of clients, against both client implementations.

Once per heartbeat our broker sends each client with calls pending a reply
whose request id is empty (``[client, '', MDPC01, 'Gate', '', body]``): if
the client is gone the send fails and the broker forgets it.  A client that
is there must ignore the probe and still get its pending call's reply.  The
test process plays the broker with a raw ROUTER socket (in a thread), so
exactly these frames reach the client.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from gaterpc.protocol import KEEPALIVE_OK, ok_body
from gaterpc.serialization import msg_pack, msg_unpack

from .roles import common

MDPC = b"MDPC01"


class RawBroker(threading.Thread):
    def __init__(self, addr):
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(addr)
        self.stop = threading.Event()
        self.probes_sent = 0
        self.error = None

    def run(self):
        try:
            self._run()
        except Exception as exc:  # reported by the test
            self.error = exc

    def _run(self):
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            if not self.sock.poll(50):
                continue
            cid, empty, header, service, rid, *body = self.sock.recv_multipart()
            assert empty == b"" and header == MDPC
            func = msg_unpack(body[0])
            if service == b"Gate":
                value = ["Slow", "Gate"] if func == "get_services" else KEEPALIVE_OK
                self.sock.send_multipart([cid, b"", MDPC, service, rid, ok_body(msg_pack, value)])
                continue
            # a call to "Slow": probe the client a few times while the call is pending,
            # then answer it
            for _ in range(3):
                self.sock.send_multipart([cid, b"", MDPC, b"Gate", b"", msg_pack(KEEPALIVE_OK)])
                self.probes_sent += 1
                time.sleep(0.1)
            self.sock.send_multipart([cid, b"", MDPC, service, rid, ok_body(msg_pack, ["pong", func])])

    def close(self):
        self.stop.set()
        self.join(10)
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.mark.parametrize("impl", ["orig", "ours"])
def test_calls_survive_liveness_probe(impl, runner, tmp_path):
    addr = f"ipc://{tmp_path}/front"
    broker = RawBroker(addr)
    broker.start()
    try:
        proc = runner.start("client", impl, "--front", addr, "--serve", "--reply-timeout", "20")
        for i in range(2):  # the client keeps working after the probes
            results = proc.request([{"id": str(i), "service": "Slow", "method": "work",
                                     "args": common.encode([])}], timeout=30)
            assert results[0]["ok"], (results, proc.describe())
            assert common.decode(results[0]["value"]) == ["pong", "work"]
        assert broker.probes_sent == 6
        assert broker.error is None, broker.error
        assert proc.popen.poll() is None, proc.describe()
    finally:
        broker.close()
