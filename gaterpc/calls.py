"""Call side of :class:`gaterpc.client.Client`: encoding and queueing requests, their deadlines.

``_CallSender`` is mixed into ``Client`` (which owns the attributes it
declares), as ``client_replies._ReplyHandler`` is for the reply side; the
call path is described in ``gaterpc/client.py``.  Also here: the
value-size check before sending and the latency histogram.
"""

from __future__ import annotations

import asyncio
import bisect
import struct
import sys
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Mapping, Optional, Sequence

from gaterpc.global_settings import Settings
from gaterpc.loopio import BacklogBudgetError
from gaterpc.metrics import LATENCY_BUCKETS
from gaterpc.serialization import msg_pack, pack_fast as _pack

if TYPE_CHECKING:
    from gaterpc._speedups.reqtable import RequestTable
    from gaterpc.hugedata import HugeDataReceiver
    from gaterpc.loopio import LoopSocket
    from gaterpc.streams import StreamReply

__all__ = ("VALUE_LIMIT", "oversized", "check_value_sizes", "observe")

_EMPTY_MAP = b"\x80"
_EMPTY_ARRAY = b"\x90"
# Request ids: 8 random bytes drawn once per client, then a 64-bit counter
# (16 bytes, unique per client and, in practice, everywhere).
_RID = struct.Struct(">8sQ")
# Stale deadline pairs tolerated (beyond twice the pending calls) before a rebuild.
_DEADLINES_SLACK = 2048
_Future = asyncio.Future


def _plain_future_loop(loop: Optional[asyncio.AbstractEventLoop]) -> Optional[asyncio.AbstractEventLoop]:
    """``loop`` if its ``create_future()`` is asyncio's or uvloop's (both return
    ``asyncio.Future(loop=loop)``, which is cheaper to call directly), else None."""
    if loop is None:
        return None
    create = type(loop).create_future
    if create is asyncio.BaseEventLoop.create_future:
        return loop
    uvloop = sys.modules.get("uvloop")
    if uvloop is not None and type(loop) is getattr(uvloop, "Loop", None):
        return loop
    return None

#: What msgpack decoders accept in one str/bytes value by default (ours and the original's).
VALUE_LIMIT = 32 * 1024 * 1024


def oversized(value: Any, depth: int = 0) -> Optional[int]:
    """The size of the first str/bytes value over the decode limit in ``value``, or None."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        size = len(value.encode("utf-8")) if isinstance(value, str) else memoryview(value).nbytes
        return size if size > VALUE_LIMIT else None
    if depth < 32:
        if isinstance(value, (list, tuple)):
            for item in value:
                found = oversized(item, depth + 1)
                if found is not None:
                    return found
        elif isinstance(value, dict):
            for key, item in value.items():
                found = oversized(key, depth + 1)
                if found is None:
                    found = oversized(item, depth + 1)
                if found is not None:
                    return found
    return None


def check_value_sizes(func_name: str, args: Any, kwargs: Any) -> None:
    """Refuse, before sending, an argument no receiver would decode (only asked for large frames)."""
    size = oversized(args)
    if size is None:
        size = oversized(kwargs)
    if size is not None:
        raise ValueError(
            f"an argument of {func_name}() is {size:,} bytes: a single str/bytes value above "
            f"{VALUE_LIMIT:,} bytes (32 MiB) is refused by msgpack receivers. Send large data as "
            "several smaller values, or return it from the worker as HugeData (gaterpc.utils.HugeData), "
            "which is compressed and sent in chunks.")


def observe(latency: dict[str, list[Any]], service: str, seconds: float) -> None:
    """Add one call's latency to the per-service histogram (buckets of gaterpc.metrics)."""
    entry = latency.get(service)
    if entry is None:
        entry = latency[service] = [[0] * (len(LATENCY_BUCKETS) + 1), 0, 0.0]
    entry[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    entry[1] += 1
    entry[2] += seconds


class _CallSender:
    """The call side of a client (mixed into ``Client``, which owns the attributes below)."""

    _loop: Optional[asyncio.AbstractEventLoop]
    _plain_loop: Optional[asyncio.AbstractEventLoop]
    _lsock: Optional[LoopSocket]
    _is_ready: bool
    _remote_services: set[str]
    _service_cache: dict[str, bytes]
    _func_cache: dict[str, bytes]
    _header: bytes
    _zap_frames_bytes: Sequence[bytes]
    _rid_prefix: bytes
    _rid_next: int
    _deadlines: Deque[Any]
    _last_deadline: float
    _outbox: list[Sequence[bytes]]
    _table: RequestTable
    _streams: dict[bytes, StreamReply]
    _huge: dict[bytes, HugeDataReceiver]
    _stat_calls: int
    _stat_errors: int
    _latency: Optional[dict[str, list[Any]]]
    replies: dict[bytes, asyncio.Future[Any]]
    reply_timeout: float
    default_service: str
    last_message_sent_time: float

    if TYPE_CHECKING:  # defined by client_replies._ReplyHandler
        def _forget(self, request_id: bytes) -> None: ...

        def _fail(self, request_id: bytes, exc: BaseException) -> None: ...

    def _send_request(
        self, service_name: Optional[str], func_name: str, args: Sequence[Any],
        kwargs: Optional[Mapping[str, Any]], fast: bool = False,
    ) -> Optional[bytes]:
        """Encode and queue one request; registers its Future (``replies[rid]``) and deadline.

        Returns the request id.  With ``fast`` (a user's call), ``None`` when
        the call needs the slow path first (not connected or not ready yet, a
        service the client does not know, the pending limit reached): nothing
        was sent then.  Bad arguments raise before anything is sent.
        """
        if fast:
            if not self._is_ready:
                return None
            if not service_name:
                service_name = self.default_service
            if service_name not in self._remote_services or len(self.replies) >= Settings.MESSAGE_MAX:
                return None
        assert service_name  # the slow path resolved it
        lsock = self._lsock
        if lsock is None:
            raise RuntimeError("Gate service not yet ready.")
        service_b = self._service_cache.get(service_name)
        if service_b is None:
            service_b = self._service_cache[service_name] = service_name.encode("utf-8")
        func_b = self._func_cache.get(func_name)
        if func_b is None:
            func_b = msg_pack(func_name)
            if len(self._func_cache) < 4096:
                self._func_cache[func_name] = func_b
        args_b = _pack(args) if args else _EMPTY_ARRAY
        kwargs_b = _pack(kwargs) if kwargs else _EMPTY_MAP
        if len(args_b) > VALUE_LIMIT or len(kwargs_b) > VALUE_LIMIT:
            check_value_sizes(func_name, args, kwargs)
        n = self._rid_next
        self._rid_next = n + 1
        request_id = _RID.pack(self._rid_prefix, n)
        zap = self._zap_frames_bytes
        if zap:
            frames = (b"", self._header, service_b, *zap, request_id, func_b, args_b, kwargs_b)
        else:
            frames = (b"", self._header, service_b, request_id, func_b, args_b, kwargs_b)
        loop = self._loop
        assert loop is not None  # bound before the socket exists
        now = loop.time()
        replies = self.replies
        replies[request_id] = _Future(loop=loop) if loop is self._plain_loop else loop.create_future()
        deadline = now + self.reply_timeout
        if deadline >= self._last_deadline:
            self._last_deadline = deadline
            dl = self._deadlines
            # Calls are mostly answered in order: drop the answered ones at the front.
            while dl and dl[1] not in replies:
                dl.popleft()
                dl.popleft()
            dl.append(deadline)
            dl.append(request_id)
            if len(dl) > 4 * len(replies) + _DEADLINES_SLACK:  # a long call holds the front
                self._compact_deadlines()
        else:  # reply_timeout was lowered: keep the deadline order
            self._table.add(request_id, None, deadline)
        self.last_message_sent_time = now
        out = self._outbox
        out.append(frames)
        if len(out) == 1:
            loop.call_soon(self._flush_outbox)
        self._stat_calls += 1
        return request_id

    def _flush_outbox(self) -> None:
        out = self._outbox
        if not out:
            return
        self._outbox = []
        lsock = self._lsock
        if lsock is None:
            return
        # One call for the burst; what the socket does not take now is queued in order.
        n = lsock.send_many(out)
        if n < len(out):
            send = lsock.send
            for i in range(n, len(out)):
                frames = out[i]
                try:
                    send(frames)
                except BacklogBudgetError as exc:
                    self._fail(frames[-4], exc)

    def _compact_deadlines(self) -> None:
        """Drop the deadlines of answered calls (O(n), after O(n) calls: O(1) per call)."""
        replies = self.replies
        old = self._deadlines
        new: Deque[Any] = deque()
        while old:
            deadline = old.popleft()
            rid = old.popleft()
            if rid in replies:
                new.append(deadline)
                new.append(rid)
        self._deadlines = new

    def _call_failed(self, request_id: bytes, service_name: Optional[str], t0: float) -> None:
        """A call raised (remote error, timeout, lost broker, cancelled): count it, drop its state."""
        self._stat_errors += 1
        if request_id not in self._streams:
            self._forget(request_id)
        if self._latency is not None:
            self._observe(service_name, t0)

    def _observe(self, service_name: Optional[str], t0: float) -> None:
        latency = self._latency
        loop = self._loop
        if latency is not None and loop is not None:
            observe(latency, service_name or self.default_service, loop.time() - t0)
