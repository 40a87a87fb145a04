"""Running remotely called functions and sending their results.

Shared by the worker (``Worker``) and the broker's internal service: both
look a function up in a dispatch table built once from the ``@interface``
marks, run it the way its kind requires, and send the result -- a single
reply, a stream, or a HugeData transfer -- through a ``send_body`` callable.

Plain results of synchronous functions are sent from the caller's stack (no
task).  Coroutine functions run eagerly: their first step (up to the first
``await`` that suspends) runs at once, from the caller's stack, and a call
that finishes there is answered right away; one that suspends is continued
by a task.  During the first step the coroutine already runs as that task
(``asyncio.current_task()`` is the task that continues it, so
``asyncio.timeout``/``TaskGroup`` work from the first line) and in the
task's context, a copy of the caller's made when the call starts: context
variables set in the first step are seen after it and do not leak into the
caller -- as with 3.12's eager tasks (``eager_start``), which are used on
3.12+.  3.10 and 3.11 do the same with a *standby* task (``_Standby``): one
idle task per runner, as which the first steps run; a call that finishes
in its first step leaves it idle for the next call (no task is created and
nothing is scheduled for it), a call that suspends is continued by it and a
new standby is made.  A standby whose first step kept a reference to it
(``asyncio.current_task()`` stored or returned) or cancelled it is not
reused: it ends, as that call's own task would.  (A done-callback added to
``asyncio.current_task()`` by a call that never suspends runs only when
that standby task ends, at the next suspending call or ``Runner.close()``.)
Executor functions run in a future of their executor,
streams and HugeData transfers in a task that respects the socket's backlog.
Every call that runs in a task or executor is registered under
``(client_id, request_id)`` so that :meth:`Runner.cancel` can stop it when
the broker says its caller is gone.  Any exception of user code, including a
``BaseException`` such as ``SystemExit`` or ``GeneratorExit``, is answered
with an error reply (``KeyboardInterrupt``/``SystemExit`` raised on the
loop's own stack still propagate afterwards).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
import types
from concurrent.futures import Executor
from contextvars import copy_context
from types import AsyncGeneratorType, GeneratorType
from typing import (
    AsyncIterator,
    TYPE_CHECKING, Any, Callable, Coroutine, Dict, Generator, Mapping, Optional, Protocol, Sequence,
    Set, Tuple, Union,
)

from gaterpc.counters import count_drop, count_event
from gaterpc.global_settings import Settings
from gaterpc.hugedata import HugeData, iter_hugedata_batches
from gaterpc.loopio import BacklogBudgetError, budget_message
from gaterpc.protocol import (
    HUGE_END, HUGE_TAG, STREAM_END, STREAM_EXC, STREAM_TAG, error_body, exception_triple, own_request_id,
)
from gaterpc._speedups.frames import coro_step, singleton_ok
from gaterpc.serialization import MsgPackError, msg_pack
from gaterpc.wire import ok_reply_body

if TYPE_CHECKING:
    from gaterpc.loopio import LoopSocket
    from gaterpc.loopio import Frames

__all__ = ("KIND_CORO", "KIND_INLINE", "KIND_THREAD", "KIND_PROCESS", "Runner", "collect_interfaces")

logger = logging.getLogger("gaterpc")

KIND_CORO = 0
KIND_INLINE = 1
KIND_THREAD = 2
KIND_PROCESS = 3

_EAGER = sys.version_info >= (3, 12)
#: before 3.12 the eager first step is made here (see ``_Standby``)
_STEP_EAGERLY = not _EAGER
#: 3.10's tasks cannot be given a context: the task's copy is brought up to date instead
_TASK_CONTEXT_ARG = sys.version_info >= (3, 11)
if _STEP_EAGERLY:
    # Before 3.12 the eager first step is ours: the task it belongs to is made current
    # around it (the C functions asyncio's own tasks use).
    from asyncio.tasks import (  # type: ignore[attr-defined]  # private, not in the stubs
        _current_tasks, _enter_task, _leave_task,
    )
_STREAM_KINDS = (GeneratorType, AsyncGeneratorType, HugeData)

_getrefcount = sys.getrefcount

#: what :meth:`Runner._first_step` returns for a call that cancelled its own task
_CANCELLED = object()


def _cancelled_error() -> asyncio.CancelledError:
    """The error a caller gets when its call's task was cancelled by the call itself."""
    return asyncio.CancelledError("the call's task was cancelled")


class _Standby:
    """A task waiting to continue the next coroutine call that suspends (before 3.12).

    Its body (``_standby_body``) waits on ``gate``.  A call's eager first
    step runs *as* this task; when the step finishes without suspending, the
    task is left waiting and serves the next call, so such a call creates no
    task and schedules nothing.  When the step suspends, ``coro``, ``value``
    (what the step yielded) and ``ctx`` (the context the step ran in) are
    set and ``gate`` is resolved: the task wakes up and continues that
    coroutine, and the runner makes a new standby for later calls.  A standby
    that the first step may have kept or changed (a reference to it was
    taken, it was cancelled) is never reused: it is woken without a
    coroutine and ends, as the task of such a call always did.
    """

    __slots__ = ("gate", "task", "coro", "value", "ctx")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.gate: asyncio.Future[None] = loop.create_future()
        self.coro: Optional[Coroutine[Any, Any, Any]] = None
        self.value: Any = None
        self.ctx: Any = None
        body = _standby_body(self)
        body.send(None)  # so that a cancellation before the task's first step reaches the body
        if _TASK_CONTEXT_ARG:
            # context= exists from 3.11 on; mypy checks against 3.10
            task = loop.create_task(body, context=copy_context())  # type: ignore[call-arg]
        else:
            task = copy_context().run(loop.create_task, body)
        # Idle, it is not a pending call: no "Task was destroyed but it is pending!".
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # private, not in the stubs
        self.task: asyncio.Task[Any] = task

    def release(self) -> None:
        """End the task (it continues nothing)."""
        gate = self.gate
        if not gate.done():
            gate.set_result(None)


@types.coroutine
def _standby_body(sb: _Standby) -> Generator[Any, Any, Any]:
    """The body of a :class:`_Standby` task: wait on its gate, then continue ``sb.coro``.

    A cancellation that comes before the task first runs the coroutine (also
    while it waits) is forwarded to the coroutine; ``sb.value`` is what the
    first step yielded (a future or ``None``).  From then on, ``yield from``
    hands every send/throw/close of the task straight to the coroutine.
    """
    pending: Optional[BaseException] = None
    try:
        yield  # primed: stops here before the task exists (see _Standby.__init__)
        yield from sb.gate
    except BaseException as exc:  # cancelled while waiting, or before the task ran
        pending = exc
    coro = sb.coro
    if coro is None:  # released: no call to continue
        if pending is not None:
            raise pending
        return None
    value = sb.value
    sb.coro = sb.value = None
    first_ctx = sb.ctx
    sb.ctx = None
    # The first step ran in its own copy of the caller's context; this task
    # runs in the context it was made with: bring what the step set here.
    for var, var_value in first_ctx.items():
        var.set(var_value)
    while True:
        if pending is not None:
            if isinstance(pending, GeneratorExit):
                coro.close()
                raise pending
            try:
                value = coro.throw(pending)
            except StopIteration as stop:
                return stop.value
            pending = None
        try:
            yield value  # the future the first step waits for: the task waits for it
        except BaseException as exc:
            pending = exc
            continue
        break
    return (yield from coro)


#: ``(bound method, KIND_*)`` of one remotely callable function.
TableEntry = Tuple[Callable[..., Any], int]
#: ``send_body(client_id, request_id, body_frames)``: sends one reply message.
SendBody = Callable[[bytes, bytes, Tuple[bytes, ...]], object]
#: ``send_tagged(client_id, request_id, tag, frames)``: sends the reply
#: messages ``(tag, frame)``, one per frame, in order (a burst).
SendTagged = Callable[[bytes, bytes, bytes, Sequence[bytes]], object]

class RunnerOwner(Protocol):
    """What a :class:`Runner` needs of its owner (a worker or a broker)."""

    @property
    def thread_executor(self) -> Optional[Executor]: ...

    @property
    def process_executor(self) -> Optional[Executor]: ...


def _wire_blksize(hd: HugeData, request_id: bytes) -> int:
    """The chunk size for sending ``hd`` to the caller of ``request_id``; 0 for ``hd.blksize``.

    A client of this implementation takes chunks of any size: when the
    HugeData's ``blksize`` was left at the original's default of 1000, it gets
    chunks of ``Settings.HUGE_DATA_NATIVE_SIZEOF`` (fewer messages, the same
    stream).  Any other caller, and any explicit ``blksize``, gets ``hd.blksize``.
    """
    if getattr(hd, "blksize_chosen", True) or not own_request_id(request_id):
        return 0
    size = Settings.HUGE_DATA_NATIVE_SIZEOF
    return size if size > hd.blksize else 0  # (validated when set: an int, 0 = off)


class _Credit:
    """Flow control of one HugeData transfer to a client of ours (:meth:`Runner.credit`).

    ``acked``: compressed bytes the client says it processed; ``active``:
    a credit came, so more will (the path carries them); ``waiter``: the
    future the transfer waits on while its window is full.
    """

    __slots__ = ("acked", "active", "waiter")

    def __init__(self) -> None:
        self.acked = 0
        self.active = False
        self.waiter: Optional[asyncio.Future[None]] = None


def collect_interfaces(obj: object) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, TableEntry]]:
    """``(interfaces, table)`` of an object's public ``@interface`` methods.

    ``interfaces`` is the original's ``{name: {"doc", "signature"}}``;
    ``table`` maps a name to ``(bound_method, kind)`` for the dispatcher.
    """
    interfaces: Dict[str, Dict[str, Any]] = {}
    table: Dict[str, TableEntry] = {}
    for name, member in inspect.getmembers(obj):
        if name.startswith("_"):
            continue
        func = getattr(member, "__func__", member)
        if not getattr(func, "__interface__", False):
            continue
        if not callable(member):
            continue
        try:
            signature = str(inspect.signature(member))
        except (TypeError, ValueError):
            signature = "(*args, **kwargs)"
        interfaces[name] = {"doc": inspect.getdoc(member), "signature": signature}
        if inspect.iscoroutinefunction(func):
            kind = KIND_CORO
        else:
            executor = getattr(func, "__executor__", "none")
            kind = KIND_THREAD if executor == "thread" else KIND_PROCESS if executor == "process" else KIND_INLINE
        table[name] = (member, kind)
    return interfaces, table


class DetachedSelf(types.SimpleNamespace):
    """What ``self`` is inside an ``@interface("process")`` method.

    The worker itself (sockets, loop, executors) cannot cross a process
    boundary, so the method's function runs in the process pool with this
    stand-in carrying the worker's ``identity`` and ``service_name``.
    """


def _call_detached(
    func: Callable[..., Any], detached: DetachedSelf, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Any:
    return func(detached, *args, **kwargs)


class Runner:
    """Runs calls for one owner (a worker or a broker) and sends their replies.

    ``send_body(client_id, request_id, body)`` sends one reply message;
    ``send_tagged`` (optional) sends a HugeData piece's chunks as one burst,
    else they go through ``send_body`` one by one; ``lsock`` is the
    :class:`~gaterpc.loopio.LoopSocket` carrying the replies, used to wait
    for its backlog in long transfers.
    """

    def __init__(
        self,
        owner: RunnerOwner,
        loop: asyncio.AbstractEventLoop,
        send_body: SendBody,
        lsock_getter: Callable[[], Optional[LoopSocket]],
        tasks: Set[Any],
        send_tagged: Optional[SendTagged] = None,
    ) -> None:
        self.owner = owner
        self.loop = loop
        self.send_body = send_body
        self.send_tagged = send_tagged
        self._lsock = lsock_getter
        self.tasks = tasks
        self.pack = msg_pack
        # (client_id, request_id) -> the task/future running that request (for cancel())
        self.active: Dict[Tuple[bytes, bytes], asyncio.Future[Any]] = {}
        # before 3.12: the task the next coroutine call's first step runs as (see _Standby)
        self._standby: Optional[_Standby] = None
        # streams and HugeData transfers whose caller was already given the budget's error
        self._refused: Set[Tuple[bytes, bytes]] = set()
        # (client_id, request_id) -> flow control of a HugeData transfer to a client of ours
        self._credits: Dict[Tuple[bytes, bytes], _Credit] = {}

    def cancel(self, client_id: bytes, request_id: bytes) -> bool:
        """Stop the request ``(client_id, request_id)`` if it runs in a task (True if it did).

        Used when the broker says its caller is gone: a coroutine, a stream
        or a HugeData transfer is cancelled (generators are closed, HugeData
        destroyed); no reply is sent.  A function already running in an
        executor cannot be interrupted: its result is discarded.
        """
        task = self.active.pop((client_id, request_id), None)
        if task is None:
            return False
        self.tasks.discard(task)
        task.cancel()
        return True

    def credit(self, client_id: bytes, request_id: bytes, value: bytes) -> None:
        """A CREDIT: the caller of a HugeData transfer has processed ``value`` compressed bytes.

        ``value`` is 8 bytes, big-endian.  From the first credit on, the
        transfer keeps at most ``Settings.HUGE_DATA_WINDOW`` bytes beyond the
        latest one on their way (see :meth:`_send_hugedata`).  A credit for
        no transfer under way is ignored.
        """
        c = self._credits.get((bytes(client_id), bytes(request_id)))
        if c is None or len(value) != 8:
            return
        n = int.from_bytes(value, "big")
        if n > c.acked:
            c.acked = n
        c.active = True
        w = c.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait_credit(self, c: _Credit, sent: int, window: int) -> None:
        """Wait until no more than ``window`` of the ``sent`` bytes lack a credit.

        A transfer that gets no credit for ``Settings.TIMEOUT`` seconds goes on
        without flow control (counted as the event ``hugedata_credit_timeout``):
        a lost credit must not stall it; a vanished caller is cancelled anyway.
        """
        loop = self.loop
        deadline = loop.time() + Settings.TIMEOUT
        while c.active and sent - c.acked > window:
            left = deadline - loop.time()
            if left <= 0:
                c.active = False
                count_event("hugedata_credit_timeout")
                logger.warning("HugeData transfer: no credit from its caller for %ss, going on without flow "
                               "control", Settings.TIMEOUT)
                return
            c.waiter = loop.create_future()
            try:
                await asyncio.wait_for(c.waiter, left)
            except asyncio.TimeoutError:
                pass
            finally:
                c.waiter = None

    def cancel_all(self) -> None:
        """Cancel every call running in a task, as :meth:`cancel` does (no reply is sent).

        The worker stops, or the time it gave its calls to finish is over:
        the broker tells their callers.
        """
        self.active.clear()
        for task in list(self.tasks):
            task.cancel()

    def _track(self, client_id: bytes, request_id: bytes, task: asyncio.Future[Any]) -> None:
        self.tasks.add(task)
        self.active[(client_id, request_id)] = task

    # -- running --------------------------------------------------------------

    def run(
        self,
        client_id: bytes,
        request_id: bytes,
        fn: Callable[..., Any],
        kind: int,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> None:
        """Run ``fn(*args, **kwargs)`` and reply to ``(client_id, request_id)``."""
        try:
            if kind == KIND_INLINE:
                result = fn(*args, **kwargs)
            elif kind == KIND_CORO:
                coro = fn(*args, **kwargs)
                if _EAGER:
                    # eager_start exists from 3.12 on (guarded by _EAGER); mypy checks against 3.10
                    task = asyncio.Task(coro, loop=self.loop, eager_start=True)  # type: ignore[call-arg]
                    if task.done():
                        self._settle(client_id, request_id, task)
                        return
                    self._track(client_id, request_id, task)
                    task.add_done_callback(functools.partial(self._task_done, client_id, request_id))
                    return
                # An exception of the first step is answered below.
                finished, result = self._first_step(coro)
                if not finished:  # suspended: a task continues it
                    task = result
                    self._track(client_id, request_id, task)
                    task.add_done_callback(functools.partial(self._task_done, client_id, request_id))
                    return
                if result is _CANCELLED:
                    self.reply_error(client_id, request_id, _cancelled_error(), with_traceback=False)
                    return
            elif kind == KIND_THREAD:
                fut = self.loop.run_in_executor(
                    self.owner.thread_executor, functools.partial(fn, *args, **kwargs))
                self._track(client_id, request_id, fut)
                fut.add_done_callback(functools.partial(self._task_done, client_id, request_id))
                return
            else:
                func = getattr(fn, "__func__", fn)
                detached = DetachedSelf(
                    identity=getattr(self.owner, "identity", None),
                    service_name=getattr(getattr(self.owner, "service", None), "name", None))
                fut = self.loop.run_in_executor(
                    self.owner.process_executor,
                    functools.partial(_call_detached, func, detached, list(args), dict(kwargs)))
                self._track(client_id, request_id, fut)
                fut.add_done_callback(functools.partial(self._task_done, client_id, request_id))
                return
        except Exception as exc:
            self.reply_error(client_id, request_id, exc)
            return
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt, GeneratorExit... raised by user code:
            # the caller gets an error reply; the first two still stop the process.
            self.reply_error(client_id, request_id, exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        self.deliver(client_id, request_id, result)

    def _first_step(self, coro: Coroutine[Any, Any, Any]) -> Tuple[bool, Any]:
        """Run ``coro`` up to its first suspension as the standby task (before 3.12).

        ``(True, result)`` when it returned; ``(False, task)`` when it
        suspended: the standby task continues it from there.  An exception of
        the step propagates.  The step runs in a copy of the caller's context,
        with the standby task current (a task already running, e.g. an
        overridden hook's, steps aside meanwhile).
        """
        loop = self.loop
        sb = self._standby
        if sb is None or sb.gate.done():
            sb = _Standby(loop)
        # Taken while the step runs: a call made from inside the step gets its own.
        self._standby = None
        task = sb.task
        finished = True
        ctx = copy_context()
        outer = _current_tasks.get(loop)
        if outer is not None:
            _leave_task(loop, outer)
        refs = _getrefcount(task)
        _enter_task(loop, task)
        try:
            finished, value = coro_step(ctx, coro)
            if finished:
                if task._must_cancel:  # type: ignore[attr-defined]  # private, not in the stubs
                    # it cancelled its own task and returned: as with an eager task
                    # (3.12+), the call ends cancelled, not with what it returned
                    return True, _CANCELLED
                return True, value
        finally:
            _leave_task(loop, task)
            if outer is not None:
                _enter_task(loop, outer)
            if finished:  # returned or raised
                # Reused only if the step kept no reference to it and did not cancel it.
                if (_getrefcount(task) == refs and not sb.gate.done()
                        and not task._must_cancel  # type: ignore[attr-defined]  # private, not in the stubs
                        and self._standby is None):
                    self._standby = sb  # untouched: it serves the next call
                else:
                    sb.release()  # kept or changed by the step: it ends, as a call's task would
        # Suspended: the standby task continues the coroutine.
        sb.coro = coro
        sb.value = value
        sb.ctx = ctx
        task._log_destroy_pending = True  # type: ignore[attr-defined]  # a pending call from now on
        sb.gate.set_result(None)
        return False, task

    def close(self) -> None:
        """End the idle standby task, if any (a later coroutine call makes a new one)."""
        sb = self._standby
        self._standby = None
        if sb is not None:
            sb.release()

    def _task_done(self, client_id: bytes, request_id: bytes, task: asyncio.Future[Any]) -> None:
        self.tasks.discard(task)
        active = self.active
        key = (client_id, request_id)
        if active.get(key) is task:
            del active[key]
        elif task.cancelled():
            return  # cancelled by :meth:`cancel` / :meth:`cancel_all`: the broker tells the caller
        self._settle(client_id, request_id, task)

    def _settle(self, client_id: bytes, request_id: bytes, task: asyncio.Future[Any]) -> None:
        """Reply with what a finished call's task or future ended with.

        A task cancelled by anything but :meth:`cancel` (the call cancelled
        its own task, or raised ``CancelledError``) is answered with that
        error, as any other exception: the caller is never left to time out.
        """
        if task.cancelled():
            self.reply_error(client_id, request_id, _cancelled_error(), with_traceback=False)
            return
        exc = task.exception()
        if exc is not None:
            # any BaseException too (the event loop itself re-raises
            # KeyboardInterrupt/SystemExit of a task): never a silent caller
            self.reply_error(client_id, request_id, exc)
            return
        self.deliver(client_id, request_id, task.result())

    # -- replying -------------------------------------------------------------

    def refused_reply(self, client_id: bytes, request_id: bytes, body: Frames) -> Optional[Tuple[bytes, ...]]:
        """What to send instead of a reply ``body`` the process-wide backlog budget refused.

        A single reply becomes an error reply naming the budget.  A stream or
        HugeData transfer ends for its caller with that error (the transfer
        stops at its next message, see :meth:`_send_stream`); None when that
        caller was already told (later messages of the transfer are dropped).
        The returned body is small: the owner sends it past the budget.
        """
        exc = BacklogBudgetError(budget_message())
        tag = body[0] if body else b""
        if tag == STREAM_TAG or tag == HUGE_TAG:
            key = (client_id, request_id)
            if key in self._refused:
                return None
            self._refused.add(key)
            if len(body) > 2 and body[1] == STREAM_EXC:
                return tuple(bytes(f) for f in body)  # already an error: it goes through
            return (bytes(tag), STREAM_EXC, self.pack(exception_triple(exc, False)))
        return (error_body(self.pack, exc, False),)

    def reply_error(
        self, client_id: bytes, request_id: bytes, exc: BaseException, with_traceback: bool = True
    ) -> None:
        """Send the error reply for ``exc``."""
        try:
            body = error_body(self.pack, exc, with_traceback)
        except Exception:  # an unencodable repr: fall back to plain text
            body = error_body(self.pack, RuntimeError(str(type(exc).__name__)), False)
        self.send_body(client_id, request_id, (body,))

    def deliver(self, client_id: bytes, request_id: bytes, result: Any) -> None:
        """Send ``result`` as a single reply, a stream or a HugeData transfer."""
        if isinstance(result, _STREAM_KINDS):
            if isinstance(result, HugeData):
                coro = self._send_hugedata(client_id, request_id, result)
            else:
                coro = self._send_stream(client_id, request_id, result)
            task = self.loop.create_task(coro)
            self._track(client_id, request_id, task)
            task.add_done_callback(functools.partial(self._transfer_done, client_id, request_id))
            return
        try:
            # the same bytes as singleton_ok(msg_pack(result)), one buffer (see ok_reply_body)
            body = ok_reply_body(result) if self.pack is msg_pack else singleton_ok(self.pack(result))
        except MsgPackError as exc:
            self.reply_error(client_id, request_id, exc, with_traceback=False)
            return
        self.send_body(client_id, request_id, (body,))

    def _transfer_done(self, client_id: bytes, request_id: bytes, task: asyncio.Future[None]) -> None:
        self.tasks.discard(task)
        active = self.active
        key = (client_id, request_id)
        if active.get(key) is task:
            del active[key]
        if not task.cancelled() and task.exception() is not None:
            logger.error("stream transfer failed: %r", task.exception())

    async def _wait_backlog(self) -> None:
        lsock = self._lsock()
        if lsock is not None and lsock.backlog_size():
            await lsock.drain()

    async def _send_stream(
        self,
        client_id: bytes,
        request_id: bytes,
        gen: Union[GeneratorType[Any, Any, Any], AsyncIterator[Any]],
    ) -> None:
        send = self.send_body
        pack = self.pack
        refused = self._refused
        key = (client_id, request_id)
        try:
            if isinstance(gen, GeneratorType):
                count = 0
                for item in gen:
                    send(client_id, request_id, (STREAM_TAG, pack(item)))
                    if refused and key in refused:
                        return  # over the budget: the caller has its error
                    count += 1
                    lsock = self._lsock()
                    if lsock is not None and lsock.backlog_size():
                        await lsock.drain()
                    elif not count & 63:
                        await asyncio.sleep(0)
            else:
                async for item in gen:
                    send(client_id, request_id, (STREAM_TAG, pack(item)))
                    if refused and key in refused:
                        return
                    lsock = self._lsock()
                    if lsock is not None and lsock.backlog_size():
                        await lsock.drain()
        except asyncio.CancelledError:
            raise
        except ConnectionError:  # our socket closed: the broker tells the caller
            count_drop("transfer_socket_closed")
            return
        except BaseException as exc:
            send(client_id, request_id, (STREAM_TAG, STREAM_EXC, pack(exception_triple(exc))))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        finally:
            refused.discard(key)
            if isinstance(gen, GeneratorType):
                gen.close()
        send(client_id, request_id, (STREAM_TAG, STREAM_END))
        refused.discard(key)  # the end itself may have been refused

    async def _send_hugedata(self, client_id: bytes, request_id: bytes, hd: HugeData) -> None:
        send = self.send_body
        send_tagged = self.send_tagged
        refused = self._refused
        key = (client_id, request_id)
        # Flow control (docs/PROTOCOL.md, "HugeData flow control"): only a client of ours
        # sends credits, and only through a broker of ours; until the first one comes
        # the transfer runs as it always did.
        window = Settings.HUGE_DATA_WINDOW if own_request_id(request_id) else 0
        c: Optional[_Credit] = None
        if window:
            c = self._credits[key] = _Credit()
        sent = 0
        try:
            # a piece of compressed output's chunks leave together, one backlog check per piece
            async for batch in iter_hugedata_batches(hd, self.loop, _wire_blksize(hd, request_id)):
                if c is not None:
                    if c.active and sent - c.acked > window:
                        await self._wait_credit(c, sent, window)
                    for chunk in batch:
                        sent += len(chunk)
                if send_tagged is not None:
                    send_tagged(client_id, request_id, HUGE_TAG, batch)
                else:
                    for chunk in batch:
                        send(client_id, request_id, (HUGE_TAG, chunk))
                if refused and key in refused:
                    return  # over the budget: the caller has its error
                await self._wait_backlog()
        except asyncio.CancelledError:
            raise
        except ConnectionError:  # our socket closed: the broker tells the caller
            count_drop("transfer_socket_closed")
            return
        except BaseException as exc:
            send(client_id, request_id, (HUGE_TAG, STREAM_EXC, self.pack(exception_triple(exc))))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        finally:
            refused.discard(key)
            if c is not None:
                self._credits.pop(key, None)
            try:
                hd.destroy()
            except Exception:
                logger.debug("HugeData.destroy failed", exc_info=True)
        send(client_id, request_id, (HUGE_TAG, HUGE_END))
        refused.discard(key)  # the end itself may have been refused
