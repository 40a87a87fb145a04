"""The compiled and pure twins of every hot path behave identically.

Each test feeds the same bytes and operations to both twins -- the golden
frames of ``tests/data/captured_frames.json`` and hypothesis-generated cases
(fixed counts, derandomized) -- and compares the outcomes exactly: results,
state afterwards, and the type and message of every exception raised.  The
first tests check that the constants the compiled twins ``cimport`` from
``_wire.pxd`` are the values of ``gaterpc.protocol`` (and of pyzmq), and
that the ``.pyi`` stubs of the compiled twins describe what they export.

The compiled twins are imported directly (not through the selectors), so
this file runs them under ``GATERPC_NO_EXTENSIONS=1`` too.  They are skipped
only with ``--no-c-extensions`` or in a pure build that has none.
"""

from __future__ import annotations

import ast
import contextvars
import importlib
import inspect
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gaterpc.protocol as protocol
from gaterpc.exceptions import HugeDataException

ROOT = Path(__file__).resolve().parent.parent
SPEEDUPS = ROOT / "gaterpc" / "_speedups"
HOT_PATHS = ("zmqio", "frames", "reqtable", "lru", "chunks", "route")

pytestmark = pytest.mark.c_extension

_PARITY = settings(max_examples=150, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def twins(request):
    """``twins["lru"] == (pure module, compiled module)`` for every hot path."""
    if request.config.getoption("--no-c-extensions"):
        pytest.skip("--no-c-extensions")
    out = {}
    for name in HOT_PATHS:
        py = importlib.import_module(f"gaterpc._speedups._{name}_py")
        try:
            c = importlib.import_module(f"gaterpc._speedups._{name}_c")
        except ImportError:
            if not list(SPEEDUPS.glob(f"_{name}_c.*.so")) and os.environ.get("GATERPC_NO_EXTENSIONS"):
                pytest.skip("pure build: no compiled twin to compare")
            raise
        out[name] = (py, c)
    return out


def outcome(fn, *args, **kwargs):
    """``("ok", result)`` or ``("raised", exception type, message)``: comparable across twins."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - compared across twins
        return ("raised", type(exc), str(exc))


# -- shared constants --------------------------------------------------------

def _pxd_names() -> list:
    """Every constant ``_wire.pxd`` declares (C string literals and enum members)."""
    text = (SPEEDUPS / "_wire.pxd").read_text()
    names = re.findall(r"^\s+const char\* (\w+) \"", text, re.M)
    names += re.findall(r"^\s{4}(\w+) = -?\d+", text, re.M)
    return names


def test_wire_pxd_matches_protocol_and_pyzmq(twins):
    compiled = twins["frames"][1]._wire_constants()
    declared = _pxd_names()
    assert len(declared) >= 20
    assert sorted(compiled) == sorted(declared), "every _wire.pxd constant is exposed for this test"
    for name, value in compiled.items():
        if name.startswith("ZMQ_"):
            expected = int(getattr(zmq, name[4:]))
        else:
            expected = getattr(protocol, name)
        assert value == expected and type(value) is type(expected), name


def test_pure_twins_use_the_protocol_objects(twins):
    frames_py = twins["frames"][0]
    for name in frames_py.__all__:
        if name.startswith("KIND_"):
            assert getattr(frames_py, name) is getattr(protocol, name)
            assert getattr(twins["frames"][1], name) == getattr(protocol, name)
    assert twins["reqtable"][0]._SLACK is protocol.REQTABLE_SLACK
    assert twins["chunks"][0].UNLIMITED_STEP is protocol.HUGE_UNLIMITED_STEP
    assert twins["chunks"][1].UNLIMITED_STEP == protocol.HUGE_UNLIMITED_STEP


def test_no_cython_def_left():
    for pyx in SPEEDUPS.glob("*.py[xd]"):
        assert not re.search(r"^\s*DEF\s", pyx.read_text(), re.M), pyx.name


# -- stubs ---------------------------------------------------------------------

def _stub_api(name: str) -> dict:
    """``{public name: {member: parameter names}}`` read from ``_<name>_c.pyi``."""
    tree = ast.parse((SPEEDUPS / f"_{name}_c.pyi").read_text())
    api: dict = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members: dict = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    a = item.args
                    members[item.name] = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                elif isinstance(item, ast.AnnAssign):
                    members[item.target.id] = None
            api[node.name] = members
        elif isinstance(node, ast.FunctionDef):
            api[node.name] = [p.arg for p in node.args.args]
        elif isinstance(node, ast.AnnAssign):
            api[node.target.id] = None
    return api


def _pure_api(module) -> dict:
    api: dict = {}
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj):
            members: dict = {}
            for attr in dir(obj):
                if attr.startswith("_") and attr not in (
                    "__init__", "__len__", "__contains__", "__iter__", "__getitem__", "__setitem__",
                ):
                    continue
                value = inspect.getattr_static(obj, attr)
                if attr == "__init__" or callable(value) and not isinstance(value, property):
                    members[attr] = list(inspect.signature(value).parameters)
                elif isinstance(value, property) and value.fset is not None:
                    members[attr] = None  # a settable attribute
                else:
                    members[attr] = None
            api[name] = members
        elif callable(obj):
            api[name] = list(inspect.signature(obj).parameters)
        else:
            api[name] = None
    return api


def _normalise(api: dict) -> dict:
    """Properties and plain attributes both as ``None``; getter/setter pairs collapsed."""
    out = {}
    for name, members in api.items():
        if isinstance(members, dict):
            out[name] = {m: (None if p is None or p == ["self"] or p == ["self", "value"] else p)
                         for m, p in members.items()}
        else:
            out[name] = members
    return out


@pytest.mark.parametrize("name", HOT_PATHS)
def test_stub_describes_the_pure_twins_api(twins, name):
    py, c = twins[name]
    stub = _stub_api(name)
    public = {k: v for k, v in stub.items() if not k.startswith("_") and k != "LIBZMQ_PATH"}
    assert sorted(public) == sorted(py.__all__) == sorted(c.__all__)
    assert _normalise(public) == _normalise(_pure_api(py))


@pytest.mark.slow
def test_stubs_match_the_compiled_modules(twins, tmp_path):
    """mypy's stubtest imports each compiled twin and checks its ``.pyi`` against it."""
    allow = tmp_path / "allow.txt"
    allow.write_text(".*\\.__reduce_cython__\n.*\\.__setstate_cython__\n")
    mods = [f"gaterpc._speedups._{name}_c" for name in HOT_PATHS]
    run = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--allowlist", str(allow), *mods],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


# -- frames --------------------------------------------------------------------

def _golden_messages() -> list:
    entries = json.loads((ROOT / "tests" / "data" / "captured_frames.json").read_text())
    out = []
    for e in entries:
        for key in ("frames_hex", "received_frames_hex"):
            if e.get(key):
                out.append([bytes.fromhex(h) for h in e[key]])
    return out


GOLDEN = _golden_messages()
HEADERS = sorted({m[i] for m in GOLDEN for i in (1, 2) if len(m) > i and m[i].startswith(b"MDP")}) + [b"", b"junk"]
_FRAME_FNS = ("split_frontend", "split_backend", "split_worker", "split_client_reply")
_BODY_FNS = ("reply_kind", "is_terminal")


def _frames_outcomes(mod, msg) -> list:
    out = [outcome(getattr(mod, fn), msg, header) for fn in _FRAME_FNS for header in HEADERS]
    try:
        tails = [msg[i:] for i in range(len(msg) + 1)]
    except TypeError:
        tails = [msg]
    out += [outcome(getattr(mod, fn), tail) for fn in _BODY_FNS for tail in tails]
    return out


def test_golden_frames_parse_identically(twins):
    py, c = twins["frames"]
    assert len(GOLDEN) > 200 and len(HEADERS) >= 4
    kinds = set()
    for msg in GOLDEN:
        for variant in (msg, tuple(msg), [bytearray(f) for f in msg], [memoryview(f) for f in msg]):
            assert _frames_outcomes(py, variant) == _frames_outcomes(c, variant), msg
        kinds.update(r[1] for r in _frames_outcomes(py, msg) if r[0] == "ok" and type(r[1]) is int)
    # The capture covers single replies, streams and huge data: the comparison is not vacuous.
    assert {protocol.KIND_SINGLE, protocol.KIND_STREAM_ITEM, protocol.KIND_STREAM_END} <= kinds


_TAGS = [protocol.STREAM_TAG, protocol.STREAM_END, protocol.STREAM_EXC, protocol.HUGE_TAG,
         protocol.HUGE_END, protocol.HUGE_EXC, b"MDPC01", b"MDPW01", b""]
_frame = st.one_of(st.sampled_from(_TAGS), st.binary(max_size=6))
_odd_frame = st.one_of(_frame, st.builds(bytearray, _frame), st.builds(memoryview, _frame),
                       st.sampled_from([None, 0, 1, "", "MDPC01", 1.5]))


@_PARITY
@given(msg=st.one_of(st.lists(_frame, max_size=8), st.lists(_odd_frame, max_size=8),
                     st.sampled_from([None, 3, b"MDPC01", "text"])))
def test_generated_frames_parse_identically(twins, msg):
    py, c = twins["frames"]
    assert _frames_outcomes(py, msg) == _frames_outcomes(c, msg)


@_PARITY
@given(packed=st.one_of(st.binary(max_size=40), st.builds(bytearray, st.binary(max_size=4)),
                        st.sampled_from([None, "x", 3, memoryview(b"ab")])))
def test_singletons_build_identically(twins, packed):
    py, c = twins["frames"]
    for fn in ("singleton_ok", "singleton_error"):
        assert outcome(getattr(py, fn), packed) == outcome(getattr(c, fn), packed)
    assert outcome(protocol.ok_body, lambda v: v, packed) == outcome(c.singleton_ok, packed)


_STEP_VAR: "contextvars.ContextVar[str]" = contextvars.ContextVar("_STEP_VAR", default="unset")


class _Yield:
    """Awaitable that suspends once, yielding ``value`` (as a future would)."""

    def __init__(self, value):
        self.value = value

    def __await__(self):
        return (yield self.value)


def _step_cases():
    async def returns(x):
        _STEP_VAR.set("inside")
        return [x, _STEP_VAR.get()]

    async def suspends(x):
        _STEP_VAR.set("suspended")
        await _Yield(x)
        return "never"

    async def raises(x):
        raise KeyError(x)

    async def stop_iteration(x):
        raise StopIteration(x)  # a coroutine turns it into RuntimeError

    async def base_exc(x):
        raise GeneratorExit(x)

    def gen(x):  # a plain generator works too
        yield x

    return [returns, suspends, raises, stop_iteration, base_exc, gen]


def _step_outcome(mod, fn, arg):
    ctx = contextvars.copy_context()
    coro = fn(arg)
    try:
        try:
            result = ("ok", mod.coro_step(ctx, coro))
        except BaseException as exc:  # noqa: BLE001 - compared across twins
            result = ("raised", type(exc), str(exc))
        return result, ctx.get(_STEP_VAR, "unset"), _STEP_VAR.get()
    finally:
        coro.close()


@_PARITY
@given(arg=st.one_of(st.integers(), st.text(max_size=8), st.none()))
def test_coro_step_agrees(twins, arg):
    py, c = twins["frames"]
    for fn in _step_cases():
        assert _step_outcome(py, fn, arg) == _step_outcome(c, fn, arg)


def test_coro_step_golden(twins):
    for mod in twins["frames"]:
        returns, suspends, raises = _step_cases()[:3]
        assert _step_outcome(mod, returns, 1) == (("ok", (True, [1, "inside"])), "inside", "unset")
        assert _step_outcome(mod, suspends, 2) == (("ok", (False, 2)), "suspended", "unset")
        assert _step_outcome(mod, raises, 3) == (("raised", KeyError, "3"), "unset", "unset")
        coro = returns(0)
        with pytest.raises(TypeError, match="an instance of Context was expected"):
            mod.coro_step(object(), coro)
        coro.close()
        # a context already entered cannot be entered again (as Context.run says)
        ctx = contextvars.copy_context()
        coro = returns(0)
        with pytest.raises(RuntimeError):
            ctx.run(mod.coro_step, ctx, coro)
        coro.close()


# -- reqtable -----------------------------------------------------------------

_BAD_NUMBERS = [math.nan, "x", None, b"1", 10 ** 400, Fraction(1, 3), True, -math.inf, math.inf]
_deadline = st.one_of(st.integers(0, 40).map(lambda i: i / 2), st.integers(0, 20), st.sampled_from(_BAD_NUMBERS))
_reqtable_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.one_of(st.integers(0, 8), st.just([1])), st.integers(), _deadline),
        st.tuples(st.just("pop"), st.one_of(st.integers(0, 8), st.just([1]))),
        st.tuples(st.just("get"), st.integers(0, 8)),
        st.tuples(st.just("touch"), st.integers(0, 8), _deadline),
        st.tuples(st.just("expire"), _deadline),
        st.tuples(st.just("clear")),
    ),
    max_size=80,
)


def _reqtable_run(cls, ops) -> list:
    t = cls()
    seen = []
    for op in ops:
        if op[0] == "add":
            r = outcome(t.add, op[1], op[2], op[3])
        elif op[0] == "pop":
            r = outcome(t.pop, op[1], "absent")
        elif op[0] == "get":
            r = outcome(t.get, op[1])
        elif op[0] == "touch":
            r = outcome(t.touch, op[1], op[2])
        elif op[0] == "expire":
            r = outcome(t.expire, op[1])
        else:
            r = outcome(t.clear)
        seen.append((r, len(t), list(t), [k in t for k in range(9)]))
    seen.append(repr(t))
    return seen


@_PARITY
@given(ops=_reqtable_ops)
def test_reqtable_operations_agree(twins, ops):
    py, c = twins["reqtable"]
    assert _reqtable_run(py.RequestTable, ops) == _reqtable_run(c.RequestTable, ops)


def test_reqtable_bad_deadlines_raise_the_same(twins):
    py, c = twins["reqtable"]
    for bad in _BAD_NUMBERS:
        for method, args in (("add", (b"k", 1)), ("touch", (b"absent",)), ("expire", ())):
            assert outcome(getattr(py.RequestTable(), method), *args, bad) == \
                outcome(getattr(c.RequestTable(), method), *args, bad), (method, bad)
    assert outcome(py.RequestTable().expire, "x")[1] is TypeError


# -- lru ----------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


_lru_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.one_of(st.integers(0, 6), st.just([1])), st.integers(0, 3)),
        st.tuples(st.just("getitem"), st.integers(0, 6)),
        st.tuples(st.just("get"), st.integers(0, 6)),
        st.tuples(st.just("pop"), st.integers(0, 6)),
        st.tuples(st.just("contains"), st.integers(0, 6)),
        st.tuples(st.just("len")),
        st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        st.tuples(st.just("maxsize"), st.sampled_from([1, 2, 5, 0, -1, "x"])),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


def _lru_run(cls, ops, ttl, debug) -> list:
    clock = FakeClock()
    c = cls(3, 2, debug, ttl=ttl, timer=clock)
    seen = []
    for op in ops:
        kind = op[0]
        if kind == "set":
            r = outcome(c.__setitem__, op[1], op[2])
        elif kind == "getitem":
            r = outcome(c.__getitem__, op[1])
        elif kind == "get":
            r = outcome(c.get, op[1], "dflt")
        elif kind == "pop":
            r = outcome(c.pop, op[1])
        elif kind == "contains":
            r = outcome(c.__contains__, op[1])
        elif kind == "len":
            r = outcome(len, c)
        elif kind == "tick":
            clock.now += op[1]
            r = None
        elif kind == "maxsize":
            r = outcome(setattr, c, "maxsize", op[1])
        else:
            r = outcome(c.clear)
        seen.append((r, c.full, c.hits, c.misses, c.maxsize, list(c.cache.items()),
                     list(c.tracking_entries.items())))
    seen.append(repr(c))
    return seen


@_PARITY
@given(ops=_lru_ops, ttl=st.sampled_from([None, 2.0]), debug=st.booleans())
def test_lru_operations_agree(twins, ops, ttl, debug):
    py, c = twins["lru"]
    assert _lru_run(py.KVLRUCache, ops, ttl, debug) == _lru_run(c.KVLRUCache, ops, ttl, debug)


@pytest.mark.parametrize("kwargs", [
    {"maxsize": 0}, {"maxsize": -3}, {"maxsize": "x"}, {"maxsize": 2.5},
    {"ttl": 0}, {"ttl": -1}, {"ttl": "x"}, {"ttl": "1.5"}, {"ttl": math.nan}, {"ttl": 3},
])
def test_lru_construction_agrees(twins, kwargs):
    py, c = twins["lru"]

    def build(cls):
        obj = cls(**kwargs)
        return (obj.maxsize, obj.ttl, obj.full, obj.hits, obj.misses, obj.debug, obj.max_tracking_entries)

    assert outcome(build, py.KVLRUCache) == outcome(build, c.KVLRUCache)


# -- chunks -------------------------------------------------------------------

_piece = st.one_of(st.binary(max_size=40), st.builds(bytearray, st.binary(max_size=20)),
                   st.builds(memoryview, st.binary(max_size=20)))


def _cutter_run(cls, blksize, pieces) -> list:
    built = outcome(cls, blksize)
    if built[0] != "ok":
        return [built[1:]]
    cut = built[1]
    seen = [cut.blksize]
    for piece in pieces:
        seen.append((outcome(cut.feed, piece), cut.pending()))
    seen.append((cut.rest(), cut.pending(), cut.rest()))
    return seen


@_PARITY
@given(blksize=st.one_of(st.integers(1, 50), st.sampled_from([0, -1, "7", 2.9, None])),
       pieces=st.lists(st.one_of(_piece, st.sampled_from(["text", None, 5])), max_size=12))
def test_chunk_cutter_agrees(twins, blksize, pieces):
    py, c = twins["chunks"]
    assert _cutter_run(py.ChunkCutter, blksize, pieces) == _cutter_run(c.ChunkCutter, blksize, pieces)


def test_chunk_cutter_golden_stream(twins):
    """The golden frames joined into one stream, cut at several sizes, in uneven pieces."""
    py, c = twins["chunks"]
    stream = b"".join(f for m in GOLDEN for f in m)
    for blksize in (1, 7, 64, 4096, len(stream) + 1):
        pieces = [stream[i:i + 37] for i in range(0, len(stream), 37)]
        got_py = _cutter_run(py.ChunkCutter, blksize, pieces)
        assert got_py == _cutter_run(c.ChunkCutter, blksize, pieces)
        chunks = [ch for item in got_py[1:-1] for ch in item[0][1]] + [got_py[-1][0]]
        assert b"".join(chunks) == stream


def _limiter_run(cls, limit, ops) -> list:
    built = outcome(cls, limit)
    if built[0] != "ok":
        return [built[1:]]
    lim = built[1]
    seen = []
    for op, arg in ops:
        if op == "add":
            r = outcome(lim.add, arg)
        elif op == "take":
            r = outcome(lim.take)
        else:
            r = outcome(lambda: bytes(lim.getvalue()))
        seen.append((r, lim.total, lim.limit, lim.room()))
    return seen


@_PARITY
@given(limit=st.one_of(st.integers(0, 100), st.sampled_from([-1, "5", None])),
       ops=st.lists(st.one_of(st.tuples(st.just("add"), st.one_of(_piece, st.sampled_from(["ab", None]))),
                              st.tuples(st.sampled_from(["take", "getvalue"]), st.none())), max_size=15))
def test_output_limiter_agrees(twins, limit, ops):
    py, c = twins["chunks"]
    got = _limiter_run(py.OutputLimiter, limit, ops)
    assert got == _limiter_run(c.OutputLimiter, limit, ops)


def test_output_limiter_bomb_error_is_the_same(twins):
    py, c = twins["chunks"]
    results = []
    for mod in (py, c):
        lim = mod.OutputLimiter(10)
        lim.add(b"x" * 10)
        results.append(outcome(lim.add, b"y"))
    assert results[0] == results[1] and results[0][1] is HugeDataException


# -- zmqio over real inproc sockets ------------------------------------------

_names = itertools.count()


class Sockets:
    """Sockets of one context, all closed with linger 0 and the context terminated at teardown."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.socks: list = []

    def pair(self, **opts: int):
        """A bound ROUTER and a connected DEALER (identity ``b"dealer"``) on a fresh inproc endpoint."""
        addr = f"inproc://parity-{next(_names)}"
        router = self.ctx.socket(zmq.ROUTER)
        self.socks.append(router)
        dealer = self.ctx.socket(zmq.DEALER)
        self.socks.append(dealer)
        for s in (router, dealer):
            s.linger = 0
            for k, v in opts.items():
                s.setsockopt(getattr(zmq, k), v)
        dealer.identity = b"dealer"
        router.bind(addr)
        dealer.connect(addr)
        return router, dealer

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=0)
        t = threading.Thread(target=self.ctx.term, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "context did not terminate: a socket leaked"


@pytest.fixture
def zs():
    s = Sockets()
    try:
        yield s
    finally:
        s.close()


def _recv_all(io, n: int, max_msgs: int) -> list:
    out: list = []
    deadline = time.monotonic() + 5
    while len(out) < n and time.monotonic() < deadline:
        out.extend(io.recv_batch(max_msgs))
    return out


def _counters(io) -> tuple:
    return (io.rx_msgs, io.rx_bytes, io.tx_msgs, io.tx_bytes)


def _zmqio_run(zs, mod, messages, max_msgs) -> dict:
    """DEALER sends ``messages``, ROUTER receives them and echoes each back; everything observed."""
    router, dealer = zs.pair()
    d, r = mod.ZSocketIO(dealer), mod.ZSocketIO(router)
    seen: dict = {"fresh": (_counters(d), _counters(r))}
    seen["sent"] = outcome(d.send_many, messages)
    got = _recv_all(r, len(messages), max_msgs)
    seen["got"] = got
    seen["echo"] = [outcome(r.send, m) for m in got]
    seen["back"] = _recv_all(d, len(got), max_msgs)
    seen["nothing"] = outcome(r.recv_batch, 5)
    seen["counters"] = (_counters(d), _counters(r))
    seen["events"] = (outcome(d.events), outcome(r.events))
    seen["errors"] = [outcome(d.send, []), outcome(d.send, [b"a", "text"]), outcome(d.send, [b"a", None]),
                      outcome(d.send, iter([b"gen", bytearray(b"x"), memoryview(b"yz")]))]
    seen["after_errors"] = (_counters(d), _recv_all(r, 1, 10))
    d.close()
    seen["closed"] = [outcome(d.send, [b"x"]), outcome(d.recv_batch, 1), outcome(d.events), _counters(d)]
    r.close()
    return seen


GOLDEN_SENDABLE = [m for m in GOLDEN if m][:60]


def test_zmqio_golden_frames_and_counters(twins, zs):
    py, c = twins["zmqio"]
    results = [_zmqio_run(zs, mod, GOLDEN_SENDABLE, 7) for mod in (py, c)]
    assert results[0] == results[1]
    seen = results[0]
    n = len(GOLDEN_SENDABLE)
    payload = sum(len(f) for m in GOLDEN_SENDABLE for f in m)
    assert seen["fresh"] == ((0, 0, 0, 0), (0, 0, 0, 0))
    assert seen["sent"] == ("ok", n)
    assert seen["got"] == [[b"dealer", *m] for m in GOLDEN_SENDABLE]
    assert seen["back"] == GOLDEN_SENDABLE
    ident = len(b"dealer")
    # ROUTER: every frame counts, its routing-id frame included; the echo is sent to that id.
    assert seen["counters"] == ((n, payload, n, payload), (n, payload + n * ident, n, payload + n * ident))
    assert seen["errors"][0] == ("raised", ValueError, "a message needs at least one frame")
    assert seen["errors"][1][1] is TypeError and seen["errors"][2][1] is TypeError
    assert seen["errors"][3] == ("ok", True)
    assert seen["after_errors"] == ((n, payload, n + 1, payload + 6), [[b"dealer", b"gen", b"x", b"yz"]])
    assert seen["closed"][:3] == [("raised", zmq.ZMQError, zmq.ZMQError(zmq.ENOTSOCK).strerror)] * 3


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.lists(st.binary(max_size=200), min_size=1, max_size=9), min_size=1, max_size=8),
       max_msgs=st.integers(1, 10))
def test_zmqio_generated_messages_and_counters(twins, zs, messages, max_msgs):
    py, c = twins["zmqio"]
    results = [_zmqio_run(zs, mod, messages, max_msgs) for mod in (py, c)]
    assert results[0] == results[1]
    payload = sum(len(f) for m in messages for f in m)
    n = len(messages)
    assert results[0]["counters"][1][:2] == (n, payload + n * len(b"dealer"))


def test_zmqio_would_block_counts_nothing(twins, zs):
    """At the high-water mark both twins refuse the message whole and leave the counters alone."""
    py, c = twins["zmqio"]
    results = []
    for mod in (py, c):
        router, _dealer = zs.pair(SNDHWM=1, RCVHWM=1)
        router.router_mandatory = 1
        r = mod.ZSocketIO(router)
        sent = []
        for i in range(2000):  # bounded: the HWM is reached long before
            res = outcome(r.send, [b"dealer", b"x" * 100, b"%d" % i])
            sent.append(res)
            if res == ("ok", False):
                break
        sent_ok = sum(1 for s in sent if s == ("ok", True))
        results.append((sent[-1], _counters(r) == (0, 0, sent_ok, sent_ok * (6 + 100) + sum(
            len(b"%d" % i) for i in range(sent_ok))), outcome(r.send, [b"nobody", b"x"])))
    assert results[0] == results[1]
    assert results[0][0] == ("ok", False) and results[0][1] is True
    assert results[0][2][1] is zmq.ZMQError  # EHOSTUNREACH for an unknown peer, nothing counted
