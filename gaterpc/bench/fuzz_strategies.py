"""The fuzz harness's inputs: hypothesis strategies of junk and mutated messages per endpoint.

``strategies()`` builds them once (hypothesis is imported only when present:
it comes with the test extra) and returns them by name; a case draws one
``<endpoint>_batch``.  The wire constants the messages are made of live here
too.  The endpoints and the runner are in ``fuzz_endpoints.py`` and
``fuzz.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

try:
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis comes with the test extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

from gaterpc.serialization import msg_pack

MDPC = b"MDPC01"
MDPW = b"MDPW01"
GATE01 = b"GATE01"
STREAM_TAG = b"GateStreamGenerator"
STREAM_END = b"GateStreamEnd"
STREAM_EXC = b"GateStreamException"
HUGE_TAG = b"GateStreamHugData"
HUGE_END = b"HugeDataEND"
HUGE_EXC = b"HugeDataException"

PROBE_SERVICE = "FuzzProbe7f3a"      # the service of the real worker used by liveness probes
CLIENT_SERVICE = "FuzzRemote"        # the service the fuzzed client calls

#: msgpack headers declaring far more data than follows
HUGE_HEADERS = [
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xde\xff\xff", b"\xc5\xff\xff",
    b"\xc9\xff\xff\xff\xff\x01", b"\xdd\x00\x10\x00\x01", b"\x91" * 1000,
]
BAD_MSGPACK = [b"", b"\xc1", b"\xa3ab", b"\x92\x01", b"\x81\xa1a", b"\x90\x90", b"\xd4",
               b"\xc7\x01\x05", b"\xa2\xff\xfe", b"\xcb\x00", b"\x93" + b"\xc0" * 4]
INTERNAL_FUNCS = ["get_services", "query_service", "keepalive", "info", "echo", "get_interfaces",
                  "__init__", "_tick", "stop", "register_service", ""]


def _require_hypothesis() -> None:
    """Raise a clear error when hypothesis is not installed."""
    if not HAVE_HYPOTHESIS:  # pragma: no cover
        raise RuntimeError("the fuzz harness needs 'hypothesis' (pip install gaterpc[test])")


def _strategies() -> dict[str, SearchStrategy[Any]]:
    """Build the strategies once (hypothesis is imported lazily by users of this module)."""
    _require_hypothesis()
    s: dict[str, SearchStrategy[Any]] = {}
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64 - 1),
                     st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20))
    value = st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.binary(max_size=4)),
                        inner, max_size=4)), max_leaves=10)

    def packed(v: Any) -> bytes:
        try:
            return msg_pack(v)
        except Exception:
            return b"\xc0"

    mp_value = value.map(packed)
    frame = st.binary(max_size=48)
    mp_frame: SearchStrategy[bytes] = st.one_of(
        mp_value,
        st.sampled_from(BAD_MSGPACK),
        st.sampled_from(HUGE_HEADERS),
        mp_value.flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda n: b[:n])),  # truncated
        frame,
    )
    func_frame = st.one_of(st.sampled_from(INTERNAL_FUNCS).map(msg_pack), mp_frame)
    args_frame = st.one_of(
        st.lists(value, max_size=3).map(packed),
        st.just(msg_pack([b"heartbeat"])), st.just(msg_pack([PROBE_SERVICE])), mp_frame)
    kwargs_frame = st.one_of(
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers(), st.just("__client_id")),
                        value, max_size=3).map(packed),
        mp_frame)
    text_b = st.text(max_size=12).map(lambda t: t.encode("utf-8"))
    s["frame"] = frame
    s["mp_frame"] = mp_frame
    s["random_msg"] = st.lists(frame, min_size=0, max_size=12)
    rid = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=40))

    def mutate(template: SearchStrategy[list[bytes]]) -> SearchStrategy[list[bytes]]:
        """Apply 0-3 structural mutations to a list of frames."""
        ops = st.lists(st.tuples(st.sampled_from(["drop", "insert", "replace", "dup", "cut", "flip"]),
                                 st.integers(0, 15), frame), max_size=3)

        def apply(args: tuple[list[bytes], list[tuple[str, int, bytes]]]) -> list[bytes]:
            frames, todo = args
            frames = list(frames)
            for op, i, junk in todo:
                if op == "cut":
                    frames = frames[:i % (len(frames) + 1)]
                    continue
                if not frames:
                    frames.append(junk)
                    continue
                i %= len(frames)
                if op == "drop":
                    del frames[i]
                elif op == "insert":
                    frames.insert(i, junk)
                elif op == "replace":
                    frames[i] = junk
                elif op == "dup":
                    frames.insert(i, frames[i])
                elif op == "flip" and frames[i]:
                    b = bytearray(frames[i])
                    b[(len(junk) or 1) % len(b)] ^= 0xFF
                    frames[i] = bytes(b)
            return frames

        return st.tuples(template, ops).map(apply)

    # -- broker frontend: client requests
    service = st.one_of(st.sampled_from([b"Gate", PROBE_SERVICE.encode(), b"Nope", b"\xff\xfe", b""]),
                        text_b)
    header_c = st.sampled_from([MDPC, MDPC, MDPC, MDPW, b"MDPC99", b"", b"mdpc01"])
    body = st.lists(st.one_of(func_frame, args_frame, kwargs_frame), max_size=5)
    request = st.tuples(st.sampled_from([b"", b"", b"", b"x"]), header_c, service, rid,
                        func_frame, args_frame, kwargs_frame, st.integers(1, 4)).map(
        lambda t: [t[0], t[1], t[2], t[3], *list(t[4:7])[:t[7] - 1]])
    request2 = st.tuples(st.just(b""), header_c, service, rid, body).map(lambda t: [*t[:4], *t[4]])
    s["frontend"] = st.one_of(mutate(request), request2)

    # -- broker backend: worker commands
    capacity = st.one_of(st.integers(-10, 10**20).map(lambda n: str(n).encode()),
                         st.sampled_from([b"", b"x", b"1e3", b" 5", b"5\x00", "\u0663".encode(),
                                          b"0x10", b"+7", b"9" * 5000]))
    ready_name = st.one_of(st.sampled_from([b"FuzzSvc", b"", b"Gate", b"\xff\xfe", b"a b"]), text_b)
    ready_body = st.one_of(
        st.tuples(ready_name, st.one_of(text_b, st.binary(max_size=8)), capacity).map(lambda t: b":".join(t)),
        st.binary(max_size=30),
        st.lists(text_b, max_size=5).map(lambda p: b":".join(p)),
    )
    command = st.one_of(st.sampled_from([b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"]),
                        st.binary(max_size=2))
    header_w = st.sampled_from([MDPW, MDPW, MDPW, MDPC, b"MDPW99", b""])
    backend_ready = st.tuples(header_w, ready_body).map(lambda t: [b"", t[0], b"\x01", t[1]])
    backend_reply = st.tuples(header_w, rid, rid, st.lists(st.one_of(mp_frame, st.sampled_from(
        [STREAM_TAG, STREAM_END, HUGE_TAG, HUGE_END])), max_size=4)).map(
        lambda t: [b"", t[0], b"\x03", t[1], b"", t[2], *t[3]])
    backend_other = st.tuples(header_w, command, st.lists(frame, max_size=4)).map(
        lambda t: [b"", t[0], t[1], *t[2]])
    # a batch may begin by registering the fuzz socket as a worker so later commands count
    s["backend"] = st.one_of(mutate(backend_ready), mutate(backend_reply), backend_other,
                             st.just([b"", MDPW, b"\x01", b"FuzzSvc:fuzz:5"]))

    # -- worker: broker commands (a valid DISCONNECT is filtered out by the endpoint)
    worker_request = st.tuples(st.sampled_from([MDPW, MDPW, MDPC, b""]), rid, st.sampled_from([b"", b"", b"x"]),
                               rid, func_frame, args_frame, kwargs_frame, st.integers(0, 5)).map(
        lambda t: [b"", t[0], b"\x02", t[1], t[2], t[3], *list(t[4:7])[:t[7]]])
    worker_echo = st.tuples(rid, st.lists(st.one_of(args_frame, kwargs_frame), max_size=3)).map(
        lambda t: [b"", MDPW, b"\x02", b"cli", b"", t[0], msg_pack("echo"), *t[1]])
    worker_other = st.tuples(header_w, command, st.lists(frame, max_size=4)).map(
        lambda t: [b"", t[0], t[1], *t[2]])
    s["worker"] = st.one_of(mutate(worker_request), worker_echo, worker_other)

    # -- client: reply bodies (for the pending call or another id)
    singleton = st.one_of(
        st.tuples(value, value).map(lambda t: packed({"result": t[0], "exception": t[1]})),
        st.tuples(value, st.lists(value, min_size=3, max_size=3)).map(
            lambda t: packed({"result": t[0], "exception": t[1]})),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), value, max_size=3).map(packed),
        mp_frame)
    stream_body = st.one_of(
        mp_frame.map(lambda f: [STREAM_TAG, f]),
        st.just([STREAM_TAG, STREAM_END]),
        mp_frame.map(lambda f: [STREAM_TAG, STREAM_EXC, f]),
        st.lists(frame, max_size=3).map(lambda fs: [STREAM_TAG, *fs]),
    )
    gzip_head = st.sampled_from([b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff", b"\x1f\x8b", b"\x1f\x8b\x08\xff" + b"\x00" * 6,
                                 b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18", b"BZh9", b"\xfd7zXZ\x00"])
    huge_body = st.one_of(
        st.tuples(gzip_head, frame).map(lambda t: [HUGE_TAG, t[0] + t[1]]),
        frame.map(lambda f: [HUGE_TAG, f]),
        st.just([HUGE_TAG, HUGE_END]), st.just([HUGE_TAG, b""]),
        mp_frame.map(lambda f: [HUGE_TAG, STREAM_EXC, f]),
        mp_frame.map(lambda f: [HUGE_TAG, HUGE_EXC, f]),
        st.lists(frame, max_size=3).map(lambda fs: [HUGE_TAG, *fs]),
    )
    reply_body = st.one_of(singleton.map(lambda f: [f]), stream_body, huge_body,
                           st.lists(frame, max_size=4))
    # (own request id?, header, body) or a raw message
    s["client"] = st.one_of(
        st.tuples(st.sampled_from(["own", "own", "own", "other"]),
                  st.sampled_from([MDPC, MDPC, MDPC, MDPW, b""]), reply_body),
        s["random_msg"].map(lambda m: ("raw", None, m)))

    # -- gate socket: peer commands
    gcommand = st.one_of(st.sampled_from([b"\x00", b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"]),
                         st.binary(max_size=2))
    header_g = st.sampled_from([GATE01, GATE01, GATE01, b"GATE02", MDPW, b""])
    whisper = st.tuples(header_g, service, rid, st.lists(st.one_of(func_frame, args_frame, kwargs_frame,
                                                                   st.sampled_from([STREAM_TAG, HUGE_TAG])),
                                                         max_size=4)).map(
        lambda t: [b"", t[0], b"\x03", t[1], t[2], *t[3]])
    event = st.one_of(st.sampled_from([b"UpdateService", b"UpdateActiveService", b"Nope", b"\xff"]), text_b)
    notice = st.tuples(header_g, rid, event, st.lists(st.one_of(
        st.sampled_from([msg_pack(PROBE_SERVICE), msg_pack(CLIENT_SERVICE)]), mp_frame), max_size=3)).map(
        lambda t: [b"", t[0], b"\x00", t[1], t[2], *t[3]])
    join = st.tuples(header_g, st.one_of(
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers(), st.just(CLIENT_SERVICE)),
                        st.one_of(st.integers(-2**40, 2**40), value), max_size=3).map(packed),
        mp_frame)).map(lambda t: [b"", t[0], b"\x02", t[1]])
    gate_other = st.tuples(header_g, gcommand, st.lists(frame, max_size=3)).map(
        lambda t: [b"", t[0], t[1], *t[2]])
    s["gate"] = st.one_of(mutate(whisper), mutate(notice), mutate(join), gate_other)

    # -- ZAP service: requests of the broker
    mech = st.one_of(st.sampled_from([b"NULL", b"PLAIN", b"CURVE", b"GSSAPI", b"", b"null"]), st.binary(max_size=6))
    creds = st.lists(st.one_of(frame, st.binary(min_size=32, max_size=32), st.binary(min_size=40, max_size=40),
                               st.sampled_from([b"\xff\xfe", "\u5821".encode()])), max_size=3)
    zap_req = st.tuples(st.sampled_from([b"1.0", b"1.0", b"1.1", b""]), rid,
                        st.sampled_from([b"gate", b"", b"\xff"]), rid, rid, mech, creds).map(
        lambda t: [b"", t[0], t[1], t[2], t[3], t[4], t[5], *t[6]])
    s["zap"] = mutate(zap_req)

    # the gate also calls us (call_gate) and gets one of these bodies back
    s["gate_reply"] = reply_body.map(lambda body: ("reply", body))

    for name in ("frontend", "backend", "worker", "gate", "zap"):
        s[name + "_batch"] = st.lists(st.one_of(s[name], s["random_msg"]), min_size=1, max_size=6)
    s["client_batch"] = st.lists(s["client"], min_size=0, max_size=6)
    s["gate_batch"] = st.lists(st.one_of(s["gate"], s["random_msg"], s["gate_reply"]), min_size=1, max_size=6)
    return s


_STRATEGIES: dict[str, SearchStrategy[Any]] | None = None


def strategies() -> dict[str, SearchStrategy[Any]]:
    """The strategies by name (``<endpoint>_batch`` is what a case draws)."""
    global _STRATEGIES
    if _STRATEGIES is None:
        _STRATEGIES = _strategies()
    return _STRATEGIES
