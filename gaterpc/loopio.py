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
per iteration).

A ROUTER that sends (the broker's frontend and backend) runs in *per-peer*
mode: ``ZMQ_ROUTER_MANDATORY`` is set, so a peer at its high-water mark
makes the send fail with EAGAIN instead of dropping the message silently;
the message waits in that peer's own backlog (other peers are not held up),
and messages to peers that are gone (EHOSTUNREACH) are dropped.  A peer's
backlog is bounded (``PEER_BACKLOG_MESSAGES``/``PEER_BACKLOG_BYTES``): a peer
that stops reading loses what exceeds it, instead of growing the broker
without bound.
"""

from __future__ import annotations

import logging
from collections import deque

import zmq

from gaterpc._speedups.zmqio import ZSocketIO
from gaterpc.counters import count_drop

__all__ = ("LoopSocket",)

_POLLIN = zmq.POLLIN
_POLLOUT = zmq.POLLOUT
_EHOSTUNREACH = zmq.EHOSTUNREACH
logger = logging.getLogger("gaterpc")

#: Per-peer backlog bounds of a per-peer (ROUTER) LoopSocket.
PEER_BACKLOG_MESSAGES = 1_000_000
PEER_BACKLOG_BYTES = 512 * 1024 * 1024


class LoopSocket:
    """Batch reads and non-blocking writes of one ZeroMQ socket on an event loop."""

    __slots__ = (
        "loop", "socket", "io", "fd", "_handler", "_backlog", "_check_scheduled",
        "_drain_waiters", "_closed", "batch", "rounds", "_flush_timer", "_on_error",
        "_per_peer", "_peers", "_peer_count", "dropped", "on_unreachable", "__weakref__",
    )

    def __init__(self, loop, sock, handler, *, batch=256, rounds=4, on_error=None, per_peer=False,
                 on_unreachable=None):
        self.loop = loop
        self.socket = sock
        self.io = ZSocketIO(sock)
        self.fd = sock.getsockopt(zmq.FD)
        self._handler = handler
        self._backlog = deque()
        self._check_scheduled = False
        self._drain_waiters = []
        self._closed = False
        self._flush_timer = None
        self._on_error = on_error
        self.batch = batch
        self.rounds = rounds
        self._per_peer = per_peer
        self._peers = {}        # peer id -> [deque of messages, bytes]
        self._peer_count = 0    # messages in all peer backlogs
        self.dropped = 0        # messages dropped: peer gone or its backlog full
        # per-peer mode: called with the peer id when a send finds the peer gone (EHOSTUNREACH);
        # the message was dropped and counted.  Not called for a full backlog.
        self.on_unreachable = on_unreachable
        if per_peer:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        loop.add_reader(self.fd, self._on_event)
        self._schedule_check()

    @property
    def closed(self):
        """True once :meth:`close` ran (or the socket failed)."""
        return self._closed

    def backlog_size(self):
        """Number of messages waiting for the socket to become writable."""
        return len(self._backlog) + self._peer_count

    # -- reading --------------------------------------------------------------

    def _schedule_check(self):
        if not self._check_scheduled and not self._closed:
            self._check_scheduled = True
            self.loop.call_soon(self._check)

    def _check(self):
        self._check_scheduled = False
        self._on_event()

    def _on_event(self):
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

    def send(self, frames):
        """Send one multipart message without blocking (queued at the HWM)."""
        if self._closed:
            return False
        if self._per_peer:
            return self._send_to_peer(frames)
        backlog = self._backlog
        if backlog:
            backlog.append(frames)
        else:
            try:
                if not self.io.send(frames):
                    backlog.append(frames)
                    self._arm_flush_timer()
            except zmq.ZMQError as exc:
                self._fail(exc)
                return False
        if not self._check_scheduled:
            self._check_scheduled = True
            self.loop.call_soon(self._check)
        return True

    def _send_to_peer(self, frames):
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
            entry = self._peers[peer] = [deque(), 0]
            self._arm_flush_timer()
        size = 0
        for f in frames:
            size += len(f)
        if len(entry[0]) >= PEER_BACKLOG_MESSAGES or entry[1] + size > PEER_BACKLOG_BYTES:
            self.dropped += 1
            return False
        entry[0].append(frames)
        entry[1] += size
        self._peer_count += 1
        return True

    def _flush_peers(self):
        send = self.io.send
        peers = self._peers
        gone = None
        for peer in list(peers):
            entry = peers[peer]
            queue = entry[0]
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
                    queue.clear()
                    if gone is None:
                        gone = []
                    gone.append((peer, n))
                    break
                queue.popleft()
                self._peer_count -= 1
                for f in frames:
                    entry[1] -= len(f)
            if not queue:
                del peers[peer]
        if gone is not None:
            for peer, n in gone:
                self._unreachable(peer, n)
        if peers:
            self._arm_flush_timer()

    def _unreachable(self, peer, n):
        self.dropped += n
        count_drop("peer_unreachable", n)
        cb = self.on_unreachable
        if cb is not None:
            try:
                cb(peer)
            except Exception:  # a handler bug must not stop the socket
                logger.exception("error in the unreachable-peer handler")

    def _flush(self):
        if self._peer_count:
            self._flush_peers()
            if self._peer_count:
                return
        backlog = self._backlog
        send = self.io.send
        while backlog:
            if not send(backlog[0]):
                self._arm_flush_timer()
                return
            backlog.popleft()
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _arm_flush_timer(self):
        # Safety net: the FD should signal writability, but poll now and then.
        if self._flush_timer is None and not self._closed:
            self._flush_timer = self.loop.call_later(0.01, self._flush_timer_fired)

    def _flush_timer_fired(self):
        self._flush_timer = None
        if (self._backlog or self._peer_count) and not self._closed:
            self._on_event()
            if self._backlog or self._peer_count:
                self._arm_flush_timer()

    async def drain(self):
        """Wait until every queued message has been handed to ZeroMQ."""
        if not (self._backlog or self._peer_count) or self._closed:
            return
        fut = self.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    # -- closing --------------------------------------------------------------

    def _fail(self, exc):
        if self._closed:
            return
        self.close()
        cb = self._on_error
        if cb is not None:
            cb(exc)

    def close(self, linger=0):
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
