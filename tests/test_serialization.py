"""msgpack profile (docs/PROTOCOL.md, "Encoding"), golden vectors and MessagePack behaviour."""

from __future__ import annotations

import collections
import datetime
import decimal
import threading
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gaterpc import serialization
from gaterpc.serialization import (
    MessagePack,
    MsgPackError,
    MsgUnpackError,
    message_pack,
    msg_pack,
    msg_unpack,
    pack_fast,
    unpack_fast,
)

DATA = Path(__file__).resolve().parent / "data"
_CONFIG = ("prepare_pack", "unpack_object_hook", "unpack_object_pairs_hook", "unpack_list_hook",
           "max_str_len", "max_bin_len", "max_array_len", "max_map_len")


@pytest.fixture(autouse=True)
def restore_message_pack():
    """Undo any change a test makes to the global ``message_pack``."""
    saved = {name: getattr(message_pack, name) for name in _CONFIG}
    yield
    for name, value in saved.items():
        setattr(message_pack, name, value)
    message_pack.__dict__.pop("unrelated", None)


def _vectors():
    out = {}
    for line in (DATA / "vectors.txt").read_text().splitlines():
        if line.strip():
            name, hexdata = line.split()
            out[name] = bytes.fromhex(hexdata)
    return out


VECTORS = _vectors()
# Entries of vectors.txt that are msgpack values, with their decoded form.
MSGPACK_VECTORS = {
    "V_STR_HELLO": "hello",
    "V_INT_42": 42,
    "V_EMPTY_ARRAY": [],
    "V_EMPTY_MAP": {},
    "V_SINGLETON_OK": {"result": 42, "exception": None},
    "V_SINGLETON_EXC": {
        "result": None,
        "exception": [
            "ValueError",
            "ValueError('boom!')",
            'Traceback (most recent call last):\n  File ...\nValueError: boom!\n',
        ],
    },
}


@pytest.mark.parametrize("name", sorted(MSGPACK_VECTORS))
def test_golden_vector_decodes_and_reencodes_byte_exact(name):
    data = VECTORS[name]
    value = msg_unpack(data)
    assert value == MSGPACK_VECTORS[name]
    assert msg_pack(value) == data
    assert pack_fast(value) == data
    assert unpack_fast(data) == value


# More msgpack vectors, computed with the original's encoder.
ADDITIONAL = [
    ("echo", "a46563686f"),
    (("hello", 42), "92a568656c6c6f2a"),
    ({"flag": True}, "81a4666c6167c3"),
    ((b"heartbeat",), "91c409686561727462656174"),
    ({"result": b"200", "exception": None}, "82a6726573756c74c403323030a9657863657074696f6ec0"),
    ({"Echo": 8}, "81a44563686f08"),
    (1.5, "cb3ff8000000000000"),
    (300, "cd012c"),
    (-200, "d1ff38"),
    (2**40, "cf0000010000000000"),
    ([1, (2, 3)], "9201920203"),
    ({1: "a"}, "8101a161"),
    ("ü", "a2c3bc"),
    (-1, "ff"),
    (b"heartbeat", "c409686561727462656174"),
    ("x" * 40, "d928" + "78" * 40),
    (None, "c0"),
    (True, "c3"),
    (False, "c2"),
]


@pytest.mark.parametrize(("value", "hexdata"), ADDITIONAL, ids=[h[:16] for _, h in ADDITIONAL])
def test_additional_vectors(value, hexdata):
    assert msg_pack(value).hex() == hexdata
    assert pack_fast(value).hex() == hexdata


def test_float_is_always_float64():
    assert msg_pack(0.5)[0] == 0xCB
    assert len(msg_pack(0.1)) == 9


Point = collections.namedtuple("Point", "x y")


class MyStr(str):
    pass


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (None, None),
        (True, True),
        (False, False),
        (-(2**63), -(2**63)),
        (2**64 - 1, 2**64 - 1),
        (0, 0),
        (3.25, 3.25),
        (MyStr("abc"), "abc"),
        (b"\x00\xff", b"\x00\xff"),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"cd"), b"cd"),
        ((1, (2, 3)), [1, [2, 3]]),
        (Point(1, 2), [1, 2]),
        ({1: "a", b"k": 2, "s": None, 1.5: True, None: 0, True: 1}, {1: "a", b"k": 2, "s": None, 1.5: True, None: 0, True: 1}),
    ],
)
def test_round_trip_table(sent, received):
    out = msg_unpack(msg_pack(sent))
    assert out == received
    assert type(out) is type(received)


def test_dict_order_is_kept():
    d = {"b": 1, "a": 2, "c": 3}
    assert list(msg_unpack(msg_pack(d))) == ["b", "a", "c"]


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**63) - 1, {1, 2}, frozenset([1]), datetime.datetime(2020, 1, 1), decimal.Decimal("1.5"), object(), ValueError("x")],
    ids=["big", "small", "set", "frozenset", "datetime", "decimal", "object", "exception"],
)
def test_unpackable_values_raise_msgpackerror(value):
    with pytest.raises(MsgPackError) as info:
        msg_pack(value)
    assert str(info.value).startswith(f"{value} pack failed: ")
    name = "int" if isinstance(value, int) else type(value).__qualname__
    assert f"type '{name}'" in str(info.value) or f"type '{type(value).__module__}.{name}'" in str(info.value)
    assert info.value.__context__ is not None
    with pytest.raises(MsgPackError):
        pack_fast(value)


def test_errors_are_valueerrors():
    assert issubclass(MsgPackError, ValueError) and issubclass(MsgUnpackError, ValueError)
    assert MsgPackError.__bases__ == (ValueError,) and MsgUnpackError.__bases__ == (ValueError,)


def test_tuple_keys_pack_but_do_not_unpack():
    data = msg_pack({(1, 2): "x"})
    with pytest.raises(MsgUnpackError):
        msg_unpack(data)


@pytest.mark.parametrize("data", [b"\x90\x90", b"\x92\x01", b"\xa2\xff\xfe", b"", b"\xc1"])
def test_bad_input_raises_msgunpackerror(data):
    with pytest.raises(MsgUnpackError) as info:
        msg_unpack(data)
    assert str(info.value) == f"{data} unpack failed."


def test_packer_recovers_after_error():
    with pytest.raises(MsgPackError):
        msg_pack([1, {2}])
    assert msg_pack([1, 2]) == b"\x92\x01\x02"


def test_default_limits():
    assert MessagePack.DEFAULT_MAX_STR_LEN == 33554432 == message_pack.max_str_len
    assert MessagePack.DEFAULT_MAX_BIN_LEN == 33554432 == message_pack.max_bin_len
    assert MessagePack.DEFAULT_MAX_ARRAY_LEN == 1048576 == message_pack.max_array_len
    assert MessagePack.DEFAULT_MAX_MAP_LEN == 1048576 == message_pack.max_map_len


def test_array_and_map_limits_at_default():
    limit = MessagePack.DEFAULT_MAX_ARRAY_LEN
    ok = b"\xdd" + limit.to_bytes(4, "big") + b"\xc0" * limit
    assert len(msg_unpack(ok)) == limit
    too_long = b"\xdd" + (limit + 1).to_bytes(4, "big") + b"\xc0" * (limit + 1)
    with pytest.raises(MsgUnpackError):
        msg_unpack(too_long)
    big_map = b"\xdf" + (limit + 1).to_bytes(4, "big") + b"\x00\xc0" * (limit + 1)
    with pytest.raises(MsgUnpackError):
        msg_unpack(big_map)


def test_bin_limit_at_default():
    limit = MessagePack.DEFAULT_MAX_BIN_LEN
    assert len(msg_unpack(b"\xc6" + limit.to_bytes(4, "big") + bytes(limit))) == limit
    with pytest.raises(MsgUnpackError):
        msg_unpack(b"\xc6" + (limit + 1).to_bytes(4, "big") + bytes(limit + 1))


@pytest.mark.parametrize(
    ("attr", "ok", "bad"),
    [
        ("max_str_len", "abcd", "abcde"),
        ("max_bin_len", b"abcd", b"abcde"),
        ("max_array_len", [1, 2, 3, 4], [1, 2, 3, 4, 5]),
        ("max_map_len", dict.fromkeys(range(4)), dict.fromkeys(range(5))),
    ],
)
def test_limits_are_read_at_call_time(attr, ok, bad):
    setattr(message_pack, attr, 4)
    assert msg_unpack(msg_pack(ok)) == ok
    with pytest.raises(MsgUnpackError):
        msg_unpack(msg_pack(bad))
    delattr(message_pack, attr)
    assert msg_unpack(msg_pack(bad)) == bad


def test_prepare_pack_hook():
    message_pack.prepare_pack = lambda o: sorted(o) if isinstance(o, set) else str(o)
    assert msg_unpack(msg_pack({"s": {3, 1, 2}, "d": decimal.Decimal("1.5")})) == {"s": [1, 2, 3], "d": "1.5"}
    assert pack_fast({2, 1}) == msg_pack([1, 2])


def test_prepare_pack_may_call_msg_pack():
    def to_ext(o):
        return msgpack.ExtType(5, msg_pack(sorted(o)))

    message_pack.prepare_pack = to_ext
    data = msg_pack([{1, 2}, "tail"])
    assert msgpack.unpackb(data) == [msgpack.ExtType(5, msg_pack([1, 2])), "tail"]


def test_unpack_hooks():
    data = msg_pack({"a": [1, (2, 3)]})
    message_pack.unpack_list_hook = tuple
    assert msg_unpack(data) == {"a": (1, (2, 3))}
    message_pack.unpack_list_hook = None
    message_pack.unpack_object_hook = lambda d: sorted(d.items())
    assert msg_unpack(data) == [("a", [1, [2, 3]])]
    message_pack.unpack_object_hook = None
    message_pack.unpack_object_pairs_hook = lambda pairs: ("pairs", pairs)
    assert msg_unpack(data) == ("pairs", [("a", [1, [2, 3]])])


def test_list_hook_alias():
    message_pack.unpack_object_list_hook = tuple
    assert message_pack.unpack_list_hook is tuple
    assert message_pack.unpack_object_list_hook is tuple
    assert msg_unpack(msg_pack([1])) == (1,)
    del message_pack.unpack_object_list_hook
    assert message_pack.unpack_list_hook is None
    assert msg_unpack(msg_pack([1])) == [1]


@pytest.mark.parametrize("hook", ["prepare_pack", "unpack_object_hook", "unpack_object_pairs_hook", "unpack_list_hook"])
def test_hook_must_be_callable(hook):
    with pytest.raises(TypeError) as info:
        setattr(message_pack, hook, "nope")
    assert str(info.value) == f"`{hook}` is not callable"
    setattr(message_pack, hook, 0)  # falsy disables
    assert msg_unpack(msg_pack([1, {"a": 1}])) == [1, {"a": 1}]


@pytest.mark.parametrize("hook", ["prepare_pack", "unpack_object_hook", "unpack_object_pairs_hook", "unpack_list_hook"])
def test_del_resets_hook(hook):
    setattr(message_pack, hook, lambda *a: None)
    delattr(message_pack, hook)
    assert getattr(message_pack, hook) is None
    assert msg_unpack(msg_pack([1, {"a": 1}])) == [1, {"a": 1}]


def test_unrelated_attributes_are_plain():
    message_pack.unrelated = 1
    assert message_pack.unrelated == 1
    del message_pack.unrelated
    with pytest.raises(AttributeError):
        message_pack.unrelated  # noqa: B018


def test_other_instances_do_not_affect_global():
    other = MessagePack()
    other.unpack_list_hook = tuple
    assert other.loads(msg_pack([1])) == (1,)
    assert msg_unpack(msg_pack([1])) == [1]
    assert other.dumps((1, 2)) == msg_pack([1, 2])


def test_manager_proxies_are_unwrapped():
    import multiprocessing

    with multiprocessing.Manager() as manager:
        assert msg_unpack(msg_pack(manager.Value("i", 7))) == 7
        assert msg_unpack(msg_pack(manager.dict({"a": 1}))) == {"a": 1}
        assert msg_unpack(msg_pack(manager.list([1, 2]))) == [1, 2]
        assert msg_unpack(msg_pack(manager.Array("i", [1, 2, 3]))) == [1, 2, 3]
        assert msg_unpack(pack_fast(manager.list([3]))) == [3]


def test_threads_pack_concurrently():
    values = [{"i": i, "payload": list(range(i % 50)), "b": bytes(i % 7)} for i in range(2000)]
    expected = [msgpack.packb(v) for v in values]
    errors = []

    def work():
        for v, e in zip(values, expected):
            if msg_pack(v) != e or pack_fast(v) != e:
                errors.append(v)
                return

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def _normalize(v):
    if isinstance(v, (list, tuple)):
        return [_normalize(x) for x in v]
    if isinstance(v, dict):
        return {k: _normalize(x) for k, x in v.items()}
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return v


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5) | st.binary(max_size=3), children, max_size=5),
    max_leaves=20,
)


@hsettings(max_examples=200, deadline=None)
@given(values)
def test_round_trip_hypothesis(value):
    data = msg_pack(value)
    assert data == msgpack.packb(value)  # byte-exact with msgpack defaults
    assert pack_fast(value) == data
    assert msg_unpack(data) == _normalize(value)
    assert unpack_fast(data) == _normalize(value)


def test_compiled_state_follows_global_instance():
    message_pack.max_array_len = 2
    assert serialization._unpack_kwargs["max_array_len"] == 2
    message_pack.unpack_list_hook = tuple
    assert serialization._unpack_kwargs["list_hook"] is tuple
