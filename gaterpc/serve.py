"""Run roles until SIGTERM/SIGINT and shut them down in order: :func:`serve`.

This is what the ``gaterpc broker`` and ``gaterpc worker`` commands use, and
what a program of your own can use to behave well under a service manager
(systemd, docker, Kubernetes all stop a process with SIGTERM)::

    from gaterpc.serve import serve

    async def main():
        broker = AMajordomo(context=ctx); broker.bind_frontend(...); broker.bind_backend(...)
        worker = Service(name="Calc").create_worker(Calc, BACKEND, context=ctx)
        await serve(broker, worker, grace=30)    # returns after SIGTERM/SIGINT

The shutdown order is:

1. workers (:class:`~gaterpc.worker.Worker`): take no new request (those
   that still arrive get ``ServiceUnAvailableError`` at once), finish the
   requests in flight within ``grace`` seconds (each one is answered), then
   say DISCONNECT to the broker (:meth:`Worker.shutdown`);
2. brokers and gates (:class:`~gaterpc.broker.AMajordomo`,
   :class:`~gaterpc.gate.Gate`): ``stop()`` says DISCONNECT to the workers
   still registered and, for a gate, LEAVE to its peers, then closes;
3. anything else with a ``stop()`` or ``close()`` (e.g. an
   :class:`~gaterpc.zap.AsyncZAPService`, a ``Client``).

:func:`serve` returns normally after a signal (the command line then exits
with status 0).  It does not touch roles it was not given.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from typing import Any, Iterable, Optional

__all__ = ("serve", "shutdown_roles", "DEFAULT_GRACE")

logger = logging.getLogger("gaterpc.serve")

DEFAULT_GRACE = 10.0
"""Seconds a worker gets to finish its requests in flight (``--grace``)."""


def _kind(role: Any) -> int:
    from gaterpc.broker import AMajordomo
    from gaterpc.worker import Worker

    if isinstance(role, Worker):
        return 0
    if isinstance(role, AMajordomo):
        return 1
    return 2


async def shutdown_roles(roles: Iterable[Any], grace: float = DEFAULT_GRACE) -> None:
    """Shut ``roles`` down in the order described in the module docstring."""
    role_list = list(roles)
    workers = [r for r in role_list if _kind(r) == 0]
    if workers:
        results = await asyncio.gather(*(w.shutdown(grace) for w in workers), return_exceptions=True)
        for w, res in zip(workers, results):
            if isinstance(res, BaseException):
                logger.error("worker %r failed to shut down: %r", getattr(w, "service", w), res)
    for role in role_list:
        if _kind(role) == 1:
            role.stop()
    for role in role_list:
        if _kind(role) == 2:
            stop = getattr(role, "stop", None) or getattr(role, "close", None)
            if callable(stop):
                res = stop()
                if inspect.isawaitable(res):
                    await res
    # let the goodbye messages reach the sockets (they close with a short linger)
    await asyncio.sleep(0.05)


async def serve(
    *roles: Any,
    grace: float = DEFAULT_GRACE,
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    stop: Optional[asyncio.Event] = None,
) -> Optional[str]:
    """Run ``roles`` until a signal in ``signals`` arrives (or ``stop`` is set), then shut them down.

    ``roles``: workers, brokers, gates, ZAP services..., built in the
    running loop; workers, brokers and gates not running yet are started
    (``run()``), anything else must be started by the caller (e.g.
    ``zap.start()``).  ``grace``: seconds workers get to finish
    their requests in flight.  ``stop``: an optional :class:`asyncio.Event`
    that ends the wait like a signal does (handy in tests and embedded use).
    Signal handlers are installed with ``loop.add_signal_handler`` and
    removed before returning.  Returns the name of the signal received
    (``"SIGTERM"``...), or ``None`` when ``stop`` ended the wait.
    """
    loop = asyncio.get_running_loop()
    stop_event = stop if stop is not None else asyncio.Event()
    received: list[str] = []

    def on_signal(sig: int) -> None:
        if not received:
            logger.info("%s received: shutting down (grace %.1f s)", signal.Signals(sig).name, grace)
        received.append(signal.Signals(sig).name)
        stop_event.set()

    installed: list[int] = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
            pass
    try:
        for role in roles:
            _start(role)
        await stop_event.wait()
    finally:
        try:
            await shutdown_roles(roles, grace)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
    return received[0] if received else None


def _start(role: Any) -> None:
    # Worker.run() and AMajordomo.run() do nothing when already running.
    if _kind(role) < 2:
        role.run()
