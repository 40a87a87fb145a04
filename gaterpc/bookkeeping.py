"""The broker's records of workers and of the capacity of each service.

:class:`RemoteWorker` is what a broker knows about one connected worker:
its capacity left, its expiry, and the requests given to it that are not
answered yet.  :class:`ServiceCapacity` is the broker-side half of
:class:`gaterpc.worker.Service` (the one class used on both sides): a round
robin of the workers with spare capacity and the FIFO of requests waiting for
some.  Every operation on the per-message path is O(1); see
``docs/PROTOCOL.md`` ("Capacity") for what a worker's capacity means on the
wire.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Optional, Tuple

from gaterpc.base import ABCWorker
from gaterpc.exceptions import BusyWorkerError, ServiceUnAvailableError
from gaterpc.global_settings import Settings

if TYPE_CHECKING:
    from gaterpc.worker import Service

__all__ = ("RemoteWorker", "ServiceCapacity", "Waiting")

#: a request waiting for capacity: ``(client_id, request_id, body frames, deadline)``
Waiting = Tuple[bytes, bytes, Any, float]


class RemoteWorker(ABCWorker):
    """The broker's record of a connected worker."""

    service: Service

    def __init__(self, identity: bytes, heartbeat: Optional[int], max_allowed_request: int, sock: Any,
                 mdp_version: bytes, service: Service) -> None:
        self.identity = identity
        self.sock = sock
        self.mdp_version = mdp_version
        self.ready = True
        self.service = service
        self.heartbeat = heartbeat or Settings.MDP_HEARTBEAT_INTERVAL
        self.heartbeat_liveness = Settings.MDP_HEARTBEAT_LIVENESS
        self.last_message_sent_time = 0.0
        self.heartbeat_task: Optional[asyncio.Task[Any]] = None
        self.destroy_task: Optional[asyncio.Task[Any]] = None
        self.max_allowed_request = max_allowed_request
        self.expiry = 0.0
        # request id -> requester id, for requests dispatched and not yet answered
        self._inflight: dict[bytes, bytes] = {}
        # request id -> stream/HugeData tag, for those of them whose replies have begun
        self._partial: dict[bytes, bytes] = {}
        self._in_ready = False
        # a ban is under way through an overridden ``ban_worker``
        self._banning = False

    def is_alive(self) -> bool:
        """True while the worker is registered and ready."""
        return self.ready

    def prolong(self, now: float) -> None:
        """Push the expiry to ``now + heartbeat × liveness``."""
        self.expiry = now + self.heartbeat * self.heartbeat_liveness / 1000


class ServiceCapacity:
    """Broker side of a service: which workers have spare capacity, who waits for it.

    Mixed into :class:`gaterpc.worker.Service`; on the worker side these
    structures simply stay empty.
    """

    name: str
    workers: dict[bytes, Any]
    running: bool
    #: the service name as bytes (set by the broker's ``register_service``)
    _name_b: bytes

    def _init_capacity(self) -> None:
        # workers with spare capacity, round robin (each at most once)
        self._ready: Deque[RemoteWorker] = deque()
        # requests waiting for capacity, oldest first
        self._waiting: Deque[Waiting] = deque()
        self._capacity_waiters: Deque[asyncio.Future[None]] = deque()
        # counts read by gaterpc.metrics: requests routed to the service, answered to
        # completion, and answered with an error by the broker
        self.stat_requests = 0
        self.stat_served = 0
        self.stat_errors = 0

    def _capacity_added(self, worker: Any) -> None:
        """A worker was added: a broker's worker with capacity joins the round robin."""
        if isinstance(worker, RemoteWorker) and worker.max_allowed_request > 0 and not worker._in_ready:
            worker._in_ready = True
            self._ready.append(worker)
            self._wake_capacity_waiter()

    def _capacity_removed(self, worker: Any) -> None:
        """A worker was removed: it leaves the round robin; if none is left, waiters learn it."""
        if getattr(worker, "_in_ready", False):
            worker._in_ready = False
            try:
                self._ready.remove(worker)
            except ValueError:
                pass
        if not self.workers:
            waiters = self._capacity_waiters
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(None)

    def _take(self) -> Optional[RemoteWorker]:
        """A worker with spare capacity (one unit taken), or ``None``."""
        ready = self._ready
        workers = self.workers
        while ready:
            w = ready[0]
            if not w.ready or w.max_allowed_request <= 0 or w.identity not in workers:
                ready.popleft()
                w._in_ready = False
                continue
            w.max_allowed_request -= 1
            if w.max_allowed_request > 0:
                ready.rotate(-1)
            else:
                ready.popleft()
                w._in_ready = False
            return w
        return None

    def _give_back(self, worker: RemoteWorker) -> None:
        """Return one unit of capacity of ``worker``."""
        worker.max_allowed_request += 1
        if not worker._in_ready and worker.ready and worker.max_allowed_request > 0 \
                and worker.identity in self.workers:
            worker._in_ready = True
            self._ready.append(worker)
        if self._capacity_waiters:
            self._wake_capacity_waiter()

    def _wake_capacity_waiter(self) -> None:
        waiters = self._capacity_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def acquire_idle_worker(self) -> RemoteWorker:
        """Take a unit of capacity of some worker, waiting up to ``Settings.TIMEOUT``."""
        if not self.running:
            raise ServiceUnAvailableError(self.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + Settings.TIMEOUT
        while True:
            w = self._take()
            if w is not None:
                return w
            if not self.running:
                raise ServiceUnAvailableError(self.name)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BusyWorkerError()
            fut: asyncio.Future[None] = loop.create_future()
            waiters = self._capacity_waiters
            waiters.append(fut)
            woken = False
            try:
                await asyncio.wait_for(fut, remaining)
                woken = True
            except asyncio.TimeoutError:
                raise BusyWorkerError() from None
            finally:
                if not woken:
                    if fut.done() and not fut.cancelled():
                        self._wake_capacity_waiter()  # woken just too late: pass the unit on
                    try:
                        waiters.remove(fut)  # timed out or cancelled: do not leave it behind
                    except ValueError:
                        pass

    async def release_worker(self, worker: Optional[RemoteWorker]) -> None:
        """Give back one unit of capacity of ``worker``."""
        if worker is not None and worker.identity in self.workers and worker.is_alive():
            self._give_back(worker)
