"""``RequestTable`` on both twins, the selector, and twin parity under random operations."""

from __future__ import annotations

import importlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaterpc._speedups import reqtable as reqtable_selector


def test_compiled_reqtable_active_when_expected(compiled_expected):
    """The selector must load the compiled twin whenever it is built and allowed."""
    if compiled_expected("reqtable"):
        assert reqtable_selector.USE_C
        assert reqtable_selector.RequestTable.__module__ == "gaterpc._speedups._reqtable_c"


def test_public_names(reqtable_module):
    assert reqtable_module.__all__ == ("RequestTable",)


def test_basic_mapping(reqtable_module):
    t = reqtable_module.RequestTable()
    t.add(b"a", 1, 10.0)
    t.add(b"b", 2, 11.0)
    assert len(t) == 2 and b"a" in t and b"z" not in t
    assert list(t) == [b"a", b"b"]
    assert t.get(b"a") == 1 and t.get(b"z") is None and t.get(b"z", 5) == 5
    assert t.pop(b"a") == 1 and t.pop(b"a") is None and t.pop(b"a", 7) == 7
    assert len(t) == 1


def test_add_replaces(reqtable_module):
    t = reqtable_module.RequestTable()
    t.add(b"a", 1, 5.0)
    t.add(b"a", 2, 50.0)
    assert len(t) == 1 and t.get(b"a") == 2
    assert t.expire(10.0) == []  # the old deadline no longer applies
    assert t.expire(50.0) == [(b"a", 2)]


def test_expire_in_order(reqtable_module):
    t = reqtable_module.RequestTable()
    for i in range(10):
        t.add(b"%d" % i, i, float(i))
    t.pop(b"3")
    assert t.expire(4.0) == [(b"0", 0), (b"1", 1), (b"2", 2), (b"4", 4)]
    assert t.expire(4.0) == []
    assert len(t) == 5
    assert t.expire(math.inf) == [(b"%d" % i, i) for i in range(5, 10)]
    assert len(t) == 0


def test_expire_out_of_order_deadlines(reqtable_module):
    t = reqtable_module.RequestTable()
    t.add(b"late", 1, 100.0)
    t.add(b"early", 2, 1.0)
    t.add(b"mid", 3, 50.0)
    t.add(b"tie", 4, 50.0)
    assert t.expire(0.5) == []
    assert t.expire(60.0) == [(b"early", 2), (b"mid", 3), (b"tie", 4)]
    assert t.expire(1000.0) == [(b"late", 1)]


def test_touch(reqtable_module):
    t = reqtable_module.RequestTable()
    t.add(b"s", "stream", 10.0)
    t.add(b"x", "other", 12.0)
    assert t.touch(b"s", 20.0) is True
    assert t.touch(b"missing", 20.0) is False
    assert t.expire(15.0) == [(b"x", "other")]
    assert t.touch(b"s", 1.0) is True  # earlier is allowed too
    assert t.expire(2.0) == [(b"s", "stream")]


def test_clear_returns_values(reqtable_module):
    t = reqtable_module.RequestTable()
    t.add(b"a", "A", 3.0)
    t.add(b"b", "B", 1.0)
    assert t.clear() == ["A", "B"]
    assert len(t) == 0 and t.expire(math.inf) == []
    t.add(b"c", "C", 1.0)
    assert t.expire(1.0) == [(b"c", "C")]


def test_integer_deadlines_and_errors(reqtable_module):
    t = reqtable_module.RequestTable()
    t.add(b"a", 1, 3)
    assert t.expire(3) == [(b"a", 1)]
    with pytest.raises(ValueError):
        t.add(b"n", 1, math.nan)
    with pytest.raises(TypeError):
        t.add(b"s", 1, "soon")
    with pytest.raises(TypeError):
        t.add([], 1, 1.0)
    t.add(b"k", 1, 1.0)
    with pytest.raises(TypeError):
        t.pop([])
    assert len(t) == 1


def test_many_pops_do_not_grow_without_bound(reqtable_module):
    """Lazy deletion: stale references are compacted (observable: expire stays correct)."""
    t = reqtable_module.RequestTable()
    for i in range(20000):
        t.add(i, i, float(i))
        assert t.pop(i) == i
    t.add(b"k", "v", 1e9)
    assert t.expire(1e6) == []
    assert t.expire(1e9) == [(b"k", "v")]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 8), st.integers(), st.integers(0, 40)),
        st.tuples(st.just("pop"), st.integers(0, 8)),
        st.tuples(st.just("get"), st.integers(0, 8)),
        st.tuples(st.just("touch"), st.integers(0, 8), st.integers(0, 40)),
        st.tuples(st.just("expire"), st.integers(0, 45)),
        st.tuples(st.just("clear"),),
        st.tuples(st.just("bad"), st.sampled_from([math.nan, "x", None])),
    ),
    max_size=80,
)


def _run(cls, ops):
    t = cls()
    seen = []
    for op in ops:
        try:
            if op[0] == "add":
                r = t.add(op[1], op[2], float(op[3]) / 2)
            elif op[0] == "pop":
                r = t.pop(op[1], "absent")
            elif op[0] == "get":
                r = t.get(op[1])
            elif op[0] == "touch":
                r = t.touch(op[1], op[2] / 2)
            elif op[0] == "expire":
                r = t.expire(op[1] / 2)
            elif op[0] == "clear":
                r = t.clear()
            else:
                r = t.add(b"bad", 0, op[1])
        except Exception as exc:  # noqa: BLE001 - compared across twins
            r = type(exc)
        seen.append((r, len(t), list(t), [k in t for k in range(9)]))
    return seen


@settings(max_examples=200, deadline=None)
@given(ops=_ops)
def test_twins_agree(ops):
    """The same operations give the same results and exceptions on both twins."""
    py = importlib.import_module("gaterpc._speedups._reqtable_py")
    try:
        c = importlib.import_module("gaterpc._speedups._reqtable_c")
    except ImportError:
        pytest.skip("compiled reqtable not built")
    assert _run(py.RequestTable, ops) == _run(c.RequestTable, ops)


@settings(max_examples=100, deadline=None)
@given(ops=_ops)
def test_matches_a_simple_model(ops):
    """Pure twin against a dict model: expire returns exactly the due entries in (deadline, order)."""
    py = importlib.import_module("gaterpc._speedups._reqtable_py")
    t = py.RequestTable()
    model: dict = {}
    seq = 0
    for op in ops:
        if op[0] == "add":
            seq += 1
            model[op[1]] = (op[3] / 2, seq, op[2])
            t.add(op[1], op[2], op[3] / 2)
        elif op[0] == "touch" and op[1] in model:
            seq += 1
            model[op[1]] = (op[2] / 2, seq, model[op[1]][2])
            assert t.touch(op[1], op[2] / 2)
        elif op[0] == "pop":
            assert t.pop(op[1], "absent") == model.pop(op[1], (0, 0, "absent"))[2]
        elif op[0] == "expire":
            now = op[1] / 2
            due = sorted((d, s, k, v) for k, (d, s, v) in model.items() if d <= now)
            for _, _, k, _ in due:
                del model[k]
            assert t.expire(now) == [(k, v) for _, _, k, v in due]
        assert sorted(t) == sorted(model)
