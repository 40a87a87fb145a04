"""The gate cluster: ``Gate``, ``RemoteGate``, ``GateClusterService``.

A :class:`Gate` is a broker (``AMajordomo``) with one more ROUTER socket,
the *gate* socket, on which it receives everything its peer gates send.  It
reaches each peer through a DEALER of its own connected to that peer's gate
socket (replies never travel back on the ROUTER).  Peers are
found by UDP multicast (a 43-byte datagram) or connected by hand
with :meth:`Gate.connect_gate`; the INVITE/JOIN handshake registers them and
their service lists; client requests for services only peers have are
forwarded to them as WHISPER commands and their replies relayed back.

Forwarding reuses the received frame lists and runs in the socket's batch
callback: no task, no log call and no formatting per message.  Periodic work
(heartbeats, expiry, pending connections, time-outs) rides on the broker's
tick.

Differences from the original gaterpc 0.2.x (``docs/GATE.md`` has the details):

* notices ``UpdateActiveService`` *and* ``UpdateService`` update a peer's
  capacity for a service; a gate tells its peers the new total capacity of a
  service whenever a local worker registers or leaves (0 when gone);
* a forwarding entry lives until the terminal message of the reply (single
  reply, stream end/error, HugeData end/error) or until
  :attr:`Gate.forward_timeout` passes without a message, so forwarded streams
  and HugeData arrive whole;
* a peer's capacity for a service is given back when a forwarded request
  completes;
* a request that waits for a busy local worker spills over to a peer with
  spare capacity after :attr:`Gate.spill_after` seconds (default
  ``Settings.TIMEOUT``, settable lower; the original forwarded only once its
  local wait had timed out); it is taken out of the local queue, so it is
  served once;
* a WHISPER request that came from a peer is never forwarded to peers again:
  without a local worker it is answered with ``ServiceUnAvailableError``;
* ``gate_replies`` entries are removed when they resolve;
* pending connections are re-invited every heartbeat interval and dropped
  after :attr:`Gate.pending_timeout` *seconds*; connections made
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
  joined;
* a JOIN from a peer that is already registered updates its service list
  instead of banning it, and JOINs to one peer are at most one per heartbeat
  interval;
* a peer that is banned (LEAVE, expiry) fails the calls in flight to it at
  once with ``ServiceUnAvailableError`` ("... was lost before replying");
* the gate socket's bind address (``gate_bind=`` / ``Settings.GATE_BIND_ADDR``,
  default all interfaces) and the multicast interface
  (``multicast_interface=`` / ``Settings.GATE_MULTICAST_INTERFACE``, default
  the system's choice) are configurable.
* a subclass may override the original's ``process_*`` methods,
  ``register_gate``, ``ban_gate``, ``now_ban_gate``, ``delay_ban_gate``,
  ``send_gate_heartbeat``, ``send_invite_command``, ``send_join_command``,
  ``send_whisper_command``, ``reply_gate`` and ``process_mcast_messages``:
  they are then called where the original called them, with the same
  arguments (as tasks, in arrival order); without overrides the work is
  done inline in the batch callbacks.  The ``send_*`` hooks and
  ``reply_gate`` are called for every such message this gate sends (the
  INVITEs repeated to pending peers and the JOINs answering them included);
  ``delay_ban_gate`` for every WHISPER, NOTICE and HEARTBEAT from a joined
  peer and every discovery datagram of one; ``now_ban_gate`` when a peer
  leaves (LEAVE), sends a request while not ready, and for each peer in
  :meth:`disconnect_all` (an expired peer goes to ``ban_gate`` directly, as
  in the original).

The class is composed of rooms with one purpose each:

* :mod:`gaterpc.gate.peers`: ``RemoteGate``, ``GateClusterService``, registration, bans, bookkeeping;
* :mod:`gaterpc.gate.discovery`: multicast datagrams, INVITE/JOIN, ``connect_gate``, heartbeats;
* :mod:`gaterpc.gate.commands`: the gate socket and the dispatch of each command;
* :mod:`gaterpc.gate.forwarding`: forwarding to peers, spill-over queues, relaying replies;
* :mod:`gaterpc.gate.service`: notices, event handlers, ``call_gate``, ``wait_for_service``;
* this module: construction, sockets, lifecycle and the periodic tick.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from typing import Any, Coroutine, Optional

import zmq
from zmq import constants as z_const

from gaterpc.base import release_context, release_loop
from gaterpc.broker import AMajordomo  # noqa: F401 (reachable from gaterpc.gate, as before)
from gaterpc.global_settings import Settings
from gaterpc.helpers import check_socket_addr, to_bytes
from gaterpc.protocol import (
    GATE_CREDIT, GATE_HEARTBEAT, GATE_INVITE, GATE_JOIN, GATE_LEAVE, GATE_NOTICE, GATE_WHISPER,
)
from gaterpc.worker import RemoteWorker

from ._typed import BusyGateError, LoopSocket, check_zap_args, new_socket
from ._base import HOOKS
from ._common import (  # noqa: F401 (the helpers stay reachable from gaterpc.gate)
    _MCAST_LEN, _PORT, _UPDATE_EVENTS, Glogger, _Forward, _ignore, _is_ipv4, _new_stream,
    _remote_error, _remote_error_info, _Replies, _reuse, _send_raw, _setting,
)
from .commands import _CommandsMixin
from .discovery import _DiscoveryMixin
from .forwarding import _ForwardingMixin
from .peers import GateClusterService, RemoteGate, _PeersMixin
from .service import _ServiceMixin

__all__ = ("Gate", "RemoteGate", "GateClusterService")

#: ``(hook name, flag attribute)``: the flag is True when a subclass overrides the hook.
_HOOK_FLAGS = tuple(zip(HOOKS, (
    "_hook_messages", "_hook_whisper", "_hook_request", "_hook_reply", "_hook_notice",
    "_hook_invite", "_hook_join", "_hook_register", "_hook_ban", "_hook_heartbeat", "_hook_mcast",
    "_hook_delay", "_hook_now_ban", "_hook_send_invite", "_hook_send_join", "_hook_reply_gate",
    "_hook_send_whisper",
)))


class Gate(_ServiceMixin, _ForwardingMixin, _CommandsMixin, _DiscoveryMixin, _PeersMixin):
    """A broker that is also a member of a cluster of gates (see ``docs/GATE.md``)."""

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

    def __init__(self, port: int, *, identity: Optional[str] = None, context: Any = None,
                 heartbeat: Optional[int] = None, multicast: bool = True,
                 cluster_name: Optional[str] = None, gate_zap_mechanism: Any = None,
                 gate_zap_credentials: Any = None, thread_executor: Any = None,
                 process_executor: Any = None, gate_bind: Optional[str] = None,
                 multicast_interface: Optional[str] = None) -> None:
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
        # gate id -> the services our last JOIN to it advertised
        self._join_sent = {}
        self._join_wanted = {}
        self._peer_ids = set()
        self._gate_streams = {}
        self._fwd_timeouts = deque()
        self._fwd_waiting = {}
        # how long a request may wait for a local worker before it spills over to a
        # peer gate that advertises the service with spare capacity (seconds)
        self.spill_after = float(Settings.TIMEOUT)
        self._spill_timers = {}
        self._spill_blocked = set()
        self._next_gate_beat = 0.0
        self._no_reconnect = False  # set while disconnect_all bans peers through now_ban_gate
        cls = type(self)
        for hook, flag in _HOOK_FLAGS:
            setattr(self, flag, getattr(cls, hook) is not getattr(Gate, hook))
        self._read_gate_settings()
        try:
            self.bind_gate()
        except BaseException:
            # no gate to stop(): give back what the broker part made (context, loop, executors)
            self.close()
            release_context(self, self.ctx)
            release_loop(self)
            raise
        self.mcast_msg = b"".join((
            self.identity, self._gate_member, Settings.GATE_COMMAND_NOTICE,
            self.gate_cluster.identity, _PORT.pack(self.gate_port)))
        self.register_event_handler("UpdateService", self.update_service)
        self.register_event_handler("UpdateActiveService", self.update_service)

    def _read_gate_settings(self) -> None:
        self._gate_member = Settings.GATE_MEMBER
        self._gate_zap_frames_bytes = self.build_gate_zap_frames()
        head = (b"", self._gate_member)
        zap = self._gate_zap_frames_bytes
        self._head = {cmd: (*head, cmd, *zap) for cmd in (
            GATE_NOTICE, GATE_INVITE, GATE_JOIN, GATE_WHISPER, GATE_HEARTBEAT, GATE_LEAVE, GATE_CREDIT)}
        self._whisper_head = list(self._head[GATE_WHISPER])
        self._credit_head = list(self._head[GATE_CREDIT])

    def _gate_endpoint(self) -> str:
        host = str(self.gate_bind)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"tcp://{host}:{self.gate_port}"

    def bind_gate(self, sock_opt: Optional[dict[Any, Any]] = None) -> None:
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

    def unbind_gate(self, addr: str) -> None:
        """Unbind the gate socket from ``addr``."""
        if self.gate is not None:
            checked = check_socket_addr(addr)
            if checked is None:
                raise TypeError("addr must be an address the gate socket is bound to")
            self.gate.unbind(checked)

    def build_gate_zap_frames(self) -> tuple[bytes, ...]:
        """The ZAP frames put in every message sent to peers (bytes tuple)."""
        if self.gate_zap_frames:
            return tuple(to_bytes(z) for z in self.gate_zap_frames)
        return ()

    def _new_dealer(self, addr: str, sock_opt: Optional[dict[Any, Any]] = None) -> zmq.Socket[Any]:
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

    def run(self) -> None:
        """Start the broker loop (and multicast discovery when enabled)."""
        first = self._broker_task is None
        super().run()
        if first and self.multicast:
            self.create_internal_task(self._multicast_self, "multicast_self", True)

    def _attach(self) -> None:
        super()._attach()
        self._read_gate_settings()
        if self.gate is not None and self._lgate is None:
            self._lgate = LoopSocket(self._loop, self.gate, self._on_gate)
        for gate in self.gate_cluster.workers.values():
            if gate._lsock is None:
                gate._lsock = LoopSocket(self._loop, gate.sock, _ignore)

    def stop(self) -> None:
        """Stop the broker, leave the peers, close the gate and multicast sockets."""
        super().stop()

    def _shutdown(self) -> None:
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

    def _leave_all(self) -> None:
        cluster = self.gate_cluster
        for gate in list(cluster.workers.values()):
            self._ban(gate, True, reconnect=False, linger=100)
        for gid in list(cluster.unready_gates):
            cluster.cleanup_unready_gate(gid)
        self._pending.clear()
        self._manual_gates.clear()
        for waiting in self._fwd_waiting.values():
            waiting.clear()
        for timer in self._spill_timers.values():
            timer.cancel()
        self._spill_timers.clear()
        self._spill_blocked.clear()
        for fut in list(self.gate_replies.values()):
            if not fut.done():
                fut.cancel()
        self.gate_replies.clear()
        for stream in self._gate_streams.values():
            stream._put_exception(ConnectionError("the gate stopped"))
        self._gate_streams.clear()

    async def disconnect_all(self) -> None:
        """Ban every worker and every peer gate (each through ``now_ban_gate`` when overridden)."""
        await super().disconnect_all()
        if self._hook_now_ban:
            self._no_reconnect = True
            try:
                for gate in list(self.gate_cluster.workers.values()):
                    await self.now_ban_gate(gate)
            finally:
                self._no_reconnect = False
        for gate in list(self.gate_cluster.workers.values()):
            self._ban(gate, True, reconnect=False)

    def cleanup_gate_task(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of gate tasks: forget the task, log its failure."""
        self.gate_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            Glogger.warning("gate task %s failed: %r", task.get_name(), task.exception())

    def _gate_task(self, coro: Coroutine[Any, Any, Any], name: Optional[str] = None) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro, name=name)
        self.gate_tasks.add(task)
        task.add_done_callback(self.cleanup_gate_task)
        return task

    def _forgive_stall(self, late: float) -> None:
        super()._forgive_stall(late)
        for gate in self.gate_cluster.workers.values():
            gate.expiry += late
        # our own heartbeats are late too: the peers hear from us at once
        self._next_gate_beat = min(self._next_gate_beat, self._loop.time())

    def _tick(self, now: float) -> None:
        if self.gate_cluster.services:
            # spill first: with spill_after == Settings.TIMEOUT a request is due to
            # spill at the very moment its local wait would time out
            self._spill_tick(now)
        super()._tick(now)
        cluster = self.gate_cluster
        for gate in [g for g in cluster.workers.values() if now >= g.expiry]:
            Glogger.warning("gate %s expired", gate.identity.hex())
            self._request_ban(gate, True)
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
