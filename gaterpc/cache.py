"""Caches: ``KVLRUCache`` (alias ``LRUCache``) and ``coroutine_lru_cache``.

``KVLRUCache`` comes from the ``_speedups.lru`` selector (compiled when
available).  ``coroutine_lru_cache`` is ``functools.lru_cache`` for
coroutine functions, in pure Python.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import OrderedDict, namedtuple
from functools import _make_key, update_wrapper
from typing import Any, Callable, Dict, Optional, Tuple

from gaterpc._speedups.lru import KVLRUCache

__all__ = ("KVLRUCache", "LRUCache", "coroutine_lru_cache")

LRUCache = KVLRUCache
"""Alias of :class:`KVLRUCache` (the original 0.2.12 has no ``LRUCache``; an extra name)."""

# Named "CacheInfo" (its repr) like functools' own; the module name is private.
_CacheInfo = namedtuple("CacheInfo", ["hits", "misses", "maxsize", "currsize"])  # type: ignore[name-match]

_MISSING = object()


def _coroutine_lru_cache_wrapper(
    user_function: Callable[..., Any], maxsize: Optional[int], typed: bool, _CacheInfo: type
) -> Callable[..., Any]:
    """Build the caching coroutine function around ``user_function``.

    Awaited results are cached (least recently used dropped beyond
    ``maxsize``; ``None`` unbounded; ``0`` no caching).  Concurrent calls with
    the same arguments on the same loop share one call: the first is a miss,
    the others count as hits and await its result.  An exception (or
    cancellation) of the call is propagated to every caller and nothing is
    cached.  No event loop is touched until the wrapper is called.
    """
    cache: OrderedDict[Any, Any] = OrderedDict()
    pending: Dict[Any, Tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
    hits = misses = 0
    lock = threading.RLock()
    make_key = _make_key

    if maxsize == 0:

        async def wrapper(*args: Any, **kwds: Any) -> Any:
            nonlocal misses
            with lock:
                misses += 1
            return await user_function(*args, **kwds)

    else:

        async def wrapper(*args: Any, **kwds: Any) -> Any:
            nonlocal hits, misses
            key = make_key(args, kwds, typed)
            loop = asyncio.get_running_loop()
            with lock:
                result = cache.get(key, _MISSING)
                if result is not _MISSING:
                    cache.move_to_end(key)
                    hits += 1
                    return result
                inflight = pending.get(key)
                if inflight is not None and inflight[0] is loop:
                    hits += 1
                    fut = inflight[1]
                else:
                    misses += 1
                    fut = None
                    if inflight is None:
                        own = loop.create_future()
                        pending[key] = (loop, own)
                    else:
                        own = None  # another loop owns the in-flight call
            if fut is not None:
                return await asyncio.shield(fut)
            try:
                result = await user_function(*args, **kwds)
            except BaseException as exc:
                if own is not None:
                    with lock:
                        if pending.get(key, (None, None))[1] is own:
                            del pending[key]
                    if isinstance(exc, asyncio.CancelledError):
                        own.cancel()
                    else:
                        own.set_exception(exc)
                        own.exception()  # retrieved: no "never retrieved" warning without waiters
                raise
            with lock:
                if own is not None and pending.get(key, (None, None))[1] is own:
                    del pending[key]
                cache[key] = result
                cache.move_to_end(key)
                if maxsize is not None:
                    while len(cache) > maxsize:
                        cache.popitem(last=False)
            if own is not None:
                own.set_result(result)
            return result

    def cache_info() -> Any:
        """Report cache statistics."""
        with lock:
            return _CacheInfo(hits, misses, maxsize, len(cache))

    def cache_clear() -> None:
        """Clear the cache and cache statistics."""
        nonlocal hits, misses
        with lock:
            cache.clear()
            hits = misses = 0

    # functools.lru_cache's attributes, set on the coroutine function object.
    wrapper.cache_info = cache_info  # type: ignore[attr-defined]
    wrapper.cache_clear = cache_clear  # type: ignore[attr-defined]
    return wrapper


def coroutine_lru_cache(maxsize: Any = 128, typed: bool = False) -> Any:
    """``functools.lru_cache`` for coroutine functions.

    ``@coroutine_lru_cache``, ``@coroutine_lru_cache()`` or
    ``@coroutine_lru_cache(maxsize=N, typed=...)``.  The wrapper has
    ``cache_info()``, ``cache_clear()`` and ``cache_parameters()``.
    ``maxsize=None`` is unbounded, ``0`` disables caching, a negative value
    counts as 0; any other non-int raises ``TypeError``.
    """
    if isinstance(maxsize, int):
        if maxsize < 0:
            maxsize = 0
    elif inspect.iscoroutinefunction(maxsize) and isinstance(typed, bool):
        user_function, maxsize = maxsize, 128
        wrapper = _coroutine_lru_cache_wrapper(user_function, maxsize, typed, _CacheInfo)
        wrapper.cache_parameters = lambda: {"maxsize": maxsize, "typed": typed}  # type: ignore[attr-defined]  # set on the function object
        return update_wrapper(wrapper, user_function)
    elif maxsize is not None:
        raise TypeError("Expected first argument to be an integer, a callable, or None")

    def decorating_function(user_function: Callable[..., Any]) -> Callable[..., Any]:
        wrapper = _coroutine_lru_cache_wrapper(user_function, maxsize, typed, _CacheInfo)
        wrapper.cache_parameters = lambda: {"maxsize": maxsize, "typed": typed}  # type: ignore[attr-defined]  # set on the function object
        return update_wrapper(wrapper, user_function)

    return decorating_function
