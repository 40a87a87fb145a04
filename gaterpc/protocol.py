"""Wire constants and small helpers shared by the roles (docs/PROTOCOL.md, "Constants").

Roles copy the values they need from ``Settings`` when they are built (the
header frames depend on ``MDP_VERSION``/``GATE_VERSION``); the defaults here
are the original's.  Frame splitting lives in ``gaterpc._speedups.frames``.
"""

from __future__ import annotations

import traceback

from gaterpc._speedups.frames import singleton_error, singleton_ok

__all__ = (
    "EMPTY", "READY", "REQUEST", "REPLY", "HEARTBEAT", "DISCONNECT", "CANCEL",
    "STREAM_TAG", "STREAM_END", "STREAM_EXC", "HUGE_TAG", "HUGE_END", "HUGE_EXC",
    "GATE_NOTICE", "GATE_INVITE", "GATE_JOIN", "GATE_WHISPER", "GATE_HEARTBEAT", "GATE_LEAVE",
    "KEEPALIVE_ARG", "KEEPALIVE_OK", "KEEPALIVE_BAD",
    "exception_triple", "error_body", "ok_body",
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

KEEPALIVE_ARG = b"heartbeat"
KEEPALIVE_OK = b"200"
KEEPALIVE_BAD = b"400"


def exception_triple(exc, with_traceback=True):
    """``[class_name, repr, traceback_text]`` as the original sends it (docs/PROTOCOL.md, "Exception triple")."""
    tb = "".join(traceback.format_tb(exc.__traceback__)) if with_traceback else ""
    return [type(exc).__name__, repr(exc), tb]


def error_body(pack, exc, with_traceback=True):
    """The single-frame error reply body for ``exc``."""
    return singleton_error(pack(exception_triple(exc, with_traceback)))


def ok_body(pack, value):
    """The single-frame reply body for ``value`` (raises the packer's error)."""
    return singleton_ok(pack(value))
