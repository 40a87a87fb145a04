"""The state every room of a :class:`~gaterpc.gate.Gate` shares, and the hooks it honours.

``_GateBase`` is the common base of the gate's mixins.  At run time it adds
nothing to :class:`~gaterpc.broker.AMajordomo`; for the type checker it
declares the gate's attributes, a typed view of the broker methods the gate
uses, and the methods one room calls in another.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Optional

from gaterpc.broker import AMajordomo

if TYPE_CHECKING:
    import zmq


    from ._common import Frames, _Forward, _Replies
    from ._typed import LoopSocket
    from .peers import GateClusterService, RemoteGate

#: Methods of the original's Gate that user subclasses override.  When a
#: subclass overrides one, the gate calls it (as a task, in arrival order) at
#: the point of the flow where the original did, with the same arguments;
#: when none is overridden the batch callbacks do the work inline.
HOOKS = (
    "process_messages_from_gate",
    "process_whisper_command",
    "process_gate_request",
    "process_gate_reply",
    "process_notice_command",
    "process_invite_command",
    "process_join_command",
    "register_gate",
    "ban_gate",
    "send_gate_heartbeat",
    "process_mcast_messages",
)

#: ``[requester, service_b, request id, body, deadline]`` of a request waiting for a peer's capacity.
Waiting = tuple[bytes, bytes, bytes, "list[bytes]", float]


class _GateBase(AMajordomo):
    """Declarations shared by the gate's mixins (see the module docstring)."""

    # -- the gate's own attributes (set in Gate.__init__) -----------------------------
    gate: Optional[zmq.Socket[Any]]
    gate_port: int
    gate_bind: str
    multicast_interface: Optional[str]
    gate_cluster: GateClusterService
    event_handlers: dict[str, Callable[..., Coroutine[Any, Any, Any]]]
    gate_replies: _Replies
    request_map: dict[bytes, bytes]
    gate_tasks: set[asyncio.Task[Any]]
    multicast: bool
    mcast_sock: Optional[asyncio.DatagramTransport]
    mcast_msg: bytes
    gate_zap_frames: Optional[list[Any]]
    forward_timeout: float
    pending_timeout: float
    max_gate_peers: int
    max_pending_gates: int
    max_invite_backoff: int
    RemoteGateClass: type[RemoteGate]
    _lgate: Optional[LoopSocket]
    _gate_zap_frames_bytes: tuple[bytes, ...]
    _gate_member: bytes
    _head: dict[bytes, tuple[bytes, ...]]
    _whisper_head: list[bytes]
    _pending: dict[bytes, list[Any]]
    _warned: set[str]
    _early: dict[bytes, deque[tuple[float, Frames]]]
    _gate_addrs: dict[bytes, str]
    _manual_gates: set[bytes]
    _last_invite: dict[bytes, float]
    _last_join: dict[bytes, float]
    _join_wanted: dict[bytes, float]
    _peer_ids: set[bytes]
    _gate_streams: dict[bytes, Any]
    _fwd_timeouts: deque[tuple[float, RemoteGate, bytes, _Forward]]
    _fwd_waiting: dict[str, deque[Waiting]]
    _next_gate_beat: float
    # one flag per entry of HOOKS: True when a subclass overrides it
    _hook_messages: bool
    _hook_whisper: bool
    _hook_request: bool
    _hook_reply: bool
    _hook_notice: bool
    _hook_invite: bool
    _hook_join: bool
    _hook_register: bool
    _hook_ban: bool
    _hook_heartbeat: bool
    _hook_mcast: bool

    if TYPE_CHECKING:
        # -- attributes and methods of AMajordomo the gate uses ---------------------
        identity: bytes
        heartbeat: int
        running: bool
        ctx: Any
        services: dict[str, Any]
        workers: dict[bytes, Any]
        internal_requests: Any
        _loop: asyncio.AbstractEventLoop
        _closed: bool
        _broker_task: Optional[asyncio.Task[Any]]
        _special_ids: set[bytes]
        _lfront: Optional[LoopSocket]
        _zap_checker: Any
        _mdp_client: bytes
        _internal_name: str

        def __init__(self, *, identity: Optional[str] = None, context: Any = None,
                     heartbeat: Optional[int] = None, thread_executor: Any = None,
                     process_executor: Any = None) -> None: ...
        def run(self) -> None: ...
        def stop(self) -> None: ...
        async def disconnect_all(self) -> None: ...
        def _service_unavailable(self, client_id: bytes, service_b: bytes, request_id: bytes,
                                 body: Any) -> None: ...
        def _attach(self) -> None: ...
        def _shutdown(self) -> None: ...
        def _tick(self, now: float) -> None: ...
        def _count_error(self, msg: Any = None, frontend: bool = False) -> None: ...
        def _route_request(self, msg: Frames, service_b: bytes) -> None: ...
        def _reply_error(self, client_id: bytes, service_b: bytes, request_id: bytes,
                         exc: BaseException) -> None: ...
        def _deliver(self, client_id: bytes, service_b: bytes, request_id: bytes,
                     body: Any) -> None: ...
        def _on_ready(self, worker_id: bytes, frames: Frames) -> None: ...
        def _worker_ready(self, worker: Any, service: Any) -> None: ...
        def _remove_worker(self, w: Any, send_disconnect: bool) -> None: ...
        def create_internal_task(self, coro_func: Callable[..., Coroutine[Any, Any, Any]],
                                 name: Optional[str] = None, reload: bool = False,
                                 func_args: Any = None, func_kwargs: Any = None) -> Any: ...

        # -- methods one room of the gate calls in another -----------------------------
        def _gate_task(self, coro: Coroutine[Any, Any, Any],
                       name: Optional[str] = None) -> asyncio.Task[Any]: ...
        def _ban(self, gate: RemoteGate, send_leave: bool, reconnect: bool = True,
                 linger: int = 100) -> None: ...
        def _request_ban(self, gate: RemoteGate, send_leave: bool) -> None: ...
        def _register(self, gate_id: bytes, active_services: Any, now: float) -> Optional[RemoteGate]: ...
        def _connect(self, gate_id: bytes, addr: str, sock_opt: Optional[dict[Any, Any]] = None,
                     manual: bool = False) -> None: ...
        def _new_dealer(self, addr: str, sock_opt: Optional[dict[Any, Any]] = None) -> zmq.Socket[Any]: ...
        def _invite(self, gate_id: bytes, sock: zmq.Socket[Any], now: float) -> None: ...
        def _send_join(self, gate_id: bytes, now: float) -> bool: ...
        def _on_invite(self, gate_id: bytes, now: float) -> None: ...
        def _on_join(self, gate_id: bytes, active_services: Any, now: float) -> None: ...
        def _known_ids(self) -> set[bytes]: ...
        def _forget_peer(self, gate_id: bytes) -> None: ...
        def _pending_closed(self, gate_id: bytes) -> None: ...
        def _warn_once(self, key: str, msg: str, *args: Any) -> None: ...
        def _prune_tables(self, now: float) -> None: ...
        def _clean_services(self, active_services: Any) -> dict[str, int]: ...
        def _set_capacity(self, gate: RemoteGate, service: str, count: int) -> None: ...
        def _gate_command(self, msg: Frames, now: float) -> None: ...
        def _fail_gate_message(self, msg: Frames, exc: BaseException,
                               sock: Optional[zmq.Socket[Any]] = None) -> None: ...
        def _on_whisper(self, gate: RemoteGate, msg: Frames) -> None: ...
        def _whisper_reply(self, gate: RemoteGate, fwd: Optional[_Forward], msg: Frames) -> None: ...
        def _on_gate_reply(self, rid: bytes, body: Frames) -> None: ...
        def _on_notice(self, gate: RemoteGate, notice_id: bytes, event_b: bytes, body: Frames) -> None: ...
        def _dispatch_fwd_waiting(self, service: str) -> None: ...
        def _fail_fwd_waiting(self, service: str) -> None: ...
        def _deliver_special(self, client_id: bytes, service_b: bytes, request_id: bytes,
                             body: Any) -> None: ...
        def _broadcast_notice(self, notice_id: bytes, event_b: bytes, body: tuple[bytes, ...]) -> None: ...
        def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None: ...
        async def send_to_gate(self, gate: Any, command: bytes | str, option: Any = None,
                               messages: Any = None) -> None: ...
        async def send_whisper_command(self, gate: RemoteGate, request_id: bytes,
                                       service_name: bytes | str, body: Any) -> None: ...
        async def forward_request(self, service_name: str, request_id: bytes, client_id: bytes,
                                  body: Any) -> None: ...
        async def request_backend(self, service_name: str, client_id: bytes, request_id: bytes,
                                  body: Any, cache: bool = False) -> Any: ...
        async def process_messages_from_gate(self, messages: Frames) -> None: ...
        async def process_whisper_command(self, gate: Optional[RemoteGate], messages: Frames) -> None: ...
        async def process_gate_request(self, gate_id: bytes, request_id: bytes,
                                       service_name: bytes | str, body: Frames) -> None: ...
        async def process_gate_reply(self, request_id: bytes, service_name: bytes | str,
                                     body: Frames) -> None: ...
        async def process_notice_command(self, gate: Optional[RemoteGate], messages: Frames) -> None: ...
        async def process_invite_command(self, gate_id: bytes) -> None: ...
        async def process_join_command(self, gate_id: bytes, active_services: Any) -> None: ...
        async def register_gate(self, gate_id: bytes, active_services: Any) -> None: ...
        async def ban_gate(self, gate: RemoteGate) -> bool: ...
        async def send_gate_heartbeat(self, gate: RemoteGate) -> None: ...
        async def process_mcast_messages(self, messages: bytes, addr: tuple[Any, ...]) -> None: ...
