"""Reply handling of :class:`gaterpc.client.Client`: single replies, streams and HugeData.

Replies arrive in batches from the client socket's event-loop callback and
resolve their futures there (no task per reply).  Frames are described in
``docs/PROTOCOL.md`` ("Reply body").  While a HugeData transfer comes in, the
client tells the worker how far its receiver got (``CREDIT_HEADER``
messages, ``Settings.HUGE_DATA_WINDOW``; docs/PROTOCOL.md, "HugeData flow
control"): one message when the first chunk arrives, then one each time the
receiver's thread finished a segment and the previous one was sent, so a
few dozen per 8 MiB of compressed data.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any, Optional, Sequence

from gaterpc.counters import count_drop
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings
from gaterpc.hugedata import INLINE_OUTPUT, HugeDataReceiver
from gaterpc.loopio import BacklogBudgetError
from gaterpc.protocol import (
    CREDIT_HEADER, HUGE_END, HUGE_TAG, KIND_HUGE_CHUNK, KIND_HUGE_END, KIND_HUGE_ERROR, KIND_STREAM_END,
    KIND_STREAM_ERROR, KIND_STREAM_ITEM, STREAM_END,
)
from gaterpc._speedups.frames import reply_kind
from gaterpc.serialization import MsgUnpackError, msg_unpack
from gaterpc.streams import StreamReply

if TYPE_CHECKING:
    from gaterpc.loopio import LoopSocket
    from gaterpc._speedups.reqtable import RequestTable

__all__ = ("INLINE_DECODE_MAX", "_ReplyHandler", "_remote_error")

#: HugeData results whose encoded form is larger than this are decoded off the
#: event loop: by the receiver's thread as the chunks come (streaming decode,
#: :class:`gaterpc.hugedata.StreamDecoder`), the end in the default thread executor.
INLINE_DECODE_MAX = INLINE_OUTPUT


def _remote_error(info: Any) -> RemoteException:
    """``RemoteException`` from a wire exception triple (or anything else sent)."""
    if isinstance(info, (list, tuple)) and len(info) == 3:
        return RemoteException([str(x) for x in info])
    return RemoteException(str(info))


def _settle(fut: asyncio.Future[Any], done: asyncio.Future[Any]) -> None:
    """Copy the outcome of an executor job into ``fut`` (if still waiting)."""
    if fut.done():
        return
    if done.cancelled():
        fut.cancel()
        return
    exc = done.exception()
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(done.result())


class _ReplyHandler:
    """The reply side of a client (mixed into ``Client``, which owns the attributes below)."""

    _loop: Optional[asyncio.AbstractEventLoop]
    _last_recv: float
    _header: bytes
    _probe_id: Optional[bytes]
    _table: RequestTable
    _streams: dict[bytes, StreamReply]
    _huge: dict[bytes, HugeDataReceiver]
    replies: dict[bytes, asyncio.Future[Any]]
    stream_reply_maxsize: int
    reply_timeout: float
    _lsock: Optional[LoopSocket]

    def _on_messages(self, msgs: Sequence[Sequence[bytes]]) -> None:
        loop = self._loop
        assert loop is not None  # the socket exists only on a bound loop
        self._last_recv = loop.time()
        header = self._header
        replies = self.replies
        # A single reply's request is in the table only if its deadline was out of
        # order (reply_timeout lowered); nothing in this batch adds such a request.
        table_pop = self._table.pop if len(self._table) else None
        unpack = msg_unpack
        huge = self._huge
        for msg in msgs:
            n = len(msg)
            if n < 5 or msg[0] or msg[1] != header:
                count_drop("client_malformed_reply")
                continue
            request_id = msg[3]
            if n == 5:
                fut = replies.pop(request_id, None)
                if fut is None:
                    if request_id != self._probe_id:
                        count_drop("client_unknown_reply")  # late (timed out) or abandoned
                    continue
                if fut.done():  # a stream or HugeData reply in progress: not for a single frame
                    replies[request_id] = fut
                    continue
                if table_pop is not None:
                    table_pop(request_id)
                if huge:
                    # a single reply ends a HugeData transfer left unfinished: drop its receiver
                    receiver = huge.pop(request_id, None)
                    if receiver is not None:
                        receiver.close()
                try:
                    reply = unpack(msg[4])
                    if type(reply) is not dict:
                        raise MsgUnpackError("the reply is not a map")
                except MsgUnpackError as exc:
                    fut.set_exception(exc)
                    continue
                err = reply.get("exception")
                if err:
                    fut.set_exception(_remote_error(err))
                else:
                    fut.set_result(reply.get("result"))
            else:
                if n == 6 and huge and msg[4] == HUGE_TAG:
                    # a chunk of a HugeData transfer under way (the common case, thousands per
                    # transfer with small chunks): straight to its receiver
                    receiver = huge.get(request_id)
                    frame = msg[5]
                    if receiver is not None and frame != HUGE_END:
                        try:
                            receiver.feed(frame)
                        except Exception as exc:  # corrupt stream or payload
                            self._fail(request_id, exc)
                            continue
                        if receiver.progress_due:
                            # credit now, not after this whole batch (see _send_credit)
                            self._send_credit(bytes(msg[2]), request_id)
                        self._table.add(request_id, None, loop.time() + self.reply_timeout)
                        continue
                fut = replies.get(request_id)
                if fut is None:
                    if request_id != self._probe_id:
                        count_drop("client_unknown_reply")
                    continue
                try:
                    self._on_multi(request_id, fut, msg[4:], msg[2])
                except Exception as exc:  # corrupt stream or HugeData
                    self._fail(request_id, exc)

    def _on_multi(self, request_id: bytes, fut: asyncio.Future[Any], body: Sequence[bytes],
                  service: bytes = b"") -> None:
        """A reply of several frames: a stream item/end/error or a HugeData chunk/end/error.

        The body is classified by :func:`gaterpc._speedups.frames.reply_kind`,
        the one reply classifier that the broker, the gate and
        :func:`gaterpc.wire.classify_reply` use too.
        """
        loop = self._loop
        assert loop is not None  # the socket exists only on a bound loop
        k = reply_kind(body)
        if k == KIND_STREAM_ITEM or k == KIND_STREAM_END or k == KIND_STREAM_ERROR:
            stream = self._streams.get(request_id)
            if stream is None:
                if fut.done():
                    return
                stream = StreamReply(STREAM_END, maxsize=self.stream_reply_maxsize, timeout=self.reply_timeout)
                stream._on_close = functools.partial(self._forget, request_id)
                self._streams[request_id] = stream
                fut.set_result(stream)
            if k == KIND_STREAM_END:
                stream._put_end()
                self._forget(request_id)
                return
            if k == KIND_STREAM_ERROR:
                stream._put_exception(_remote_error(msg_unpack(body[2])))
                self._forget(request_id)
                return
            frame = body[1]
            if not stream._put(msg_unpack(frame), len(frame)):
                self._forget(request_id)
                return
            self._table.add(request_id, None, loop.time() + self.reply_timeout)
        elif k == KIND_HUGE_CHUNK or k == KIND_HUGE_END or k == KIND_HUGE_ERROR:
            receiver = self._huge.get(request_id)
            if receiver is None:
                if fut.done():
                    return
                receiver = self._huge[request_id] = HugeDataReceiver(
                    default_module=Settings.HUGE_DATA_COMPRESS_MODULE, decode=True)
                if service and k == KIND_HUGE_CHUNK and Settings.HUGE_DATA_WINDOW:
                    service = bytes(service)
                    receiver.on_progress = functools.partial(
                        loop.call_soon_threadsafe, self._send_credit, service, request_id)
                    # A first credit (0 bytes) at once, before this chunk is even fed: the
                    # worker holds to its window from now on, whatever keeps us busy next.
                    self._send_credit(service, request_id, True)
            if k == KIND_HUGE_END:
                del self._huge[request_id]  # the receiver is finished below, not closed by _forget
                self._forget(request_id)
                try:
                    slow = receiver.prepare_finish()
                except Exception as exc:
                    receiver.close()
                    if not fut.done():
                        fut.set_exception(exc)
                    return
                if slow:
                    # The receiver's thread has or had work (it decodes the result as the
                    # chunks come): waiting for it here would stall every other call.
                    loop.run_in_executor(None, receiver.finish_decoded).add_done_callback(
                        functools.partial(_settle, fut))
                    return
                try:
                    result = receiver.finish_decoded()
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                    return
                if not fut.done():
                    fut.set_result(result)
                return
            if k == KIND_HUGE_ERROR:
                self._fail(request_id, _remote_error(msg_unpack(body[2])))
                return
            receiver.feed(body[1])
            self._table.add(request_id, None, loop.time() + self.reply_timeout)
        else:
            # neither a stream nor a HugeData reply: the call fails with a clear error
            # (it would otherwise wait for its timeout)
            count_drop("client_malformed_reply")
            self._fail(request_id, MsgUnpackError(
                f"malformed reply: {len(body)} frames that are neither a stream nor a HugeData reply"))

    def _send_credit(self, service: bytes, request_id: bytes, first: bool = False) -> None:
        """Tell the worker how many compressed bytes of ``request_id`` the receiver processed.

        ``[b"", CREDIT_HEADER, service, request_id, 8-byte count]``: our broker
        passes it to the worker the request is in flight at, which keeps at most
        ``Settings.HUGE_DATA_WINDOW`` bytes beyond it on their way; the
        original broker drops it (its header is not ``MDPC01``).

        Called when the receiver reports progress (from its thread, through
        ``call_soon_threadsafe``: the loop may be idle, waiting for chunks the
        worker holds back) and, sooner, right after a chunk is fed while
        progress is due (a batch of chunks takes a while, and the receiver's
        thread has moved on meanwhile).  Whichever comes first sends; the other
        finds nothing due.  ``first``: the credit of 0 that opens a transfer.
        """
        receiver = self._huge.get(request_id)
        if receiver is None or not (first or receiver.progress_due):
            return
        n = receiver.take_progress()
        lsock = self._lsock
        if lsock is not None and not lsock.closed:
            try:
                lsock.send((b"", CREDIT_HEADER, service, request_id, n.to_bytes(8, "big")))
            except BacklogBudgetError:
                count_drop("client_credit_over_budget")  # the worker goes on after its wait

    def _forget(self, request_id: bytes) -> None:
        """Drop every trace of a request (reply, stream, HugeData receiver)."""
        self.replies.pop(request_id, None)
        self._table.pop(request_id)
        self._streams.pop(request_id, None)
        receiver = self._huge.pop(request_id, None)
        if receiver is not None:
            receiver.close()

    def _fail(self, request_id: bytes, exc: BaseException) -> None:
        """End a request with ``exc`` (raised by the call, or inside its stream)."""
        fut = self.replies.get(request_id)
        stream = self._streams.get(request_id)
        self._forget(request_id)
        if stream is not None:
            stream._put_exception(exc)
        elif fut is not None and not fut.done():
            fut.set_exception(exc)
