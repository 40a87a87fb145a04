"""gaterpc.wire: the request decoder and the reply classifier (no sockets)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaterpc.serialization import msg_pack
from gaterpc.wire import (
    BadRequest, HugeChunk, HugeEnd, HugeError, Request, Single, StreamEnd, StreamError, StreamItem,
    classify_reply, decode_request, is_partial,
)

P = msg_pack


@pytest.mark.parametrize("frames, expected", [
    ([P("f")], Request("f", [], {})),
    ([P("f"), P([1, 2])], Request("f", [1, 2], {})),
    ([P("f"), P([1]), P({"x": 1})], Request("f", [1], {"x": 1})),
    ([P(3), P([])], Request(3, [], {})),  # a non-str name is decoded; the receiver does not find it
])
def test_decode_request_valid(frames, expected):
    assert decode_request(frames) == expected


@pytest.mark.parametrize("frames, message", [
    ([], "0 body frames (1 to 3 expected)"),
    ([P("f"), P([]), P({}), P(1)], "4 body frames (1 to 3 expected)"),
    ([P("f"), P({"a": 1})], "the arguments frame is not an array"),
    ([P("f"), P(5)], "the arguments frame is not an array"),
    ([P("f"), P([]), P([1])], "the keyword arguments frame is not a map"),
    ([P("f"), P([]), P({"__client_id": b"x"})], "must not start with '__'"),
    ([P("f"), P([]), msgpack.packb({1: 2})], "must be str"),
])
def test_decode_request_bad(frames, message):
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_request(frames)


def test_decode_request_in_place():
    msg = [b"client", b"", b"rid", P("add"), P([1, 2])]
    assert decode_request(msg, 3) == Request("add", [1, 2], {})
    with pytest.raises(BadRequest, match="0 body frames"):
        decode_request(msg, 5)


def test_decode_request_undecodable_frame_raises():
    with pytest.raises(Exception):
        decode_request([b"\xc1"])  # 0xc1 is never valid MessagePack


@pytest.mark.parametrize("body, event, partial", [
    ([b"env"], Single(b"env"), False),
    ([b"GateStreamGenerator", b"item"], StreamItem(b"item"), True),
    ([b"GateStreamGenerator", b"GateStreamEnd"], StreamEnd(), False),
    ([b"GateStreamGenerator", b"GateStreamException", b"tri"], StreamError(b"tri"), False),
    ([b"GateStreamHugData", b"chunk"], HugeChunk(b"chunk"), True),
    ([b"GateStreamHugData", b"HugeDataEND"], HugeEnd(), False),
    ([b"GateStreamHugData", b"HugeDataException", b"tri"], HugeError(b"tri"), False),
    ([b"GateStreamHugData", b"GateStreamException", b"tri"], HugeError(b"tri"), False),
])
def test_classify_reply(body, event, partial):
    got = classify_reply(body)
    assert got == event and is_partial(got) is partial


@pytest.mark.parametrize("body", [[], [b"x", b"y"], [b"GateStreamGenerator", b"a", b"b"]])
def test_classify_reply_rejects(body):
    with pytest.raises(ValueError, match="not a reply body"):
        classify_reply(body)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(name=st.text(max_size=10), args=st.lists(_values, max_size=4),
       kwargs=st.dictionaries(st.text(max_size=6), _values, max_size=3))
def test_decode_request_roundtrip_or_clear_error(name, args, kwargs):
    frames = [P(name), P(args), P(kwargs)]
    if any(k.startswith("__") for k in kwargs):
        with pytest.raises(BadRequest):
            decode_request(frames)
        return
    req = decode_request(frames)
    assert req.func_name == name and list(req.args) == args and req.kwargs == kwargs


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=5))
def test_decode_request_any_bytes_never_escapes_with_another_error(frames):
    try:
        decode_request(frames)
    except BadRequest:
        pass
    except Exception as exc:  # undecodable MessagePack: the serializer's own error
        assert type(exc).__name__ in ("MsgUnpackError", "ExtraData", "ValueError", "UnpackValueError",
                                      "FormatError", "StackError", "OutOfData"), repr(exc)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from([b"GateStreamGenerator", b"GateStreamHugData", b"GateStreamEnd",
                                 b"HugeDataEND", b"GateStreamException", b"HugeDataException", b"x"]),
                max_size=4))
def test_classify_reply_agrees_with_is_terminal(body):
    from gaterpc._speedups.frames import is_terminal

    try:
        event = classify_reply(body)
    except ValueError:
        assert is_terminal(body)  # invalid bodies end the request in the broker's view
        return
    assert is_terminal(body) is not is_partial(event)


# -- the reused per-thread Unpacker of decode_request ------------------------------


def _unpack_error(data):
    from gaterpc.serialization import msg_unpack
    try:
        msg_unpack(data)
    except Exception as exc:  # noqa: BLE001
        return type(exc), str(exc)
    raise AssertionError("msg_unpack accepted it")


@pytest.mark.parametrize("junk", [
    b"\xc1",                 # never valid
    P("f") + b"\x01",        # trailing bytes after a complete value
    P("abcdef")[:3],         # truncated
    b"",                     # empty frame
])
def test_decode_request_junk_frame_fails_like_msg_unpack_and_the_next_decode_is_clean(junk):
    expected = _unpack_error(junk)
    with pytest.raises(expected[0]) as info:
        decode_request([junk])
    assert str(info.value) == expected[1]
    with pytest.raises(expected[0]):
        decode_request([P("f"), junk])
    # nothing of the junk is left behind for the next request
    assert decode_request([P("g"), P([1, "x"]), P({"k": b"v"})]) == Request("g", [1, "x"], {"k": b"v"})


def test_decode_request_follows_message_pack_settings():
    from gaterpc.serialization import message_pack
    assert decode_request([P("f"), P([[1, 2]])]) == Request("f", [[1, 2]], {})
    message_pack.unpack_list_hook = tuple
    try:
        req = decode_request([P("f"), P([[1, 2]])])
        assert req.args == ((1, 2),)
        message_pack.max_str_len = 3
        with pytest.raises(ValueError, match="max_str_len"):
            decode_request([P("long name")])
    finally:
        del message_pack.unpack_list_hook
        del message_pack.max_str_len
    assert decode_request([P("long name"), P([[1]])]) == Request("long name", [[1]], {})


def test_decode_request_accepts_other_buffers():
    assert decode_request([bytearray(P("f")), memoryview(P([2]))]) == Request("f", [2], {})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=3))
def test_decode_request_matches_msg_unpack_on_any_bytes(frames):
    from gaterpc.serialization import msg_unpack
    try:
        expected = [msg_unpack(f) for f in frames]
    except Exception as exc:  # noqa: BLE001
        with pytest.raises(type(exc)):
            decode_request(frames)
        return
    try:
        req = decode_request(frames)
    except BadRequest:
        return
    assert [req.func_name, req.args, req.kwargs][:len(frames)] == expected
