"""How a gate finds and joins its peers: discovery datagrams, INVITE/JOIN, explicit joins.

* Multicast discovery (``multicast=True``): every heartbeat a gate sends its
  43-byte datagram (its id, the member tag, the cluster id, its gate port) to
  the group; a gate that hears an unknown peer of its cluster opens a DEALER
  to it and INVITEs it.
* :meth:`Gate.connect_gate` does the same by hand; such a peer is
  remembered and invited again (backing off) until it joins, and again after
  it is lost.
* An INVITE is answered with a JOIN carrying ``{service: capacity}`` on our
  own connection to the inviter; a JOIN registers the peer.

See ``docs/GATE.md`` and ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Optional

import zmq

from gaterpc.counters import count_drop
from gaterpc.global_settings import Settings
from gaterpc.helpers import MulticastProtocol, check_socket_addr
from gaterpc.protocol import GATE_HEARTBEAT, GATE_INVITE, GATE_JOIN
from gaterpc.serialization import msg_pack

from ._base import _GateBase
from ._common import _MCAST_LEN, _PORT, Glogger, _is_ipv4, _reuse, _send_raw
from .peers import RemoteGate


#: Seconds after ``connect_gate`` at which a peer that has not joined is invited again.
_QUICK_INVITES = (0.02, 0.1, 0.3, 1.0)

class _DiscoveryMixin(_GateBase):
    """Discovery, the INVITE/JOIN handshake and the gate heartbeats."""

    async def connect_gate(self, gate_id: bytes, addr: str, sock_opt: Optional[dict[Any, Any]] = None) -> None:
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
        checked = check_socket_addr(addr)
        if checked is None:
            raise TypeError("addr must be the peer gate's address, e.g. tcp://HOST:PORT")
        self._connect(gate_id, checked, sock_opt, manual=True)
        await asyncio.sleep(0)

    def _connect(self, gate_id: bytes, addr: str, sock_opt: Optional[dict[Any, Any]] = None,
                 manual: bool = False) -> None:
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
        # The socket queues only on an established connection (IMMEDIATE), so this
        # first INVITE is usually dropped while TCP connects: try again a few times
        # soon instead of waiting a heartbeat (four timers per connect, no more).
        for delay in _QUICK_INVITES:
            self._loop.call_later(delay, self._quick_invite, gate_id)
        if gate_id in self._join_wanted:
            # the peer invited us before we had a connection to it
            self._send_join(gate_id, now)

    def _quick_invite(self, gate_id: bytes) -> None:
        """Invite a peer we connected to just now, unless it has joined (or is gone) meanwhile."""
        sock = self.gate_cluster.unready_gates.get(gate_id)
        if sock is None or sock.closed or gate_id in self.gate_cluster.workers:
            return
        self._last_invite.pop(gate_id, None)
        self._invite(gate_id, sock, self._loop.time())

    def _invite(self, gate_id: bytes, sock: zmq.Socket[Any], now: float) -> None:
        last = self._last_invite.get(gate_id)
        if last is not None and now - last < self.heartbeat / 2000:
            return
        self._last_invite[gate_id] = now
        if self._hook_send_invite:
            self._gate_task(self.send_invite_command(sock))
        else:
            _send_raw(sock, self._head[GATE_INVITE])

    async def send_invite_command(self, sock: zmq.Socket[Any]) -> None:
        """Send INVITE on ``sock`` (a pending connection).

        Called for every INVITE this gate sends (:meth:`connect_gate`, a
        discovery datagram of a pending peer, the repeated invitations); a
        subclass may override it (and call ``super()``).
        """
        _send_raw(sock, self._head[GATE_INVITE])

    def _join_services(self) -> dict[str, int]:
        """What a JOIN advertises: each service hosted here with its capacity (> 0)."""
        services = {}
        for name, svc in self.services.items():
            total = sum(w.max_allowed_request + len(w._inflight) for w in svc.workers.values())
            if total > 0:
                services[name] = min(total, Settings.MESSAGE_MAX)
        return services

    def _send_join(self, gate_id: bytes, now: float) -> bool:
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
        if self._hook_send_join:
            self._last_join[gate_id] = now
            self._join_wanted.pop(gate_id, None)
            self._gate_task(self.send_join_command(gate_id))
            return True
        return self._join_now(gate_id, gate, sock, now)

    def _join_now(self, gate_id: bytes, gate: Optional[RemoteGate], sock: Optional[zmq.Socket[Any]],
                  now: float) -> bool:
        """Send our JOIN to ``gate_id`` (registered: ``gate``, else the pending ``sock``)."""
        services = self._join_services()
        frames = (*self._head[GATE_JOIN], msg_pack(services))
        if gate is not None:
            if gate._lsock is None:
                return False
            gate._lsock.send(frames)
            gate._sent = True
        elif sock is None or not _send_raw(sock, frames):
            # not connected yet: the peer invites again
            self._want_join(gate_id, now)
            return False
        self._last_join[gate_id] = now
        self._join_sent[gate_id] = services
        self._join_wanted.pop(gate_id, None)
        return True

    def _want_join(self, gate_id: bytes, now: float) -> None:
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

    def _on_invite(self, gate_id: bytes, now: float) -> None:
        """An INVITE: JOIN back; a pending peer that invites is alive, so invite it now too."""
        self._send_join(gate_id, now)
        cluster = self.gate_cluster
        sock = cluster.unready_gates.get(gate_id)
        if sock is not None and gate_id not in cluster.workers:
            entry = self._pending.get(gate_id)
            if entry is not None:
                entry[2] = self.heartbeat / 1000
            # It is alive now: our earlier INVITE may have gone out before its side
            # was up, so do not wait for the next heartbeat (at most one per 50 ms).
            last = self._last_invite.get(gate_id)
            if last is not None and now - last >= 0.05:
                del self._last_invite[gate_id]
            self._invite(gate_id, sock, now)

    async def process_invite_command(self, gate_id: bytes) -> None:
        """A peer invited us: JOIN it if we have a connection to it."""
        self._on_invite(gate_id, self._loop.time())

    async def send_join_command(self, gate_id: bytes) -> None:
        """Send JOIN to a peer we have a connection to.

        Called for every JOIN this gate sends (each answers an INVITE); a
        subclass may override it (and call ``super()``).  Without a
        connection to the peer yet, the JOIN is sent once there is one.
        """
        cluster = self.gate_cluster
        now = self._loop.time()
        gate = cluster.workers.get(gate_id)
        sock = None if gate is not None else cluster.unready_gates.get(gate_id)
        if gate is None and sock is None:
            self._want_join(gate_id, now)
            return
        self._join_now(gate_id, gate, sock, now)

    async def process_join_command(self, gate_id: bytes, active_services: Any) -> None:
        """A peer joined: register it."""
        self._on_join(gate_id, active_services, self._loop.time())

    async def register_gate(self, gate_id: bytes, active_services: Any) -> None:
        """Register a peer whose pending connection exists."""
        self._register(gate_id, active_services, self._loop.time())

    def _on_join(self, gate_id: bytes, active_services: Any, now: float) -> None:
        gate = self.gate_cluster.workers.get(gate_id)
        if gate is not None:
            # A second JOIN (the peer re-invited us): refresh its service list.
            gate.prolong(now)
            services = self._clean_services(active_services)
            for name in set(gate._advertised) | set(services):
                self._set_capacity(gate, name, services.get(name, 0))
            return
        if gate_id in self.gate_cluster.unready_gates or self._adopt(gate_id):
            if self._hook_register:
                self._gate_task(self.register_gate(gate_id, active_services),
                                name=f"register_gate-{gate_id.hex()}")
            else:
                self._register(gate_id, active_services, now)
        else:
            count_drop("gate_join_unknown")

    def _adopt(self, gate_id: bytes) -> bool:
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
        self._pending[gate_id] = self._pending.pop(old, []) or [self._loop.time(), True,
                                                                   self.heartbeat / 1000]
        self._manual_gates.discard(old)
        self._manual_gates.add(gate_id)
        self._forget_peer(old)
        if addr is not None:
            self._gate_addrs[gate_id] = addr
        return True

    def _gate_heartbeats(self, now: float) -> None:
        beat = self._head[GATE_HEARTBEAT]
        for gate in list(self.gate_cluster._ready_workers.values()):
            lsock = gate._lsock
            if gate._sent:
                gate._sent = False
                gate.last_message_sent_time = now
            elif self._hook_heartbeat:
                self._gate_task(self.send_gate_heartbeat(gate))
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

    async def send_gate_heartbeat(self, gate: RemoteGate) -> None:
        """Send one HEARTBEAT to ``gate``.

        Called once per heartbeat interval for every ready peer this gate sent
        nothing to in that interval; a subclass may override it.
        """
        lsock = gate._lsock
        if lsock is not None and self.gate_cluster.workers.get(gate.identity) is gate:
            lsock.send(self._head[GATE_HEARTBEAT])
            gate.last_message_sent_time = self._loop.time()

    def _multicast_socket(self) -> tuple[socket.socket, tuple[str, int]]:
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

    async def _multicast_self(self) -> None:
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

    def _multicast_recv_callback(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._hook_mcast:
            self._gate_task(self.process_mcast_messages(data, addr))
            return
        try:
            self._on_datagram(data, addr)
        except Exception:
            self._count_error()
            count_drop("gate_datagram_error")

    async def process_mcast_messages(self, messages: bytes, addr: tuple[Any, ...]) -> None:
        """Handle one discovery datagram from ``addr``."""
        self._on_datagram(messages, addr)

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
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
            self._delay_ban(gate, now)
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
