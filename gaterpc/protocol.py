"""Wire constants and small helpers shared by the roles (docs/PROTOCOL.md, "Constants").

Roles copy the values they need from ``Settings`` when they are built (the
header frames depend on ``MDP_VERSION``/``GATE_VERSION``); the defaults here
are the original's.  Frame splitting lives in ``gaterpc._speedups.frames``.

This module is the single Python definition of every constant the hot paths
share: the pure twins in ``gaterpc._speedups`` import theirs from here, and
the compiled twins ``cimport`` the same values from
``gaterpc/_speedups/_wire.pxd`` (``tests/test_twins_parity.py`` checks that
the two agree).  It imports nothing from ``gaterpc._speedups``, so any of
them may import it.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, List

__all__ = (
    "EMPTY", "READY", "REQUEST", "REPLY", "HEARTBEAT", "DISCONNECT", "CANCEL", "CREDIT", "CREDIT_HEADER",
    "STREAM_TAG", "STREAM_END", "STREAM_EXC", "HUGE_TAG", "HUGE_END", "HUGE_EXC",
    "GATE_NOTICE", "GATE_INVITE", "GATE_JOIN", "GATE_WHISPER", "GATE_HEARTBEAT", "GATE_LEAVE", "GATE_CREDIT",
    "KEEPALIVE_ARG", "KEEPALIVE_OK", "KEEPALIVE_BAD",
    "SINGLE_HEAD", "SINGLE_OK_TAIL", "SINGLE_ERR_MID",
    "KIND_INVALID", "KIND_SINGLE", "KIND_STREAM_ITEM", "KIND_STREAM_END", "KIND_STREAM_ERROR",
    "KIND_HUGE_CHUNK", "KIND_HUGE_END", "KIND_HUGE_ERROR",
    "REQTABLE_SLACK", "HUGE_UNLIMITED_STEP", "ZERO_COPY_MIN",
    "OWN_RID_MARK", "OWN_RID_COUNTER_BASE", "own_request_id",
    "exception_triple", "error_body", "ok_body", "ok_body_bytes", "BIN32_MAX",
)

EMPTY = b""
READY = b"\x01"
REQUEST = b"\x02"
REPLY = b"\x03"
HEARTBEAT = b"\x04"
DISCONNECT = b"\x05"
#: Addition (broker -> worker): ``[worker, '', MDPW01, 06, client_id, '', request_id]``
#: -- stop producing for that request (its client vanished or cannot keep up).
#: The original 0.2.x worker ignores command bytes it does not know.
CANCEL = b"\x06"
#: Addition (broker -> worker): ``[worker, '', MDPW01, 07, client_id, '', request_id, credit]``
#: -- the caller of that HugeData transfer has processed ``credit`` compressed bytes
#: (8 bytes, big-endian).  Forwarded from a client's ``CREDIT_HEADER`` message to the
#: worker the request is in flight at; an original worker ignores it, like CANCEL.
CREDIT = b"\x07"
#: Addition (client -> broker): ``[client, '', CREDIT_HEADER, service, request_id, credit]``.
#: Our clients send it while they receive a HugeData transfer (flow control).  The
#: original broker drops every message whose header is not ``MDPC01``, silently.
CREDIT_HEADER = b"MDPC01-credit"

STREAM_TAG = b"GateStreamGenerator"
STREAM_END = b"GateStreamEnd"
STREAM_EXC = b"GateStreamException"
HUGE_TAG = b"GateStreamHugData"
HUGE_END = b"HugeDataEND"
HUGE_EXC = b"HugeDataException"

GATE_NOTICE = b"\x00"
GATE_INVITE = b"\x01"
GATE_JOIN = b"\x02"
GATE_WHISPER = b"\x03"
GATE_HEARTBEAT = b"\x04"
GATE_LEAVE = b"\x05"
#: Addition (gate -> peer gate): ``['', GATE01, 06, *zap, service, request_id, credit]``
#: -- a client's HugeData credit (see ``CREDIT``) for a request this gate forwarded to
#: that peer; the peer passes it to its worker as CREDIT.  The original gate drops
#: command bytes it does not know before it looks at anything else, silently.
GATE_CREDIT = b"\x06"

KEEPALIVE_ARG = b"heartbeat"
KEEPALIVE_OK = b"200"
KEEPALIVE_BAD = b"400"

# A single-frame reply body is the msgpack map {"result": r, "exception": e}
# (the original's format).  With the packed value or error triple in hand it is built
# by concatenation: HEAD + mp(r) + OK_TAIL, or HEAD + ERR_MID + mp(triple).
SINGLE_HEAD = b"\x82\xa6result"
SINGLE_OK_TAIL = b"\xa9exception\xc0"
SINGLE_ERR_MID = b"\xc0\xa9exception"

# Reply body kinds returned by ``gaterpc._speedups.frames.reply_kind``.
KIND_INVALID = -1
KIND_SINGLE = 0
KIND_STREAM_ITEM = 1
KIND_STREAM_END = 2
KIND_STREAM_ERROR = 3
KIND_HUGE_CHUNK = 4
KIND_HUGE_END = 5
KIND_HUGE_ERROR = 6

# Not on the wire, but shared by both twins of a hot path.
#: ``RequestTable``: stale index references tolerated beyond twice the live entries before a rebuild.
REQTABLE_SLACK = 1024
#: HugeData: output asked of a decompressor per call when there is no size limit.
HUGE_UNLIMITED_STEP = 64 * 1024 * 1024
#: ``ZSocketIO``: a ``bytes`` frame of at least this many bytes is handed to libzmq
#: without copying it (the same threshold as pyzmq's ``zmq.COPY_THRESHOLD``), and
#: the roles (broker, worker, client) receive frames of at least this many bytes as
#: read-only ``memoryview`` objects over libzmq's message (``recv_nocopy_min``).
ZERO_COPY_MIN = 64 * 1024

#: Bytes 8 and 9 of every request id our clients make.  An id is 16 bytes: 8 random
#: bytes drawn once per client, then a 64-bit big-endian counter that starts at
#: ``OWN_RID_COUNTER_BASE``, so its two top bytes are this mark for the first 2**48
#: calls of a client.  The original's ids are UUID4s, whose byte 8 (the variant) is
#: always 0x80-0xbf: they never carry the mark.  A worker uses it to tell a client of
#: this implementation (which takes HugeData chunks of any size) from another one.
OWN_RID_MARK = b"\x00G"
OWN_RID_COUNTER_BASE = int.from_bytes(OWN_RID_MARK, "big") << 48


def own_request_id(request_id: bytes) -> bool:
    """True when ``request_id`` was made by a client of this implementation (``OWN_RID_MARK``)."""
    return len(request_id) == 16 and request_id[8:10] == OWN_RID_MARK


def exception_triple(exc: BaseException, with_traceback: bool = True) -> List[str]:
    """``[class_name, repr, traceback_text]`` as the original sends it in error replies."""
    tb = "".join(traceback.format_tb(exc.__traceback__)) if with_traceback else ""
    return [type(exc).__name__, repr(exc), tb]


def error_body(pack: Callable[[Any], bytes], exc: BaseException, with_traceback: bool = True) -> bytes:
    """The single-frame error reply body for ``exc``."""
    return SINGLE_HEAD + SINGLE_ERR_MID + pack(exception_triple(exc, with_traceback))


def ok_body(pack: Callable[[Any], bytes], value: Any) -> bytes:
    """The single-frame reply body for ``value`` (raises the packer's error)."""
    return SINGLE_HEAD + pack(value) + SINGLE_OK_TAIL


#: The largest ``bytes`` value MessagePack can carry (bin 32).
BIN32_MAX = 0xFFFFFFFF


def ok_body_bytes(value: bytes) -> bytes:
    """The single-frame reply body for a ``bytes`` result of ``ZERO_COPY_MIN`` .. ``BIN32_MAX`` bytes.

    Byte for byte what :func:`ok_body` gives with the message packer (a
    ``bytes`` of more than 65,535 bytes is a MessagePack bin 32: ``0xc6``,
    the length as 4 big-endian bytes, the bytes), built with one copy of
    ``value`` and one allocation instead of a packed copy and then the
    body: two fresh 1 MiB allocations cost far more than one memcpy (page
    faults).  The caller checks the type and the size.
    """
    return b"".join((SINGLE_HEAD, b"\xc6", len(value).to_bytes(4, "big"), value, SINGLE_OK_TAIL))
