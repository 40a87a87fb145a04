"""ZeroMQ sockets driven by the asyncio event loop, in batches.

A :class:`LoopSocket` wraps a plain (synchronous) pyzmq socket.  It watches
the socket's ``FD`` with ``loop.add_reader``; ZeroMQ signals that descriptor
edge-triggered, so on every wake-up the socket is drained in batches until it
would block, and the handler gets whole batches (a list of multipart
messages) -- no task, future or await per message.  Sending never blocks: a
message that meets the high-water mark waits in a backlog that is flushed
when the socket becomes writable; ``await drain()`` lets a producer (a
stream) wait for it.

Because a send can consume the descriptor's edge, every send schedules one
re-check of ``EVENTS`` for the next loop iteration (at most one per socket
per iteration).  A burst of messages (the worker's replies to one batch,
the client's requests of one loop iteration) goes to ZeroMQ in one call,
:meth:`LoopSocket.send_many`; the caller queues what it did not take with
:meth:`LoopSocket.send` (:meth:`LoopSocket.send_all` does both).

A ROUTER that sends (the broker's frontend and backend) runs in *per-peer*
mode: ``ZMQ_ROUTER_MANDATORY`` is set, so a peer at its high-water mark
makes the send fail with EAGAIN instead of dropping the message silently;
the message waits in that peer's own backlog (other peers are not held up).
Messages to a peer that is gone (EHOSTUNREACH) are dropped, counted
(``peer_unreachable``) and reported through ``on_unreachable(peer_id)``: the
broker uses it to forget a vanished client.

One **process-wide budget** bounds every backlog of every LoopSocket of the
process together: ``Settings.BACKLOG_MAX_MESSAGES`` messages and
``Settings.BACKLOG_MAX_BYTES`` bytes (default 1,000,000 and 256 MiB, read
when a LoopSocket is created).  Only messages that have to wait count; a
message sent at once costs nothing.  A message that would push the process
over the budget is not queued: the drop is counted (``backlog_budget``) and
the socket's ``on_over_budget(frames)`` callback decides what the sender is
told (the broker ends that client's request with an error reply naming the
budget and cancels it at the worker; the worker replaces a refused reply with
such an error reply); a socket without that callback raises
:class:`BacklogBudgetError` from :meth:`LoopSocket.send`.  Nothing is dropped
silently.  :func:`backlog_budget` reports the current use.

**Large frames.**  A ``bytes`` frame of at least ``ZERO_COPY_MIN`` (64 KiB,
``gaterpc.protocol``) is handed to libzmq without a copy; libzmq holds a
reference to it until the frame is on the wire (so keep sending ``bytes``,
not ``bytearray``, for big payloads: a mutable buffer is always copied).  On
receive, frames are ``bytes`` copies unless the socket is created with
``recv_nocopy_min=N``: frames of at least ``N`` bytes then arrive as
read-only ``memoryview`` objects over libzmq's buffer (equal to the
``bytes``, hashable, accepted by msgpack and by :meth:`LoopSocket.send`, but
without ``.decode``); a handler that keeps, forwards or unpacks such frames
saves one copy of each, and a view sent on whole shares libzmq's message (no
copy at all).  The broker, worker and client sockets use
``recv_nocopy_min=ZERO_COPY_MIN``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

import zmq

from gaterpc._speedups.zmqio import ZSocketIO
from gaterpc.counters import count_drop
from gaterpc.global_settings import Settings

__all__ = ("LoopSocket", "BacklogBudgetError", "backlog_budget")

_POLLIN = zmq.POLLIN
_POLLOUT = zmq.POLLOUT
_EHOSTUNREACH = zmq.EHOSTUNREACH
logger = logging.getLogger("gaterpc")

#: One multipart message as handed to :meth:`LoopSocket.send` (its frames).
Frames = Sequence[bytes]
#: Receives each batch of multipart messages read from the socket.
BatchHandler = Callable[[List[List[bytes]]], object]


class BacklogBudgetError(BufferError):
    """A message would push the process over its backlog budget (it was not sent)."""


class _Budget:
    __slots__ = ("messages", "bytes", "max_messages", "max_bytes")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.max_messages = 1_000_000
        self.max_bytes = 256 * 1024 * 1024

    def refresh(self) -> None:
        self.max_messages = int(Settings.BACKLOG_MAX_MESSAGES)
        self.max_bytes = int(Settings.BACKLOG_MAX_BYTES)

    def describe(self) -> str:
        return (f"the process-wide send backlog budget is exhausted "
                f"(Settings.BACKLOG_MAX_MESSAGES={self.max_messages}, "
                f"Settings.BACKLOG_MAX_BYTES={self.max_bytes}; {self.messages} messages, "
                f"{self.bytes} bytes waiting): the receiver does not keep up")


_BUDGET = _Budget()


def backlog_budget() -> Dict[str, int]:
    """``{"messages", "bytes", "max_messages", "max_bytes"}`` of the process-wide backlog budget."""
    b = _BUDGET
    return {"messages": b.messages, "bytes": b.bytes, "max_messages": b.max_messages,
            "max_bytes": b.max_bytes}


def budget_message() -> str:
    """The text of the error given to whoever exceeds the budget."""
    return _BUDGET.describe()


def _size(frames: Frames) -> int:
    size = 0
    for f in frames:
        size += len(f)
    return size


class LoopSocket:
    """Batch reads and non-blocking writes of one ZeroMQ socket on an event loop."""

    __slots__ = (
        "loop", "socket", "io", "fd", "_handler", "_backlog", "_check_scheduled",
        "_drain_waiters", "_closed", "batch", "rounds", "_flush_timer", "_on_error",
        "_per_peer", "_peers", "_peer_count", "dropped", "on_unreachable", "on_over_budget",
        "_queued_bytes", "__weakref__",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[bytes],
        handler: BatchHandler,
        *,
        batch: int = 256,
        rounds: int = 4,
        on_error: Optional[Callable[[zmq.ZMQError], object]] = None,
        per_peer: bool = False,
        on_unreachable: Optional[Callable[[bytes], object]] = None,
        on_over_budget: Optional[Callable[[Frames], object]] = None,
        recv_nocopy_min: int = 0,
    ) -> None:
        self.loop = loop
        self.socket = sock
        self.io = ZSocketIO(sock, recv_nocopy_min)
        self.fd = int(sock.getsockopt(zmq.FD))  # an int for FD (getsockopt is typed int | bytes)
        self._handler = handler
        self._backlog: Deque[Frames] = deque()
        self._check_scheduled = False
        self._drain_waiters: List[asyncio.Future[None]] = []
        self._closed = False
        self._flush_timer: Optional[asyncio.TimerHandle] = None
        self._on_error = on_error
        self.batch = batch
        self.rounds = rounds
        self._per_peer = per_peer
        # peer id -> [deque of messages (Deque[Frames]), bytes (int)]
        self._peers: Dict[bytes, List[Any]] = {}
        self._peer_count = 0    # messages in all peer backlogs
        self._queued_bytes = 0  # bytes in this socket's backlogs (part of the process budget)
        self.dropped = 0        # messages dropped: peer gone or over the budget
        # per-peer mode: called with the peer id when a send finds the peer gone (EHOSTUNREACH);
        # the message was dropped and counted.
        self.on_unreachable = on_unreachable
        # called with the frames of a message refused because of the process-wide budget
        # (dropped and counted); without it send() raises BacklogBudgetError.
        self.on_over_budget = on_over_budget
        _BUDGET.refresh()
        if per_peer:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        loop.add_reader(self.fd, self._on_event)
        self._schedule_check()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the socket failed)."""
        return self._closed

    def backlog_size(self) -> int:
        """Number of messages waiting for the socket to become writable."""
        return len(self._backlog) + self._peer_count

    def backlog_bytes(self) -> int:
        """Bytes of the messages waiting for the socket to become writable."""
        return self._queued_bytes

    def peer_backlog(self, peer: bytes) -> tuple[int, int]:
        """``(messages, bytes)`` waiting for ``peer`` (per-peer mode)."""
        entry = self._peers.get(peer)
        return (0, 0) if entry is None else (len(entry[0]), entry[1])

    # -- reading --------------------------------------------------------------

    def _schedule_check(self) -> None:
        if not self._check_scheduled and not self._closed:
            self._check_scheduled = True
            self.loop.call_soon(self._check)

    def _check(self) -> None:
        self._check_scheduled = False
        self._on_event()

    def _on_event(self) -> None:
        if self._closed:
            return
        io = self.io
        try:
            if self._backlog or self._peer_count:
                self._flush()
            handler = self._handler
            for _ in range(self.rounds):
                msgs = io.recv_batch(self.batch)
                if not msgs:
                    break
                try:
                    handler(msgs)
                except Exception:  # a handler bug must not stop the socket
                    logger.exception("error while handling a batch of messages")
                if self._closed:
                    return
            else:
                # More may be waiting: yield to the loop, then continue.
                self._schedule_check()
                return
            events = io.events()
            if events & _POLLIN or ((self._backlog or self._peer_count) and events & _POLLOUT):
                self._schedule_check()
        except zmq.ZMQError as exc:
            self._fail(exc)

    # -- writing --------------------------------------------------------------

    def send(self, frames: Frames) -> bool:
        """Send one multipart message without blocking (queued at the HWM).

        Returns True when the message was sent or queued, False when it was
        dropped (socket closed, peer gone, or over the process-wide budget
        with an ``on_over_budget`` callback, which was called).  Raises
        :class:`BacklogBudgetError` when it would exceed the budget and the
        socket has no ``on_over_budget`` callback.
        """
        if self._closed:
            return False
        if self._per_peer:
            return self._send_to_peer(frames, False)
        backlog = self._backlog
        if backlog:
            return self._enqueue(frames, False)
        try:
            if not self.io.send(frames):
                if not self._enqueue(frames, False):
                    return False
                self._arm_flush_timer()
        except zmq.ZMQError as exc:
            self._fail(exc)
            return False
        if not self._check_scheduled:
            self._check_scheduled = True
            self.loop.call_soon(self._check)
        return True

    def send_many(self, messages: Sequence[Frames]) -> int:
        """Send at once, in order, as many of ``messages`` as the socket takes; how many.

        One call into the I/O layer for a whole burst (the worker's replies
        of one batch, the client's requests of one loop iteration) instead
        of one :meth:`send` per message.  Only when nothing waits in a
        backlog and the socket is not in per-peer mode; otherwise, and from
        the first message the socket would not take, it stops: the caller
        hands the rest (``messages[n:]``) to :meth:`send`, which queues them
        in order.  0 when the socket is closed or fails (:meth:`send` then
        drops the rest, as it drops any message of a closed socket).
        """
        if self._closed or self._per_peer or self._backlog or not messages:
            return 0
        try:
            n: int = self.io.send_many(messages)
        except zmq.ZMQError as exc:
            self._fail(exc)
            return 0
        if n and not self._check_scheduled:
            self._check_scheduled = True
            self.loop.call_soon(self._check)
        return n

    def send_all(self, messages: Sequence[Frames]) -> None:
        """Send every message of ``messages``, in order: what the socket takes at
        once in one call (:meth:`send_many`), the rest through :meth:`send`
        (queued in order; raises as :meth:`send` does when over the budget).
        """
        n = self.send_many(messages)
        if n < len(messages):
            send = self.send
            for i in range(n, len(messages)):
                send(messages[i])

    def send_forced(self, frames: Frames) -> bool:
        """Like :meth:`send`, but a message that has to wait is queued even over the budget.

        For the few small messages that tell a receiver its request failed.
        """
        if self._closed:
            return False
        if self._per_peer:
            return self._send_to_peer(frames, True)
        if not self._backlog:
            try:
                if self.io.send(frames):
                    self._schedule_check()
                    return True
            except zmq.ZMQError as exc:
                self._fail(exc)
                return False
            self._arm_flush_timer()
        return self._enqueue(frames, True)

    def _enqueue(self, frames: Frames, force: bool) -> bool:
        size = _size(frames)
        b = _BUDGET
        if not force and (b.messages >= b.max_messages or b.bytes + size > b.max_bytes):
            return self._over_budget(frames)
        b.messages += 1
        b.bytes += size
        self._queued_bytes += size
        self._backlog.append(frames)
        if not self._check_scheduled:
            self._check_scheduled = True
            self.loop.call_soon(self._check)
        return True

    def _over_budget(self, frames: Frames) -> bool:
        self.dropped += 1
        count_drop("backlog_budget")
        cb = self.on_over_budget
        if cb is None:
            raise BacklogBudgetError(_BUDGET.describe())
        try:
            cb(frames)
        except Exception:  # a handler bug must not stop the socket
            logger.exception("error in the over-budget handler")
        return False

    def _send_to_peer(self, frames: Frames, force: bool) -> bool:
        peer = frames[0]
        entry = self._peers.get(peer)
        if entry is None:
            try:
                if self.io.send(frames):
                    if not self._check_scheduled:
                        self._check_scheduled = True
                        self.loop.call_soon(self._check)
                    return True
            except zmq.ZMQError as exc:
                if exc.errno == _EHOSTUNREACH:
                    self._unreachable(peer, 1)
                    return False
                self._fail(exc)
                return False
        size = _size(frames)
        b = _BUDGET
        if not force and (b.messages >= b.max_messages or b.bytes + size > b.max_bytes):
            return self._over_budget(frames)
        if entry is None:
            entry = self._peers[peer] = [deque(), 0]
            self._arm_flush_timer()
        entry[0].append(frames)
        entry[1] += size
        self._peer_count += 1
        self._queued_bytes += size
        b.messages += 1
        b.bytes += size
        return True

    def drop_peer(self, peer: bytes) -> int:
        """Drop everything waiting for ``peer`` (counted); returns the number of messages."""
        entry = self._peers.pop(peer, None)
        if entry is None:
            return 0
        n = len(entry[0])
        self._release(n, entry[1])
        self._peer_count -= n
        self.dropped += n
        count_drop("peer_dropped", n)
        return n

    def _release(self, n: int, size: int) -> None:
        self._queued_bytes -= size
        b = _BUDGET
        b.messages -= n
        b.bytes -= size

    def _flush_peers(self) -> None:
        send = self.io.send
        peers = self._peers
        gone: Optional[List[tuple[bytes, int]]] = None
        for peer in list(peers):
            entry = peers.get(peer)
            if entry is None:
                continue
            queue: Deque[Frames] = entry[0]
            while queue:
                frames = queue[0]
                try:
                    if not send(frames):
                        break
                except zmq.ZMQError as exc:
                    if exc.errno != _EHOSTUNREACH:
                        raise
                    n = len(queue)
                    self._peer_count -= n
                    self._release(n, entry[1])
                    entry[1] = 0
                    queue.clear()
                    if gone is None:
                        gone = []
                    gone.append((peer, n))
                    break
                queue.popleft()
                self._peer_count -= 1
                size = _size(frames)
                entry[1] -= size
                self._release(1, size)
            if not queue:
                del peers[peer]
        if gone is not None:
            for peer, n in gone:
                self._unreachable(peer, n)
        if peers:
            self._arm_flush_timer()

    def _unreachable(self, peer: bytes, n: int) -> None:
        self.dropped += n
        count_drop("peer_unreachable", n)
        cb = self.on_unreachable
        if cb is not None:
            try:
                cb(peer)
            except Exception:  # a handler bug must not stop the socket
                logger.exception("error in the unreachable-peer handler")

    def _flush(self) -> None:
        if self._peer_count:
            self._flush_peers()
            if self._peer_count:
                return
        backlog = self._backlog
        send = self.io.send
        while backlog:
            frames = backlog[0]
            if not send(frames):
                self._arm_flush_timer()
                return
            backlog.popleft()
            self._release(1, _size(frames))
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _arm_flush_timer(self) -> None:
        # Safety net: the FD should signal writability, but poll now and then.
        if self._flush_timer is None and not self._closed:
            self._flush_timer = self.loop.call_later(0.01, self._flush_timer_fired)

    def _flush_timer_fired(self) -> None:
        self._flush_timer = None
        if (self._backlog or self._peer_count) and not self._closed:
            self._on_event()
            if self._backlog or self._peer_count:
                self._arm_flush_timer()

    async def drain(self) -> None:
        """Wait until every queued message has been handed to ZeroMQ."""
        if not (self._backlog or self._peer_count) or self._closed:
            return
        fut = self.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    # -- closing --------------------------------------------------------------

    def _fail(self, exc: zmq.ZMQError) -> None:
        if self._closed:
            return
        self.close()
        cb = self._on_error
        if cb is not None:
            cb(exc)

    def close(self, linger: int = 0) -> None:
        """Stop watching the socket and close it (pending messages are dropped)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.remove_reader(self.fd)
        except Exception:  # the loop may already be closed
            pass
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        pending = len(self._backlog) + self._peer_count
        if pending:
            count_drop("socket_closed", pending)
        self._release(pending, self._queued_bytes)
        self._backlog.clear()
        self._peers.clear()
        self._peer_count = 0
        try:
            self.io.close(linger)
        except zmq.ZMQError:
            pass
        waiters = self._drain_waiters
        self._drain_waiters = []
        for w in waiters:
            if not w.done():
                w.set_exception(ConnectionError("socket closed"))
