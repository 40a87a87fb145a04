"""The peer table of a gate: :class:`RemoteGate`, :class:`GateClusterService`, registration and bans.

A peer is *pending* from the moment this gate opens a DEALER to it until its
JOIN arrives; then it is a :class:`RemoteGate` in ``gate_cluster.workers``.
The per-peer bookkeeping (addresses, last INVITE/JOIN, peers that invited us)
is pruned when a peer not joined by hand is gone, and every table is capped
at :attr:`Gate.max_gate_peers` (see ``docs/GATE.md``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Optional
from uuid import uuid4

import zmq

from gaterpc.global_settings import Settings
from gaterpc.helpers import name2uuid
from gaterpc.protocol import GATE_HEARTBEAT, GATE_LEAVE, GATE_NOTICE
from gaterpc.serialization import msg_pack, msg_unpack

from ._typed import ABCService, BusyGateError, LoopSocket, RemoteWorker, ServiceUnAvailableError
from ._base import _GateBase
from ._common import Glogger, _Forward, _ignore

__all__ = ("RemoteGate", "GateClusterService")


class RemoteGate(RemoteWorker):
    """A registered peer gate (see ``docs/GATE.md``).

    ``sock`` is this gate's DEALER to the peer; ``active_services`` maps a
    service name to the number of further requests this gate may forward to
    the peer for it (the advertised capacity minus requests in flight).
    """

    def __init__(self, identity: bytes, heartbeat: int, sock: zmq.Socket[Any], member_version: bytes,
                 cluster: GateClusterService, active_services: dict[str, int]) -> None:
        super().__init__(identity, heartbeat, Settings.MESSAGE_MAX, sock, member_version, cluster)
        self.identity: bytes
        self.heartbeat: int
        self.heartbeat_liveness: int
        self.sock: zmq.Socket[Any]
        self.ready: bool
        self.expiry: float
        self.last_message_sent_time: float
        self.active_services: dict[str, int] = dict(active_services)
        # service -> capacity the peer advertised (JOIN / notices)
        self._advertised: dict[str, int] = dict(active_services)
        # services for which this peer currently sits in the cluster's candidate queue
        self._queued: set[str] = set()
        # request id -> _Forward for requests forwarded to this peer
        self._inflight: dict[bytes, _Forward] = {}
        # request ids of this gate's own internal calls to the peer
        self._calls: set[bytes] = set()
        self._lsock: Optional[LoopSocket] = None
        self._sent = False
        self._banning = False
        self._now_banning = False  # an overridden now_ban_gate was called for it
        self._life: float = self.heartbeat * self.heartbeat_liveness / 1000

    def prolong(self, now: float) -> None:
        """Push the expiry to ``now + heartbeat × liveness``."""
        self.expiry = now + self._life


class GateClusterService(ABCService):
    """The cluster registry of a gate (``gate.gate_cluster``): peers, their services and capacity."""

    def __init__(self, cluster_name: str, local_gate: _PeersMixin) -> None:
        self.name = cluster_name
        self.identity = name2uuid(cluster_name).bytes
        self.local_node = local_gate
        self.description = Settings.GATE_CLUSTER_DESCRIPTION
        # service name -> asyncio.Queue of ids of peers with spare capacity for it
        self.services: dict[str, asyncio.Queue[bytes]] = {}
        self.workers: dict[bytes, RemoteGate] = {}
        self._ready_workers: dict[bytes, RemoteGate] = {}
        self.idle_workers: asyncio.Queue[bytes] = asyncio.Queue()
        self.unready_gates: dict[bytes, zmq.Socket[Any]] = {}
        self.running = False
        # service name -> deque of futures waiting for capacity (async API)
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    # -- registry ----------------------------------------------------------------

    def add_worker(self, gate: Optional[RemoteGate]) -> None:
        """Register a peer (normally on its JOIN)."""
        if gate is None:
            return
        self.unready_gates.pop(gate.identity, None)
        self.workers[gate.identity] = gate
        if gate.ready:
            self._ready_workers[gate.identity] = gate
        self.idle_workers.put_nowait(gate.identity)
        self.running = True
        for service in list(gate._advertised):
            self.refresh_service(service)

    def remove_worker(self, gate: Optional[RemoteGate]) -> None:
        """Forget a peer and take it out of every service's candidates."""
        if gate is None:
            return
        if self.workers.get(gate.identity) is gate:
            del self.workers[gate.identity]
        if self._ready_workers.get(gate.identity) is gate:
            del self._ready_workers[gate.identity]
        for service in list(gate._advertised):
            self.refresh_service(service)
        gate._queued.clear()

    def mark_ready(self, gate: RemoteGate) -> None:
        """Mark a registered peer ready."""
        gate.ready = True
        if self.workers.get(gate.identity) is gate:
            self._ready_workers[gate.identity] = gate
            for service in list(gate._advertised):
                self.refresh_service(service)

    def mark_unready(self, gate: RemoteGate) -> None:
        """Mark a peer unready (it is no longer chosen)."""
        gate.ready = False
        self._ready_workers.pop(gate.identity, None)
        for service in list(gate._advertised):
            self.refresh_service(service)

    def cleanup_unready_gate(self, gate_id: bytes) -> None:
        """Close a pending (not yet joined) connection."""
        sock = self.unready_gates.pop(gate_id, None)
        if sock is not None:
            try:
                sock.close(linger=0)
            except zmq.ZMQError:
                pass
        self.local_node._pending_closed(gate_id)

    def get_workers(self) -> dict[bytes, RemoteGate]:
        """The ready peers (identity → RemoteGate)."""
        return self._ready_workers

    def online_nodes(self) -> list[bytes]:
        """``[local id, *ready peer ids]``."""
        return [self.local_node.identity, *self._ready_workers]

    def all_nodes(self) -> list[bytes]:
        """Local, registered and pending ids (unique)."""
        return list(dict.fromkeys((self.local_node.identity, *self.workers, *self.unready_gates)))

    def advertised_services(self) -> list[str]:
        """Names of the services some ready peer advertises."""
        return list(self.services)

    # -- capacity -------------------------------------------------------------------

    def refresh_service(self, service: str) -> None:
        """Rebuild the candidate queue of ``service`` from the ready peers."""
        peers = [g for g in self._ready_workers.values() if g._advertised.get(service, 0) > 0]
        if not peers:
            q = self.services.pop(service, None)
            for g in self.workers.values():
                g._queued.discard(service)
            return
        q = self.services.get(service)
        if q is None:
            q = self.services[service] = asyncio.Queue()
        while not q.empty():
            q.get_nowait()
        for g in self.workers.values():
            g._queued.discard(service)
        for g in peers:
            if g.active_services.get(service, 0) > 0:
                q.put_nowait(g.identity)
                g._queued.add(service)
        self._wake(service)

    def take(self, service: str) -> Optional[RemoteGate]:
        """A ready peer with spare capacity for ``service`` (one unit taken), or ``None``."""
        q = self.services.get(service)
        if q is None:
            return None
        workers = self._ready_workers
        for _ in range(q.qsize()):
            gid = q.get_nowait()
            gate = workers.get(gid)
            if gate is None or service not in gate._queued:
                continue
            n = gate.active_services.get(service, 0)
            if n <= 0:
                gate._queued.discard(service)
                continue
            gate.active_services[service] = n - 1
            if n > 1:
                q.put_nowait(gid)
            else:
                gate._queued.discard(service)
            return gate
        return None

    def give_back(self, service: str, gate: RemoteGate) -> None:
        """Return one unit of ``gate``'s capacity for ``service``."""
        n = gate.active_services.get(service, 0) + 1
        gate.active_services[service] = n
        if n > 0 and service not in gate._queued and gate.ready \
                and self._ready_workers.get(gate.identity) is gate and service in self.services:
            gate._queued.add(service)
            self.services[service].put_nowait(gate.identity)
            self._wake(service)

    def _wake(self, service: str) -> None:
        waiters = self._waiters.get(service)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def acquire_idle_worker(self) -> RemoteGate:
        """Any ready peer (round robin)."""
        if not self.running or not self._ready_workers:
            raise ServiceUnAvailableError(self.name)
        for _ in range(self.idle_workers.qsize() + 1):
            try:
                gid = self.idle_workers.get_nowait()
            except asyncio.QueueEmpty:
                break
            gate = self._ready_workers.get(gid)
            if gate is not None:
                self.idle_workers.put_nowait(gid)
                return gate
        gate = next(iter(self._ready_workers.values()))
        self.idle_workers.put_nowait(gate.identity)
        return gate

    async def acquire_service_idle_worker(self, service: str) -> RemoteGate:
        """Take a unit of some peer's capacity for ``service`` (waits up to ``Settings.TIMEOUT``)."""
        if service == self.name:
            return await self.acquire_idle_worker()
        if service not in self.services:
            raise ServiceUnAvailableError(service)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + Settings.TIMEOUT
        while True:
            gate = self.take(service)
            if gate is not None:
                return gate
            if service not in self.services:
                raise ServiceUnAvailableError(service)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BusyGateError()
            fut = loop.create_future()
            self._waiters.setdefault(service, deque()).append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                raise BusyGateError() from None

    async def release_worker(self, gate: RemoteGate) -> None:
        """Give a unit of ``gate``'s cluster capacity back (kept for the API)."""

    async def release_service_worker(self, service: str, gate: RemoteGate) -> None:
        """Give a unit of ``gate``'s capacity for ``service`` back."""
        self.give_back(service, gate)


class _PeersMixin(_GateBase):
    """Registration, bans and the per-peer bookkeeping of a gate."""

    def _known_ids(self) -> set[bytes]:
        cluster = self.gate_cluster
        return cluster.workers.keys() | cluster.unready_gates.keys() | self._manual_gates

    def _prune_tables(self, now: float) -> None:
        """Forget bookkeeping of peers that are neither joined, pending nor manual."""
        known = None
        for table in (self._gate_addrs, self._last_invite, self._last_join, self._join_sent):
            if len(table) > len(self.gate_cluster.workers) + len(self.gate_cluster.unready_gates) \
                    + len(self._manual_gates):
                if known is None:
                    known = self._known_ids()
                for gid in [g for g in table if g not in known]:
                    del table[gid]
        stale = now - self.pending_timeout
        wanted = self._join_wanted
        while wanted:
            gid = next(iter(wanted))
            if wanted[gid] > stale:
                break
            del wanted[gid]

    def _forget_peer(self, gate_id: bytes) -> None:
        """Drop every bookkeeping entry of a peer that is gone and was not joined by hand."""
        if gate_id in self._manual_gates:
            return
        self._gate_addrs.pop(gate_id, None)
        self._last_invite.pop(gate_id, None)
        self._last_join.pop(gate_id, None)
        self._join_sent.pop(gate_id, None)
        self._join_wanted.pop(gate_id, None)
        self._peer_ids.discard(gate_id)
        if gate_id != self.identity:
            self._special_ids.discard(gate_id)

    def _pending_closed(self, gate_id: bytes) -> None:
        """A pending connection was closed (timed out or replaced)."""
        self._pending.pop(gate_id, None)
        if gate_id not in self.gate_cluster.workers:
            self._forget_peer(gate_id)

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            Glogger.warning(msg, *args)

    def _clean_services(self, active_services: Any) -> dict[str, int]:
        services = {}
        if isinstance(active_services, dict):
            limit = Settings.MESSAGE_MAX
            for name, n in active_services.items():
                if isinstance(name, str) and name and type(n) is int:
                    services[name] = max(0, min(n, limit))
        return services

    def _register(self, gate_id: bytes, active_services: Any, now: float) -> Optional[RemoteGate]:
        cluster = self.gate_cluster
        sock = cluster.unready_gates.get(gate_id)
        if sock is None:
            return None
        self._pending.pop(gate_id, None)
        self._last_invite.pop(gate_id, None)
        gate = self.RemoteGateClass(gate_id, self.heartbeat, sock, self._gate_member, cluster,
                                    self._clean_services(active_services))
        gate.prolong(now)
        if self.running:
            gate._lsock = LoopSocket(self._loop, sock, _ignore)
        self._peer_ids.add(gate_id)
        self._special_ids.add(gate_id)
        cluster.add_worker(gate)
        Glogger.info("gate %s joined with %s", gate_id.hex(), sorted(gate._advertised))
        if gate._lsock is not None:
            gate._lsock.send(self._head[GATE_HEARTBEAT])
            gate.last_message_sent_time = now
            self._correct_stale_join(gate)
        if gate_id in self._join_wanted:
            # it invited us before we had a connection to it: JOIN now, so that it
            # registers us before our first request reaches it
            self._last_join.pop(gate_id, None)
            self._send_join(gate_id, now)
        for service in gate._advertised:
            self._dispatch_fwd_waiting(service)
            self._spill_service(service)
        held = self._early.pop(gate_id, None)
        while held:
            self._gate_command(held.popleft()[1], now)
        return gate

    def _correct_stale_join(self, gate: RemoteGate) -> None:
        """Tell a peer that has just joined what changed here since our JOIN to it.

        Our JOIN may have left before this peer's JOIN registered it here, and
        a worker that came or went in between was announced to ready peers
        only: the peer would never learn of it.  One ``UpdateActiveService``
        notice per service whose capacity differs from what that JOIN said
        (0 for one that is gone), the notice every gate handles.
        """
        sent = self._join_sent.get(gate.identity)
        lsock = gate._lsock
        if sent is None or lsock is None:
            return
        now_services = self._join_services()
        if now_services == sent:
            return
        head = self._head[GATE_NOTICE]
        for name in sorted(set(sent) | set(now_services)):
            capacity = now_services.get(name, 0)
            if sent.get(name, 0) != capacity:
                lsock.send((*head, uuid4().bytes, b"UpdateActiveService", msg_pack(name), msg_pack(capacity)))
        self._join_sent[gate.identity] = now_services
        gate._sent = True

    def _ban(self, gate: RemoteGate, send_leave: bool, reconnect: bool = True, linger: int = 100) -> None:
        """Forget a peer: LEAVE (if asked and it is ready), close, fail its calls."""
        cluster = self.gate_cluster
        if cluster.workers.get(gate.identity) is not gate:
            return
        lsock = gate._lsock
        if send_leave and gate.ready and lsock is not None:
            lsock.send(self._head[GATE_LEAVE])
        cluster.mark_unready(gate)
        cluster.remove_worker(gate)
        gate._lsock = None
        if lsock is not None:
            lsock.close(linger if send_leave else 0)
        else:
            try:
                gate.sock.close(linger=0)
            except zmq.ZMQError:
                pass
        Glogger.info("gate %s left the cluster", gate.identity.hex())
        inflight = gate._inflight
        gate._inflight = {}
        for rid, fwd in inflight.items():
            self.request_map.pop(rid, None)
            exc = ServiceUnAvailableError(fwd.service)
            exc.args = (f"The gate serving the {fwd.service} Service was lost before replying.",)
            self._reply_error(fwd.requester, fwd.service_b, rid, exc)
        for rid in gate._calls:
            fut = self.gate_replies.pop(rid)
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("the peer gate left before replying"))
            stream = self._gate_streams.pop(rid, None)
            if hasattr(stream, "feed"):  # an unfinished HugeData transfer: the call got the error
                stream.close()
            elif stream is not None:
                stream._put_exception(ConnectionError("the peer gate left before replying"))
        gate._calls.clear()
        for service in list(self._fwd_waiting):
            if service not in cluster.services:
                self._fail_fwd_waiting(service)
        if reconnect and gate.identity in self._manual_gates and not self._closed \
                and not self._no_reconnect:
            addr = self._gate_addrs.get(gate.identity)
            if addr is not None:
                try:
                    self._connect(gate.identity, addr, manual=True)
                except zmq.ZMQError:
                    Glogger.warning("cannot reconnect to gate %s", gate.identity.hex())
        else:
            self._forget_peer(gate.identity)

    def _request_ban(self, gate: RemoteGate, send_leave: bool) -> None:
        """Ban ``gate`` now, or through an overridden :meth:`ban_gate` (once per peer)."""
        if not self._hook_ban:
            self._ban(gate, send_leave)
        elif not gate._banning:
            gate._banning = True
            if not send_leave:
                gate.ready = False  # it left: no LEAVE back
            self._gate_task(self.ban_gate(gate), name=f"ban_gate-{gate.identity.hex()}")

    async def ban_gate(self, gate: RemoteGate) -> bool:
        """Ban ``gate``: LEAVE if it is still ready, close the connection, fail its calls.

        Called for a peer that expired, left, or sent a request while not
        ready; a subclass may override it (and call ``super()``).
        """
        self._ban(gate, True)
        return True

    async def ban_gate_at_expiration(self, gate: RemoteGate) -> None:
        """Ban ``gate`` once it expires (the tick does this for every peer)."""
        while self.gate_cluster.workers.get(gate.identity) is gate:
            if gate.expiry <= self._loop.time():
                self._ban(gate, True)
                return
            await asyncio.sleep(gate.heartbeat * gate.heartbeat_liveness / 1000)

    def _now_ban(self, gate: RemoteGate, send_leave: bool) -> None:
        """Ban ``gate`` at once, through an overridden :meth:`now_ban_gate` (once per peer)."""
        if not self._hook_now_ban:
            self._request_ban(gate, send_leave)
        elif not gate._now_banning:
            gate._now_banning = True
            if not send_leave:
                gate.ready = False  # it left: no LEAVE back
            self._gate_task(self.now_ban_gate(gate), name=f"now_ban_gate-{gate.identity.hex()}")

    async def now_ban_gate(self, gate: RemoteGate) -> None:
        """Ban ``gate`` now, through :meth:`ban_gate`.

        Called when a peer leaves (LEAVE), sends a request while not ready,
        and for each peer in :meth:`disconnect_all`; a subclass may override
        it (and call ``super()``).
        """
        if self._hook_ban:
            await self.ban_gate(gate)
        else:
            self._ban(gate, True)

    def _delay_ban(self, gate: RemoteGate, now: float) -> None:
        """A joined peer showed it is alive: refresh its expiry (through an overridden :meth:`delay_ban_gate`)."""
        if self._hook_delay:
            self._gate_task(self.delay_ban_gate(gate))
        else:
            gate.expiry = now + gate._life

    async def delay_ban_gate(self, gate: RemoteGate) -> None:
        """Refresh ``gate``'s expiry.

        Called for every WHISPER, NOTICE and HEARTBEAT from a joined peer and
        for every discovery datagram of one; a subclass may override it (and
        call ``super()``).
        """
        gate.prolong(self._loop.time())

    def _set_capacity(self, gate: RemoteGate, service: str, count: int) -> None:
        """Set the capacity ``gate`` advertises for ``service`` (0: it no longer has it)."""
        advertised = gate._advertised.get(service)
        if advertised is None and count <= 0:
            return
        inflight = 0 if advertised is None else max(advertised - gate.active_services.get(service, 0), 0)
        if count > 0:
            gate._advertised[service] = count
        else:
            gate._advertised.pop(service, None)
        gate.active_services[service] = count - inflight
        self.gate_cluster.refresh_service(service)
        if self._fwd_waiting.get(service):
            self._dispatch_fwd_waiting(service)
        self._spill_service(service)

    async def update_service(self, gate: RemoteGate, *body: bytes) -> None:
        """Built-in handler of ``UpdateService``/``UpdateActiveService``: set a peer's capacity."""
        if len(body) < 2:
            return
        name = msg_unpack(body[0])
        count = msg_unpack(body[1])
        if not isinstance(name, str) or type(count) is not int or not 0 <= count <= Settings.MESSAGE_MAX:
            return
        if self.gate_cluster.workers.get(gate.identity) is not gate:
            return
        self._set_capacity(gate, name, count)
