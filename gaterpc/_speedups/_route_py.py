"""The broker's routing fast path (pure-Python twin of ``_route_c``).

Two batch functions, called by :class:`gaterpc.broker.AMajordomo` for a
whole batch received on one of its ROUTER sockets when no hook is
overridden and no ZAP checker is plugged in:

* :func:`route_requests` -- frontend batch ``[client, '', MDPC01, service,
  request_id, *body]``: a request for a registered service whose worker has
  spare capacity is given to it (round robin, one unit of capacity taken,
  ``worker._inflight[request_id] = client``) by rewriting the frame list in
  place into ``[worker, '', MDPW01, 02, client, '', request_id, *body]`` and
  sending it on the backend.
* :func:`route_replies` -- backend batch ``[worker, '', MDPW01, command,
  ...]``: a reply ``[worker, '', MDPW01, 03, client, '', request_id,
  *body]`` from the worker its request was given to is rewritten in place
  into ``[client, '', MDPC01, service, request_id, *body]`` and sent on the
  frontend.  A body that ends the request (a single reply, a stream's or a
  HugeData transfer's end or error) completes it: its capacity unit is
  given back and requests waiting for capacity are dispatched.  A stream
  item or HugeData chunk leaves the request in flight and records its tag
  in ``worker._partial`` (for the error the caller gets if the worker dies).

Everything else goes to the broker's own (Python) methods, one message at a
time, exactly as if the fast path did not exist: ``broker._client_credit``
(a client's HugeData credit, ``CREDIT_HEADER``), ``broker._route_request``
(internal service, unknown service, no capacity: the request waits, the
Gate's hooks), ``broker._backend_command`` (READY, HEARTBEAT, DISCONNECT),
``broker._unknown_worker``, ``broker._on_reply`` (replies to the broker
itself or to a peer gate).  A message that makes the broker
fail goes to ``broker._count_error``; malformed ones are counted with
:func:`gaterpc.counters.count_drop` as the broker counts them.

Both twins work on the broker's own Python objects (``RemoteWorker``,
``Service``: their ``_ready`` round robin, ``_waiting`` FIFO, ``_inflight``
and ``_partial`` maps, statistics), so everything else that reads or changes
them keeps working; ``take`` and ``give_back`` are
``ServiceCapacity._take``/``_give_back`` step for step.
"""

from __future__ import annotations

from typing import Any, List, Optional

from gaterpc.counters import count_drop
from gaterpc.protocol import CREDIT_HEADER, HUGE_END, HUGE_TAG, REPLY, REQUEST, STREAM_END, STREAM_TAG

__all__ = ("route_requests", "route_replies", "take", "give_back")


def _goes_on(tag: bytes, frame: bytes) -> bool:
    """The two-frame reply body ``[tag, frame]`` is a stream item or a HugeData chunk: its request goes on."""
    if tag == STREAM_TAG:
        return frame != STREAM_END
    if tag == HUGE_TAG:
        return frame != HUGE_END
    return False


def take(svc: Any) -> Optional[Any]:
    """A worker of ``svc`` with spare capacity (one unit taken), or ``None``.

    The pure twin is :meth:`gaterpc.bookkeeping.ServiceCapacity._take` itself;
    the compiled twin inlines the same steps.
    """
    return svc._take()


def give_back(svc: Any, w: Any) -> None:
    """Return one unit of capacity of ``w`` to ``svc`` (:meth:`ServiceCapacity._give_back`)."""
    svc._give_back(w)


def route_requests(broker: Any, msgs: List[List[bytes]]) -> None:
    """Route a frontend batch (see the module docstring)."""
    header = broker._mdp_client
    worker_header = broker._mdp_worker
    internal_b = broker._internal_b
    services = broker._services_b
    lback = broker._lback
    for msg in msgs:
        if len(msg) < 5 or msg[1] or msg[2] != header:
            if len(msg) == 6 and not msg[1] and msg[2] == CREDIT_HEADER:
                try:
                    broker._client_credit(msg)  # HugeData flow control (rare: not a request)
                except Exception:
                    broker._count_error(msg, True)
            else:
                count_drop("frontend_malformed")  # names no request: nobody to answer
            continue
        try:
            service_b = msg[3]
            w = None
            svc = None
            if len(msg) > 5 and service_b != internal_b:
                svc = services.get(service_b)
                if svc is not None:
                    w = take(svc)
            if w is None or svc is None:
                broker._route_request(msg, service_b)
                continue
            svc.stat_requests += 1
            client_id = msg[0]
            w._inflight[msg[4]] = client_id
            # [client, '', MDPC01, service, rid, *body] -> [worker, '', MDPW01, 02, client, '', rid, *body]
            msg[0:4] = (w.identity, b"", worker_header, REQUEST, client_id, b"")
            if lback is not None:
                lback.send(msg)
        except Exception:
            broker._count_error(msg, True)


def route_replies(broker: Any, msgs: List[List[bytes]], now: float) -> None:
    """Handle a backend batch (see the module docstring)."""
    header = broker._mdp_worker
    client_header = broker._mdp_client
    workers = broker.workers
    special = broker._special_ids
    lfront = broker._lfront
    for msg in msgs:
        if len(msg) < 4 or msg[1] or msg[2] != header:
            continue
        try:
            if msg[3] != REPLY:
                broker._backend_command(msg[0], msg[3], msg[4:], now)
                continue
            w = workers.get(msg[0])
            if w is None:
                broker._unknown_worker(msg[0])
                continue
            if len(msg) < 8 or msg[5]:
                count_drop("malformed_reply")
                continue
            w.expiry = now + w.heartbeat * w.heartbeat_liveness / 1000
            client_id = msg[4]
            if client_id in special:
                # a reply to the broker itself / a peer gate
                broker._on_reply(w, msg)
                continue
            request_id = msg[6]
            inflight = w._inflight
            if inflight.get(request_id) != client_id:
                count_drop("reply_not_dispatched")
                continue
            svc = w.service
            if len(msg) == 9 and _goes_on(msg[7], msg[8]):
                # a stream item or HugeData chunk: if the worker dies now, the caller
                # gets a stream-shaped error (see the broker's _on_reply)
                w._partial[request_id] = msg[7]
            else:
                svc.stat_served += 1
                del inflight[request_id]
                if w._partial:
                    w._partial.pop(request_id, None)
                give_back(svc, w)
                if svc._waiting:
                    broker._dispatch_waiting(svc)
            # -> [client, '', MDPC01, service, rid, *body]
            msg[0:6] = (client_id, b"", client_header, svc._name_b)
            if lfront is not None:
                lfront.send(msg)
        except Exception:
            broker._count_error(msg)
