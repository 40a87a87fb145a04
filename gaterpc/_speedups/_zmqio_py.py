"""Non-blocking batch I/O on one pyzmq socket (pure-Python twin of ``_zmqio_c``).

Uses pyzmq's own calls.  The compiled twin calls libzmq directly and must
give the same results and raise the same exceptions (including ``errno``).
"""

from __future__ import annotations

import errno as _errno
from typing import Any, List, Sequence

import zmq
import zmq.asyncio

__all__ = ("ZSocketIO",)

_NOBLOCK = zmq.NOBLOCK
_SNDMORE = zmq.SNDMORE
_EVENTS = zmq.EVENTS
_Again = zmq.Again


class ZSocketIO:
    """Non-blocking batch I/O on one pyzmq socket (sync zmq.Socket; the caller integrates the FD with asyncio).

    ``recv_batch(n)`` returns up to ``n`` complete multipart messages (each a
    list of ``bytes``), ``[]`` when nothing is ready; ``send(frames)`` sends
    one multipart message atomically or returns ``False`` with nothing sent
    if it would block; ``send_many(messages)`` stops at the first that would
    block and returns the count sent; ``events()`` is ``ZMQ_EVENTS``;
    ``close(linger)`` closes the socket, after which every call raises
    ``zmq.ZMQError(ENOTSOCK)``.  Errors other than EAGAIN are raised as
    pyzmq raises them (EINTR is retried).
    """

    __slots__ = ("socket", "_io", "_recv", "_send")

    def __init__(self, sock: zmq.Socket) -> None:
        if not isinstance(sock, zmq.Socket):
            raise TypeError(f"expected a zmq.Socket, got {type(sock).__name__}")
        if sock.closed:
            raise zmq.ZMQError(_errno.ENOTSOCK)
        self.socket = sock
        # An asyncio socket's methods return futures: do the I/O on a
        # synchronous shadow of the same libzmq socket instead.
        io = zmq.Socket.shadow(sock.underlying) if isinstance(sock, zmq.asyncio.Socket) else sock
        self._io = io
        self._recv = io.recv_multipart
        self._send = io.send

    def recv_batch(self, max_msgs: int) -> List[List[bytes]]:
        """Up to ``max_msgs`` complete multipart messages; ``[]`` when nothing is ready."""
        if self.socket.closed:
            raise zmq.ZMQError(_errno.ENOTSOCK)
        out: list = []
        recv = self._recv
        for _ in range(max_msgs):
            try:
                out.append(recv(_NOBLOCK))
            except _Again:
                break
        return out

    def send(self, frames: Sequence[Any]) -> bool:
        """Send one multipart message; ``False`` and nothing sent if it would block."""
        if self.socket.closed:
            raise zmq.ZMQError(_errno.ENOTSOCK)
        frames = list(frames)
        n = len(frames)
        if n == 0:
            raise ValueError("a message needs at least one frame")
        # Validate every frame before sending the first one: a failure in the
        # middle would leave a partial multipart message in the socket.
        for f in frames:
            if type(f) is not bytes:
                memoryview(f)
        send = self._send
        try:
            send(frames[0], _NOBLOCK | _SNDMORE if n > 1 else _NOBLOCK)
        except _Again:
            return False
        last = n - 1
        for i in range(1, n):
            send(frames[i], _NOBLOCK | _SNDMORE if i < last else _NOBLOCK)
        return True

    def send_many(self, messages: Sequence[Sequence[Any]]) -> int:
        """Send messages in order, stopping at the first that would block; return how many were sent."""
        sent = 0
        send = self.send
        for frames in messages:
            if not send(frames):
                break
            sent += 1
        return sent

    def events(self) -> int:
        """The socket's ``ZMQ_EVENTS`` (POLLIN=1, POLLOUT=2)."""
        if self.socket.closed:
            raise zmq.ZMQError(_errno.ENOTSOCK)
        return int(self._io.get(_EVENTS))

    def close(self, linger: int = 0) -> None:
        """Close the socket (idempotent); later calls raise ``zmq.ZMQError(ENOTSOCK)``."""
        self.socket.close(linger=linger)
