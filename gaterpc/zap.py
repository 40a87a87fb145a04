"""Application-level ZAP authentication.

Frames: docs/PROTOCOL.md, "ZAP".

Two halves:

* :class:`AsyncZAPService` -- the ZAP server.  A ROUTER socket bound in the
  constructor, read in batches from an event-loop callback (no task per
  request); verdicts follow pyzmq's ``Authenticator`` (which it subclasses for
  ``allow``/``deny``/``configure_plain``/``configure_curve``/...) with the
  original's envelope and reasons.
* :class:`ZapChecker` -- the broker side (in :mod:`gaterpc.zapcheck`,
  importable from here), plugged into ``AMajordomo`` by ``connect_zap``.  Every client, worker and gate message carries ZAP frames;
  the checker strips them, answers from a cache when it can and otherwise
  asks the ZAP service, queueing the messages of one cache key behind a
  single ZAP round trip.

Differences from the original:

* NULL works; requests with 4-7 frames get a proper ``400`` reply;
  ``stop()`` works before ``start()``.
* A denied client request is answered at once with an error reply (the
  client raises ``RemoteException`` for ``PermissionError``; the text is
  generic under ``Settings.SECURE``) instead of a silent drop; a denied
  worker is not registered (or is removed) and gets ``DISCONNECT`` with one
  extra frame stating why (the original worker ignores frames after the
  command); a ZAP service that does not answer within
  ``Settings.ZAP_REPLY_TIMEOUT`` makes the waiting callers fail with a
  ``TimeoutError`` reply -- such timeouts are not cached.
* Cache entries expire: successes after :attr:`ZapChecker.success_ttl`
  (30 s), failures after :attr:`ZapChecker.failure_ttl` (5 s), so a revoked
  password stops working within 30 s.  Cache keys hold a keyed BLAKE2b
  digest of the credentials (per-process random key), never a password.
* Nothing logged by either half contains a password.

The ZAP link itself (broker DEALER <-> service ROUTER) never uses CURVE, even
when ``Settings.ZMQ_SOCK`` carries CURVE client keys for the client and
worker sockets of the same process: both ends would be CURVE clients and
never connect.  Keep the ZAP link on ``ipc://`` or ``inproc://``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from pathlib import Path
from typing import Any, Coroutine, List, Optional, Set, Tuple, Union

import zmq
from zmq.utils import z85
from zmq.auth import Authenticator

from gaterpc.base import current_loop, new_socket, own_context, release_context, release_loop, set_ctx
from gaterpc.global_settings import Settings
from gaterpc.helpers import check_socket_addr, to_bytes
from gaterpc.loopio import LoopSocket
# the broker half lives in gaterpc.zapcheck; its names stay importable from here
from gaterpc.zapcheck import ZAP_CACHE_TTL as ZAP_CACHE_TTL, ZapChecker as ZapChecker
from gaterpc.zapcheck import _split as _split, _strip_gate as _strip_gate

__all__ = ("AsyncZAPService", "ZapChecker", "zap_link_socket", "ZAP_CACHE_TTL")

def zap_link_socket(ctx: zmq.Context[Any], socket_type: int) -> zmq.Socket[bytes]:
    """A socket for the ZAP link: ``Settings.ZMQ_SOCK`` applied, security mechanism reset to NULL."""
    sock = new_socket(ctx, socket_type)
    if sock.get(zmq.MECHANISM) != 0:
        # PLAIN_SERVER=0 resets libzmq's mechanism to NULL (clears CURVE/PLAIN).
        sock.setsockopt(zmq.PLAIN_SERVER, 0)
    sock.linger = 0
    return sock


def _ensure_ipc_dir(addr: str) -> None:
    if addr.startswith("ipc://"):
        path = addr[6:]
        if path and not path.startswith("@"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------
# the ZAP service
# ---------------------------------------------------------------------------


class AsyncZAPService(Authenticator):
    """ZAP server answering the brokers' DEALER requests (RFC 27 + a leading delimiter)."""

    encoding = "utf-8"
    # the base class declares a Socket; ours is None once closed
    zap_socket: Optional[zmq.Socket[bytes]]  # type: ignore[assignment]

    def __init__(self, addr: Optional[str] = None, context: Optional[zmq.Context[Any]] = None) -> None:
        addr = addr or Settings.ZAP_ADDR
        check_socket_addr(addr)  # a bad address fails before anything is made
        self._loop = current_loop(self)
        # a context made here is the service's own: stop() terminates it
        context = own_context(self, context or None)
        set_ctx(context)
        super().__init__(context=context, log=logging.getLogger("gaterpc.zap"))
        self.encoding = "utf-8"
        self.addr: str = addr
        sock = self.zap_socket = zap_link_socket(self.context, zmq.ROUTER)
        try:
            _ensure_ipc_dir(self.addr)
            sock.bind(self.addr)
        except Exception:
            sock.close(linger=0)
            self.zap_socket = None
            release_context(self, self.context)
            release_loop(self)
            raise
        self._poller: Any = None
        self._recv_task: Optional[asyncio.Task[None]] = None
        self._lsock: Optional[LoopSocket] = None
        self.request: Set[asyncio.Task[None]] = set()
        self._custom_handler = type(self).handle_zap_message is not AsyncZAPService.handle_zap_message

    def __repr__(self) -> str:
        return f"<{type(self).__name__} addr={self.addr!r} running={self._recv_task is not None}>"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start answering requests (creates ``_recv_task``)."""
        if self._recv_task is None and self.zap_socket is not None:
            self.log.debug("ZAP service start.")
            self._recv_task = self._loop.create_task(self.handle_zap())

    async def handle_zap(self) -> None:
        """Read the socket from an event-loop callback until cancelled."""
        if self._lsock is None and self.zap_socket is not None:
            self._lsock = LoopSocket(self._loop, self.zap_socket, self._on_messages,
                                     on_error=self._on_socket_error)
        try:
            await self._loop.create_future()
        except asyncio.CancelledError:
            return
        finally:
            self._detach()

    def _on_socket_error(self, exc: zmq.ZMQError) -> None:
        self.log.error("ZAP socket failed: %s", exc)

    def _detach(self) -> None:
        lsock = self._lsock
        self._lsock = None
        if lsock is not None:
            lsock.close(0)
            self.zap_socket = None

    def stop(self) -> None:
        """Stop answering, close the socket (also fine before ``start()``).

        A context the service made itself (no ``context=``) is terminated; a
        loop the library made for it is closed when no other role uses it and
        it is not running.
        """
        task = self._recv_task
        self._recv_task = None
        if task is not None and not task.done():
            task.cancel()
        for t in list(self.request):
            t.cancel()
        self._detach()
        if self.zap_socket is not None:
            self.zap_socket.close(linger=0)
        self.zap_socket = None
        release_context(self, self.context)
        release_loop(self)

    def cleanup_request(self, task: asyncio.Task[None]) -> None:
        """Done-callback of the (rare) request tasks."""
        self.request.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("ZAP request task failed: %r", task.exception())

    # -- requests -------------------------------------------------------------

    def _on_messages(self, msgs: List[List[bytes]]) -> None:
        for msg in msgs:
            try:
                if self._custom_handler:
                    self._spawn(self.handle_zap_message(msg))
                    continue
                pending = self._process(msg)
                if pending is not None:
                    self._spawn(pending)
            except Exception as exc:
                self.log.error("error while handling a ZAP request: %r", type(exc).__name__)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = self._loop.create_task(coro)
        self.request.add(t)
        t.add_done_callback(self.cleanup_request)

    async def handle_zap_message(self, msg: List[bytes]) -> None:
        """Answer one request ``[sender, '', version, request_id, domain, address, identity, mechanism, *creds]``."""
        pending = self._process(msg)
        if pending is not None:
            await pending

    def _process(self, msg: List[bytes]) -> Optional[Coroutine[Any, Any, None]]:
        """Answer ``msg`` now, or return a coroutine that answers it (CURVE)."""
        n = len(msg)
        if n < 8:
            self.log.error("Invalid ZAP message, not enough frames (%d)", n)
            if n >= 4 and not msg[1]:
                self._zap_reply(msg[0], msg[3], b"400", b"Not enough frames")
            else:
                self.log.error("Not enough information to reply")
            return None
        reply_address, empty, version, request_id, domain, address, _identity, mechanism = msg[:8]
        if empty:
            return None
        credentials = msg[8:]
        if version != Settings.ZAP_VERSION:
            self.log.error("Invalid ZAP version")
            self._zap_reply(reply_address, request_id, b"400", b"Invalid version")
            return None
        domain_s = domain.decode(self.encoding, "replace")
        address_s = address.decode(self.encoding, "replace")

        # Credit: this allow/deny block (and the structure of _authenticate_plain
        # below) closely follows pyzmq's zmq/auth/base.py (Authenticator), by the
        # PyZMQ Developers, BSD-3-Clause licence; see the NOTICE file.
        allowed = False
        denied = False
        reason = b"NO ACCESS"
        if self._allowed:
            if address_s in self._allowed:
                allowed = True
            else:
                denied = True
                reason = b"Address not allowed"
        elif self._denied:
            if address_s in self._denied:
                denied = True
                reason = b"Address denied"
            else:
                allowed = True

        username = "anonymous"
        if not denied:
            if mechanism == b"NULL":
                allowed = True
            elif mechanism == b"PLAIN":
                if len(credentials) != 2:
                    self.log.error("Invalid PLAIN credentials: %d frames", len(credentials))
                    self._zap_reply(reply_address, request_id, b"400", b"Invalid credentials")
                    return None
                username, password = (c.decode(self.encoding, "replace") for c in credentials)
                allowed, reason = self._authenticate_plain(domain_s, username, password)
            elif mechanism == b"CURVE":
                if len(credentials) != 1:
                    self.log.error("Invalid CURVE credentials: %d frames", len(credentials))
                    self._zap_reply(reply_address, request_id, b"400", b"Invalid credentials")
                    return None
                return self._curve(reply_address, request_id, domain_s, credentials[0])
            elif mechanism == b"GSSAPI":
                if len(credentials) != 1:
                    self.log.error("Invalid GSSAPI credentials: %d frames", len(credentials))
                    self._zap_reply(reply_address, request_id, b"400", b"Invalid credentials")
                    return None
                principal = credentials[0]
                username = principal.decode("utf-8", "replace")
                allowed, reason = self._authenticate_gssapi(domain_s, principal)
        if allowed:
            self._zap_reply(reply_address, request_id, b"200", b"OK", username)
        else:
            self._zap_reply(reply_address, request_id, b"400", reason)
        return None

    async def _curve(self, reply_address: bytes, request_id: bytes, domain: str, key: bytes) -> None:
        if len(key) == 40:  # Z85 text -> raw
            try:
                key = z85.decode(key)
            except Exception:
                pass
        if len(key) != 32:
            self._zap_reply(reply_address, request_id, b"400", b"Invalid credentials")
            return
        allowed, reason = await self._authenticate_curve(domain, key)
        if allowed:
            self._zap_reply(reply_address, request_id, b"200", b"OK", self.curve_user_id(key))
        else:
            self._zap_reply(reply_address, request_id, b"400", reason)

    def _authenticate_plain(self, domain: str, username: str, password: str) -> Tuple[bool, bytes]:
        """PLAIN check: ``(allowed, reason)``; never logs the password."""
        allowed = False
        reason = b""
        if self.passwords:
            if not domain:
                domain = "*"
            if domain in self.passwords:
                users = self.passwords[domain]
                if username in users:
                    expected = users[username]
                    if hmac.compare_digest(to_bytes(password), to_bytes(expected)):
                        allowed = True
                    else:
                        reason = b"Invalid password"
                else:
                    reason = b"Invalid username"
            else:
                reason = b"Invalid domain"
        else:
            reason = b"No passwords defined"
        if Settings.DEBUG > 1:
            if allowed:
                self.log.debug("ALLOWED (PLAIN) domain=%s username=%s", domain, username)
            else:
                self.log.debug("DENIED (PLAIN) %s", reason)
        return allowed, reason

    def _zap_reply(
        self,
        reply_address: bytes,
        request_id: bytes,
        status_code: bytes,
        status_text: Union[str, bytes],
        user_id: Union[str, bytes] = "anonymous",
    ) -> None:
        user_id = user_id if status_code == b"200" else b""
        if isinstance(user_id, str):
            user_id = user_id.encode(self.encoding, "replace")
        frames = (reply_address, b"", Settings.ZAP_VERSION, request_id, status_code,
                  to_bytes(status_text), user_id, b"")
        lsock = self._lsock
        if lsock is not None:
            lsock.send(frames)
        elif self.zap_socket is not None:
            try:
                self.zap_socket.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                self.log.warning("cannot send a ZAP reply: %s", exc)

    async def _asend_zap_reply(
        self,
        reply_address: Union[str, bytes],
        request_id: Union[str, bytes],
        status_code: Union[str, bytes],
        status_text: Union[str, bytes],
        user_id: Union[str, bytes] = "anonymous",
    ) -> None:
        """Send one reply ``[address, '', '1.0', request_id, code, text, user_id, '']``."""
        self._zap_reply(to_bytes(reply_address), to_bytes(request_id), to_bytes(status_code),
                        to_bytes(status_text), user_id)

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        # The base class' REP-socket reply cannot be routed on a ROUTER socket.
        self.log.error("a ZAP reply without a routing envelope was dropped")
