"""Wire tap: a transparent relay that records every message it forwards.

Usage: ``python tap.py --listen ADDR --upstream ADDR --log FILE``

Peers (clients or workers, DEALER sockets) connect to ``--listen``; for each
peer routing id the tap opens its own DEALER with the *same* identity to
``--upstream`` (a broker ROUTER), so the broker sees the peer's real routing
id.  Every message is appended to ``--log`` as one JSON line:
``{"t": seconds, "dir": "up"|"down", "peer": hex id, "frames": [...]}``
with each frame as text when it is printable ASCII, else ``"0x<hex>"``.

Pure pyzmq (no gaterpc import); used for diagnosing interop failures
(``GATERPC_INTEROP_TAP=1``).  Exits on SIGTERM.
"""

import argparse
import json
import signal
import time

import zmq


def show(frame: bytes) -> str:
    if frame and all(32 <= b < 127 for b in frame):
        return frame.decode("ascii")
    return "0x" + frame.hex()


def main(args):
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    front.linger = 0
    front.bind(args.listen)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    uplinks, peer_of = {}, {}
    t0 = time.monotonic()
    with open(args.log, "a", buffering=1) as log:
        def record(direction, peer, frames):
            log.write(json.dumps({"t": round(time.monotonic() - t0, 6), "dir": direction,
                                  "peer": peer.hex(), "frames": [show(f) for f in frames]}) + "\n")

        print(json.dumps({"ready": "tap", "impl": "tap", "listen": args.listen}), flush=True)
        while running[0]:
            for sock, _ in poller.poll(200):
                if sock is front:
                    peer, *frames = front.recv_multipart()
                    up = uplinks.get(peer)
                    if up is None:
                        up = uplinks[peer] = ctx.socket(zmq.DEALER)
                        up.linger = 0
                        up.identity = peer
                        up.connect(args.upstream)
                        peer_of[up] = peer
                        poller.register(up, zmq.POLLIN)
                    record("up", peer, frames)
                    up.send_multipart(frames)
                else:
                    frames = sock.recv_multipart()
                    record("down", peer_of[sock], frames)
                    front.send_multipart([peer_of[sock], *frames])
    for s in [front, *uplinks]:
        s.close(0)
    ctx.term()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--base-path")   # accepted for uniformity with the other roles
    main(parser.parse_args())
