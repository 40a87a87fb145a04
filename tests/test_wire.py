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
