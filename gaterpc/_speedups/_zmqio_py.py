"""Non-blocking batch I/O on one pyzmq socket (pure-Python twin of ``_zmqio_c``).

Uses pyzmq's own calls.  The compiled twin calls libzmq directly and must
give the same results and raise the same exceptions (including ``errno``).

A ``bytes`` frame of at least ``ZERO_COPY_MIN`` bytes (``gaterpc.protocol``)
is sent with pyzmq's ``copy=False``: libzmq reads the ``bytes`` object itself
and pyzmq drops its reference once libzmq is done with it (pyzmq does that in
its own thread, so :func:`release_sent` has nothing to do here).  A frame
received as a view (``recv_nocopy_min``) and passed on whole is sent as the
``zmq.Frame`` it shows: libzmq shares the received message (no copy).
"""

from __future__ import annotations

import errno as _errno
from typing import Any, Callable, Iterable, List, Optional

import zmq
import zmq.asyncio

from gaterpc.protocol import ZERO_COPY_MIN

__all__ = ("ZSocketIO", "release_sent")

_NOBLOCK: int = zmq.NOBLOCK
_SNDMORE: int = zmq.SNDMORE
_EVENTS: int = zmq.EVENTS
_Again = zmq.Again


def release_sent() -> int:
    """Drop now the references held for zero-copy frames libzmq has finished sending.

    pyzmq releases them in its own thread: always 0 in this twin.
    """
    return 0


def _lendable(f: Any) -> bool:
    """True for a frame libzmq may send without a copy: a large ``bytes``, or a view received whole.

    Only immutable memory may be lent: a ``bytes`` object, or a read-only
    view of a received ``zmq.Frame`` (what ``recv_nocopy_min`` returns; the
    frame keeps its libzmq message until pyzmq is done sending it).  A
    ``bytearray`` or a slice is copied.
    """
    if type(f) is bytes:
        return len(f) >= ZERO_COPY_MIN
    if type(f) is not memoryview or f.nbytes < ZERO_COPY_MIN:
        return False
    owner: object = f.obj
    return type(owner) is zmq.Frame and f.nbytes == len(owner)


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

    Counters (read-only ints, for metrics): ``rx_msgs``/``rx_bytes`` count
    the complete messages returned by ``recv_batch`` and the sum of their
    frame sizes; ``tx_msgs``/``tx_bytes`` the messages ``send``/
    ``send_many`` sent whole and their frame sizes (a message that would
    block is not counted).  Every frame counts, including a ROUTER's
    routing-id frame.  ``tx_nocopy_frames``/``tx_nocopy_bytes`` count the
    frames of those messages handed to libzmq without a copy (``bytes`` of
    at least ``ZERO_COPY_MIN`` bytes) and their sizes.

    ``recv_nocopy_min`` (default 0: off): a received frame of at least that
    many bytes is returned as a read-only ``memoryview`` of libzmq's own
    buffer instead of a ``bytes`` copy (``rx_nocopy_frames`` counts them).
    Smaller frames stay ``bytes``.  Only for a receiver whose code accepts
    any buffer in those frames (msgpack, ``==``, ``len``, forwarding).
    """

    __slots__ = ("socket", "_io", "_recv", "_send", "_rx_msgs", "_rx_bytes", "_tx_msgs", "_tx_bytes",
                 "_tx_nocopy_frames", "_tx_nocopy_bytes", "_rx_nocopy_frames", "_recv_nocopy_min")

    socket: zmq.Socket[Any]
    _io: zmq.Socket[Any]
    _recv: Callable[[int], List[bytes]]
    _send: Callable[..., Optional[Any]]

    def __init__(self, sock: zmq.Socket[Any], recv_nocopy_min: int = 0) -> None:
        if type(recv_nocopy_min) is not int or recv_nocopy_min < 0:
            raise ValueError(f"recv_nocopy_min must be an int >= 0, got {recv_nocopy_min!r}")
        if not isinstance(sock, zmq.Socket):
            raise TypeError(f"expected a zmq.Socket, got {type(sock).__name__}")
        if sock.closed:
            raise zmq.ZMQError(_errno.ENOTSOCK)
        self.socket = sock
        # An asyncio socket's methods return futures: do the I/O on a
        # synchronous shadow of the same libzmq socket instead.
        io: zmq.Socket[Any] = zmq.Socket.shadow(sock.underlying) if isinstance(sock, zmq.asyncio.Socket) else sock
        self._io = io
        self._recv = io.recv_multipart
        self._send = io.send
        self._rx_msgs = 0
        self._rx_bytes = 0
        self._tx_msgs = 0
        self._tx_bytes = 0
        self._tx_nocopy_frames = 0
        self._tx_nocopy_bytes = 0
        self._rx_nocopy_frames = 0
        self._recv_nocopy_min = recv_nocopy_min

    @property
    def rx_msgs(self) -> int:
        """Complete messages received."""
        return self._rx_msgs

    @property
    def rx_bytes(self) -> int:
        """Bytes of the frames of the messages received."""
        return self._rx_bytes

    @property
    def tx_msgs(self) -> int:
        """Messages sent whole."""
        return self._tx_msgs

    @property
    def tx_bytes(self) -> int:
        """Bytes of the frames of the messages sent."""
        return self._tx_bytes

    @property
    def tx_nocopy_frames(self) -> int:
        """Frames of the messages sent that were handed to libzmq without a copy."""
        return self._tx_nocopy_frames

    @property
    def tx_nocopy_bytes(self) -> int:
        """Bytes of those frames."""
        return self._tx_nocopy_bytes

    @property
    def rx_nocopy_frames(self) -> int:
        """Frames received as a view of libzmq's buffer (``recv_nocopy_min``)."""
        return self._rx_nocopy_frames

    @property
    def recv_nocopy_min(self) -> int:
        """Received frames of at least this many bytes are not copied (0: off)."""
        return self._recv_nocopy_min

    def recv_batch(self, max_msgs: int) -> List[List[bytes]]:
        """Up to ``max_msgs`` complete multipart messages; ``[]`` when nothing is ready."""
        if self.socket.closed:
            raise zmq.ZMQError(_errno.ENOTSOCK)
        if self._recv_nocopy_min:
            return self._recv_batch_nocopy(max_msgs)
        out: List[List[bytes]] = []
        recv = self._recv
        nbytes = 0
        try:
            for _ in range(max_msgs):
                try:
                    msg = recv(_NOBLOCK)
                except _Again:
                    break
                out.append(msg)
                nbytes += sum(map(len, msg))
        finally:
            # Messages already taken off the socket count even if a later one raised.
            self._rx_msgs += len(out)
            self._rx_bytes += nbytes
        return out

    def _recv_batch_nocopy(self, max_msgs: int) -> List[List[Any]]:
        out: List[List[Any]] = []
        recv = self._io.recv_multipart
        least = self._recv_nocopy_min
        nbytes = 0
        nocopy = 0
        try:
            for _ in range(max_msgs):
                try:
                    parts = recv(_NOBLOCK, copy=False)
                except _Again:
                    break
                msg: List[Any] = []
                for part in parts:
                    size = len(part)
                    if size >= least:
                        msg.append(memoryview(part).toreadonly())  # type: ignore[arg-type]  # zmq.Frame exports the buffer protocol
                        nocopy += 1
                    else:
                        msg.append(part.bytes)
                    nbytes += size
                out.append(msg)
        finally:
            self._rx_msgs += len(out)
            self._rx_bytes += nbytes
            self._rx_nocopy_frames += nocopy
        return out

    def send(self, frames: Iterable[Any]) -> bool:
        """Send one multipart message; ``False`` and nothing sent if it would block."""
        if self.socket.closed:
            raise zmq.ZMQError(_errno.ENOTSOCK)
        frames = list(frames)
        n = len(frames)
        if n == 0:
            raise ValueError("a message needs at least one frame")
        # Validate every frame before sending the first one: a failure in the
        # middle would leave a partial multipart message in the socket.
        nbytes = 0
        nocopy = 0
        nocopy_bytes = 0
        try:
            for f in frames:
                if type(f) is bytes:
                    size = len(f)
                    if size >= ZERO_COPY_MIN:
                        nocopy += 1
                        nocopy_bytes += size
                else:
                    size = memoryview(f).nbytes
                    if size >= ZERO_COPY_MIN and _lendable(f):
                        nocopy += 1
                        nocopy_bytes += size
                nbytes += size
        except TypeError:
            # The compiled twin's message (memoryview's names itself).
            raise TypeError(f"a bytes-like object is required, not '{type(f).__name__}'") from None
        send = self._send
        last = n - 1
        if not nocopy:
            try:
                send(frames[0], _NOBLOCK | _SNDMORE if n > 1 else _NOBLOCK)
            except _Again:
                return False
            for i in range(1, n):
                send(frames[i], _NOBLOCK | _SNDMORE if i < last else _NOBLOCK)
        else:
            # Only an immutable ``bytes`` may be lent: a bytearray could change under libzmq.
            for i in range(n):
                f = frames[i]
                flags = _NOBLOCK | _SNDMORE if i < last else _NOBLOCK
                try:
                    if nocopy and _lendable(f):
                        # a received view is sent as its zmq.Frame: libzmq shares the message
                        send(f if type(f) is bytes else f.obj, flags, copy=False)
                    else:
                        send(f, flags)
                except _Again:
                    if i:
                        raise
                    return False
            self._tx_nocopy_frames += nocopy
            self._tx_nocopy_bytes += nocopy_bytes
        self._tx_msgs += 1
        self._tx_bytes += nbytes
        return True

    def send_many(self, messages: Iterable[Iterable[Any]]) -> int:
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
