"""Forwarding: requests for services only peers have, and the replies that come back.

A client request for a service without a local worker goes to a ready peer
that advertises it (one unit of that peer's capacity is taken, and given
back at the terminal reply message) as a WHISPER; when no peer has spare
capacity it waits in a bounded queue for up to ``Settings.TIMEOUT``.  The
peer's reply messages are relayed to the requester as they come; the entry
lives until the terminal message (single reply, stream end/error, HugeData
end/error) or until :attr:`Gate.forward_timeout` passes without a message.
A WHISPER request from a peer is never forwarded to peers again.

Spill-over: a client request that waits in the local queue of a service
(every local worker busy) for :attr:`Gate.spill_after` seconds is taken out
of that queue and forwarded the same way to a peer advertising the service
with spare capacity (``count_event("gate_spilled")``).  The broker calls
``_request_waiting`` only when it queues a request; one timer per service
covers the oldest queued request, and a service whose peers had no capacity
is looked at again when some comes back.

Forwarding reuses the received frame lists and runs in the socket's batch
callback: no task, log call or copy per message (see ``docs/GATE.md``).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional, Sequence

from gaterpc.counters import count_drop, count_event
from gaterpc.global_settings import Settings
from gaterpc.helpers import to_bytes
from gaterpc.protocol import (
    KIND_HUGE_CHUNK, KIND_HUGE_END, KIND_HUGE_ERROR, KIND_SINGLE, KIND_STREAM_END, KIND_STREAM_ERROR,
    KIND_STREAM_ITEM,
)
from gaterpc._speedups.frames import is_terminal, reply_kind
from gaterpc.serialization import msg_unpack

from ._typed import BusyGateError, GateUnAvailableError, HugeDataReceiver, ServiceUnAvailableError
from ._base import _GateBase
from ._common import Frames, _Forward, _new_stream, _remote_error
from .peers import RemoteGate


class _ForwardingMixin(_GateBase):
    """Forwarding requests to peers and relaying their replies."""

    def _on_whisper(self, gate: RemoteGate, msg: Frames) -> None:
        """A WHISPER from a registered peer: ``msg`` = ``[gate id, '', GATE01, 03, service, rid, *body]``."""
        rid = msg[5]
        fwd = gate._inflight.get(rid)
        if fwd is not None or rid in self._gate_streams or rid in self.gate_replies:
            if self._hook_reply:
                self._gate_task(self.process_gate_reply(rid, msg[4], msg[6:]))
            else:
                self._whisper_reply(gate, fwd, msg)
            return
        if len(msg) > 6:
            first = msg[6]
            if first[:10] == b"GateStream" or first[:8] == b"\x82\xa6result":
                # a reply that came too late (its request timed out or failed and
                # its requester was answered then): drop it
                count_drop("gate_late_reply")
                return
        if self._hook_request:
            self._gate_task(self.process_gate_request(gate.identity, rid, msg[4], msg[6:]))
            return
        # A request from the peer: handled like a frontend request whose client is the peer.
        msg[0:4] = (gate.identity, b"", self._mdp_client)
        self._route_request(msg, msg[3])

    def _whisper_reply(self, gate: RemoteGate, fwd: Optional[_Forward], msg: Frames) -> None:
        """A reply from ``gate``: relay it to the requester of ``fwd``, or resolve our own call."""
        rid = msg[5]
        if fwd is not None:
            # A reply to a request we forwarded to this peer.
            if not is_terminal(msg[6:]):  # a stream item or HugeData chunk: more follow
                fwd.seen += 1
            else:
                del gate._inflight[rid]
                self.request_map.pop(rid, None)
                self.gate_cluster.give_back(fwd.service, gate)
                if self._fwd_waiting:
                    self._dispatch_fwd_waiting(fwd.service)
                if self._spill_blocked:
                    self._spill_wake(fwd.service)
            requester = fwd.requester
            if requester in self._special_ids:
                self._deliver_special(requester, msg[4], rid, msg[6:])
                return
            msg[0:4] = (requester, b"", self._mdp_client)
            lfront = self._lfront
            if lfront is not None:
                lfront.send(msg)
            return
        self._on_gate_reply(rid, msg[6:])

    def _on_gate_reply(self, rid: bytes, body: Frames) -> None:
        """A reply to this gate's own call to a peer (``gate_replies``), classified by ``reply_kind``."""
        k = reply_kind(body)
        stream = self._gate_streams.get(rid)
        if k == KIND_STREAM_ITEM or k == KIND_STREAM_END or k == KIND_STREAM_ERROR:
            if stream is None:
                fut = self.gate_replies.pop(rid)
                stream = _new_stream()
                self._gate_streams[rid] = stream
                if fut is not None and not fut.done():
                    fut.set_result(stream)
            if k == KIND_STREAM_END:
                del self._gate_streams[rid]
                stream._put_end()
            elif k == KIND_STREAM_ERROR:
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
        if k == KIND_HUGE_CHUNK or k == KIND_HUGE_END or k == KIND_HUGE_ERROR:
            receiver = stream
            if receiver is None:
                receiver = self._gate_streams[rid] = HugeDataReceiver(
                    default_module=Settings.HUGE_DATA_COMPRESS_MODULE)
            fut = self.gate_replies.get(rid)
            if k == KIND_HUGE_END:
                del self._gate_streams[rid]
                self.gate_replies.pop(rid)
                value: Any
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
            elif k == KIND_HUGE_ERROR:
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
                # a single reply; any other body is handed over as its frames, as before
                fut.set_result(msg_unpack(body[0]) if k == KIND_SINGLE else list(body))
            except Exception as exc:
                fut.set_exception(exc)

    def _sweep_forwards(self, now: float) -> None:
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
            if self._spill_blocked:
                self._spill_wake(fwd.service)

    def _service_unavailable(self, client_id: bytes, service_b: bytes, request_id: bytes,
                             body: Sequence[bytes]) -> None:
        """No local worker: forward to a peer that has the service (not for peers' requests)."""
        if client_id in self._peer_ids:
            # loop prevention: a request that came from a gate is not sent back to gates
            _GateBase._service_unavailable(self, client_id, service_b, request_id, body)
            return
        try:
            service = service_b.decode("utf-8")
        except UnicodeDecodeError:
            service = None
        cluster = self.gate_cluster
        if service is None or service not in cluster.services:
            _GateBase._service_unavailable(self, client_id, service_b, request_id, body)
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

    def _forward(self, gate: RemoteGate, requester: bytes, service: str, service_b: bytes,
                 request_id: bytes, body: Sequence[bytes]) -> None:
        fwd = _Forward(requester, service, service_b)
        gate._inflight[request_id] = fwd
        self.request_map[request_id] = requester
        self._fwd_timeouts.append((self._loop.time() + self.forward_timeout, gate, request_id, fwd))
        lsock = gate._lsock
        if lsock is not None:
            if self._hook_send_whisper:
                self._gate_task(self.send_whisper_command(gate, request_id, service, body))
                return
            frames = self._whisper_head + [service_b, request_id]
            frames.extend(body)
            lsock.send(frames)
            gate._sent = True
        else:
            # the gate is not attached to a running loop: nothing can carry the request
            del gate._inflight[request_id]
            self.request_map.pop(request_id, None)
            self.gate_cluster.give_back(service, gate)
            count_drop("gate_forward_no_socket")
            self._reply_error(requester, service_b, request_id, GateUnAvailableError())

    def _credit_onward(self, client_id: bytes, service_b: bytes, request_id: bytes, credit: bytes) -> bool:
        """A client's HugeData credit for a request this gate forwarded: pass it to that peer.

        ``['', GATE01, GATE_CREDIT, *zap, service, request_id, credit]`` on the
        peer's DEALER; a gate of ours hands it to its worker as CREDIT
        (:meth:`_on_peer_credit`), the original drops the unknown command.  It
        does not count as traffic that stands in for a HEARTBEAT (an original
        peer renews nothing on it).  One look at each peer, a few dozen times
        per transfer.  False when no peer has the request from this client.
        """
        for gate in self.gate_cluster.workers.values():
            fwd = gate._inflight.get(request_id)
            if fwd is not None and fwd.requester == client_id:
                lsock = gate._lsock
                if lsock is not None and gate.ready:
                    lsock.send([*self._credit_head, service_b, request_id, credit])
                return True
        return False

    # -- spill-over: local requests that waited too long go to peers with capacity ----

    def _request_waiting(self, svc: Any) -> None:
        """A request for ``svc`` was queued locally (no worker had spare capacity).

        When a peer advertises the service, make sure the queue is looked at
        again when its oldest request has waited :attr:`Gate.spill_after`
        seconds (one timer per service, armed only when none is).
        """
        name = svc.name
        if name in self._spill_timers or name in self._spill_blocked \
                or name not in self.gate_cluster.services:
            return
        self._spill(svc, self._loop.time())

    def _spill_wake(self, service: str) -> None:
        """Some peer capacity for ``service`` came back: spill what was blocked on it."""
        if service in self._spill_blocked:
            self._spill_blocked.discard(service)
            svc = self.services.get(service)
            if svc is not None:
                self._spill(svc, self._loop.time())

    def _spill_service(self, service: str) -> None:
        """Peer capacity for ``service`` may have changed: spill its due local requests."""
        svc = self.services.get(service)
        if svc is not None and svc._waiting:
            self._spill(svc, self._loop.time())

    def _spill_tick(self, now: float) -> None:
        """Each tick, before local waits time out: spill due requests no timer covers."""
        cluster = self.gate_cluster.services
        timers = self._spill_timers
        for name, svc in self.services.items():
            if svc._waiting and name in cluster and name not in timers:
                self._spill(svc, now)

    def _spill_due(self, service: str) -> None:
        """Timer callback: the oldest waiting request of ``service`` is due to spill."""
        self._spill_timers.pop(service, None)
        svc = self.services.get(service)
        if svc is not None and not self._closed:
            self._spill(svc, self._loop.time())

    def _spill(self, svc: Any, now: float) -> None:
        """Forward the requests of ``svc`` that waited :attr:`spill_after` to peers with capacity.

        Requests are taken oldest first and removed from the local queue
        when forwarded (they are never served twice); requests that came
        from peer gates stay (no loops).  When no peer has capacity left the
        service is marked blocked until some comes back; otherwise a timer
        is armed for the next request to become due.
        """
        name = svc.name
        waiting = svc._waiting
        cluster = self.gate_cluster
        timer = self._spill_timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._spill_blocked.discard(name)
        if not waiting or name not in cluster.services:
            return
        spill_after = self.spill_after
        timeout = Settings.TIMEOUT
        if spill_after > timeout:
            return  # requests time out locally before they could spill
        # an entry is (client, request id, body, deadline = queued at + TIMEOUT)
        cutoff = now + timeout - spill_after
        peers = self._peer_ids
        held = None
        service_b = svc._name_b
        while waiting:
            entry = waiting[0]
            if entry[3] > cutoff:
                self._spill_timers[name] = self._loop.call_at(
                    entry[3] - timeout + spill_after, self._spill_due, name)
                break
            if entry[0] in peers:
                # a peer's request is served here or not at all
                if held is None:
                    held = []
                held.append(waiting.popleft())
                continue
            gate = cluster.take(name)
            if gate is None:
                self._spill_blocked.add(name)
                break
            waiting.popleft()
            count_event("gate_spilled")
            self._forward(gate, entry[0], name, service_b, entry[1], entry[2])
        if held:
            waiting.extendleft(reversed(held))

    def _dispatch_fwd_waiting(self, service: str) -> None:
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

    def _fail_fwd_waiting(self, service: str) -> None:
        waiting = self._fwd_waiting.pop(service, None)
        while waiting:
            requester, service_b, rid, body, _ = waiting.popleft()
            _GateBase._service_unavailable(self, requester, service_b, rid, body)

    def _deliver_special(self, client_id: bytes, service_b: bytes, request_id: bytes,
                         body: Any) -> None:
        gate = self.gate_cluster.workers.get(client_id)
        if gate is not None:
            if self._hook_reply_gate:
                self._gate_task(self.reply_gate(gate, _service_name(service_b), request_id, *body))
                return
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

    async def forward_request(self, service_name: str, request_id: bytes, client_id: bytes,
                              body: Any) -> None:
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

    async def request_backend(self, service_name: str, client_id: bytes, request_id: bytes,
                              body: Any, cache: bool = False) -> Any:
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

    async def process_gate_request(self, gate_id: bytes, request_id: bytes,
                                   service_name: bytes | str, body: Frames) -> None:
        """Handle a request the peer ``gate_id`` sent (route it like a client's request)."""
        service_b = to_bytes(service_name)
        self._route_request([gate_id, b"", self._mdp_client, service_b, request_id, *body], service_b)

    async def process_gate_reply(self, request_id: bytes, service_name: bytes | str,
                                 body: Frames) -> None:
        """Handle a reply from a peer to a request this gate sent or forwarded."""
        for gate in self.gate_cluster.workers.values():
            fwd = gate._inflight.get(request_id)
            if fwd is not None:
                self._whisper_reply(gate, fwd, [gate.identity, b"", self._gate_member, b"",
                                                to_bytes(service_name), request_id, *body])
                return
        if request_id in self.gate_replies or request_id in self._gate_streams:
            self._on_gate_reply(request_id, list(body))
        else:
            count_drop("gate_late_reply")


def _service_name(service_b: bytes) -> bytes | str:
    """A service name as the original's ``reply_gate`` received it (str; bytes if not UTF-8)."""
    try:
        return service_b.decode("utf-8")
    except UnicodeDecodeError:
        return service_b
