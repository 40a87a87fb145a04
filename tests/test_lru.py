"""``KVLRUCache`` (both twins), the selector, and ``gaterpc.cache``."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaterpc._speedups import lru as lru_selector


class FakeClock:
    """A controllable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_compiled_lru_active_when_expected(compiled_expected):
    """The selector must load the compiled twin whenever it is built and allowed."""
    if compiled_expected("lru"):
        assert lru_selector.USE_C
        assert lru_selector.KVLRUCache.__module__ == "gaterpc._speedups._lru_c"
    else:
        assert lru_selector.KVLRUCache.__module__ in ("gaterpc._speedups._lru_py", "gaterpc._speedups._lru_c")


def test_public_names(lru_module):
    assert lru_module.__all__ == ("KVLRUCache",)


def test_defaults_and_attributes(lru_module):
    c = lru_module.KVLRUCache()
    assert (c.maxsize, c.max_tracking_entries, c.debug, c.full, c.ttl) == (128, 1000, False, False, None)
    assert isinstance(c.cache, OrderedDict) and isinstance(c.tracking_entries, OrderedDict)
    c2 = lru_module.KVLRUCache(128, 256, debug=True)
    assert (c2.maxsize, c2.max_tracking_entries, c2.debug) == (128, 256, True)


@pytest.mark.parametrize("bad", [0, -1])
def test_maxsize_must_be_positive(lru_module, bad):
    with pytest.raises(ValueError, match="maxsize must be a positive integer"):
        lru_module.KVLRUCache(bad)


def test_insert_evict_and_recency(lru_module):
    c = lru_module.KVLRUCache(3)
    for k in "abc":
        c[k] = k.upper()
    assert c.full and len(c) == 3
    assert c["a"] == "A"  # a becomes most recent
    c["d"] = "D"  # evicts b
    assert list(c.cache) == ["c", "a", "d"]
    assert "b" not in c and "a" in c


def test_miss_raises_bare_keyerror(lru_module):
    c = lru_module.KVLRUCache(2)
    with pytest.raises(KeyError) as info:
        c["nope"]
    assert info.value.args == ()


def test_update_with_different_value_moves_to_end(lru_module):
    c = lru_module.KVLRUCache(3)
    c["a"], c["b"] = 1, 2
    c["a"] = 10
    assert list(c.cache.items()) == [("b", 2), ("a", 10)]


def test_equal_value_refreshes_recency_u5(lru_module):
    """U5 fix: re-setting an equal value refreshes recency (keeps the stored object)."""
    c = lru_module.KVLRUCache(2)
    first = (1, 2)
    c["a"], c["b"] = first, 2
    c["a"] = (1, 2)
    assert c.cache["a"] is first
    c["c"] = 3  # evicts b, not a
    assert list(c.cache) == ["a", "c"]


def test_pop_resets_full_u5(lru_module):
    """U5 fix: after pop the next insert evicts nothing."""
    c = lru_module.KVLRUCache(2)
    c["a"], c["b"] = 1, 2
    assert c.full
    assert c.pop("a") == 1
    assert not c.full
    c["c"] = 3
    assert list(c.cache.items()) == [("b", 2), ("c", 3)]
    assert c.pop("zzz") is None
    assert c.pop("zzz", 5) == 5


def test_repr_format(lru_module):
    c = lru_module.KVLRUCache(4)
    c["a"] = 1
    c["a"]
    with pytest.raises(KeyError):
        c["b"]
    assert repr(c) == "hits: 1, misses: 1, maxsize: 4, cache size: 1"


def test_debug_tracking_bounded(lru_module):
    c = lru_module.KVLRUCache(8, max_tracking_entries=2, debug=True)
    c["a"] = 1
    c["a"]
    c["a"]
    for k in ("x", "y"):
        with pytest.raises(KeyError):
            c[k]
    assert list(c.tracking_entries.items()) == [("x", (0, 1)), ("y", (0, 1))]
    c["a"]
    assert list(c.tracking_entries.items()) == [("y", (0, 1)), ("a", (1, 0))]


def test_no_tracking_without_debug(lru_module):
    c = lru_module.KVLRUCache(8)
    c["a"] = 1
    c["a"]
    assert not c.tracking_entries
    c0 = lru_module.KVLRUCache(8, max_tracking_entries=0, debug=True)
    c0["a"] = 1
    c0["a"]
    assert not c0.tracking_entries


def test_ttl_expiry(lru_module):
    clock = FakeClock()
    c = lru_module.KVLRUCache(8, ttl=10, timer=clock)
    c["a"] = 1
    clock.now += 5
    c["b"] = 2
    assert c["a"] == 1  # a hit does not extend the life
    clock.now += 5  # a is 10 s old: expired
    assert "a" not in c
    with pytest.raises(KeyError):
        c["a"]
    assert c["b"] == 2 and len(c) == 1
    clock.now += 4
    c["b"] = 2  # re-set (equal value) refreshes the set time
    clock.now += 9
    assert c["b"] == 2
    clock.now += 1
    assert c.pop("b") is None and len(c) == 0


def test_ttl_purge_on_insert_frees_room(lru_module):
    clock = FakeClock()
    c = lru_module.KVLRUCache(2, ttl=1, timer=clock)
    c["a"], c["b"] = 1, 2
    assert c.full
    clock.now += 2
    c["c"] = 3
    assert list(c.cache) == ["c"] and not c.full
    assert repr(c) == "hits: 0, misses: 0, maxsize: 2, cache size: 1"


def test_ttl_real_clock(lru_module):
    c = lru_module.KVLRUCache(2, ttl=0.05)
    c["a"] = 1
    assert c["a"] == 1
    import time

    time.sleep(0.06)
    assert c.get("a") is None


@pytest.mark.parametrize("bad", [0, -1.5])
def test_ttl_must_be_positive(lru_module, bad):
    with pytest.raises(ValueError):
        lru_module.KVLRUCache(2, ttl=bad)


# -- both twins side by side ----------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 6), st.integers(0, 3)),
        st.tuples(st.just("get"), st.integers(0, 6)),
        st.tuples(st.just("pop"), st.integers(0, 6)),
        st.tuples(st.just("contains"), st.integers(0, 6)),
        st.tuples(st.just("len"),),
        st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        st.tuples(st.just("clear"),),
    ),
    max_size=60,
)


def _run(cls, ops, ttl):
    clock = FakeClock()
    c = cls(3, 2, True, ttl=ttl, timer=clock)
    seen = []
    for op in ops:
        try:
            if op[0] == "set":
                c[op[1]] = op[2]
                r = None
            elif op[0] == "get":
                r = c[op[1]]
            elif op[0] == "pop":
                r = c.pop(op[1])
            elif op[0] == "contains":
                r = op[1] in c
            elif op[0] == "len":
                r = len(c)
            elif op[0] == "tick":
                clock.now += op[1]
                r = None
            else:
                r = c.clear()
        except Exception as exc:  # noqa: BLE001 - compared across twins
            r = (type(exc), exc.args)
        seen.append((r, c.full, list(c.cache.items()), list(c.tracking_entries.items())))
    seen.append(repr(c))
    return seen


@settings(max_examples=150, deadline=None)
@given(ops=_ops, ttl=st.sampled_from([None, 2.0]))
def test_twins_agree(ops, ttl):
    """The same operations give the same results, state and exceptions on both twins."""
    py = importlib.import_module("gaterpc._speedups._lru_py")
    try:
        c = importlib.import_module("gaterpc._speedups._lru_c")
    except ImportError:
        pytest.skip("compiled lru not built")
    assert _run(py.KVLRUCache, ops, ttl) == _run(c.KVLRUCache, ops, ttl)


# -- gaterpc.cache ---------------------------------------------------------


def test_cache_module_exports():
    from gaterpc import cache

    assert cache.LRUCache is cache.KVLRUCache is lru_selector.KVLRUCache


def test_utils_reexports():
    from gaterpc import cache, utils

    assert utils.KVLRUCache is cache.KVLRUCache
    assert utils.LRUCache is cache.LRUCache
    assert utils.coroutine_lru_cache is cache.coroutine_lru_cache


async def test_coroutine_lru_cache_forms():
    from gaterpc.cache import coroutine_lru_cache

    calls = []

    @coroutine_lru_cache
    async def a(x):
        calls.append(x)
        return x * 2

    @coroutine_lru_cache()
    async def b(x):
        return x

    @coroutine_lru_cache(maxsize=2, typed=True)
    async def c(x):
        calls.append(("c", x))
        return x

    assert await a(2) == 4 and await a(2) == 4
    assert a.cache_info() == (1, 1, 128, 1)
    assert a.cache_parameters() == {"maxsize": 128, "typed": False}
    assert await b(1) == 1 and b.cache_parameters() == {"maxsize": 128, "typed": False}
    await c(1)
    await c(1.0)
    assert c.cache_info().currsize == 2  # typed: 1 and 1.0 differ
    await c(3)
    assert c.cache_info().currsize == 2
    a.cache_clear()
    assert a.cache_info() == (0, 0, 128, 0)
    assert a.__name__ == "a" and inspect.iscoroutinefunction(a)


async def test_coroutine_lru_cache_sizes():
    from gaterpc.cache import coroutine_lru_cache

    n = 0

    @coroutine_lru_cache(maxsize=0)
    async def none(x):
        nonlocal n
        n += 1
        return x

    @coroutine_lru_cache(maxsize=-3)
    async def neg(x):
        return x

    @coroutine_lru_cache(maxsize=None)
    async def unbounded(x):
        return x

    await none(1)
    await none(1)
    assert n == 2 and none.cache_info() == (0, 2, 0, 0)
    assert neg.cache_parameters() == {"maxsize": 0, "typed": False}
    for i in range(300):
        await unbounded(i)
    assert unbounded.cache_info().currsize == 300


def test_coroutine_lru_cache_bad_argument():
    from gaterpc.cache import coroutine_lru_cache

    with pytest.raises(TypeError, match="Expected first argument to be an integer, a callable, or None"):
        coroutine_lru_cache("x")


async def test_coroutine_lru_cache_concurrent_calls_share_one_call():
    from gaterpc.cache import coroutine_lru_cache

    started = 0

    @coroutine_lru_cache
    async def slow(x):
        nonlocal started
        started += 1
        await asyncio.sleep(0.01)
        return x

    assert await asyncio.gather(*(slow(7) for _ in range(5))) == [7] * 5
    assert started == 1
    assert slow.cache_info() == (4, 1, 128, 1)


async def test_coroutine_lru_cache_exception_not_cached():
    from gaterpc.cache import coroutine_lru_cache

    tries = 0

    @coroutine_lru_cache
    async def flaky(x):
        nonlocal tries
        tries += 1
        await asyncio.sleep(0)
        if tries == 1:
            raise RuntimeError("boom")
        return x

    results = await asyncio.gather(flaky(1), flaky(1), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await flaky(1) == 1
    assert tries == 2
