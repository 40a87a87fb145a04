"""The broker's routing fast path: both twins of ``_speedups/route`` behave identically.

The same batches of frontend and backend messages (hand-written cases and
hypothesis-generated ones, fixed counts, derandomized) are fed to the pure
and the compiled twin, each with its own freshly built broker state (real
``Service`` and ``RemoteWorker`` records, a recording stand-in for the
broker's Python methods and for its sockets); what is sent, what is handed
to the broker's slow path, the drop counters and the records afterwards
(round robin, capacity, in-flight and partial maps, statistics, expiry) must
be equal.  One test drives the compiled twin's direct send against real
per-peer ``LoopSocket`` ROUTERs: a peer that vanished is reported through
``on_unreachable``, a peer with a backlog keeps its messages in order.

The compiled twin is imported directly, so this file runs under
``GATERPC_NO_EXTENSIONS=1`` too (skipped only in a pure build).
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections import deque
from pathlib import Path

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from gaterpc import counters
from gaterpc.bookkeeping import RemoteWorker
from gaterpc.protocol import (
    CREDIT_HEADER, DISCONNECT, HEARTBEAT, HUGE_END, HUGE_TAG, READY, REPLY, REQUEST, STREAM_END, STREAM_EXC, STREAM_TAG,
)
from gaterpc.worker import Service

SPEEDUPS = Path(__file__).resolve().parent.parent / "gaterpc" / "_speedups"
C_HDR = b"MDPC01"
W_HDR = b"MDPW01"
INTERNAL = b"gate.internal"
BROKER_ID = b"broker-self"
_PARITY = settings(max_examples=200, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def twins():
    py = importlib.import_module("gaterpc._speedups._route_py")
    try:
        c = importlib.import_module("gaterpc._speedups._route_c")
    except ImportError:
        if not list(SPEEDUPS.glob("_route_c.*.so")) and os.environ.get("GATERPC_NO_EXTENSIONS"):
            pytest.skip("pure build: no compiled twin to compare")
        raise
    return py, c


class Sock:
    """Records what the twin sends (a socket without per-peer mode: plain ``send``)."""

    def __init__(self, log):
        self.log = log

    def send(self, frames):
        self.log.append(("send", list(frames)))
        return True


class FakeBroker:
    """The attributes the twins read and the broker methods they hand messages to (recorded)."""

    def __init__(self, fail_on=None):
        self.log = []
        self.fail_on = fail_on
        self._mdp_client = C_HDR
        self._mdp_worker = W_HDR
        self._internal_b = INTERNAL
        self._special_ids = {BROKER_ID}
        self._lfront = Sock(self.log)
        self._lback = Sock(self.log)
        self.workers = {}
        self.services = {}
        self._services_b = {}

    def _record(self, *entry):
        if self.fail_on is not None and entry[0] == self.fail_on:
            raise RuntimeError("boom")
        self.log.append(entry)

    def _route_request(self, msg, service_b):
        self._record("route_request", list(msg), service_b)

    def _client_credit(self, msg):
        self._record("client_credit", list(msg))

    def _backend_command(self, worker_id, command, frames, now):
        self._record("command", worker_id, command, list(frames), now)

    def _unknown_worker(self, worker_id):
        self._record("unknown_worker", worker_id)

    def _on_reply(self, w, msg):
        self._record("on_reply", w.identity, list(msg))

    def _dispatch_waiting(self, svc):
        self._record("dispatch_waiting", svc.name, len(svc._waiting))
        svc._waiting.clear()

    def _count_error(self, msg=None, frontend=False):
        self.log.append(("count_error", list(msg) if msg is not None else None, frontend))


def build(spec, fail_on=None):
    """A broker with services ``spec = {name: [(worker id, capacity, ready), ...]}``."""
    b = FakeBroker(fail_on)
    for name, workers in spec.items():
        svc = Service(name, "d")
        svc._name_b = name.encode()
        b.services[name] = svc
        b._services_b[svc._name_b] = svc
        for wid, capacity, ready in workers:
            w = RemoteWorker(wid, 500, capacity, None, W_HDR, svc)
            b.workers[wid] = w
            svc.add_worker(w)
            w.ready = ready
    return b


def state(b):
    """Everything the twins may change, as comparable values."""
    out = {"log": b.log, "drops": counters.drops_snapshot()}
    for name, svc in sorted(b.services.items()):
        out[name] = (
            [w.identity for w in svc._ready], len(svc._waiting), svc.stat_requests, svc.stat_served,
            sorted(svc.workers),
        )
    for wid, w in sorted(b.workers.items()):
        out[wid] = (w.max_allowed_request, w._in_ready, dict(w._inflight), dict(w._partial), w.expiry, w.ready)
    return out


def run_both(twins, spec, script, fail_on=None, prepare=None):
    """Run ``script(mod, broker)`` on a fresh broker per twin; return both states."""
    results = []
    for mod in twins:
        counters.reset_drops()
        b = build(spec, fail_on)
        if prepare is not None:
            prepare(b)
        script(mod, b)
        results.append(state(b))
    counters.reset_drops()
    return results


SPEC = {"echo": [(b"w1", 2, True), (b"w2", 1, True), (b"w3", 3, False)], "idle": [], "one": [(b"w4", 1, True)]}


def req(client, service, rid, *body):
    return [client, b"", C_HDR, service, rid, *body]


def rep(worker, client, rid, *body):
    return [worker, b"", W_HDR, REPLY, client, b"", rid, *body]


def test_requests_are_routed_round_robin_and_the_rest_goes_to_the_broker(twins):
    batch = [
        req(b"c1", b"echo", b"r1", b"f", b"a"),
        req(b"c1", b"echo", b"r2", b"f"),
        req(b"c2", b"echo", b"r3", b"f"),
        req(b"c2", b"echo", b"r4", b"f"),   # capacity 3 (w3 not ready): waits at the broker
        req(b"c3", b"idle", b"r5", b"f"),   # no worker
        req(b"c3", b"nope", b"r6", b"f"),   # unknown service
        req(b"c3", INTERNAL, b"r7", b"f"),  # the broker's own service
        req(b"c3", b"one", b"r8"),          # no function frame
        [b"c4", b"", C_HDR, b"echo"],       # malformed: dropped, counted
        [b"c4", b"x", C_HDR, b"echo", b"r9", b"f"],
        [b"c4", b"", b"MDPC02", b"echo", b"r9", b"f"],
        [b"c6", b"", CREDIT_HEADER, b"echo", b"r1", bytes(8)],  # a HugeData credit: to the broker
        [b"c6", b"", CREDIT_HEADER, b"echo", b"r1"],            # a frame short: malformed
        req(b"c5", b"one", b"r10", b"f"),
    ]
    py, c = run_both(twins, SPEC, lambda mod, b: mod.route_requests(b, [list(m) for m in batch]))
    assert py == c
    sends = [e[1] for e in py["log"] if e[0] == "send"]
    assert [s[0] for s in sends] == [b"w1", b"w2", b"w1", b"w4"]
    assert sends[0] == [b"w1", b"", W_HDR, REQUEST, b"c1", b"", b"r1", b"f", b"a"]
    assert [e[2] for e in py["log"] if e[0] == "route_request"] == [b"echo", b"idle", b"nope", INTERNAL, b"one"]
    assert py["drops"] == {"frontend_malformed": 4}
    assert [e[1] for e in py["log"] if e[0] == "client_credit"] == [[b"c6", b"", CREDIT_HEADER, b"echo", b"r1",
                                                                    bytes(8)]]
    assert py[b"w1"][:3] == (0, False, {b"r1": b"c1", b"r3": b"c2"})
    assert py["echo"][2] == 3  # stat_requests of the routed ones (the slow path counts the rest)


def test_replies_complete_requests_and_the_rest_goes_to_the_broker(twins):
    def prepare(b):
        w1 = b.workers[b"w1"]
        w1.max_allowed_request = 0
        w1._inflight.update({b"r1": b"c1", b"r2": BROKER_ID, b"r3": b"c3", b"r4": b"c4",
                             b"r5": b"c5", b"r6": b"c6", b"r7": b"c7", b"r8": b"c8"})
        w1._partial[b"r4"] = STREAM_TAG
        b.services["echo"]._waiting.append((b"c9", b"r9", [b"f"], 1e9))

    batch = [
        rep(b"w1", b"c1", b"r1", b"body"),                  # completes r1: capacity back, waiting dispatched
        rep(b"w1", BROKER_ID, b"r2", b"body"),              # a reply to the broker itself
        rep(b"w1", b"c3", b"r3", STREAM_TAG, b"item"),      # a stream item: r3 goes on
        rep(b"w1", b"c3", b"r3", STREAM_TAG, STREAM_END),   # its end completes r3
        rep(b"w1", b"cX", b"r4", b"body"),                  # not the requester: dropped
        rep(b"w1", b"c4", b"r4", b"body"),                  # completes r4 (its partial tag goes)
        rep(b"w1", b"c5", b"r5", HUGE_TAG, b"chunk"),       # a HugeData chunk: r5 goes on
        rep(b"w1", b"c6", b"r6", HUGE_TAG, b"chunk"),
        rep(b"w1", b"c6", b"r6", HUGE_TAG, HUGE_END),       # a HugeData end completes r6
        rep(b"w1", b"c7", b"r7", STREAM_TAG, STREAM_EXC, b"err"),  # a stream error completes r7
        rep(b"w1", b"c8", b"r8", b"other", b"x"),           # two frames of no known kind: they end r8
        rep(b"w1", b"c1", b"r1", b"body"),                  # already answered: dropped
        rep(b"w1", b"c3", b"r3", STREAM_TAG, b"late"),      # an item after the end: dropped
        rep(b"w9", b"c1", b"r1", b"body"),                  # unknown worker
        [b"w1", b"", W_HDR, REPLY, b"c1", b"", b"r1"],      # malformed
        [b"w1", b"", W_HDR, REPLY, b"c1", b"x", b"r1", b"b"],
        [b"w2", b"", W_HDR, HEARTBEAT],
        [b"w2", b"", W_HDR, READY, b"x"],
        [b"w2", b"", W_HDR, DISCONNECT, b""],
        [b"w2", b"", W_HDR],                                # too short: ignored
        [b"w2", b"x", W_HDR, HEARTBEAT],
        [b"w2", b"", C_HDR, HEARTBEAT],
    ]
    py, c = run_both(twins, SPEC, lambda mod, b: mod.route_replies(b, [list(m) for m in batch], 100.0),
                     prepare=prepare)
    assert py == c
    sends = [e[1] for e in py["log"] if e[0] == "send"]
    assert sends == [
        [b"c1", b"", C_HDR, b"echo", b"r1", b"body"],
        [b"c3", b"", C_HDR, b"echo", b"r3", STREAM_TAG, b"item"],
        [b"c3", b"", C_HDR, b"echo", b"r3", STREAM_TAG, STREAM_END],
        [b"c4", b"", C_HDR, b"echo", b"r4", b"body"],
        [b"c5", b"", C_HDR, b"echo", b"r5", HUGE_TAG, b"chunk"],
        [b"c6", b"", C_HDR, b"echo", b"r6", HUGE_TAG, b"chunk"],
        [b"c6", b"", C_HDR, b"echo", b"r6", HUGE_TAG, HUGE_END],
        [b"c7", b"", C_HDR, b"echo", b"r7", STREAM_TAG, STREAM_EXC, b"err"],
        [b"c8", b"", C_HDR, b"echo", b"r8", b"other", b"x"],
    ]
    kinds = [e[0] for e in py["log"]]
    assert kinds.count("on_reply") == 1 and kinds.count("command") == 3 and kinds.count("unknown_worker") == 1
    assert ("dispatch_waiting", "echo", 1) in py["log"]
    assert py["drops"] == {"reply_not_dispatched": 3, "malformed_reply": 2}
    # r1, r3, r4, r6, r7 and r8 completed; r5's transfer goes on; r2 is the broker's own
    assert py[b"w1"][:4] == (6, True, {b"r2": BROKER_ID, b"r5": b"c5"}, {b"r5": HUGE_TAG})
    assert py[b"w1"][4] == 100.0 + 500 * RemoteWorker(b"x", 500, 1, None, W_HDR, None).heartbeat_liveness / 1000
    assert py["echo"][3] == 6


def test_a_failing_broker_method_is_counted_and_the_batch_goes_on(twins):
    batch = [req(b"c1", b"idle", b"r1", b"f"), req(b"c2", b"echo", b"r2", b"f")]
    py, c = run_both(twins, SPEC, lambda mod, b: mod.route_requests(b, [list(m) for m in batch]),
                     fail_on="route_request")
    assert py == c
    assert [e[0] for e in py["log"]] == ["count_error", "send"]
    replies = [rep(b"w9", b"c1", b"r1", b"b"), [b"w1", b"", W_HDR, HEARTBEAT]]
    py, c = run_both(twins, SPEC, lambda mod, b: mod.route_replies(b, [list(m) for m in replies], 1.0),
                     fail_on="unknown_worker")
    assert py == c
    assert [e[0] for e in py["log"]] == ["count_error", "command"]


def test_messages_of_another_sequence_type_are_handled_alike(twins):
    """Tuples (not what the sockets give): the same outcome from both twins, message by message."""
    front = [tuple(req(b"c1", b"echo", b"r1", b"f")), tuple(req(b"c1", b"idle", b"r2", b"f")),
             req(b"c2", b"echo", b"r3", b"f")]
    back = [tuple(rep(b"w1", b"c1", b"r1", b"b")), tuple([b"w1", b"", W_HDR, HEARTBEAT])]

    def script(mod, b):
        mod.route_requests(b, [m if type(m) is tuple else list(m) for m in front])
        mod.route_replies(b, list(back), 2.0)

    py, c = run_both(twins, SPEC, script)
    assert py == c
    assert [e[0] for e in py["log"]] == ["count_error", "route_request", "send", "count_error", "command"]


def test_take_and_give_back_match_the_service_methods(twins):
    """The twins' ``take``/``give_back`` and ``ServiceCapacity._take``/``_give_back`` agree step for step."""
    ops = [("take", None)] * 4 + [("back", b"w1"), ("take", None), ("back", b"w2"), ("back", b"w2"),
                                  ("take", None), ("take", None), ("take", None)]
    outs = []
    for impl in ("method",) + twins:
        b = build(SPEC)
        svc = b.services["echo"]
        seen = []
        for op, wid in ops:
            if op == "take":
                w = svc._take() if impl == "method" else impl.take(svc)
                seen.append(None if w is None else w.identity)
            else:
                w = b.workers[wid]
                svc._give_back(w) if impl == "method" else impl.give_back(svc, w)
            seen.append(([w.identity for w in svc._ready],
                         [b.workers[k].max_allowed_request for k in (b"w1", b"w2", b"w3")]))
        outs.append(seen)
    assert outs[0] == outs[1] == outs[2]


_ids = st.sampled_from([b"c1", b"c2", BROKER_ID, b"w1", b"w2", b"w3", b"w4", b"w9"])
_rids = st.sampled_from([b"r1", b"r2", b"r3"])
_services = st.sampled_from([b"echo", b"idle", b"one", b"nope", INTERNAL])
_frames = st.one_of(st.sampled_from([b"", b"f", STREAM_TAG, STREAM_END, C_HDR, W_HDR]), st.binary(max_size=3))
_front_msg = st.one_of(
    st.builds(lambda c, s, r, body: req(c, s, r, *body), _ids, _services, _rids, st.lists(_frames, max_size=3)),
    st.lists(_frames, max_size=7),
)
_back_msg = st.one_of(
    st.builds(lambda w, c, r, body: rep(w, c, r, *body), _ids, _ids, _rids, st.lists(_frames, max_size=3)),
    st.builds(lambda w, cmd, rest: [w, b"", W_HDR, cmd, *rest], _ids,
              st.sampled_from([READY, HEARTBEAT, DISCONNECT, REPLY, b"\x09"]), st.lists(_frames, max_size=4)),
    st.lists(_frames, max_size=9),
)


@_PARITY
@given(rounds=st.lists(st.tuples(st.lists(_front_msg, max_size=6), st.lists(_back_msg, max_size=6)),
                       min_size=1, max_size=4))
def test_generated_batches_agree(twins, rounds):
    """Alternate frontend and backend batches: requests routed then answered (or not)."""

    def script(mod, b):
        for i, (front, back) in enumerate(rounds):
            mod.route_requests(b, [list(m) for m in front])
            mod.route_replies(b, [list(m) for m in back], float(i))

    py, c = run_both(twins, SPEC, script)
    assert py == c


# -- the compiled twin's direct send, on real per-peer LoopSockets ------------------------------


def test_direct_send_keeps_loopsocket_semantics(twins, tmp_path):
    """Real ROUTERs: a peer gone is reported once per message, a peer's backlog keeps the order."""
    from gaterpc.loopio import LoopSocket

    async def scenario(mod):
        loop = asyncio.get_running_loop()
        ctx = zmq.Context()
        socks = []
        try:
            front = ctx.socket(zmq.ROUTER)
            socks.append(front)
            front.linger = 0
            front.sndhwm = 4
            front.bind(f"ipc://{tmp_path}/front-{mod.__name__}")
            client = ctx.socket(zmq.DEALER)
            socks.append(client)
            client.linger = 0
            client.rcvhwm = 4
            client.identity = b"c1"
            client.connect(f"ipc://{tmp_path}/front-{mod.__name__}")
            gone = []
            lfront = LoopSocket(loop, front, lambda msgs: None, per_peer=True, on_unreachable=gone.append)
            b = build({"echo": [(b"w1", 500, True)]})
            b._lfront = lfront
            w1 = b.workers[b"w1"]
            for i in range(300):
                w1._inflight[b"r%d" % i] = b"c1" if i < 200 else b"ghost"
            for _ in range(50):  # let the DEALER's connection be up
                await asyncio.sleep(0.01)
                try:
                    front.send_multipart([b"c1", b"", b"hello"], flags=zmq.NOBLOCK)
                    break
                except zmq.ZMQError:
                    continue
            assert client.poll(2000) and client.recv_multipart() == [b"", b"hello"]
            counters.reset_drops()
            batch = [rep(b"w1", b"c1" if i < 200 else b"ghost", b"r%d" % i, b"%d" % i) for i in range(300)]
            mod.route_replies(b, batch, 1.0)
            queued = lfront.peer_backlog(b"c1")[0]
            got = []
            deadline = loop.time() + 20
            while len(got) < 200 and loop.time() < deadline:
                while client.poll(0):
                    got.append(client.recv_multipart())
                await asyncio.sleep(0.005)
            drops = counters.drops_snapshot()
            lfront.close()
            return queued, got, gone, drops, w1.max_allowed_request
        finally:
            for s in socks:
                s.close(linger=0)
            ctx.term()

    results = [asyncio.run(asyncio.wait_for(scenario(mod), 60)) for mod in twins]
    for queued, got, gone, drops, capacity in results:
        assert queued > 0, "the client's HWM was met: some replies had to wait in its backlog"
        assert [m[3] for m in got] == [b"r%d" % i for i in range(200)], "every reply, in order"
        assert got[0] == [b"", C_HDR, b"echo", b"r0", b"0"]
        assert gone == [b"ghost"] * 100 and drops.get("peer_unreachable") == 100
        assert capacity == 800
    assert results[0][1:] == results[1][1:]
