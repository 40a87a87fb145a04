"""What arrives on the gate socket: commands from peers, checked and dispatched.

Every message a peer sends arrives on the gate's ROUTER as
``[peer id, '', GATE01, command, *zap, ...]``.  The batch callback checks the
envelope (and the ZAP frames when a ZAP checker is set), then dispatches by
command: WHISPER (a request or a reply, see :mod:`gaterpc.gate.forwarding`),
NOTICE, INVITE, JOIN, HEARTBEAT, LEAVE and our CREDIT (a client's HugeData
credit that a peer passes on, ignored by the original gate).  A WHISPER/NOTICE from a peer
that has not joined yet is held (bounded) until it does.  Every message that
is dropped is counted, and a caller it names gets an error reply.

When a subclass overrides one of the original's ``process_*`` methods, the
message is handed to it (as a task, in arrival order) where the original did.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

import zmq

from gaterpc.counters import count_drop, count_event
from gaterpc.global_settings import Settings
from gaterpc.helpers import to_bytes
from gaterpc.protocol import (
    GATE_CREDIT, GATE_HEARTBEAT, GATE_INVITE, GATE_JOIN, GATE_LEAVE, GATE_NOTICE, GATE_WHISPER,
)
from gaterpc.serialization import msg_pack, msg_unpack

from ._typed import BusyGateError, GateUnAvailableError, error_body
from ._base import _GateBase
from ._common import Frames, _send_raw
from .peers import RemoteGate


class _CommandsMixin(_GateBase):
    """The gate socket's batch callback and the handling of each command."""

    def _on_gate(self, msgs: list[Frames]) -> None:
        """Batch callback of the gate socket."""
        if self._hook_messages:
            for msg in msgs:
                self._gate_task(self.process_messages_from_gate(msg))
            return
        self._handle_gate(msgs)

    def _handle_gate(self, msgs: list[Frames]) -> None:
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

    def _gate_checked(self, msg: Frames) -> None:
        """A gate message whose ZAP frames were verified and removed (``[id, '', GATE01, cmd, ...]``)."""
        self._gate_command(msg, self._loop.time())

    def _hold_early(self, gate_id: bytes, msg: Frames, now: float) -> None:
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

    def _expire_early(self, now: float) -> None:
        limit = now - self.heartbeat * Settings.MDP_HEARTBEAT_LIVENESS / 1000
        for gid, held in list(self._early.items()):
            sock = self.gate_cluster.unready_gates.get(gid)
            while held and (sock is None or held[0][0] < limit):
                _, msg = held.popleft()
                count_drop("gate_early_expired")
                self._fail_gate_message(msg, GateUnAvailableError(), sock)
            if not held:
                del self._early[gid]

    def _fail_gate_message(self, msg: Frames, exc: BaseException,
                           sock: Optional[zmq.Socket[Any]] = None) -> None:
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

    def _gate_command(self, msg: Frames, now: float) -> None:
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
                self._now_ban(gate, True)
                return
            if self._hook_whisper:
                self._gate_task(self.process_whisper_command(gate, msg[4:]))
                return
            if self._hook_delay:
                self._gate_task(self.delay_ban_gate(gate))
            else:
                gate.expiry = now + gate._life
            self._on_whisper(gate, msg)
        elif command == GATE_HEARTBEAT:
            if gate is not None and len(msg) == 4:
                self._delay_ban(gate, now)
            else:
                count_drop("gate_heartbeat_ignored")
        elif command == GATE_NOTICE:
            if len(msg) < 6:
                count_drop("gate_malformed")
                return
            if gate is None:
                self._hold_early(gate_id, msg, now)
                return
            if self._hook_notice:
                self._gate_task(self.process_notice_command(gate, msg[4:]))
                return
            self._delay_ban(gate, now)
            self._on_notice(gate, msg[4], msg[5], msg[6:])
        elif command == GATE_INVITE:
            if self._hook_invite:
                self._gate_task(self.process_invite_command(gate_id))
            else:
                self._on_invite(gate_id, now)
        elif command == GATE_JOIN:
            if len(msg) < 5:
                return
            try:
                services = msg_unpack(msg[4])
            except Exception:
                count_drop("gate_malformed")
                return
            if self._hook_join:
                self._gate_task(self.process_join_command(gate_id, services))
            else:
                self._on_join(gate_id, services, now)
        elif command == GATE_LEAVE:
            if gate is not None:
                gate.ready = False
                self._now_ban(gate, False)
        elif command == GATE_CREDIT:
            self._on_peer_credit(gate, msg, now)

    def _on_peer_credit(self, gate: Optional[RemoteGate], msg: Frames, now: float) -> None:
        """``[peer id, '', GATE01, GATE_CREDIT, service, request_id, credit]`` (ZAP frames removed).

        A client's HugeData credit for a request the peer forwarded to us: the
        local worker that has it in flight for that peer gets CREDIT.  From a
        peer that is not registered and ready, or not 8 bytes: dropped
        (counted).  For a request not in flight here (the transfer ended):
        the event ``hugedata_credit_unmatched``.
        """
        if gate is None or not gate.ready:
            count_drop("gate_credit_from_unknown_peer")
            return
        if len(msg) != 7 or len(msg[6]) != 8:
            count_drop("gate_malformed")
            return
        self._delay_ban(gate, now)
        if not self._credit_worker(gate.identity, bytes(msg[4]), bytes(msg[5]), bytes(msg[6])):
            count_event("hugedata_credit_unmatched")

    async def process_messages_from_gate(self, messages: Frames) -> None:
        """Handle one gate-socket message (as received: ``[peer id, '', GATE01, command, ...]``).

        A subclass that overrides it is called for every message the gate
        socket receives, before any check; ``super()`` does the work.
        """
        self._handle_gate([list(messages)])

    async def process_whisper_command(self, gate: Optional[RemoteGate], messages: Frames) -> None:
        """Handle a WHISPER from ``gate``: ``messages`` = ``[service, request id, *body]``."""
        if gate is None or len(messages) < 2:
            return
        await self.delay_ban_gate(gate)
        self._on_whisper(gate, [gate.identity, b"", self._gate_member, GATE_WHISPER,
                                *(to_bytes(m) for m in messages)])

    async def process_notice_command(self, gate: Optional[RemoteGate], messages: Frames) -> None:
        """Handle a NOTICE from ``gate``: ``messages`` = ``[notice id, event name, *body]``."""
        if gate is None or len(messages) < 2:
            return
        await self.delay_ban_gate(gate)
        self._on_notice(gate, to_bytes(messages[0]), to_bytes(messages[1]), list(messages[2:]))

    async def send_to_gate(self, gate: Any, command: bytes | str, option: Any = None,
                           messages: Any = None) -> None:
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

    async def send_whisper_command(self, gate: RemoteGate, request_id: bytes,
                                   service_name: bytes | str, body: Any) -> None:
        """Send a WHISPER (request or reply) to ``gate``.

        Called for every request this gate forwards to a peer (``service_name``
        a str, ``body`` the request's frames) and by :meth:`call_gate`; a
        subclass may override it (and call ``super()``).
        """
        await self.send_to_gate(gate, GATE_WHISPER, (service_name, request_id), tuple(body))

    async def reply_gate(self, gate: RemoteGate, service: bytes | str, request_id: bytes,
                         *body: bytes) -> None:
        """Send a reply to a peer's request.

        Called for every reply message this gate sends to a peer (a local
        worker's, an internal call's, an error, or one relayed from another
        peer), ``service`` as a str; a subclass may override it (and call
        ``super()``).
        """
        await self.send_to_gate(gate, GATE_WHISPER, (service, request_id), body)
