"""The broker: ``AMajordomo`` (see ``docs/PROTOCOL.md``).

A ROUTER frontend for clients and a ROUTER backend for workers, both read
in batches from event-loop callbacks.  A request is forwarded to a worker
with spare capacity (round robin, O(1)) by rewriting the received frame
list in place; a reply goes back to its client the same way.  No task, await,
log call or string formatting happens per message on that path.  Requests
that find no capacity wait in a per-service FIFO until a unit is released or
``Settings.TIMEOUT`` passes (then ``BusyWorkerError``).  A periodic tick sends
heartbeats, expires silent workers and times out waiting requests.

Differences from the original: capacity is
released once per completed request, not per reply message; a reply is
accepted only from the worker the request was given to; callers of a
worker that disappears get an error reply at once; unknown internal
functions and malformed requests are answered with an error; internal
stream and HugeData errors use the right tags; ``stop()``
works before ``run()``.

Worker liveness and recovery: every worker gets a HEARTBEAT every interval;
a send that finds a worker's connection gone (EHOSTUNREACH) removes it at
once, so a killed worker is noticed within one heartbeat (expiry after
heartbeat x liveness stays as the fallback for a hung worker; a stall of
the broker's own loop is not counted against its workers, see
``_forgive_stall``).  Its callers
get ``ServiceUnAvailableError``; a caller whose stream or HugeData had begun
gets it as a stream/HugeData error, so the iteration raises.  A HEARTBEAT or
REPLY from a worker id the broker does not know (e.g. after a restart) is
answered with DISCONNECT, at most once per id per heartbeat interval, so the
worker registers again.  A malformed READY is refused with a DISCONNECT that
carries the reason (the original ignored it silently; its worker ignores the
extra frame).  A message that makes the broker fail is counted
(``broker_error``) and, when it names a waiting caller, answered with an
error reply.

Additions: a client found gone when the broker sends to it (EHOSTUNREACH)
is forgotten -- its backlog and waiting requests are dropped, its in-flight
requests released and cancelled at their workers with CANCEL (``06``, which
the original worker ignores); a reply that would exceed the process-wide
backlog budget ends its request with an error naming the budget (see
:mod:`gaterpc.loopio`); a client's HugeData credit (``MDPC01-credit``) goes
to the worker of that request as CREDIT (``07``, ignored by the original
worker; docs/PROTOCOL.md, "HugeData flow control").  Every drop is counted (:mod:`gaterpc.counters`).

A subclass written for the original may override its hooks
(``process_messages_from_frontend``, ``ban_worker``, ``reply_frontend``,
...): they are called where the original called them; see
:mod:`gaterpc.broker._api`.

Package layout: ``_state`` (shared state and reply primitives),
``_backend`` (workers), ``_frontend`` (clients), ``_internal`` (the
``Gate`` service), ``_api`` (the original's overridable methods and how a
subclass's overrides are honoured), ``_majordomo`` (construction, sockets,
life cycle).  ``gaterpc.broker.AMajordomo`` is the public name.
"""

from __future__ import annotations

from ._majordomo import AMajordomo

__all__ = ("AMajordomo",)
