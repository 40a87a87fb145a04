"""Helpers of ``gaterpc.utils``, ``gaterpc.lazy``, ``gaterpc.helpers`` and ``gaterpc.mixins``."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import selectors
import threading
import uuid
from pathlib import Path

import pytest

from gaterpc import helpers
from gaterpc.helpers import (
    MulticastProtocol,
    SyncManager,
    UnixEPollEventLoopPolicy,
    check_socket_addr,
    decrypt,
    encrypt,
    from_bytes,
    generator_to_agenerator,
    interface,
    name2uuid,
    resolve_module_attr,
    run_in_executor,
    singleton,
    throw_exception_agenerator,
    to_bytes,
)
from gaterpc.lazy import Empty, LazyAttribute, TypeValidator, Validator, empty, ensure_mkdir
from gaterpc.mixins import _global_lock, _LoopBoundMixin


# -- interface ---------------------------------------------------------------


def test_interface_direct_form_returns_same_function():
    def f():
        pass

    assert interface(f) is f
    assert f.__interface__ is True and f.__executor__ == "none"


@pytest.mark.parametrize("executor", ["none", "thread", "process"])
def test_interface_string_forms(executor):
    async def g():
        pass

    decorated = interface(executor)(g)
    assert decorated is g
    assert g.__interface__ is True and g.__executor__ == executor


def test_interface_accepts_generator_kinds():
    def gen():
        yield 1

    async def agen():
        yield 1

    assert interface(gen).__executor__ == "none"
    assert interface(agen).__interface__ is True


@pytest.mark.parametrize(
    "bad",
    [len, staticmethod(lambda: None), classmethod(lambda c: None), int, functools.partial(print)],
    ids=["builtin", "staticmethod", "classmethod", "class", "partial"],
)
def test_interface_rejects_non_functions(bad):
    with pytest.raises(TypeError) as info:
        interface(bad)
    assert info.value.args == (type(bad),)


def test_interface_rejects_unknown_executor():
    with pytest.raises(TypeError) as info:
        interface("threads")
    assert info.value.args == (str,)
    assert str(info.value) == "<class 'str'>"


# -- to_bytes / from_bytes ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (b"\x00ab", {}, b"\x00ab"),
        ("ü", {}, b"\xc3\xbc"),
        (1, {}, b"\x01"),
        (-128, {}, b"\x80"),
        (127, {}, b"\x7f"),
        (128, {}, b"\x00\x80"),
        (200, {}, b"\x00\xc8"),
        (-32768, {}, b"\x80\x00"),
        (32768, {}, b"\x00\x00\x80\x00"),
        (2**31 - 1, {}, b"\x7f\xff\xff\xff"),
        (True, {}, b"\x01"),
        (1.5, {}, b"\x3f\xf8\x00\x00\x00\x00\x00\x00"),
        (9777, {"fmt": "!i"}, b"\x00\x00&1"),
        (2**40, {"fmt": "!q"}, b"\x00\x00\x01\x00\x00\x00\x00\x00"),
    ],
)
def test_to_bytes(value, kwargs, expected):
    assert to_bytes(value, **kwargs) == expected


def test_to_bytes_uuid_hex_is_text():
    u = uuid.uuid4().hex
    assert to_bytes(u) == u.encode()


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, bytearray(b"a"), memoryview(b"a"), None, [1]])
def test_to_bytes_rejects(value):
    with pytest.raises(TypeError):
        to_bytes(value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"\x01", 1), (b"\xff", -1), (b"\x00\xc8", 200), (b"\x00\x00&1", 9777), (b"\x3f\xf8\x00\x00\x00\x00\x00\x00", 1.5)],
)
def test_from_bytes_numbers(data, expected):
    out = from_bytes(data, to_num=True)
    assert out == expected and type(out) is type(expected)


def test_from_bytes_eight_bytes_is_always_float():
    assert isinstance(from_bytes(b"\x00" * 8, True), float)


@pytest.mark.parametrize("data", [b"", b"abc", b"12345"])
def test_from_bytes_bad_length(data):
    with pytest.raises(TypeError, match="The length of the original byte string is not matching."):
        from_bytes(data, to_num=True)


def test_from_bytes_text():
    assert from_bytes("堡垒".encode()) == "堡垒"


@pytest.mark.parametrize("value", [0, 5, -5, 300, -300, 70000, -70000, 0.25])
def test_to_from_bytes_round_trip(value):
    assert from_bytes(to_bytes(value), to_num=True) == value


# -- name2uuid ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hexid"),
    [
        ("GateCluster", "7a6ffafc9c865df289b642699deddb34"),
        ("capture-client", "fc0266aaa87b59758475cf563a22c382"),
        ("capture-worker", "65a86c9a43a6581da4b8c1785f895713"),
        ("capture-broker", "eacb604bb3f651ebb3577b0c1f5ce215"),
        ("capture-gate-A", "04283f722b055f909b194d2effa6dfb7"),
        ("capture-gate-B", "681155f7106c54c8b8f8e4b868a045bc"),
        ("gc-0123456789abcdef", "25bca80674165a10843d7013377eaa25"),
    ],
)
def test_name2uuid_vectors(name, hexid):
    u = name2uuid(name)
    assert isinstance(u, uuid.UUID)
    assert u.hex == hexid
    assert len(u.bytes) == 16


# -- check_socket_addr -------------------------------------------------------


@pytest.mark.parametrize("addr", ["tcp://127.0.0.1:5555", "ipc:///tmp/x", "inproc://a", "pgm://x", "epgm://x", None])
def test_check_socket_addr_ok(addr):
    assert check_socket_addr(addr) is addr


@pytest.mark.parametrize(("addr", "proto"), [("udp://1.2.3.4:5", "udp"), ("ws://a", "ws")])
def test_check_socket_addr_rejects(addr, proto):
    with pytest.raises(SystemError) as info:
        check_socket_addr(addr)
    assert str(info.value) == f'The protocol "{proto}" is not supported.'


def test_check_socket_addr_ipc_on_windows(monkeypatch):
    monkeypatch.setattr(helpers.sys, "platform", "win32")
    with pytest.raises(SystemError, match="ipc protocol does not work on Windows."):
        check_socket_addr("ipc:///tmp/x")


# -- resolve_module_attr / singleton / placeholders --------------------------


def test_resolve_module_attr():
    import logging.handlers

    assert resolve_module_attr("logging.handlers.TimedRotatingFileHandler") is logging.handlers.TimedRotatingFileHandler
    assert resolve_module_attr("gaterpc.lazy.empty") is empty
    assert resolve_module_attr("json") is __import__("json")


@pytest.mark.parametrize("path", ["no_such_module_xyz.attr", "gaterpc.no_such_submodule.x"])
def test_resolve_module_attr_errors(path):
    with pytest.raises(ValueError, match=f"Cannot resolve {path}: ") as info:
        resolve_module_attr(path)
    assert isinstance(info.value.__cause__, ImportError)


def test_singleton_creates_once():
    created = []

    class Thing:
        def __init__(self, v=0):
            created.append(v)
            self.v = v

    factory = singleton(Thing)
    a = factory(1)
    b = factory(2)
    assert a is b and a.v == 1 and created == [1]


def test_singleton_is_thread_safe():
    created = []
    barrier = threading.Barrier(4)

    class Slow:
        def __init__(self):
            created.append(1)

    factory = singleton(Slow)
    results = []

    def work():
        barrier.wait(timeout=5)
        results.append(factory())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(created) == 1 and len({id(r) for r in results}) == 1


def test_encrypt_decrypt_identity():
    obj = object()
    assert encrypt(obj) is obj and decrypt(obj) is obj


# -- executors and async generators ------------------------------------------


async def test_run_in_executor_passes_kwargs():
    loop = asyncio.get_running_loop()

    def f(a, b=0, *, c=0):
        return (a, b, c, threading.current_thread() is threading.main_thread())

    assert await run_in_executor(loop, None, f, 1, b=2, c=3) == (1, 2, 3, False)


async def test_generator_to_agenerator():
    assert [i async for i in generator_to_agenerator(iter(range(4)))] == [0, 1, 2, 3]
    assert [i async for i in generator_to_agenerator([])] == []


async def test_throw_exception_agenerator():
    seen = []

    async def agen():
        try:
            yield 1
            yield 2
        except ValueError as e:
            seen.append(e)

    ag = agen()
    assert await ag.__anext__() == 1
    await throw_exception_agenerator(ag, ValueError("stop"))  # StopAsyncIteration swallowed
    assert len(seen) == 1

    async def reraise():
        yield 1

    ag2 = reraise()
    await ag2.__anext__()
    with pytest.raises(KeyError):
        await throw_exception_agenerator(ag2, KeyError("k"))


# -- SyncManager / loop policy / multicast protocol --------------------------


def test_sync_manager_is_lazy():
    assert type(SyncManager).__name__ == "_LazySyncManager"
    assert type(SyncManager).__slots__ == ("_manager",)
    fresh = helpers._LazySyncManager()
    assert object.__getattribute__(fresh, "_manager") is None
    queue = fresh.Queue()  # first attribute access starts the manager
    try:
        assert object.__getattribute__(fresh, "_manager") is not None
        queue.put(41)
        assert queue.get(timeout=5) == 41
    finally:
        fresh.shutdown()


def test_epoll_policy_creates_epoll_loop():
    policy = UnixEPollEventLoopPolicy()
    assert isinstance(policy, asyncio.DefaultEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, selectors.EpollSelector)
        assert loop.run_until_complete(asyncio.sleep(0, result=5)) == 5
    finally:
        loop.close()
    assert issubclass(UnixEPollEventLoopPolicy._loop_factory, asyncio.SelectorEventLoop)


async def test_multicast_protocol_delivers_datagrams():
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: MulticastProtocol(lambda data, addr: got.set_result((data, addr))),
        local_addr=("127.0.0.1", 0),
    )
    try:
        assert protocol.transport is transport
        port = transport.get_extra_info("sockname")[1]
        sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port))
        try:
            sender.sendto(b"hello")
            data, addr = await asyncio.wait_for(got, 5)
            assert data == b"hello" and addr[0] == "127.0.0.1"
        finally:
            sender.close()
    finally:
        transport.close()
    await asyncio.sleep(0)
    assert transport.is_closing()


# -- empty / validators / ensure_mkdir / LazyAttribute -----------------------


def test_empty_sentinel():
    assert not empty and not Empty()
    assert isinstance(empty, Empty)
    assert Empty() is not empty
    import gaterpc.global_settings as gs
    import gaterpc.utils as gu

    assert gs.empty is empty and gu.empty is empty


def test_validators():
    assert Validator()(3) == 3
    assert Validator("msg").error_message == "msg"
    tv = TypeValidator(int)
    assert tv(True) is True
    with pytest.raises(TypeError) as info:
        tv("1")
    assert str(info.value) == "require <class 'int'>."
    assert TypeValidator((int, str))("x") == "x"
    with pytest.raises(TypeError, match="custom"):
        TypeValidator(int, "custom {require_type}")(1.0)


def test_ensure_mkdir(tmp_path):
    target = tmp_path / "a" / "b"
    out = ensure_mkdir(str(target))
    assert out == target and isinstance(out, Path) and target.is_dir()
    assert ensure_mkdir(target) == target


def test_lazy_attribute_semantics():
    calls = []

    class Conf:
        PLAIN = LazyAttribute(raw=1, process=lambda inst, v: TypeValidator(int)(v))
        BASE = 10
        DERIVED = LazyAttribute(render=lambda inst, raw: (calls.append(1), inst.BASE * 2 if raw is empty else raw)[1])

    a, b = Conf(), Conf()
    assert isinstance(Conf.PLAIN, LazyAttribute)
    assert a.PLAIN == 1
    assert a.DERIVED == 20 and a.DERIVED == 20 and len(calls) == 1  # cached
    assert a.__dict__[LazyAttribute._CACHE_KEY] == {"DERIVED": 20}
    a.PLAIN = 5  # raw is class-wide, cache of `a` cleared
    assert b.PLAIN == 5
    assert LazyAttribute._CACHE_KEY not in a.__dict__ or a.__dict__[LazyAttribute._CACHE_KEY] == {}
    with pytest.raises(TypeError, match="require <class 'int'>."):
        a.PLAIN = "x"
    a.DERIVED = 7
    assert a.DERIVED == 7 and b.DERIVED == 7


def test_lazy_attribute_process_can_make_read_only():
    def read_only(inst, value):
        raise AttributeError("read only")

    class Conf:
        X = LazyAttribute(raw=1, process=read_only)

    with pytest.raises(AttributeError, match="read only"):
        Conf().X = 2
    assert Conf().X == 1


def test_lazy_attribute_has_no_delete():
    assert not hasattr(LazyAttribute, "__delete__")


# -- _LoopBoundMixin ---------------------------------------------------------


def test_loop_bound_mixin():
    class Bound(_LoopBoundMixin):
        pass

    obj = Bound()
    assert Bound._loop is None
    assert isinstance(_global_lock, type(threading.Lock()))

    async def get():
        return obj._get_loop()

    loop1 = asyncio.new_event_loop()
    loop2 = asyncio.new_event_loop()
    try:
        assert loop1.run_until_complete(get()) is loop1
        assert obj._loop is loop1
        with pytest.raises(RuntimeError, match="is bound to a different event loop"):
            loop2.run_until_complete(get())
    finally:
        loop1.close()
        loop2.close()


# -- gaterpc.utils inventory (the original's names) -----------------------------------

UTILS_NAMES = {
    None: ["SyncManager", "UnixEPollEventLoopPolicy", "singleton", "resolve_module_attr", "check_socket_addr",
           "MulticastProtocol", "to_bytes", "from_bytes", "name2uuid", "encrypt", "decrypt",
           "generator_to_agenerator", "throw_exception_agenerator", "Empty", "empty", "Validator",
           "TypeValidator", "ensure_mkdir", "LazyAttribute", "ColorFormatter", "QueueListener",
           "AQueueListener", "AQueueHandler", "singleton_aqueue_listener", "singleton_queue_listener",
           "MessagePack", "MsgPackError", "MsgUnpackError", "message_pack", "msg_pack", "msg_unpack",
           "interface", "run_in_executor", "logger", "BadGzip", "HugeDataException", "RemoteException",
           "_LazySyncManager", "_BaseEventLoopPolicy"],
    "gaterpc.streams": ["StreamReply"],
    "gaterpc.cache": ["KVLRUCache", "coroutine_lru_cache"],
    "gaterpc.hugedata": ["HugeData", "GzipCompressor", "GzipDecompressor", "_incremental_compress",
                         "_incremental_decompress", "ensure_shm_unlink"],
}


@pytest.mark.parametrize("owner", list(UTILS_NAMES), ids=lambda o: o or "foundation")
def test_utils_reexports(owner):
    import importlib.util

    if owner is not None and importlib.util.find_spec(owner) is None:
        pytest.skip(f"{owner} is not written yet")
    import gaterpc.utils as gu

    missing = [name for name in UTILS_NAMES[owner] if not hasattr(gu, name)]
    assert missing == []
    if owner is not None:
        mod = importlib.import_module(owner)
        assert all(getattr(gu, n) is getattr(mod, n) for n in UTILS_NAMES[owner])
    assert gu.logger is logging.getLogger("commands")
