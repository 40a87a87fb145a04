"""``AMajordomo``: the broker's constructor, sockets and life cycle.

The parts are composed by inheritance, each in its own module:
:mod:`._state` (shared state, reply primitives) <- :mod:`._backend`
(workers) <- :mod:`._frontend` (clients) <- :mod:`._internal` (the ``Gate``
service) <- :mod:`._api` (the original's overridable methods) <- here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Optional

import zmq
from zmq import constants as z_const

from gaterpc.base import Context, current_loop, new_socket, own_executors, set_ctx, shutdown_own_executors
from gaterpc.base import own_context, release_context, release_loop
from gaterpc.cache import KVLRUCache
from gaterpc.execute import Runner
from gaterpc.global_settings import Settings
from gaterpc.helpers import check_socket_addr, name2uuid
from gaterpc.loopio import LoopSocket
from gaterpc.protocol import DISCONNECT, KEEPALIVE_OK, ZERO_COPY_MIN
from gaterpc.serialization import msg_pack

from ._api import BrokerAPI
from ._state import InternalRequests

__all__ = ("AMajordomo",)

Mlogger = logging.getLogger("gaterpc.majordomo")


class AMajordomo(BrokerAPI):
    """Asynchronous Majordomo broker with the built-in ``Gate`` service."""

    def __init__(self, *, identity: Optional[str] = None, context: Optional[Context] = None,
                 heartbeat: Optional[int] = None, thread_executor: Any = None,
                 process_executor: Any = None) -> None:
        self._detect_hooks()
        identity = identity or f"gm-{secrets.token_hex(8)}"
        self.identity = name2uuid(identity).bytes
        # a context (or loop) made here is the broker's own: stop() closes it
        self.ctx = own_context(self, context)
        set_ctx(self.ctx)
        self.frontend = None
        self.backend = None
        self.zap = None
        self.clients = set()
        self.services = {}
        self.workers = {}
        self.frontend_tasks = set()
        self.backend_tasks = set()
        self.zap_tasks = set()
        self.zap_addr = ""
        self.zap_domain = b""
        self.zap_replies = {}
        # verdicts expire (ZapChecker keeps 30 s for successes, 5 s for failures)
        self.zap_cache = KVLRUCache(128, 256, debug=bool(Settings.DEBUG), ttl=30.0)
        self.heartbeat = heartbeat or Settings.MDP_HEARTBEAT_INTERVAL
        self._loop = current_loop(self)
        own_executors(self, thread_executor, process_executor)
        self.internal_tasks = {}
        self.internal_requests = InternalRequests()
        self.cache_request = {}
        self.running = False
        self._poller: Any = None
        self._broker_task: Optional[asyncio.Task[None]] = None
        self._lfront = None
        self._lback = None
        self._services_b = {}
        # requester ids whose replies do not go to the frontend (broker, peer gates)
        self._special_ids = {self.identity}
        self._zap_checker = None
        self._closed = False
        self._errors = 0
        # ids of unknown workers answered with DISCONNECT since the last heartbeat round
        self._told_unknown = set()
        self._read_protocol_settings()
        self._probe_body = msg_pack(KEEPALIVE_OK)
        self._runner = Runner(self, self._loop, self._send_internal_reply, self._get_lfront,
                              self.frontend_tasks)
        self.register_internal_process()

    def _read_protocol_settings(self) -> None:
        self._mdp_client = Settings.MDP_CLIENT
        self._mdp_worker = Settings.MDP_WORKER
        self._internal_name = Settings.MDP_INTERNAL_SERVICE
        self._internal_b = self._internal_name.encode("utf-8")

    def bind_frontend(self, addr: str, sock_opt: Optional[dict[Any, Any]] = None) -> None:
        """Bind the client-facing ROUTER socket to ``addr``."""
        addr = check_socket_addr(addr) or addr
        if sock_opt is None:
            sock_opt = {}
        sock_opt[z_const.IDENTITY] = self.identity
        if self.frontend is None:
            self.frontend = new_socket(self.ctx, zmq.ROUTER, sock_opt)
            # A client that reconnects with the same identity takes its route over.
            self.frontend.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if self.running:
                self._lfront = self._front_socket()
        self.frontend.bind(addr)

    def unbind_frontend(self, addr: str) -> None:
        """Unbind the frontend from ``addr``."""
        if self.frontend is not None:
            self.frontend.unbind(addr)

    def bind_backend(self, addr: Optional[str] = None, sock_opt: Optional[dict[Any, Any]] = None) -> None:
        """Bind the worker-facing ROUTER socket (default ``Settings.WORKER_ADDR``)."""
        addr = check_socket_addr(addr or Settings.WORKER_ADDR)
        if sock_opt is None:
            sock_opt = {}
        sock_opt[z_const.IDENTITY] = self.identity
        if self.backend is None:
            self.backend = new_socket(self.ctx, zmq.ROUTER, sock_opt)
            self.backend.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if self.running:
                self._lback = self._back_socket()
        self.backend.bind(addr)

    def unbind_backend(self, addr: str) -> None:
        """Unbind the backend from ``addr``."""
        if self.backend is not None:
            self.backend.unbind(addr)

    def connect_zap(self, zap_addr: Optional[str] = None, zap_domain: Optional[str] = None) -> None:
        """Authenticate every client, worker (and gate) message with a ZAP service."""
        from gaterpc.zap import ZapChecker, zap_link_socket

        domain: Any = zap_domain or Settings.ZAP_DEFAULT_DOMAIN
        self.zap_domain = domain.encode("utf-8") if isinstance(domain, str) else domain
        self.zap_addr = check_socket_addr(zap_addr or Settings.ZAP_ADDR) or ""
        self.zap = zap_link_socket(self.ctx, zmq.DEALER)  # never CURVE, even with ZMQ_SOCK keys
        self.zap.connect(self.zap_addr)
        self._zap_checker = ZapChecker(self)
        if self.running:
            self._zap_checker.attach()

    def disconnect_zap(self) -> None:
        """Stop authenticating."""
        self.zap_domain = b""
        checker = self._zap_checker
        self._zap_checker = None
        if checker is not None:
            checker.close()
        elif self.zap is not None:
            self.zap.close(linger=0)
        self.zap = None

    def _get_lfront(self) -> Optional[LoopSocket]:
        return self._lfront

    def _front_socket(self) -> LoopSocket:
        # Large frames (arguments) arrive as views of libzmq's buffers and are forwarded to
        # the worker without a copy; an overridden hook that is handed the raw frames gets
        # bytes, as it always did.
        nocopy = 0 if self._hook_front or self._hook_zap else ZERO_COPY_MIN
        return LoopSocket(self._loop, self.frontend, self._on_frontend, per_peer=True,
                          on_unreachable=self._client_gone, on_over_budget=self._front_over_budget,
                          recv_nocopy_min=nocopy)

    def _back_socket(self) -> LoopSocket:
        # As the frontend: large results are forwarded to the client without a copy.
        hooked = self._hook_back or self._hook_reply_command or self._hook_reply_frontend or self._hook_zap
        return LoopSocket(self._loop, self.backend, self._on_backend, per_peer=True,
                          on_unreachable=self._on_worker_unreachable, on_over_budget=self._back_over_budget,
                          recv_nocopy_min=0 if hooked else ZERO_COPY_MIN)

    def run(self) -> None:
        """Start the broker loop."""
        if self._broker_task is None:
            self._broker_task = self._loop.create_task(self._broker_loop())

    def _attach(self) -> None:
        self._read_protocol_settings()
        if self.frontend is not None and self._lfront is None:
            self._lfront = self._front_socket()
        if self.backend is not None and self._lback is None:
            self._lback = self._back_socket()
        if self._zap_checker is not None:
            self._zap_checker.attach()

    async def _broker_loop(self) -> None:
        self.running = True
        self._attach()
        tick = max(0.01, min(self.heartbeat / 4000, 0.25))
        interval = self.heartbeat / 1000
        loop = self._loop
        next_heartbeat = loop.time() + interval
        try:
            while True:
                slept = loop.time()
                await asyncio.sleep(tick)
                now = loop.time()
                late = now - slept - tick
                if late > tick:
                    # This loop was stalled (a long batch, GC, CPU starvation):
                    # the peers' heartbeats may sit unread in our sockets, so
                    # the stall does not count against them.
                    self._forgive_stall(late)
                    next_heartbeat = min(next_heartbeat, now)
                if now >= next_heartbeat:
                    next_heartbeat = now + interval
                    self._send_heartbeats()
                    self._probe_clients()
                self._tick(now)
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop the broker: cancel its tasks, say DISCONNECT to workers, close the sockets.

        A context the broker made itself (no ``context=``) is terminated; a
        loop the library made for it is closed when no other role uses it and
        it is not running.
        """
        for internal in list(self.internal_tasks):
            internal.cancel()
        task = self._broker_task
        self._broker_task = None
        if task is not None and not task.done():
            task.cancel()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        lback = self._lback
        if lback is not None and not lback.closed:
            for wid in list(self.workers):
                lback.send((wid, b"", self._mdp_worker, DISCONNECT))
        for w in list(self.workers.values()):
            w.ready = False
        self.workers.clear()
        for tasks in (self.frontend_tasks, self.backend_tasks, self._hook_tasks):
            for t in list(tasks):
                t.cancel()
        for fut in list(self.internal_requests.values()):
            if not fut.done():
                fut.cancel()
        if self._zap_checker is not None:
            self._zap_checker.close()
            self._zap_checker = None
        elif self.zap is not None:
            self.zap.close(linger=0)
        self.zap = None
        for lsock, sock, linger in ((self._lfront, self.frontend, 0), (self._lback, self.backend, 100)):
            if lsock is not None:
                lsock.close(linger)
            elif sock is not None:
                sock.close(linger=0)
        self._lfront = self._lback = None
        self.frontend = self.backend = None
        self.close()
        release_context(self, self.ctx)
        release_loop(self)

    def close(self) -> None:
        """Shut down the executors this broker created."""
        shutdown_own_executors(self)

    def create_internal_task(self, coro_func: Any, name: Optional[str] = None, reload: bool = False,
                             func_args: Any = None, func_kwargs: Any = None) -> None:
        """Run ``coro_func(*func_args, **func_kwargs)`` as a task owned by the broker."""
        args = tuple(func_args or ())
        kwargs = dict(func_kwargs or {})
        task = self._loop.create_task(coro_func(*args, **kwargs), name=name)
        self.internal_tasks[task] = (coro_func, name, reload, args, kwargs)
        task.add_done_callback(self.cleanup_internal_task)

    def cleanup_internal_task(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of internal tasks: log failures, restart ``reload`` tasks."""
        info = self.internal_tasks.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            Mlogger.error("internal task %s failed: %r", task.get_name(), exc)
        if info is not None and info[2] and not self._closed:
            self.create_internal_task(info[0], name=info[1], reload=True, func_args=info[3],
                                      func_kwargs=info[4])

    def cleanup_frontend_task(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of frontend tasks."""
        self.frontend_tasks.discard(task)

    def cleanup_backend_task(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of backend tasks."""
        self.backend_tasks.discard(task)
