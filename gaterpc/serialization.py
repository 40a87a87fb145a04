"""Library-wide msgpack configuration and the pack/unpack helpers.

The encoding is byte-exact with the original's (docs/PROTOCOL.md, "Encoding"): msgpack
defaults with the bin type for bytes, float64 for every float, tuples and
lists as arrays.  Decoding uses ``raw=False``, ``strict_map_key=False`` and
the size limits of :class:`MessagePack`.

``message_pack`` is the single global :class:`MessagePack`.  Its settings
are compiled into module-level state whenever a hook or a limit changes
(see :meth:`MessagePack.__setattr__`), so :func:`msg_pack` and
:func:`msg_unpack` do no per-call set-up: packing reuses one
``msgpack.Packer`` per thread, unpacking passes a prepared keyword dict.

Errors: :class:`MsgPackError` says ``"<object> pack failed: ..."`` and
names the type msgpack could not pack; :class:`MsgUnpackError` for a value
over a decode limit (32 MiB for str/bytes by default) names the limit and
points to HugeData without showing the payload; other undecodable input
shows at most 200 bytes of it.
"""

from __future__ import annotations

import re
import threading
from multiprocessing.managers import (  # type: ignore[attr-defined]  # ArrayProxy exists at runtime but not in the stdlib stubs
    ArrayProxy,
    BaseProxy,
    DictProxy,
    ListProxy,
    ValueProxy,
)
from typing import TYPE_CHECKING, Any, Callable, Protocol

import msgpack

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = (
    "MessagePack",
    "message_pack",
    "msg_pack",
    "msg_unpack",
    "pack_fast",
    "unpack_fast",
    "MsgPackError",
    "MsgUnpackError",
)


class MsgPackError(ValueError):
    """An object could not be serialized with msgpack."""


class MsgUnpackError(ValueError):
    """Bytes could not be deserialized with msgpack."""


_HOOKS = frozenset(("prepare_pack", "unpack_object_hook", "unpack_object_pairs_hook", "unpack_list_hook"))
_LIMITS = {
    "max_str_len": "DEFAULT_MAX_STR_LEN",
    "max_bin_len": "DEFAULT_MAX_BIN_LEN",
    "max_array_len": "DEFAULT_MAX_ARRAY_LEN",
    "max_map_len": "DEFAULT_MAX_MAP_LEN",
}
# The original's README spells the list hook this way; honoured as an alias.
_ALIASES = {"unpack_object_list_hook": "unpack_list_hook"}

# Types whose instances can never be (or contain at top level) a manager proxy.
_PLAIN_TYPES = frozenset((bytes, str, int, float, bool, type(None), list, tuple, dict, bytearray, memoryview))

# Compiled state, rebuilt by ``_compile`` when the global MessagePack changes.
_tls = threading.local()
_pack_default: Callable[[Any], Any] | None = None  # the prepare_pack hook, or None
_unpack_kwargs: dict[str, Any] = {}
_packb: Callable[..., bytes] = msgpack.packb
_unpackb: Callable[..., Any] = msgpack.unpackb


class MessagePack:
    """Configures the msgpack behaviour of the whole process.

    Attributes (all settable): ``prepare_pack`` (msgpack ``default``),
    ``unpack_object_hook``, ``unpack_object_pairs_hook``,
    ``unpack_list_hook`` (alias ``unpack_object_list_hook``) and the decode
    limits ``max_str_len``, ``max_bin_len``, ``max_array_len``,
    ``max_map_len``.  A hook set to a truthy non-callable raises
    ``TypeError``; a falsy value disables it; ``del`` resets a hook to
    ``None`` and a limit to its default.
    """

    DEFAULT_MAX_STR_LEN = 33554432
    DEFAULT_MAX_BIN_LEN = 33554432
    DEFAULT_MAX_ARRAY_LEN = 1048576
    DEFAULT_MAX_MAP_LEN = 1048576

    def __init__(self) -> None:
        d = self.__dict__
        for name in _HOOKS:
            d[name] = None
        for name, default in _LIMITS.items():
            d[name] = getattr(self, default)
        self._changed()

    def __setattr__(self, name: str, value: Any) -> None:
        name = _ALIASES.get(name, name)
        if name in _HOOKS:
            if value and not callable(value):
                raise TypeError(f"`{name}` is not callable")
        object.__setattr__(self, name, value)
        if name in _HOOKS or name in _LIMITS:
            self._changed()

    def __getattr__(self, name: str) -> Any:
        # Only called for missing attributes.
        alias = _ALIASES.get(name)
        if alias is not None:
            return getattr(self, alias)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        name = _ALIASES.get(name, name)
        if name in _HOOKS:
            self.__setattr__(name, None)
        elif name in _LIMITS:
            self.__setattr__(name, getattr(self, _LIMITS[name]))
        else:
            object.__delattr__(self, name)

    def _pack_kwargs(self) -> dict[str, Any]:
        return {"default": self.prepare_pack or None}

    def _unpack_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"raw": False, "strict_map_key": False}
        for hook, key in (
            ("unpack_object_hook", "object_hook"),
            ("unpack_object_pairs_hook", "object_pairs_hook"),
            ("unpack_list_hook", "list_hook"),
        ):
            value = getattr(self, hook)
            if value:
                kwargs[key] = value
        for name in _LIMITS:
            kwargs[name] = getattr(self, name)
        return kwargs

    def _changed(self) -> None:
        if globals().get("message_pack") is self:
            _compile(self)

    def loads(self, data: Buffer) -> Any:
        """Decode one msgpack object; trailing bytes are an error."""
        return msgpack.unpackb(data, **self._unpack_kwargs())

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` with msgpack defaults and ``prepare_pack``."""
        packed: bytes = msgpack.packb(obj, **self._pack_kwargs())
        return packed


def _compile(mp: MessagePack) -> None:
    """Rebuild the module-level fast-path state from ``mp``."""
    global _tls, _pack_default, _unpack_kwargs
    _pack_default = mp.prepare_pack or None
    _unpack_kwargs = mp._unpack_kwargs()
    # A fresh thread-local object makes every thread build a new Packer.
    _tls = threading.local()


class _Packer(Protocol):
    def pack(self, obj: Any) -> bytes: ...


def _new_packer() -> _Packer:
    packer: _Packer = msgpack.Packer()
    _tls.packer = packer
    return packer


def _unwrap_proxy(obj: Any) -> Any:
    if isinstance(obj, BaseProxy):
        if isinstance(obj, ValueProxy):
            return obj.get()
        if isinstance(obj, ArrayProxy):
            # The referent (array.array) has tolist(); the proxy does not.
            value = obj[:]
            tolist = getattr(value, "tolist", None)
            return tolist() if tolist is not None else list(value)
        if isinstance(obj, (DictProxy, ListProxy)):
            return obj._getvalue()
    return obj


_PREVIEW = 200  # characters of the object / bytes shown in an error message
_LIMIT_RE = re.compile(r"^(\d+) exceeds (max_(?:str|bin|array|map)_len)\((\d+)\)$")
_TYPE_RE = re.compile(r"serialize '([^']+)' object")
_LIMIT_WHAT = {
    "max_str_len": ("a str of", "characters"),
    "max_bin_len": ("a bytes value of", "bytes"),
    "max_array_len": ("a list/tuple of", "items"),
    "max_map_len": ("a dict of", "entries"),
}


def _short(text: str) -> str:
    return text if len(text) <= _PREVIEW else f"{text[:_PREVIEW]}... ({len(text)} characters)"


def _pack_error(obj: Any, exc: Exception) -> MsgPackError:
    try:
        text = _short(str(obj))
    except Exception:  # noqa: BLE001 - an unprintable object still needs an error
        text = object.__repr__(obj)
    found = _TYPE_RE.search(str(exc)) if isinstance(exc, TypeError) else None
    if found:
        where = "" if found.group(1) == type(obj).__name__ else f" (found in a {type(obj).__name__})"
        reason = (f"msgpack cannot pack an object of type {found.group(1)!r}{where}; "
                  "convert it to None/bool/int/float/str/bytes/list/dict, or set message_pack.prepare_pack")
    elif isinstance(exc, OverflowError):
        reason = f"type 'int': a value is outside the msgpack range -2**63 .. 2**64-1 (in a {type(obj).__name__})"
    else:
        reason = f"{type(obj).__name__} could not be packed: {type(exc).__name__}: {_short(str(exc))}"
    return MsgPackError(f"{text} pack failed: {reason}")


def _limit_message(size: str, limit_name: str, limit: str) -> str:
    what, unit = _LIMIT_WHAT[limit_name]
    mib = int(limit) / 1048576
    limit_text = f"{int(limit)} {unit}" + (f" ({mib:g} MiB)" if unit in ("bytes", "characters") and mib >= 1 else "")
    return (f"unpack failed: {what} {size} {unit} exceeds the msgpack limit {limit_name} = {limit_text}; "
            f"send large payloads as HugeData (gaterpc.utils.HugeData) instead of one value, "
            f"or raise message_pack.{limit_name} on the receiving side")


def _unpack_error(data: Any, exc: Exception) -> MsgUnpackError:
    found = _LIMIT_RE.match(str(exc)) if isinstance(exc, ValueError) else None
    if found:
        # No payload in the message: it is at least the size of the limit.
        return MsgUnpackError(_limit_message(*found.groups()))
    try:
        n = len(data)
        text = str(data if n <= _PREVIEW else bytes(data[:_PREVIEW]) + b"...")
        if n > _PREVIEW:
            text += f" ({n} bytes)"
    except Exception:  # noqa: BLE001
        text = object.__repr__(data)
    return MsgUnpackError(f"{text} unpack failed.")


def msg_pack(obj: Any) -> bytes:
    """Serialize ``obj`` with the global :data:`message_pack` settings.

    Multiprocessing manager proxies are unwrapped first.  Any failure is
    raised as :class:`MsgPackError` (the original error is its context).
    """
    if type(obj) not in _PLAIN_TYPES:
        obj = _unwrap_proxy(obj)
    try:
        if _pack_default is None:
            packer: _Packer
            try:
                packer = _tls.packer
            except AttributeError:
                packer = _new_packer()
            return packer.pack(obj)
        # A hook may itself call msg_pack: use a private packer per call.
        return _packb(obj, default=_pack_default)
    except Exception as e:
        raise _pack_error(obj, e).with_traceback(e.__traceback__)


def msg_unpack(data: Buffer) -> Any:
    """Deserialize one msgpack object with the global :data:`message_pack` settings.

    Any failure (including trailing data) is raised as :class:`MsgUnpackError`.
    """
    try:
        return _unpackb(data, **_unpack_kwargs)
    except Exception as e:
        raise _unpack_error(data, e).with_traceback(e.__traceback__)


def pack_fast(obj: Any) -> bytes:
    """Hot-path :func:`msg_pack`: same result and errors.

    Builtin values (the common case on the wire) go straight to the
    per-thread packer; anything else takes the full :func:`msg_pack` path.
    """
    if _pack_default is None and type(obj) in _PLAIN_TYPES:
        try:
            packer: _Packer
            try:
                packer = _tls.packer
            except AttributeError:
                packer = _new_packer()
            return packer.pack(obj)
        except Exception as e:
            raise _pack_error(obj, e).with_traceback(e.__traceback__)
    return msg_pack(obj)


unpack_fast = msg_unpack
"""Hot-path :func:`msg_unpack` (the same function: it has no slow path)."""


message_pack = MessagePack()
"""The global :class:`MessagePack` used by :func:`msg_pack`/:func:`msg_unpack`."""
_compile(message_pack)
