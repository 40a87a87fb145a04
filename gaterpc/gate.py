"""The gate cluster: ``Gate``, ``RemoteGate``, ``GateClusterService`` (API.md §10, WIRE.md §7).

A :class:`Gate` is a broker (``AMajordomo``) with one more ROUTER socket,
the *gate* socket, on which it receives everything its peer gates send.  It
reaches each peer through a DEALER of its own connected to that peer's gate
socket (WIRE.md G10: replies never travel back on the ROUTER).  Peers are
found by UDP multicast (43-byte datagram, WIRE.md §7.2) or connected by hand
with :meth:`Gate.connect_gate`; the INVITE/JOIN handshake registers them and
their service lists; client requests for services only peers have are
forwarded to them as WHISPER commands and their replies relayed back.

Forwarding reuses the received frame lists and runs in the socket's batch
callback: no task, no log call and no formatting per message.  Periodic work
(heartbeats, expiry, pending connections, time-outs) rides on the broker's
tick.

Differences from the original (API.md §13 G1-G8, WIRE.md §11):

* notices ``UpdateActiveService`` *and* ``UpdateService`` update a peer's
  capacity for a service; a gate tells its peers the new total capacity of a
  service whenever a local worker registers or leaves (0 when gone) (G1);
* a forwarding entry lives until the terminal message of the reply (single
  reply, stream end/error, HugeData end/error) or until
  :attr:`Gate.forward_timeout` passes without a message, so forwarded streams
  and HugeData arrive whole (G2);
* a peer's capacity for a service is given back when a forwarded request
  completes (G3/G6);
* a WHISPER request that came from a peer is never forwarded to peers again:
  without a local worker it is answered with ``ServiceUnAvailableError`` (G7);
* ``gate_replies`` entries are removed when they resolve (G8);
* pending connections are re-invited every heartbeat interval and dropped
  after :attr:`Gate.pending_timeout` *seconds* (G3 of §13); connections made
  with :meth:`Gate.connect_gate` stay until the peer joins and are re-made
  after the peer is banned, so a peer that comes back rejoins (INVITEs back
  off up to :attr:`Gate.max_invite_backoff` heartbeats; an INVITE from the
  peer resets that; a new identity answering at the same address is joined
  when that connection is the only pending one);
* WHISPER/NOTICE messages from a peer that registered us before we
  registered it are held (bounded) and replayed on its JOIN;
* per-peer bookkeeping is pruned when a peer not joined by hand is gone, and
  capped (:attr:`Gate.max_gate_peers`, :attr:`Gate.max_pending_gates`);
* every dropped gate message is counted (``count_drop("gate_...")``) and a
  caller it names (a peer's request, a forwarded request's requester, a
  pending internal call) gets an error reply at once;
* :meth:`Gate.wait_for_service` waits until a service is reachable;
* gates send HEARTBEAT commands to idle peers whether or not they multicast,
  and accept them always, so gates joined only by ``connect_gate`` stay
  joined (WIRE.md G7);
* a JOIN from a peer that is already registered updates its service list
  instead of banning it, and JOINs to one peer are at most one per heartbeat
  interval (WIRE.md G5);
* a peer that is banned (LEAVE, expiry) fails the calls in flight to it at
  once with ``ServiceUnAvailableError`` ("... was lost before replying");
* the gate socket's bind address (``gate_bind=`` / ``Settings.GATE_BIND_ADDR``,
  default all interfaces) and the multicast interface
  (``multicast_interface=`` / ``Settings.GATE_MULTICAST_INTERFACE``, default
  the system's choice) are configurable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import struct
from collections import deque
from uuid import uuid4

import zmq
from zmq import constants as z_const

from gaterpc.base import ABCService, check_zap_args, new_socket
from gaterpc.broker import AMajordomo
from gaterpc.counters import count_drop
from gaterpc.exceptions import (
    BusyGateError, GateUnAvailableError, RemoteException, ServiceUnAvailableError,
)
from gaterpc.global_settings import Settings
from gaterpc.helpers import MulticastProtocol, check_socket_addr, interface, name2uuid, to_bytes
from gaterpc.loopio import LoopSocket
from gaterpc.protocol import (
    GATE_HEARTBEAT, GATE_INVITE, GATE_JOIN, GATE_LEAVE, GATE_NOTICE, GATE_WHISPER,
    HUGE_END, HUGE_EXC, HUGE_TAG, STREAM_END, STREAM_EXC, STREAM_TAG, error_body,
)
from gaterpc.serialization import msg_pack, msg_unpack
from gaterpc.worker import RemoteWorker

__all__ = ("Gate", "RemoteGate", "GateClusterService")

Glogger = logging.getLogger("gaterpc.gate")

_MCAST_LEN = 43
_PORT = struct.Struct("!i")
_UPDATE_EVENTS = ("UpdateService", "UpdateActiveService")


def _setting(name, default):
    """A setting that older settings modules may not define."""
    try:
        value = getattr(Settings, name)
    except AttributeError:
        return default
    return default if value is None else value


class _Replies(dict):
    """``request id -> Future``; ``pop`` of a missing id returns ``None``.

    Entries are removed when they resolve, so code written for the original
    (which pops after awaiting) must not fail on a missing key.
    """

    def pop(self, key, *default):
        return super().pop(key, default[0] if default else None)


class _Forward:
    """A request forwarded to a peer, until its terminal reply message."""

    __slots__ = ("requester", "service", "service_b", "seen", "checked")

    def __init__(self, requester, service, service_b):
        self.requester = requester
        self.service = service
        self.service_b = service_b
        self.seen = 0      # reply messages relayed so far
        self.checked = 0   # ``seen`` at the last time-out check


class RemoteGate(RemoteWorker):
    """A registered peer gate (API.md §10.2).

    ``sock`` is this gate's DEALER to the peer; ``active_services`` maps a
    service name to the number of further requests this gate may forward to
    the peer for it (the advertised capacity minus requests in flight).
    """

    def __init__(self, identity, heartbeat, sock, member_version, cluster, active_services):
        super().__init__(identity, heartbeat, Settings.MESSAGE_MAX, sock, member_version, cluster)
        self.active_services = dict(active_services)
        # service -> capacity the peer advertised (JOIN / notices)
        self._advertised = dict(active_services)
        # services for which this peer currently sits in the cluster's candidate queue
        self._queued = set()
        # request id -> _Forward for requests forwarded to this peer
        self._inflight = {}
        # request ids of this gate's own internal calls to the peer
        self._calls = set()
        self._lsock = None
        self._sent = False
        self._life = self.heartbeat * self.heartbeat_liveness / 1000

    def prolong(self, now):
        """Push the expiry to ``now + heartbeat × liveness``."""
        self.expiry = now + self._life


class GateClusterService(ABCService):
    """The cluster registry of a gate (API.md §10.3)."""

    def __init__(self, cluster_name, local_gate):
        self.name = cluster_name
        self.identity = name2uuid(cluster_name).bytes
        self.local_node = local_gate
        self.description = Settings.GATE_CLUSTER_DESCRIPTION
        # service name -> asyncio.Queue of ids of peers with spare capacity for it
        self.services = {}
        self.workers = {}
        self._ready_workers = {}
        self.idle_workers = asyncio.Queue()
        self.unready_gates = {}
        self.running = False
        # service name -> deque of futures waiting for capacity (async API)
        self._waiters = {}

    # -- registry ----------------------------------------------------------------

    def add_worker(self, gate):
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

    def remove_worker(self, gate):
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

    def mark_ready(self, gate):
        """Mark a registered peer ready."""
        gate.ready = True
        if self.workers.get(gate.identity) is gate:
            self._ready_workers[gate.identity] = gate
            for service in list(gate._advertised):
                self.refresh_service(service)

    def mark_unready(self, gate):
        """Mark a peer unready (it is no longer chosen)."""
        gate.ready = False
        self._ready_workers.pop(gate.identity, None)
        for service in list(gate._advertised):
            self.refresh_service(service)

    def cleanup_unready_gate(self, gate_id):
        """Close a pending (not yet joined) connection."""
        sock = self.unready_gates.pop(gate_id, None)
        if sock is not None:
            try:
                sock.close(linger=0)
            except zmq.ZMQError:
                pass
        self.local_node._pending_closed(gate_id)

    def get_workers(self):
        """The ready peers (identity → RemoteGate)."""
        return self._ready_workers

    def online_nodes(self):
        """``[local id, *ready peer ids]``."""
        return [self.local_node.identity, *self._ready_workers]

    def all_nodes(self):
        """Local, registered and pending ids (unique)."""
        return list(dict.fromkeys((self.local_node.identity, *self.workers, *self.unready_gates)))

    def advertised_services(self):
        """Names of the services some ready peer advertises."""
        return list(self.services)

    # -- capacity -------------------------------------------------------------------

    def refresh_service(self, service):
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

    def take(self, service):
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

    def give_back(self, service, gate):
        """Return one unit of ``gate``'s capacity for ``service``."""
        n = gate.active_services.get(service, 0) + 1
        gate.active_services[service] = n
        if n > 0 and service not in gate._queued and gate.ready \
                and self._ready_workers.get(gate.identity) is gate and service in self.services:
            gate._queued.add(service)
            self.services[service].put_nowait(gate.identity)
            self._wake(service)

    def _wake(self, service):
        waiters = self._waiters.get(service)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def acquire_idle_worker(self):
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

    async def acquire_service_idle_worker(self, service):
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

    async def release_worker(self, gate):
        """Give a unit of ``gate``'s cluster capacity back (kept for the API)."""

    async def release_service_worker(self, service, gate):
        """Give a unit of ``gate``'s capacity for ``service`` back."""
        self.give_back(service, gate)


class Gate(AMajordomo):
    """A broker that is also a member of a cluster of gates (API.md §10.1)."""

    GateServiceClass = GateClusterService
    RemoteGateClass = RemoteGate

    #: Most peer gates (joined, pending and remembered) a gate keeps track of;
    #: each bookkeeping table is capped at this size (a WARNING when it is hit).
    max_gate_peers = 1024
    #: Most connections opened by discovery that wait for the peer's JOIN.
    max_pending_gates = 64
    #: Longest interval (in heartbeats) between two INVITEs to a peer joined
    #: with :meth:`connect_gate` that does not answer (the interval doubles).
    max_invite_backoff = 8

    def __init__(self, port, *, identity=None, context=None, heartbeat=None, multicast=True,
                 cluster_name=None, gate_zap_mechanism=None, gate_zap_credentials=None,
                 thread_executor=None, process_executor=None, gate_bind=None,
                 multicast_interface=None):
        if not identity:
            identity = f"Gate-{secrets.token_hex(8)}"
        gate_zap_mechanism, gate_zap_credentials = check_zap_args(gate_zap_mechanism, gate_zap_credentials)
        if gate_zap_mechanism:
            self.gate_zap_frames = [gate_zap_mechanism, *gate_zap_credentials]
        else:
            self.gate_zap_frames = None
        super().__init__(identity=identity, context=context, heartbeat=heartbeat,
                         thread_executor=thread_executor, process_executor=process_executor)
        self.gate = None
        self.gate_port = int(port)
        self.gate_bind = gate_bind or _setting("GATE_BIND_ADDR", "*") or "*"
        self.multicast_interface = multicast_interface or _setting("GATE_MULTICAST_INTERFACE", None)
        self.gate_cluster = self.GateServiceClass(cluster_name or Settings.GATE_CLUSTER_NAME, self)
        self.event_handlers = {}
        self.gate_replies = _Replies()
        self.request_map = {}
        self.gate_tasks = set()
        self.multicast = bool(multicast)
        self.mcast_sock = None
        # how long a forwarded request may stay silent (seconds) before it fails
        self.forward_timeout = float(max(Settings.REPLY_TIMEOUT, Settings.TIMEOUT))
        # how long a pending connection found by discovery is kept (seconds)
        self.pending_timeout = float(max(self.heartbeat * Settings.MDP_HEARTBEAT_LIVENESS / 1000 * 4,
                                         Settings.TIMEOUT))
        self._lgate = None
        self._gate_zap_frames_bytes = ()
        # gate id -> [created at, from connect_gate, invite interval (s)] for pending connections
        self._pending = {}
        self._warned = set()
        # gate id -> deque of (received at, message) sent by a pending peer before it joined
        self._early = {}
        self._gate_addrs = {}
        self._manual_gates = set()
        self._last_invite = {}
        self._last_join = {}
        self._join_wanted = {}
        self._peer_ids = set()
        self._gate_streams = {}
        self._fwd_timeouts = deque()
        self._fwd_waiting = {}
        self._next_gate_beat = 0.0
        self._read_gate_settings()
        self.bind_gate()
        self.mcast_msg = b"".join((
            self.identity, self._gate_member, Settings.GATE_COMMAND_NOTICE,
            self.gate_cluster.identity, _PORT.pack(self.gate_port)))
        self.register_event_handler("UpdateService", self.update_service)
        self.register_event_handler("UpdateActiveService", self.update_service)

    def _read_gate_settings(self):
        self._gate_member = Settings.GATE_MEMBER
        self._gate_zap_frames_bytes = self.build_gate_zap_frames()
        head = (b"", self._gate_member)
        zap = self._gate_zap_frames_bytes
        self._head = {cmd: (*head, cmd, *zap) for cmd in (
            GATE_NOTICE, GATE_INVITE, GATE_JOIN, GATE_WHISPER, GATE_HEARTBEAT, GATE_LEAVE)}
        self._whisper_head = list(self._head[GATE_WHISPER])

    # -- sockets --------------------------------------------------------------------

    def _gate_endpoint(self):
        host = str(self.gate_bind)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"tcp://{host}:{self.gate_port}"

    def bind_gate(self, sock_opt=None):
        """Create and bind the gate ROUTER (called by the constructor)."""
        opts = dict(sock_opt or {})
        opts[z_const.IDENTITY] = self.identity
        if Settings.GATE_CURVE_KEY:
            opts[z_const.CURVE_SECRETKEY] = Settings.GATE_CURVE_KEY
            opts[z_const.CURVE_SERVER] = True
        sock = new_socket(self.ctx, zmq.ROUTER, opts)
        endpoint = self._gate_endpoint()
        if endpoint.startswith("tcp://[") or str(self.gate_bind) == "*" and Settings.GATE_IP_VERSION == 6:
            sock.ipv6 = True
        try:
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        # a peer that restarts with the same identity takes its route over
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.gate is not None:
            raise zmq.ZMQError(zmq.EADDRINUSE, "the gate socket is already bound")
        self.gate = sock
        if self.running:
            self._lgate = LoopSocket(self._loop, sock, self._on_gate)

    def unbind_gate(self, addr):
        """Unbind the gate socket from ``addr``."""
        if self.gate is not None:
            self.gate.unbind(check_socket_addr(addr))

    def build_gate_zap_frames(self):
        """The ZAP frames put in every message sent to peers (bytes tuple)."""
        if self.gate_zap_frames:
            return tuple(to_bytes(z) for z in self.gate_zap_frames)
        return ()

    def _new_dealer(self, addr, sock_opt=None):
        opts = dict(sock_opt or {})
        opts[z_const.IDENTITY] = self.identity
        if Settings.GATE_CURVE_PUBKEY:
            public, secret = zmq.curve_keypair()
            opts[z_const.CURVE_SECRETKEY] = secret
            opts[z_const.CURVE_PUBLICKEY] = public
            opts[z_const.CURVE_SERVERKEY] = Settings.GATE_CURVE_PUBKEY
        sock = new_socket(self.ctx, zmq.DEALER, opts)
        # Queue only on established connections: an INVITE to a peer that is
        # not there is dropped instead of arriving in a burst later.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.linger = 0
        if "[" in addr:
            sock.ipv6 = True
        sock.connect(addr)
        return sock

    # -- lifecycle ------------------------------------------------------------------

    def run(self):
        """Start the broker loop (and multicast discovery when enabled)."""
        first = self._broker_task is None
        super().run()
        if first and self.multicast:
            self.create_internal_task(self._multicast_self, "multicast_self", True)

    def _attach(self):
        super()._attach()
        self._read_gate_settings()
        if self.gate is not None and self._lgate is None:
            self._lgate = LoopSocket(self._loop, self.gate, self._on_gate)
        for gate in self.gate_cluster.workers.values():
            if gate._lsock is None:
                gate._lsock = LoopSocket(self._loop, gate.sock, _ignore)

    def stop(self):
        """Stop the broker, leave the peers, close the gate and multicast sockets."""
        super().stop()

    def _shutdown(self):
        if self._closed:
            return
        self._leave_all()
        mcast = self.mcast_sock
        self.mcast_sock = None
        if mcast is not None:
            mcast.close()
        for t in list(self.gate_tasks):
            t.cancel()
        if self._lgate is not None:
            self._lgate.close(0)
        elif self.gate is not None:
            self.gate.close(linger=0)
        self._lgate = None
        self.gate = None
        super()._shutdown()

    def _leave_all(self):
        cluster = self.gate_cluster
        for gate in list(cluster.workers.values()):
            self._ban(gate, True, reconnect=False, linger=100)
        for gid in list(cluster.unready_gates):
            cluster.cleanup_unready_gate(gid)
        self._pending.clear()
        self._manual_gates.clear()
        for waiting in self._fwd_waiting.values():
            waiting.clear()
        for fut in list(self.gate_replies.values()):
            if not fut.done():
                fut.cancel()
        self.gate_replies.clear()
        for stream in self._gate_streams.values():
            stream._put_exception(ConnectionError("the gate stopped"))
        self._gate_streams.clear()

    async def disconnect_all(self):
        """Ban every worker and every peer gate."""
        await super().disconnect_all()
        for gate in list(self.gate_cluster.workers.values()):
            self._ban(gate, True, reconnect=False)

    def cleanup_gate_task(self, task):
        """Done-callback of gate tasks: forget the task, log its failure."""
        self.gate_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            Glogger.warning("gate task %s failed: %r", task.get_name(), task.exception())

    def _gate_task(self, coro, name=None):
        task = self._loop.create_task(coro, name=name)
        self.gate_tasks.add(task)
        task.add_done_callback(self.cleanup_gate_task)
        return task

    # -- periodic work ----------------------------------------------------------------

    def _tick(self, now):
        super()._tick(now)
        cluster = self.gate_cluster
        for gate in [g for g in cluster.workers.values() if now >= g.expiry]:
            Glogger.warning("gate %s expired", gate.identity.hex())
            self._ban(gate, True)
        if now >= self._next_gate_beat:
            self._next_gate_beat = now + self.heartbeat / 1000
            self._gate_heartbeats(now)
        self._sweep_forwards(now)
        if self._early:
            self._expire_early(now)
        for service, waiting in self._fwd_waiting.items():
            while waiting and waiting[0][4] <= now:
                requester, service_b, rid, _body, _ = waiting.popleft()
                self._reply_error(requester, service_b, rid, BusyGateError())
        if self.gate_replies:
            for rid in [r for r, f in self.gate_replies.items() if f.done()]:
                dict.pop(self.gate_replies, rid, None)

    def _gate_heartbeats(self, now):
        beat = self._head[GATE_HEARTBEAT]
        for gate in list(self.gate_cluster._ready_workers.values()):
            lsock = gate._lsock
            if gate._sent:
                gate._sent = False
                gate.last_message_sent_time = now
            elif lsock is not None:
                lsock.send(beat)
                gate.last_message_sent_time = now
        cluster = self.gate_cluster
        base = self.heartbeat / 1000
        cap = base * max(1, self.max_invite_backoff)
        for gid, sock in list(cluster.unready_gates.items()):
            entry = self._pending.get(gid)
            if entry is None:
                entry = self._pending[gid] = [now, gid in self._manual_gates, base]
            if not entry[1] and now - entry[0] > self.pending_timeout:
                cluster.cleanup_unready_gate(gid)
                continue
            last = self._last_invite.get(gid)
            if last is None or now - last >= entry[2] - base / 4:
                self._invite(gid, sock, now)
                if entry[1]:
                    # a peer joined by hand keeps being invited, less and less often
                    entry[2] = min(entry[2] * 2, cap)
            if gid in self._join_wanted:
                self._send_join(gid, now)
        self._prune_tables(now)

    def _known_ids(self):
        cluster = self.gate_cluster
        return cluster.workers.keys() | cluster.unready_gates.keys() | self._manual_gates

    def _prune_tables(self, now):
        """Forget bookkeeping of peers that are neither joined, pending nor manual."""
        known = None
        for table in (self._gate_addrs, self._last_invite, self._last_join):
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

    def _forget_peer(self, gate_id):
        """Drop every bookkeeping entry of a peer that is gone and was not joined by hand."""
        if gate_id in self._manual_gates:
            return
        self._gate_addrs.pop(gate_id, None)
        self._last_invite.pop(gate_id, None)
        self._last_join.pop(gate_id, None)
        self._join_wanted.pop(gate_id, None)
        self._peer_ids.discard(gate_id)
        if gate_id != self.identity:
            self._special_ids.discard(gate_id)

    def _pending_closed(self, gate_id):
        """A pending connection was closed (timed out or replaced)."""
        self._pending.pop(gate_id, None)
        if gate_id not in self.gate_cluster.workers:
            self._forget_peer(gate_id)

    def _warn_once(self, key, msg, *args):
        if key not in self._warned:
            self._warned.add(key)
            Glogger.warning(msg, *args)

    def _sweep_forwards(self, now):
        q = self._fwd_timeouts
        timeout = self.forward_timeout
        while q and q[0][0] <= now:
            _, gate, rid, fwd = q.popleft()
            if gate._inflight.get(rid) is not fwd:
                continue
            if fwd.seen != fwd.checked:
                fwd.checked = fwd.seen
                q.append((now + timeout, gate, rid, fwd))
                continue
            del gate._inflight[rid]
            self.request_map.pop(rid, None)
            self.gate_cluster.give_back(fwd.service, gate)
            exc = TimeoutError(f"The gate forwarding the {fwd.service} request got no reply in time.")
            self._reply_error(fwd.requester, fwd.service_b, rid, exc)
            self._dispatch_fwd_waiting(fwd.service)

    # -- handshake ------------------------------------------------------------------

    async def connect_gate(self, gate_id, addr, sock_opt=None):
        """Connect to a peer gate and INVITE it (both sides must connect to each other).

        The peer is remembered: it is invited again (every heartbeat at first,
        then less often, up to every :attr:`max_invite_backoff` heartbeats)
        until it joins, and again whenever it is lost (expired, LEAVE), so a
        peer that restarts rejoins without user code.
        """
        if gate_id in self.gate_cluster.workers:
            raise RuntimeError("Gate has already been connected.")
        if not isinstance(gate_id, bytes) or not gate_id:
            raise TypeError("gate_id must be the peer gate's id (bytes), e.g. name2uuid(name).bytes")
        if gate_id not in self._known_ids() and len(self._known_ids()) >= self.max_gate_peers:
            raise RuntimeError(f"this gate already tracks {self.max_gate_peers} peer gates "
                               f"(Gate.max_gate_peers); not connecting to another one")
        self._connect(gate_id, check_socket_addr(addr), sock_opt, manual=True)
        await asyncio.sleep(0)

    def _connect(self, gate_id, addr, sock_opt=None, manual=False):
        cluster = self.gate_cluster
        now = self._loop.time()
        sock = cluster.unready_gates.get(gate_id)
        if sock is None:
            if not manual:
                if len(self._pending) - sum(1 for e in self._pending.values() if e[1]) \
                        >= self.max_pending_gates:
                    count_drop("gate_pending_full")
                    self._warn_once("pending", "%d gates found by discovery wait for their JOIN "
                                    "(Gate.max_pending_gates): ignoring new ones until they join "
                                    "or time out", self.max_pending_gates)
                    return
                if len(self._known_ids()) >= self.max_gate_peers:
                    count_drop("gate_peers_full")
                    self._warn_once("peers", "this gate tracks %d peer gates (Gate.max_gate_peers): "
                                    "ignoring new ones", self.max_gate_peers)
                    return
            sock = self._new_dealer(addr, sock_opt)
            cluster.unready_gates[gate_id] = sock
            self._pending[gate_id] = [now, manual, self.heartbeat / 1000]
            self._gate_addrs[gate_id] = addr
        elif manual:
            entry = self._pending.get(gate_id)
            self._pending[gate_id] = [entry[0] if entry else now, True, self.heartbeat / 1000]
        if manual:
            self._manual_gates.add(gate_id)
            self._gate_addrs[gate_id] = addr
        self._last_invite.pop(gate_id, None)
        self._invite(gate_id, sock, now)
        if gate_id in self._join_wanted:
            # the peer invited us before we had a connection to it
            self._send_join(gate_id, now)

    def _invite(self, gate_id, sock, now):
        last = self._last_invite.get(gate_id)
        if last is not None and now - last < self.heartbeat / 2000:
            return
        self._last_invite[gate_id] = now
        _send_raw(sock, self._head[GATE_INVITE])

    async def send_invite_command(self, sock):
        """Send INVITE on ``sock`` (a pending connection)."""
        _send_raw(sock, self._head[GATE_INVITE])

    def _join_payload(self):
        services = {}
        for name, svc in self.services.items():
            total = sum(w.max_allowed_request + len(w._inflight) for w in svc.workers.values())
            if total > 0:
                services[name] = min(total, Settings.MESSAGE_MAX)
        return msg_pack(services)

    def _send_join(self, gate_id, now):
        """Answer an INVITE with a JOIN on our own connection to the inviter."""
        cluster = self.gate_cluster
        gate = cluster.workers.get(gate_id)
        sock = None if gate is not None else cluster.unready_gates.get(gate_id)
        if gate is None and sock is None:
            self._want_join(gate_id, now)
            return False
        last = self._last_join.get(gate_id)
        if last is not None and now - last < self.heartbeat / 1000:
            return False
        frames = (*self._head[GATE_JOIN], self._join_payload())
        if gate is not None:
            if gate._lsock is None:
                return False
            gate._lsock.send(frames)
            gate._sent = True
        elif not _send_raw(sock, frames):
            # not connected yet: the peer invites again
            self._want_join(gate_id, now)
            return False
        self._last_join[gate_id] = now
        self._join_wanted.pop(gate_id, None)
        return True

    def _want_join(self, gate_id, now):
        """Remember that ``gate_id`` invited us (bounded; the oldest entry goes first)."""
        wanted = self._join_wanted
        wanted.pop(gate_id, None)
        if len(wanted) >= self.max_gate_peers:
            del wanted[next(iter(wanted))]
            count_drop("gate_invite_forgotten")
            self._warn_once("join_wanted", "more than %d unknown gates invited this gate "
                            "(Gate.max_gate_peers): forgetting the oldest invitations",
                            self.max_gate_peers)
        wanted[gate_id] = now

    def _on_invite(self, gate_id, now):
        """An INVITE: JOIN back; a pending peer that invites is alive, so invite it now too."""
        self._send_join(gate_id, now)
        cluster = self.gate_cluster
        sock = cluster.unready_gates.get(gate_id)
        if sock is not None and gate_id not in cluster.workers:
            entry = self._pending.get(gate_id)
            if entry is not None:
                entry[2] = self.heartbeat / 1000
            self._invite(gate_id, sock, now)

    async def process_invite_command(self, gate_id):
        """A peer invited us: JOIN it if we have a connection to it."""
        self._on_invite(gate_id, self._loop.time())

    async def send_join_command(self, gate_id):
        """Send JOIN to a peer we have a connection to."""
        self._last_join.pop(gate_id, None)
        self._send_join(gate_id, self._loop.time())

    async def process_join_command(self, gate_id, active_services):
        """A peer joined: register it."""
        self._on_join(gate_id, active_services, self._loop.time())

    async def register_gate(self, gate_id, active_services):
        """Register a peer whose pending connection exists."""
        self._register(gate_id, active_services, self._loop.time())

    def _clean_services(self, active_services):
        services = {}
        if isinstance(active_services, dict):
            limit = Settings.MESSAGE_MAX
            for name, n in active_services.items():
                if isinstance(name, str) and name and type(n) is int:
                    services[name] = max(0, min(n, limit))
        return services

    def _on_join(self, gate_id, active_services, now):
        gate = self.gate_cluster.workers.get(gate_id)
        if gate is not None:
            # A second JOIN (the peer re-invited us): refresh its service list.
            gate.prolong(now)
            services = self._clean_services(active_services)
            for name in set(gate._advertised) | set(services):
                self._set_capacity(gate, name, services.get(name, 0))
            return
        if gate_id in self.gate_cluster.unready_gates or self._adopt(gate_id):
            self._register(gate_id, active_services, now)
        else:
            count_drop("gate_join_unknown")

    def _adopt(self, gate_id):
        """A JOIN from an id we have no connection to: a peer joined by hand came back as a new gate.

        Peers send JOIN only in reply to our INVITE, and we invite only on
        pending connections; when the only pending connection is one made with
        :meth:`connect_gate`, the gate answering at that address is taken as
        the new occupant of that address (its old identity is forgotten).
        """
        unready = self.gate_cluster.unready_gates
        if len(unready) != 1:
            return False
        old = next(iter(unready))
        if old not in self._manual_gates or old in self.gate_cluster.workers \
                or gate_id in self.gate_cluster.workers:
            return False
        addr = self._gate_addrs.get(old)
        Glogger.warning("the gate at %s now answers as %s (was %s): joining it instead",
                        addr, gate_id.hex(), old.hex())
        unready[gate_id] = unready.pop(old)
        self._pending[gate_id] = self._pending.pop(old, None) or [self._loop.time(), True,
                                                                   self.heartbeat / 1000]
        self._manual_gates.discard(old)
        self._manual_gates.add(gate_id)
        self._forget_peer(old)
        self._gate_addrs[gate_id] = addr
        return True

    def _register(self, gate_id, active_services, now):
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
        if gate_id in self._join_wanted:
            # it invited us before we had a connection to it: JOIN now, so that it
            # registers us before our first request reaches it
            self._last_join.pop(gate_id, None)
            self._send_join(gate_id, now)
        for service in gate._advertised:
            self._dispatch_fwd_waiting(service)
        held = self._early.pop(gate_id, None)
        while held:
            self._gate_command(held.popleft()[1], now)
        return gate

    # -- bans -------------------------------------------------------------------------

    def _ban(self, gate, send_leave, reconnect=True, linger=100):
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
        if reconnect and gate.identity in self._manual_gates and not self._closed:
            addr = self._gate_addrs.get(gate.identity)
            if addr is not None:
                try:
                    self._connect(gate.identity, addr, manual=True)
                except zmq.ZMQError:
                    Glogger.warning("cannot reconnect to gate %s", gate.identity.hex())
        else:
            self._forget_peer(gate.identity)

    async def ban_gate(self, gate):
        """Ban ``gate`` (LEAVE if it is still ready)."""
        self._ban(gate, True)
        return True

    async def ban_gate_at_expiration(self, gate):
        """Ban ``gate`` once it expires (the tick does this for every peer)."""
        while self.gate_cluster.workers.get(gate.identity) is gate:
            if gate.expiry <= self._loop.time():
                self._ban(gate, True)
                return
            await asyncio.sleep(gate.heartbeat * gate.heartbeat_liveness / 1000)

    async def now_ban_gate(self, gate):
        """Ban ``gate`` now."""
        self._ban(gate, True)

    async def delay_ban_gate(self, gate):
        """Refresh ``gate``'s expiry."""
        gate.prolong(self._loop.time())

    async def send_gate_heartbeat(self, gate):
        """Send one HEARTBEAT to ``gate``."""
        await self.send_to_gate(gate, GATE_HEARTBEAT)

    # -- the gate socket ----------------------------------------------------------------

    def _on_gate(self, msgs):
        member = self._gate_member
        checker = self._zap_checker
        now = self._loop.time()
        for msg in msgs:
            if len(msg) < 4 or msg[1] or msg[2] != member:
                count_drop("gate_malformed")
                continue
            try:
                if checker is not None:
                    checker.gate(msg[0], msg, self._gate_checked)
                else:
                    self._gate_command(msg, now)
            except Exception as exc:
                self._count_error()
                count_drop("gate_error")
                try:
                    self._fail_gate_message(msg, exc, self.gate_cluster.unready_gates.get(msg[0]))
                except Exception:
                    pass

    def _gate_checked(self, msg):
        """A gate message whose ZAP frames were verified and removed (``[id, '', GATE01, cmd, ...]``)."""
        self._gate_command(msg, self._loop.time())

    def _hold_early(self, gate_id, msg, now):
        """A WHISPER/NOTICE from a peer that has not joined us (yet).

        The peer registered us (our JOIN reached it) but we have not
        registered it yet: our INVITE to it was lost (a connection that was
        not up yet), so it never sent its JOIN.  When we have a pending
        connection to it, the message is kept (at most 256, for one liveness
        window) and the peer is invited at once; its JOIN replays what was
        kept.  Otherwise the message is dropped and counted; a kept request
        that expires is answered with ``GateUnAvailableError``.
        """
        sock = self.gate_cluster.unready_gates.get(gate_id)
        if sock is None:
            count_drop("gate_from_unknown_peer")
            return
        held = self._early.get(gate_id)
        if held is None:
            held = self._early[gate_id] = deque()
            self._last_invite.pop(gate_id, None)
        if len(held) >= 256:
            count_drop("gate_early_full")
            self._fail_gate_message(msg, BusyGateError(), sock)
            return
        held.append((now, msg))
        self._invite(gate_id, sock, now)

    def _expire_early(self, now):
        limit = now - self.heartbeat * Settings.MDP_HEARTBEAT_LIVENESS / 1000
        for gid, held in list(self._early.items()):
            sock = self.gate_cluster.unready_gates.get(gid)
            while held and (sock is None or held[0][0] < limit):
                _, msg = held.popleft()
                count_drop("gate_early_expired")
                self._fail_gate_message(msg, GateUnAvailableError(), sock)
            if not held:
                del self._early[gid]

    def _fail_gate_message(self, msg, exc, sock=None):
        """Answer the caller a dropped gate message names (a peer's request, or the requester of a reply).

        ``msg`` = ``[gate id, '', GATE01, cmd, ...]``; ``sock``: a pending
        connection to the peer when it is not registered.
        """
        if len(msg) >= 5 and msg[2] == self._mdp_client:
            # a peer's request already rewritten for routing: [gate id, '', MDPC01, service, rid, ...]
            msg = [msg[0], b"", self._gate_member, GATE_WHISPER, *msg[3:5]]
        if len(msg) < 6 or msg[3] != GATE_WHISPER:
            return
        gate_id, service_b, rid = msg[0], msg[4], msg[5]
        gate = self.gate_cluster.workers.get(gate_id)
        if gate is not None:
            fwd = gate._inflight.pop(rid, None)
            if fwd is not None:
                # a reply to a request we forwarded: its requester gets the error
                self.request_map.pop(rid, None)
                self.gate_cluster.give_back(fwd.service, gate)
                self._reply_error(fwd.requester, fwd.service_b, rid, exc)
                return
            if rid in self.gate_replies or rid in self._gate_streams:
                fut = self.gate_replies.pop(rid)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                stream = self._gate_streams.pop(rid, None)
                if stream is not None:
                    stream._put_exception(exc)
                return
        if len(msg) > 6 and (msg[6][:10] == b"GateStream" or msg[6][:8] == b"\x82\xa6result"):
            return  # a reply nobody waits for
        body = (error_body(msg_pack, exc, False),)
        if gate is not None:
            self._deliver_special(gate_id, service_b, rid, body)
        elif sock is not None:
            _send_raw(sock, [*self._whisper_head, service_b, rid, *body])

    def _gate_command(self, msg, now):
        command = msg[3]
        gate_id = msg[0]
        gate = self.gate_cluster.workers.get(gate_id)
        if command == GATE_WHISPER:
            if len(msg) < 6:
                count_drop("gate_malformed")
                return
            if gate is None:
                self._hold_early(gate_id, msg, now)
                return
            if not gate.ready:
                self._fail_gate_message(msg, GateUnAvailableError())
                count_drop("gate_from_unready_peer")
                self._ban(gate, True)
                return
            gate.expiry = now + gate._life
            self._on_whisper(gate, msg)
        elif command == GATE_HEARTBEAT:
            if gate is not None and len(msg) == 4:
                gate.expiry = now + gate._life
            else:
                count_drop("gate_heartbeat_ignored")
        elif command == GATE_NOTICE:
            if len(msg) < 6:
                count_drop("gate_malformed")
                return
            if gate is None:
                self._hold_early(gate_id, msg, now)
                return
            gate.expiry = now + gate._life
            self._on_notice(gate, msg[4], msg[5], msg[6:])
        elif command == GATE_INVITE:
            self._on_invite(gate_id, now)
        elif command == GATE_JOIN:
            if len(msg) < 5:
                return
            try:
                services = msg_unpack(msg[4])
            except Exception:
                count_drop("gate_malformed")
                return
            self._on_join(gate_id, services, now)
        elif command == GATE_LEAVE:
            if gate is not None:
                gate.ready = False
                self._ban(gate, False)

    def _on_whisper(self, gate, msg):
        """``msg`` = ``[gate id, '', GATE01, 03, service, rid, *body]``."""
        rid = msg[5]
        fwd = gate._inflight.get(rid)
        if fwd is not None:
            # A reply to a request we forwarded to this peer.
            n = len(msg) - 6
            if n == 2 and ((msg[6] == STREAM_TAG and msg[7] != STREAM_END)
                           or (msg[6] == HUGE_TAG and msg[7] != HUGE_END)):
                fwd.seen += 1
            else:
                del gate._inflight[rid]
                self.request_map.pop(rid, None)
                self.gate_cluster.give_back(fwd.service, gate)
                if self._fwd_waiting:
                    self._dispatch_fwd_waiting(fwd.service)
            requester = fwd.requester
            if requester in self._special_ids:
                self._deliver_special(requester, msg[4], rid, msg[6:])
                return
            msg[0:4] = (requester, b"", self._mdp_client)
            lfront = self._lfront
            if lfront is not None:
                lfront.send(msg)
            return
        if rid in self._gate_streams or rid in self.gate_replies:
            self._on_gate_reply(rid, msg[6:])
            return
        if len(msg) > 6:
            first = msg[6]
            if first[:10] == b"GateStream" or first[:8] == b"\x82\xa6result":
                # a reply that came too late (its request timed out or failed and
                # its requester was answered then): drop it
                count_drop("gate_late_reply")
                return
        # A request from the peer: handled like a frontend request whose client is the peer.
        msg[0:4] = (gate.identity, b"", self._mdp_client)
        self._route_request(msg, msg[3])

    def _on_gate_reply(self, rid, body):
        """A reply to this gate's own call to a peer (``gate_replies``)."""
        n = len(body)
        stream = self._gate_streams.get(rid)
        if n >= 2 and body[0] == STREAM_TAG:
            if stream is None:
                fut = self.gate_replies.pop(rid)
                stream = _new_stream()
                self._gate_streams[rid] = stream
                if fut is not None and not fut.done():
                    fut.set_result(stream)
            if n == 2 and body[1] == STREAM_END:
                del self._gate_streams[rid]
                stream._put_end()
            elif n == 3 and body[1] == STREAM_EXC:
                del self._gate_streams[rid]
                stream._put_exception(_remote_error(body[2]))
            else:
                try:
                    item = msg_unpack(body[1])
                except Exception as exc:  # an undecodable item ends the stream with its error
                    del self._gate_streams[rid]
                    stream._put_exception(exc)
                    return
                stream._put(item)
            return
        if n >= 2 and body[0] == HUGE_TAG:
            from gaterpc.hugedata import HugeDataReceiver

            receiver = stream
            if receiver is None:
                receiver = self._gate_streams[rid] = HugeDataReceiver(
                    default_module=Settings.HUGE_DATA_COMPRESS_MODULE)
            fut = self.gate_replies.get(rid)
            if n == 2 and body[1] == HUGE_END:
                del self._gate_streams[rid]
                self.gate_replies.pop(rid)
                try:
                    value = {"result": msg_unpack(receiver.finish()), "exception": None}
                except Exception as exc:
                    value = exc
                finally:
                    receiver.close()
                if fut is not None and not fut.done():
                    if isinstance(value, Exception):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
            elif n == 3 and body[1] in (STREAM_EXC, HUGE_EXC):
                del self._gate_streams[rid]
                self.gate_replies.pop(rid)
                receiver.close()
                if fut is not None and not fut.done():
                    fut.set_exception(_remote_error(body[2]))
            else:
                try:
                    receiver.feed(body[1])
                except Exception as exc:  # corrupt data fails the call
                    del self._gate_streams[rid]
                    self.gate_replies.pop(rid)
                    receiver.close()
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
            return
        fut = self.gate_replies.pop(rid)
        if fut is not None and not fut.done():
            try:
                fut.set_result(msg_unpack(body[0]) if n == 1 else list(body))
            except Exception as exc:
                fut.set_exception(exc)

    # -- forwarding -------------------------------------------------------------------

    def _service_unavailable(self, client_id, service_b, request_id, body):
        """No local worker: forward to a peer that has the service (not for peers' requests)."""
        if client_id in self._peer_ids:
            # loop prevention: a request that came from a gate is not sent back to gates
            AMajordomo._service_unavailable(self, client_id, service_b, request_id, body)
            return
        try:
            service = service_b.decode("utf-8")
        except UnicodeDecodeError:
            service = None
        cluster = self.gate_cluster
        if service is None or service not in cluster.services:
            AMajordomo._service_unavailable(self, client_id, service_b, request_id, body)
            return
        if not body:
            self._reply_error(client_id, service_b, request_id,
                              ValueError("malformed request: no function frame"))
            return
        gate = cluster.take(service)
        if gate is None:
            waiting = self._fwd_waiting.get(service)
            if waiting is None:
                waiting = self._fwd_waiting[service] = deque()
            if len(waiting) >= Settings.MESSAGE_MAX:
                self._reply_error(client_id, service_b, request_id, BusyGateError())
            else:
                waiting.append((client_id, service_b, request_id, body,
                                self._loop.time() + Settings.TIMEOUT))
            return
        self._forward(gate, client_id, service, service_b, request_id, body)

    def _forward(self, gate, requester, service, service_b, request_id, body):
        fwd = _Forward(requester, service, service_b)
        gate._inflight[request_id] = fwd
        self.request_map[request_id] = requester
        self._fwd_timeouts.append((self._loop.time() + self.forward_timeout, gate, request_id, fwd))
        frames = self._whisper_head + [service_b, request_id]
        frames.extend(body)
        lsock = gate._lsock
        if lsock is not None:
            lsock.send(frames)
            gate._sent = True
        else:
            # the gate is not attached to a running loop: nothing can carry the request
            del gate._inflight[request_id]
            self.request_map.pop(request_id, None)
            self.gate_cluster.give_back(service, gate)
            count_drop("gate_forward_no_socket")
            self._reply_error(requester, service_b, request_id, GateUnAvailableError())

    def _dispatch_fwd_waiting(self, service):
        waiting = self._fwd_waiting.get(service)
        if not waiting:
            return
        cluster = self.gate_cluster
        if service not in cluster.services:
            self._fail_fwd_waiting(service)
            return
        while waiting:
            gate = cluster.take(service)
            if gate is None:
                return
            requester, service_b, rid, body, _ = waiting.popleft()
            self._forward(gate, requester, service, service_b, rid, body)

    def _fail_fwd_waiting(self, service):
        waiting = self._fwd_waiting.pop(service, None)
        while waiting:
            requester, service_b, rid, body, _ = waiting.popleft()
            AMajordomo._service_unavailable(self, requester, service_b, rid, body)

    def _deliver_special(self, client_id, service_b, request_id, body):
        gate = self.gate_cluster.workers.get(client_id)
        if gate is not None:
            lsock = gate._lsock
            if lsock is not None:
                frames = self._whisper_head + [service_b, request_id]
                frames.extend(body)
                lsock.send(frames)
                gate._sent = True
            return
        if client_id in self._peer_ids:
            count_drop("gate_reply_peer_gone")  # the peer left: nobody to tell
            return
        super()._deliver_special(client_id, service_b, request_id, body)

    async def forward_request(self, service_name, request_id, client_id, body):
        """Forward a request to a peer advertising ``service_name``."""
        self.request_map[request_id] = client_id
        if not self.gate_cluster.get_workers():
            self.request_map.pop(request_id, None)
            raise GateUnAvailableError()
        try:
            gate = await self.gate_cluster.acquire_service_idle_worker(service_name)
        except Exception:
            self.request_map.pop(request_id, None)
            raise
        self._forward(gate, client_id, service_name, to_bytes(service_name), request_id,
                      [to_bytes(b) for b in body])

    async def request_backend(self, service_name, client_id, request_id, body, cache=False):
        """Send a request to a local worker, or forward it to a peer gate."""
        svc = self.services.get(service_name)
        if (svc is None or not svc.workers) and service_name in self.gate_cluster.services \
                and client_id not in self._peer_ids:
            if client_id == self.identity:
                self.internal_requests[request_id] = self._loop.create_future()
            try:
                await self.forward_request(service_name, request_id, client_id, body)
            except (ServiceUnAvailableError, BusyGateError) as exc:
                self.internal_requests.pop(request_id, None)
                if client_id != self.identity:
                    self._reply_error(client_id, to_bytes(service_name), request_id, exc)
                raise
            return
        await super().request_backend(service_name, client_id, request_id, body, cache)

    # -- service changes -----------------------------------------------------------------

    def _service_capacity(self, svc):
        return min(sum(w.max_allowed_request + len(w._inflight) for w in svc.workers.values()),
                   Settings.MESSAGE_MAX)

    def _worker_ready(self, worker, service):
        super()._worker_ready(worker, service)
        self._notify_capacity(service)

    def _remove_worker(self, w, send_disconnect):
        registered = self.workers.get(w.identity) is w
        super()._remove_worker(w, send_disconnect)
        if registered and not self._closed:
            self._notify_capacity(w.service)

    def _notify_capacity(self, svc):
        if not self.gate_cluster._ready_workers:
            return
        self._broadcast_notice(uuid4().bytes, b"UpdateActiveService",
                               (msg_pack(svc.name), msg_pack(self._service_capacity(svc))))

    def _broadcast_notice(self, notice_id, event_b, body):
        frames = (*self._head[GATE_NOTICE], notice_id, event_b, *body)
        for gate in list(self.gate_cluster._ready_workers.values()):
            lsock = gate._lsock
            if lsock is not None:
                lsock.send(frames)
                gate._sent = True

    def _set_capacity(self, gate, service, count):
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

    async def update_service(self, gate, *body):
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

    # -- notices ------------------------------------------------------------------------

    def register_event_handler(self, name, coro_func):
        """Register the coroutine function handling notices of event ``name``."""
        self.event_handlers[name] = coro_func

    async def send_notice_command(self, notice_id, event_name, body):
        """Send a notice to every ready peer (fire and forget)."""
        if isinstance(body, (bytes, str)):
            body = (body,)
        self._broadcast_notice(to_bytes(notice_id), to_bytes(event_name),
                               tuple(to_bytes(b) for b in (body or ())))

    def _on_notice(self, gate, notice_id, event_b, body):
        try:
            event = event_b.decode("utf-8")
        except UnicodeDecodeError:
            count_drop("gate_notice_malformed")
            return
        handler = self.event_handlers.get(event)
        if handler is None:
            count_drop("gate_notice_unhandled")
            return
        self._gate_task(handler(gate, *body), name=f"{event}-{notice_id.hex()}")

    async def process_notice_command(self, gate, messages):
        """Handle the frames of a NOTICE from ``gate``."""
        if gate is None or len(messages) < 2:
            return
        gate.prolong(self._loop.time())
        self._on_notice(gate, to_bytes(messages[0]), to_bytes(messages[1]), list(messages[2:]))

    # -- API of the original (not on the hot path) ----------------------------------------

    async def send_to_gate(self, gate, command, option=None, messages=None):
        """Send ``['', GATE01, command, *zap, *option, *messages]`` to a peer or on a socket."""
        if messages is None:
            messages = ()
        elif isinstance(messages, (bytes, str)):
            messages = (messages,)
        frames = [b"", self._gate_member, to_bytes(command), *self._gate_zap_frames_bytes]
        frames.extend(to_bytes(f) for f in (option or ()))
        frames.extend(to_bytes(f) for f in messages)
        if isinstance(gate, RemoteGate):
            if gate._lsock is not None:
                gate._lsock.send(frames)
            else:
                _send_raw(gate.sock, frames)
            gate._sent = True
            gate.last_message_sent_time = self._loop.time()
        else:
            _send_raw(gate, frames)

    async def send_whisper_command(self, gate, request_id, service_name, body):
        """Send a WHISPER (request or reply) to ``gate``."""
        await self.send_to_gate(gate, GATE_WHISPER, (service_name, request_id), tuple(body))

    async def reply_gate(self, gate, service, request_id, *body):
        """Send a reply to a peer's request."""
        await self.send_to_gate(gate, GATE_WHISPER, (service, request_id), body)

    async def process_whisper_command(self, gate, messages):
        """Handle the frames of a WHISPER from ``gate``."""
        if gate is None or len(messages) < 2:
            return
        gate.prolong(self._loop.time())
        self._on_whisper(gate, [gate.identity, b"", self._gate_member, GATE_WHISPER,
                                *(to_bytes(m) for m in messages)])

    async def process_gate_request(self, gate_id, request_id, service_name, body):
        """Handle a request a peer sent."""
        service_b = to_bytes(service_name)
        self._route_request([gate_id, b"", self._mdp_client, service_b, request_id, *body], service_b)

    async def process_gate_reply(self, request_id, service_name, body):
        """Handle a reply from a peer to a request this gate sent or forwarded."""
        for gate in self.gate_cluster.workers.values():
            if request_id in gate._inflight:
                self._on_whisper(gate, [gate.identity, b"", self._gate_member, GATE_WHISPER,
                                        to_bytes(service_name), request_id, *body])
                return
        if request_id in self.gate_replies or request_id in self._gate_streams:
            self._on_gate_reply(request_id, list(body))
        else:
            count_drop("gate_late_reply")

    async def process_messages_from_gate(self, messages):
        """Handle one gate-socket message (as received, with the sender id)."""
        self._on_gate([list(messages)])

    async def process_reply_command_from_backend(self, service_name, messages):
        """Handle a worker reply (``[client, '', rid, *body]``)."""
        if len(messages) < 4 or messages[1]:
            return
        client_id, _, request_id, *body = messages
        self._deliver(client_id, to_bytes(service_name), request_id, tuple(body))

    async def process_ready_command(self, worker_id, service_info):
        """Handle a worker's READY body ``"name:description:capacity"``."""
        self._on_ready(worker_id, [to_bytes(service_info)])

    async def call_gate(self, gate, func_name, *args, timeout=None, **kwargs):
        """Call ``func_name`` of a peer's internal service (``Gate``) and return its result.

        A stream comes back as a ``StreamReply``; errors raise ``RemoteException``.
        """
        if isinstance(gate, bytes):
            gate = self.gate_cluster.get_workers().get(gate)
            if gate is None:
                raise GateUnAvailableError()
        rid = uuid4().bytes
        fut = self._loop.create_future()
        self.gate_replies[rid] = fut
        gate._calls.add(rid)
        try:
            await self.send_whisper_command(
                gate, rid, self._internal_name,
                (msg_pack(func_name), msg_pack(tuple(args)), msg_pack(dict(kwargs))))
            reply = await asyncio.wait_for(fut, timeout or Settings.REPLY_TIMEOUT)
        finally:
            self.gate_replies.pop(rid)
            gate._calls.discard(rid)
            partial = self._gate_streams.get(rid)
            if partial is not None and hasattr(partial, "feed"):  # an unfinished HugeData transfer
                del self._gate_streams[rid]
                partial.close()
        if isinstance(reply, dict):
            if reply.get("exception"):
                raise _remote_error_info(reply["exception"])
            return reply.get("result")
        return reply

    def service_reachable(self, service_name):
        """True when a request for ``service_name`` can be served now (a local worker or a ready peer)."""
        svc = self.services.get(service_name)
        if svc is not None and svc.workers:
            return True
        return service_name in self.gate_cluster.services

    async def wait_for_service(self, service_name, timeout=None):
        """Return once ``service_name`` is reachable through this gate (locally or on a peer gate).

        Raises ``TimeoutError`` after ``timeout`` seconds (default
        ``Settings.TIMEOUT``).  Typical use: after :meth:`connect_gate`, wait
        until the peer has joined and told its services before clients call them.
        """
        if not isinstance(service_name, str) or not service_name:
            raise TypeError("service_name must be a non-empty str")
        timeout = Settings.TIMEOUT if timeout is None else float(timeout)
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = max(0.01, min(0.05, self.heartbeat / 4000))
        while not self.service_reachable(service_name):
            left = deadline - loop.time()
            if left <= 0:
                peers = len(self.gate_cluster.get_workers())
                pending = len(self.gate_cluster.unready_gates)
                raise TimeoutError(
                    f"service {service_name!r} is not reachable through gate {self.identity.hex()} "
                    f"after {timeout:g} s (no local worker; {peers} peer gate(s) joined, "
                    f"{pending} pending, none advertising it)")
            await asyncio.sleep(min(interval, left))

    # -- multicast ------------------------------------------------------------------------

    def _multicast_socket(self):
        group = Settings.GATE_MULTICAST_GROUP
        port = int(Settings.GATE_MULTICAST_PORT)
        iface = self.multicast_interface
        if Settings.GATE_IP_VERSION == 6:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
            try:
                index = 0
                if iface:
                    index = int(iface) if str(iface).isdigit() else socket.if_nametoindex(str(iface))
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS,
                                Settings.GATE_MULTICAST_HOP_LIMIT)
                if index:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                _reuse(sock)
                sock.bind(("", port))
            except Exception:
                sock.close()
                raise
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, Settings.GATE_MULTICAST_TTL)
                group_b = socket.inet_aton(group)
                if not iface:
                    mreq = group_b + struct.pack("=I", socket.INADDR_ANY)
                elif _is_ipv4(iface):
                    local = socket.inet_aton(str(iface))
                    mreq = group_b + local
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
                else:
                    index = int(iface) if str(iface).isdigit() else socket.if_nametoindex(str(iface))
                    mreq = group_b + struct.pack("=4si", b"\0\0\0\0", index)  # ip_mreqn
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreq)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                _reuse(sock)
                sock.bind(("", port))
            except Exception:
                sock.close()
                raise
        sock.setblocking(False)
        return sock, (group, port)

    async def _multicast_self(self):
        """Join the discovery group and send this gate's datagram every heartbeat."""
        interval = self.heartbeat / 1000
        try:
            sock, target = self._multicast_socket()
        except OSError as exc:
            Glogger.warning("multicast discovery unavailable (%s); retrying", exc)
            await asyncio.sleep(interval)
            raise
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: MulticastProtocol(self._multicast_recv_callback), sock=sock)
        self.mcast_sock = transport
        try:
            while True:
                await asyncio.sleep(interval)
                if transport.is_closing():
                    raise ConnectionError("multicast transport closed")
                transport.sendto(self.mcast_msg, target)
        finally:
            if self.mcast_sock is transport:
                self.mcast_sock = None
            transport.close()

    def _multicast_recv_callback(self, data, addr):
        try:
            self._on_datagram(data, addr)
        except Exception:
            self._count_error()
            count_drop("gate_datagram_error")

    async def process_mcast_messages(self, messages, addr):
        """Handle one discovery datagram from ``addr``."""
        self._on_datagram(messages, addr)

    def _on_datagram(self, data, addr):
        member = self._gate_member
        if len(data) < _MCAST_LEN or self._closed:
            if not self._closed:
                count_drop("gate_datagram_malformed")
            return
        v_end = 16 + len(member)
        gate_id = data[:16]
        if (gate_id == self.identity or data[16:v_end] != member
                or data[v_end:v_end + 1] != Settings.GATE_COMMAND_NOTICE
                or data[-20:-4] != self.gate_cluster.identity):
            return
        port = _PORT.unpack(data[-4:])[0]
        if not 0 < port < 65536:
            count_drop("gate_datagram_malformed")
            return
        cluster = self.gate_cluster
        gate = cluster.workers.get(gate_id)
        now = self._loop.time()
        if gate is not None:
            gate.prolong(now)
        elif gate_id in cluster.unready_gates:
            self._invite(gate_id, cluster.unready_gates[gate_id], now)
        else:
            host = addr[0]
            if ":" in host:
                host = f"[{host}]"
            try:
                self._connect(gate_id, f"tcp://{host}:{port}")
            except zmq.ZMQError as exc:
                Glogger.warning("cannot connect to gate %s: %s", gate_id.hex(), exc)

    # -- the internal service ----------------------------------------------------------------

    @interface
    def get_services(self, **kwargs):
        """Local services, ``Gate``, then services only peers provide."""
        local = [*self.services]
        extra = [s for s in self.gate_cluster.services if s not in self.services]
        return [*local, self._internal_name, *extra]

    @interface
    def query_service(self, service_name, **kwargs):
        """A local service's description, ``"GateCluster.<name>"`` for a peer's, else ``None``."""
        if not isinstance(service_name, str):
            return None
        svc = self.services.get(service_name)
        if svc is not None:
            return svc.description
        if service_name in self.gate_cluster.services:
            return f"{self.gate_cluster.name}.{service_name}"
        return None


def _ignore(msgs):
    """Handler of the DEALERs to peers (peers never answer on them)."""


def _send_raw(sock, frames):
    """Send without blocking on a plain socket; False if it would block or failed."""
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False
    except zmq.ZMQError:
        return False


def _reuse(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _is_ipv4(value):
    try:
        ipaddress.IPv4Address(str(value))
        return True
    except ValueError:
        return False


def _new_stream():
    from gaterpc.streams import StreamReply

    return StreamReply(STREAM_END, maxsize=Settings.STREAM_REPLY_MAXSIZE, timeout=Settings.REPLY_TIMEOUT)


def _remote_error_info(info):
    if isinstance(info, (list, tuple)) and len(info) == 3:
        return RemoteException([str(x) for x in info])
    return RemoteException(str(info))


def _remote_error(packed):
    try:
        return _remote_error_info(msg_unpack(packed))
    except Exception:
        return RemoteException("undecodable remote error")

