"""The broker side of application-level ZAP: :class:`ZapChecker`.

Plugged into ``AMajordomo`` by ``connect_zap``: every client, worker and
gate message carries ZAP frames; the checker strips them, answers from a
cache when it can and otherwise asks the ZAP service
(:class:`gaterpc.zap.AsyncZAPService`), queueing the messages of one cache
key behind a single ZAP round trip.  Frames: docs/PROTOCOL.md, "ZAP"; what
differs from the original: the :mod:`gaterpc.zap` docstring.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import zmq

from gaterpc.counters import count_drop
from gaterpc.global_settings import Settings
from gaterpc.helpers import to_bytes
from gaterpc.loopio import LoopSocket
from gaterpc.protocol import DISCONNECT, REPLY

__all__ = ("ZapChecker", "ZAP_CACHE_TTL")

Zlogger = logging.getLogger("gaterpc.zap")

#: Upper bound (seconds) of any cached verdict; the broker's ``zap_cache`` ttl.
ZAP_CACHE_TTL = 30.0

_CH_FRONTEND = b"frontend"
_CH_BACKEND = b"backend"
_CH_GATE = b"gate"
#: a verdict asked for by ``request_zap`` (its callback gets True or False)
_CH_HOOK = b"hook"

#: ``(channel, sender, domain, mechanism, digest of the credentials)``
CacheKey = Tuple[bytes, bytes, bytes, bytes, bytes]
#: ``(allowed, reason, expiry time on the loop's clock)``
Verdict = Tuple[bool, bytes, float]
#: Receives a verified gate command without its ZAP frames.
GateHandler = Callable[[List[bytes]], object]
#: A message held for a verdict: ``(channel, frames, end of the ZAP frames, (on_ok, whole) for gates)``;
#: for a ``request_zap`` call, ``(b"hook", [], 0, (callback taking the verdict, False))``.
Held = Tuple[bytes, List[bytes], int, Optional[Tuple[Callable[[Any], object], bool]]]


class VerdictCache(Protocol):
    """The broker's cache of ZAP verdicts (``zap_cache``)."""

    def get(self, key: CacheKey, /) -> Optional[Verdict]: ...

    def pop(self, key: CacheKey, /) -> object: ...

    def __setitem__(self, key: CacheKey, value: Verdict, /) -> None: ...


class ZapBroker(Protocol):
    """What a :class:`ZapChecker` uses of its broker."""

    @property
    def _loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def zap(self) -> Optional[zmq.Socket[bytes]]: ...

    @property
    def zap_domain(self) -> bytes: ...

    @property
    def zap_cache(self) -> VerdictCache: ...

    @property
    def workers(self) -> Mapping[bytes, Any]: ...

    @property
    def _lback(self) -> Optional[LoopSocket]: ...

    @property
    def _mdp_worker(self) -> bytes: ...

    def _route_request(self, msg: List[bytes], service_b: bytes, /) -> object: ...

    def _backend_checked(self, msg: List[bytes], /) -> object: ...

    def _reply_error(self, client_id: bytes, service_b: bytes, request_id: bytes, exc: BaseException, /) -> object: ...

    def _count_error(self) -> object: ...

    def _remove_worker(self, w: Any, send_disconnect: bool, /) -> object: ...

    def _spawn(self, coro: Any, /) -> object: ...

    async def request_zap(self, identity: bytes, address: bytes, request_id: bytes, mechanism: bytes,
                          credentials: Tuple[bytes, ...], channel: bytes = _CH_FRONTEND) -> bool: ...

    async def process_replies_from_zap(self, replies: List[bytes]) -> None: ...


# ---------------------------------------------------------------------------
# the broker side
# ---------------------------------------------------------------------------


class _Pending:
    """Messages waiting for the verdict of one cache key."""

    __slots__ = ("zap_id", "deadline", "items")

    def __init__(self, zap_id: bytes, deadline: float) -> None:
        self.zap_id = zap_id
        self.deadline = deadline
        self.items: List[Held] = []


_OK = 1


class ZapChecker:
    """The broker's ZAP client: verify, strip ZAP frames, hand messages on.

    ``frontend(msg)``/``backend(msg)`` take received messages (with the
    sender's routing id); ``gate(sender_id, frames, on_ok)`` takes either the
    whole received gate message ``[id, '', GATE01, command, *zap, ...]`` (then
    ``on_ok`` gets it with the ZAP frames removed) or just the frames starting
    with the ZAP frames (then ``on_ok`` gets the frames after them).
    """

    #: seconds a successful verdict is trusted (revocation takes effect within it)
    success_ttl = ZAP_CACHE_TTL
    #: seconds a failed verdict is remembered
    failure_ttl = 5.0
    #: most keys waiting for a ZAP verdict at once (more -> immediate error)
    max_pending_keys = 4096
    #: most messages waiting behind one key
    max_queued = 5000

    def __init__(self, broker: ZapBroker) -> None:
        self.broker = broker
        self._loop = broker._loop
        self._lzap: Optional[LoopSocket] = None
        self._pending: Dict[CacheKey, _Pending] = {}  # cache key -> _Pending (insertion order == deadline order)
        self._by_id: Dict[bytes, CacheKey] = {}  # ZAP request id -> cache key
        self._timer: Optional[asyncio.TimerHandle] = None
        self._hkey = secrets.token_bytes(32)
        self._told: Dict[bytes, float] = {}  # worker id -> time a DISCONNECT with a reason was last sent
        self._closed = False
        self.requests_sent = 0
        # the original's hooks a subclass of the broker overrides (see the class doc)
        self._ask_hook = bool(getattr(broker, "_hook_zap", False))
        self._replies_hook = bool(getattr(broker, "_hook_zap_replies", False))

    def __repr__(self) -> str:
        return f"<ZapChecker pending={len(self._pending)}>"

    # -- plumbing ---------------------------------------------------------------

    def attach(self) -> None:
        """Start reading the broker's ZAP DEALER socket."""
        zap = self.broker.zap
        if self._lzap is None and not self._closed and zap is not None:
            on_msgs = self._to_replies_hook if self._replies_hook else self._on_replies
            self._lzap = LoopSocket(self._loop, zap, on_msgs)

    def _to_replies_hook(self, msgs: List[List[bytes]]) -> None:
        """Batch callback when ``process_replies_from_zap`` is overridden: one call per message."""
        broker = self.broker
        for msg in msgs:
            broker._spawn(broker.process_replies_from_zap(msg))

    def close(self) -> None:
        """Stop: drop waiting messages, close the ZAP socket."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in self._pending.values():
            for item in pending.items:
                if item[0] is _CH_HOOK and item[3] is not None:
                    item[3][0](False)  # a request_zap call waiting: no verdict will come
        self._pending.clear()
        self._by_id.clear()
        if self._lzap is not None:
            self._lzap.close(0)
            self._lzap = None
        else:
            zap = self.broker.zap
            if zap is not None:
                zap.close(linger=0)

    def _key(self, channel: bytes, sender: bytes, mechanism: bytes, credentials: Sequence[bytes]) -> CacheKey:
        h = hashlib.blake2b(key=self._hkey, digest_size=20)
        for c in credentials:
            h.update(len(c).to_bytes(4, "big"))
            h.update(c)
        return (channel, self.broker.zap_domain, sender, mechanism, h.digest())

    def _lookup(self, key: CacheKey) -> Optional[Verdict]:
        """``(ok, reason)`` from the cache, or ``None``."""
        entry = self.broker.zap_cache.get(key)
        if entry is None:
            return None
        if entry[2] <= self._loop.time():
            self.broker.zap_cache.pop(key)
            return None
        return entry

    # -- the three channels -----------------------------------------------------

    def frontend(self, msg: List[bytes]) -> None:
        """``msg`` = ``[client, '', MDPC01, service, *zap, request_id, *body]``."""
        parsed = _split(msg, 4)
        if parsed is None:
            # no/unknown ZAP frames: msg[4] is most likely the request id (a client without ZAP frames)
            self._deny_client(msg[0], msg[3], msg[4], b"missing or malformed ZAP frames")
            return
        mechanism, credentials, end = parsed
        if len(msg) <= end:
            count_drop("zap_no_request_id")  # names no request: nobody to answer
            return
        key = self._key(_CH_FRONTEND, msg[0], mechanism, credentials)
        entry = self._lookup(key)
        if entry is None:
            self._wait(key, msg[end], msg[0], mechanism, credentials, (_CH_FRONTEND, msg, end, None))
        elif entry[0]:
            del msg[4:end]
            self.broker._route_request(msg, msg[3])
        else:
            self._deny_client(msg[0], msg[3], msg[end], entry[1])

    def backend(self, msg: List[bytes]) -> None:
        """``msg`` = ``[worker, '', MDPW01, command, *zap, ...]``."""
        parsed = _split(msg, 4)
        if parsed is None:
            self._deny_worker(msg[0], b"missing or malformed ZAP frames")
            return
        mechanism, credentials, end = parsed
        if self._ask_hook:
            self.broker._spawn(self._backend_by_hook(msg, mechanism, credentials, end))
            return
        key = self._key(_CH_BACKEND, msg[0], mechanism, credentials)
        entry = self._lookup(key)
        if entry is None:
            self._wait(key, b"worker_" + msg[3], msg[0], mechanism, credentials,
                       (_CH_BACKEND, msg, end, None))
        elif entry[0]:
            del msg[4:end]
            self.broker._backend_checked(msg)
        else:
            self._deny_worker(msg[0], entry[1])

    def gate(self, sender_id: bytes, frames: List[bytes], on_ok: GateHandler) -> None:
        """Verify a gate command; ``on_ok`` gets it without the ZAP frames."""
        whole = len(frames) >= 4 and frames[0] == sender_id and not frames[1]
        start = 4 if whole else 0
        parsed = _split(frames, start)
        if parsed is None:
            count_drop("zap_gate_malformed")
            return
        mechanism, credentials, end = parsed
        command = frames[3] if whole else b""
        if self._ask_hook:
            self.broker._spawn(self._gate_by_hook(sender_id, frames, on_ok, whole, command,
                                                  mechanism, credentials, end))
            return
        key = self._key(_CH_GATE, sender_id, mechanism, credentials)
        entry = self._lookup(key)
        if entry is None:
            self._wait(key, b"gate_" + command, sender_id, mechanism, credentials,
                       (_CH_GATE, frames, end, (on_ok, whole)))
        elif entry[0]:
            on_ok(_strip_gate(frames, end, whole))

    # -- an overridden request_zap decides ----------------------------------------------

    async def _backend_by_hook(self, msg: List[bytes], mechanism: bytes, credentials: Tuple[bytes, ...],
                               end: int) -> None:
        ok = await self.broker.request_zap(msg[0], msg[0], b"worker_" + msg[3], mechanism, credentials,
                                           channel=_CH_BACKEND)
        self._decided((_CH_BACKEND, msg, end, None), bool(ok),
                      self._key(_CH_BACKEND, msg[0], mechanism, credentials))

    async def _gate_by_hook(self, sender_id: bytes, frames: List[bytes], on_ok: GateHandler, whole: bool,
                            command: bytes, mechanism: bytes, credentials: Tuple[bytes, ...],
                            end: int) -> None:
        ok = await self.broker.request_zap(sender_id, sender_id, b"gate_" + command, mechanism, credentials,
                                           channel=_CH_GATE)
        self._decided((_CH_GATE, frames, end, (on_ok, whole)), bool(ok),
                      self._key(_CH_GATE, sender_id, mechanism, credentials))

    def _decided(self, item: Held, ok: bool, key: CacheKey) -> None:
        """Let ``item`` in or refuse it as a verdict of the ZAP service would (the reason from the cache)."""
        if self._closed:
            count_drop("zap_closed")
            return
        reason = None
        if not ok:
            entry = self._lookup(key)
            reason = entry[1] if entry is not None and not entry[0] else b"refused by request_zap"
        self._release([item], ok, reason)

    async def ask(self, identity: bytes, address: bytes, request_id: bytes, mechanism: bytes,
                  credentials: Sequence[bytes], channel: bytes = _CH_FRONTEND) -> bool:
        """The verdict for these credentials: from the cache, else from the ZAP service.

        What the broker's ``request_zap`` does.  False when refused, when the
        service does not answer within ``Settings.ZAP_REPLY_TIMEOUT`` or is
        overloaded, or when the checker closes meanwhile.
        """
        mechanism = to_bytes(mechanism)
        creds = tuple(to_bytes(c) for c in credentials)
        key = self._key(to_bytes(channel), to_bytes(identity), mechanism, creds)
        entry = self._lookup(key)
        if entry is not None:
            return bool(entry[0])
        if self._closed:
            return False
        verdict: asyncio.Future[bool] = self._loop.create_future()

        def decided(ok: bool) -> None:
            if not verdict.done():
                verdict.set_result(ok)

        self._wait(key, to_bytes(request_id), to_bytes(address), mechanism, creds,
                   (_CH_HOOK, [], 0, (decided, False)), identity=to_bytes(identity))
        return await verdict

    # -- asking the service -------------------------------------------------------

    def _wait(
        self,
        key: CacheKey,
        prefix: bytes,
        sender: bytes,
        mechanism: bytes,
        credentials: Sequence[bytes],
        item: Held,
        identity: Optional[bytes] = None,
    ) -> None:
        """Hold ``item`` for the verdict of ``key``; ask the service if nobody has yet.

        ``sender`` goes in the request's address frame, and in its identity
        frame unless ``identity`` is given.
        """
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self.max_pending_keys or self._lzap is None or \
                    self._lzap.backlog_size() >= self.max_queued:
                self._fail(item, False, b"authentication service overloaded")
                return
            zap_id = prefix + b"-" + secrets.token_bytes(16)
            now = self._loop.time()
            pending = _Pending(zap_id, now + Settings.ZAP_REPLY_TIMEOUT)
            self._pending[key] = pending
            self._by_id[zap_id] = key
            domain = self.broker.zap_domain
            self._lzap.send((b"", Settings.ZAP_VERSION, zap_id, domain, sender,
                             sender if identity is None else identity, mechanism, *credentials))
            self.requests_sent += 1
            if self._timer is None:
                self._timer = self._loop.call_at(pending.deadline, self._expire)
        elif len(pending.items) >= self.max_queued:
            self._fail(item, False, b"too many requests waiting for authentication")
            return
        pending.items.append(item)

    def _on_replies(self, msgs: List[List[bytes]]) -> None:
        now = self._loop.time()
        cache = self.broker.zap_cache
        for msg in msgs:
            if len(msg) != 7 or msg[0] or msg[1] != Settings.ZAP_VERSION:
                continue
            key = self._by_id.pop(msg[2], None)
            if key is None:
                continue
            pending = self._pending.pop(key, None)
            ok = msg[3] == b"200"
            reason = msg[4]
            if ok:
                cache[key] = (True, b"OK", now + self.success_ttl)
            else:
                Zlogger.warning("authentication failed (%s, %s): %s",
                                key[0].decode(), key[2].hex(), reason.decode("utf-8", "replace"))
                cache[key] = (False, reason, now + self.failure_ttl)
            if pending is not None:
                self._release(pending.items, ok, reason)

    def _expire(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        pending_map = self._pending
        expired: List[CacheKey] = []
        for key, pending in pending_map.items():
            if pending.deadline > now:
                break
            expired.append(key)
        for key in expired:
            pending = pending_map.pop(key)
            self._by_id.pop(pending.zap_id, None)
            Zlogger.warning("the ZAP service did not answer within %ss (%s, %s)",
                            Settings.ZAP_REPLY_TIMEOUT, key[0].decode(), key[2].hex())
            self._release(pending.items, False, None)
        if pending_map:
            first = next(iter(pending_map.values()))
            self._timer = self._loop.call_at(first.deadline, self._expire)

    def _release(self, items: List[Held], ok: bool, reason: Optional[bytes]) -> None:
        broker = self.broker
        for item in items:
            if self._closed:
                return
            caller = _caller_of(broker, item)
            try:
                if ok:
                    channel, msg, end, extra = item
                    if channel is _CH_FRONTEND:
                        del msg[4:end]
                        broker._route_request(msg, msg[3])
                    elif channel is _CH_BACKEND:
                        del msg[4:end]
                        broker._backend_checked(msg)
                    elif channel is _CH_HOOK:
                        assert extra is not None
                        extra[0](True)
                    else:
                        assert extra is not None  # a gate item carries (on_ok, whole)
                        extra[0](_strip_gate(msg, end, extra[1]))
                else:
                    self._fail(item, reason is None, reason)
            except Exception as exc:
                # the message is dropped: counted, and its caller (if it names one) told
                broker._count_error()
                count_drop("zap_release_error")
                if caller is not None:
                    try:
                        broker._reply_error(caller[0], caller[1], caller[2], exc)
                    except Exception:
                        broker._count_error()

    # -- refusing -------------------------------------------------------------------

    def _fail(self, item: Held, timed_out: bool, reason: Optional[bytes]) -> None:
        channel, msg, end, extra = item
        text = b"" if reason is None else reason  # None only when timed out
        if channel is _CH_FRONTEND:
            if timed_out:
                exc = TimeoutError("the authentication service did not answer in time")
                self.broker._reply_error(msg[0], msg[3], msg[end], exc)
            else:
                self._deny_client(msg[0], msg[3], msg[end], text)
        elif channel is _CH_BACKEND:
            # A slow ZAP service is transient: a plain DISCONNECT lets our worker register again
            # (with backoff); a refusal carries its reason, and our worker stops on it.
            self._deny_worker(msg[0], b"authentication service unavailable" if timed_out else text,
                              final=not timed_out)
        elif channel is _CH_HOOK:
            if extra is not None:
                extra[0](False)
        else:
            count_drop("zap_gate_denied")  # a gate command: the original drops it too

    def _deny_client(self, client_id: bytes, service_b: bytes, request_id: bytes, reason: bytes) -> None:
        if Settings.SECURE:
            exc = PermissionError("authentication failed")
        else:
            exc = PermissionError(f"authentication failed: {reason.decode('utf-8', 'replace')}")
        self.broker._reply_error(client_id, service_b, request_id, exc)

    def _deny_worker(self, worker_id: bytes, reason: bytes, final: bool = True) -> None:
        broker = self.broker
        w = broker.workers.get(worker_id)
        if w is not None:
            Zlogger.warning("worker %s removed: authentication failed", worker_id.hex())
            broker._remove_worker(w, False)
        now = self._loop.time()
        told = self._told
        last = told.get(worker_id)
        if last is not None and now - last < self.failure_ttl:
            return
        if len(told) > 4096:
            for wid in [k for k, t in told.items() if now - t >= self.failure_ttl]:
                del told[wid]
        told[worker_id] = now
        lback = broker._lback
        if lback is not None:
            if not final:
                Zlogger.warning("worker %s told to register again: %s", worker_id.hex(),
                                reason.decode("utf-8", "replace"))
                lback.send((worker_id, b"", broker._mdp_worker, DISCONNECT))
                return
            text = b"authentication failed" if Settings.SECURE else b"authentication failed: " + reason
            lback.send((worker_id, b"", broker._mdp_worker, DISCONNECT, text))


def _caller_of(broker: ZapBroker, item: Held) -> Optional[Tuple[bytes, bytes, bytes]]:
    """``(client_id, service_b, request_id)`` of the request a held message belongs to, or None.

    A client request names its caller; so does a worker REPLY (the client it
    answers).  Read before the message is handled (which rewrites it).
    """
    channel, msg, end, _ = item
    try:
        if channel is _CH_FRONTEND:
            if len(msg) > end:
                return msg[0], msg[3], msg[end]
        elif channel is _CH_BACKEND:
            if msg[3] == REPLY and len(msg) > end + 2:
                w = broker.workers.get(msg[0])
                service_b = w.service._name_b if w is not None else b""
                return msg[end], service_b, msg[end + 2]
    except (IndexError, TypeError):
        pass
    return None


def _split(msg: Sequence[bytes], start: int) -> Optional[Tuple[bytes, Tuple[bytes, ...], int]]:
    """``(mechanism, credentials, end)`` of the ZAP frames at ``msg[start:]``, or ``None``."""
    if len(msg) <= start:
        return None
    mechanism = msg[start]
    if mechanism == Settings.ZAP_MECHANISM_PLAIN:
        end = start + 3
    elif mechanism == Settings.ZAP_MECHANISM_NULL:
        end = start + 1
    elif mechanism == Settings.ZAP_MECHANISM_CURVE:
        end = start + 2
    else:
        return None
    if len(msg) < end:
        return None
    return mechanism, tuple(msg[start + 1:end]), end


def _strip_gate(frames: List[bytes], end: int, whole: bool) -> List[bytes]:
    if whole:
        del frames[4:end]
        return frames
    return frames[end:]

