"""Small helpers shared by the rooms of the gate package (no state of their own)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from typing import Any, Sequence

import zmq

from gaterpc.global_settings import Settings
from gaterpc.protocol import STREAM_END
from gaterpc.serialization import msg_unpack

from ._typed import RemoteException, StreamReply

Glogger = logging.getLogger("gaterpc.gate")

#: Length of the discovery datagram (id 16 + member 6 + command 1 + cluster 16 + port 4).
_MCAST_LEN = 43
#: The TCP port at the end of a discovery datagram (signed 32-bit, big-endian).
_PORT = struct.Struct("!i")
_UPDATE_EVENTS = ("UpdateService", "UpdateActiveService")

#: A multipart message as received: a list of frames.
Frames = list[bytes]


def _setting(name: str, default: Any) -> Any:
    """A setting that older settings modules may not define."""
    try:
        value = getattr(Settings, name)
    except AttributeError:
        return default
    return default if value is None else value


class _Replies(dict):  # type: ignore[type-arg]
    """``request id -> Future``; ``pop`` of a missing id returns ``None``.

    Entries are removed when they resolve, so code written for the original
    (which pops after awaiting) must not fail on a missing key.
    """

    def pop(self, key: Any, *default: Any) -> Any:
        return super().pop(key, default[0] if default else None)


class _Forward:
    """A request forwarded to a peer, until its terminal reply message."""

    __slots__ = ("requester", "service", "service_b", "seen", "checked")

    def __init__(self, requester: bytes, service: str, service_b: bytes) -> None:
        self.requester = requester
        self.service = service
        self.service_b = service_b
        self.seen = 0      # reply messages relayed so far
        self.checked = 0   # ``seen`` at the last time-out check


def _ignore(msgs: list[Frames]) -> None:
    """Handler of the DEALERs to peers (peers never answer on them)."""


def _send_raw(sock: zmq.Socket[Any], frames: Sequence[bytes]) -> bool:
    """Send without blocking on a plain socket; False if it would block or failed."""
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False
    except zmq.ZMQError:
        return False


def _reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _is_ipv4(value: object) -> bool:
    try:
        ipaddress.IPv4Address(str(value))
        return True
    except ValueError:
        return False


def _new_stream() -> StreamReply:
    return StreamReply(STREAM_END, maxsize=Settings.STREAM_REPLY_MAXSIZE, timeout=Settings.REPLY_TIMEOUT)


def _remote_error_info(info: object) -> RemoteException:
    if isinstance(info, (list, tuple)) and len(info) == 3:
        return RemoteException([str(x) for x in info])
    return RemoteException(str(info))


def _remote_error(packed: bytes) -> RemoteException:
    try:
        return _remote_error_info(msg_unpack(packed))
    except Exception:
        return RemoteException("undecodable remote error")
