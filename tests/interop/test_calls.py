"""Plain calls across implementations: values, errors, the built-in services.

Every test runs on each client -> broker -> worker topology that mixes the
original gaterpc and ours (plus the all-original baseline, which proves the
harness itself).
"""

from __future__ import annotations

import pytest

from .conftest import SERVICE, Topology, topology_id
from .roles import common

TOPOLOGIES = [
    ("orig", "orig", "orig"),   # baseline: the harness against the original alone
    ("ours", "orig", "orig"),   # (a) our client -> their broker + their worker
    ("orig", "ours", "ours"),   # (b) their client -> our broker + our worker
    ("ours", "orig", "ours"),   # (c) our client -> their broker -> our worker
    ("orig", "ours", "orig"),   # (c) their client -> our broker -> their worker
    ("ours", "ours", "orig"),   #     our client -> our broker -> their worker
]


@pytest.fixture(params=TOPOLOGIES, ids=topology_id)
def topo(request, fleet):
    return Topology(fleet, *request.param)


EXPECTED_INTERFACES = {
    "agen": {"doc": None, "signature": "(n)"},
    "agen_fail": {"doc": None, "signature": "(k)"},
    "echo": {"doc": "Return the arguments as received.", "signature": "(*args, **kwargs)"},
    "fail": {"doc": None, "signature": "()"},
    "gen": {"doc": None, "signature": "(n)"},
    "gen_fail": {"doc": None, "signature": "(k)"},
    "get_interfaces": {"doc": None, "signature": "()"},
    "huge": {"doc": None, "signature": "(n)"},
    "thread_pair": {"doc": None, "signature": "(x)"},
    "whoami": {"doc": None, "signature": "()"},
}


def test_routed_to_the_intended_worker(topo):
    who = topo.value("whoami")
    assert who["impl"] == topo.worker_impl
    assert who["service"] == SERVICE[topo.worker_impl]
    assert isinstance(who["pid"], int) and who["pid"] > 0


def test_echo_values_round_trip(topo):
    args = [0, 1, -1, 2**40, -(2**63), 2**64 - 1, 1.5, -0.25, True, False, None,
            "", "plain", "unicode ✓ 堡垒 \U0001f600", b"", b"\x00\xffbin\x80",
            [], {}, [1, "two", b"3"]]
    kwargs = {"x": "ü", "blob": b"\x01\x02", "flag": False, "none": None}
    result = topo.value("echo", *args, kwargs=kwargs)
    assert result == [args, kwargs]
    assert isinstance(result[0][15], bytes) and isinstance(result[0][13], str)


def test_echo_big_values_round_trip(topo):
    """Arguments and results of 64 KiB+1 and 1 MiB, byte for byte, whoever sends or relays them.

    Our roles receive frames this large without a copy and our broker passes
    them on sharing libzmq's message; our worker builds the reply body in one
    buffer: the original's roles must see exactly the bytes they would send.
    """
    for n in (64 * 1024 + 1, 1024 * 1024):
        blob = bytes(range(256)) * (n // 256) + b"\x07" * (n % 256)
        text = "\u00fc" * (n // 2)
        assert topo.value("echo", blob, text) == [[blob, text], {}]
        assert topo.value("echo", blob) == [[blob], {}]


def test_tuples_become_lists_and_nesting_survives(topo):
    nested = {"level1": {"level2": [1, (2, (3, b"4")), {"k": ("v", None)}]},
              "list_of_tuples": [(1, 2), (3, 4)]}
    result = topo.value("echo", (1, 2), nested, kwargs={"t": (5, (6,))})
    assert result == [
        [[1, 2], {"level1": {"level2": [1, [2, [3, b"4"]], {"k": ["v", None]}]},
                  "list_of_tuples": [[1, 2], [3, 4]]}],
        {"t": [5, [6]]},
    ]


@pytest.mark.parametrize("t", [("ours", "orig", "ours")], ids=topology_id)
def test_dict_with_non_str_keys(fleet, t):
    """0.2.12 (and ours) decode non-str map keys; the original broker relays them as is."""
    topo = Topology(fleet, *t)
    result = topo.value("echo", {1: "int key", b"k": "bytes key", "s": 3})
    assert result == [[{1: "int key", b"k": "bytes key", "s": 3}], {}]


def test_original_rejects_non_str_keys(fleet):
    """Documents 0.2.11: msgpack's strict_map_key makes its worker drop such a request."""
    topo = Topology(fleet, "orig", "orig", "orig")
    r = topo.call("echo", {1: "int key"}, reply_timeout=1.5)
    assert not r["ok"] and r["timeout"] and r["exc_type"] == "TimeoutError", r


def test_large_plain_value(topo):
    blob = bytes(range(256)) * 2048   # 512 KiB in one frame
    result = topo.value("echo", blob)
    assert result == [[blob], {}]


def test_remote_error_is_remote_exception(topo):
    r = topo.call("fail")
    assert not r["ok"] and r["remote"], r
    assert r["exc_type"] == "RemoteException"
    assert r["text"].startswith("\n  RemoteTraceback (ValueError):\n  ValueError('boom!')\n"), r["text"]
    assert "boom" in r["text"]
    assert r["elapsed"] < 5, r


def test_wrong_arguments_are_a_remote_type_error(topo):
    r = topo.call("fail", 1, 2)
    assert not r["ok"] and r["remote"], r
    assert r["text"].startswith("\n  RemoteTraceback (TypeError):\n"), r["text"]


def test_client_still_works_after_errors(topo):
    results = topo.run([
        {"method": "fail", "args": []},
        {"method": "echo", "args": ["after"]},
        {"method": "fail", "args": [1]},
        {"method": "echo", "args": [common.encode(b"again")]},
    ])
    assert [r["ok"] for r in results] == [False, True, False, True], results
    assert common.decode(results[1]["value"]) == [["after"], {}]
    assert common.decode(results[3]["value"]) == [[b"again"], {}]


def test_thread_executor_method(topo):
    assert topo.value("thread_pair", {"a": (1, 2)}) == [{"a": [1, 2]}, {"a": [1, 2]}]


def test_knock_path(topo):
    assert topo.value("echo", 7, via="knock", kwargs={"k": "w"}) == [[7], {"k": "w"}]


def test_concurrent_calls_match_their_replies(topo):
    r = topo.run([{"method": "echo", "mode": "gather", "n": 300,
                   "args": ["tag"], "kwargs": {"z": 1}}])[0]
    assert r["ok"], r
    assert common.decode(r["value"]) == [[[i, "tag"], {"z": 1}] for i in range(300)]


def test_get_interfaces(topo):
    assert topo.value("get_interfaces") == EXPECTED_INTERFACES


def test_gate_get_services(topo):
    services = topo.value("get_services", service="Gate")
    assert isinstance(services, list)
    assert topo.service in services
    assert services[-1] == "Gate" and services.count("Gate") == 1


def test_gate_query_service(topo):
    assert topo.value("query_service", topo.service, service="Gate") == common.SERVICE_DESCRIPTION
    assert topo.value("query_service", "NoSuchService", service="Gate") is None


def test_gate_info(topo):
    info = topo.value("info", service="Gate")
    assert set(info) == {"my_id", "services"}, info
    assert isinstance(info["my_id"], bytes) and len(info["my_id"]) == 16
    assert topo.service in info["services"] and "Gate" not in info["services"]


def test_gate_keepalive(topo):
    assert topo.value("keepalive", b"heartbeat", service="Gate") == b"200"
    assert topo.value("keepalive", b"other", service="Gate") == b"400"


def test_unknown_service_is_a_local_attribute_error(topo):
    r = topo.call("echo", 1, service="NoSuchService")
    assert not r["ok"] and not r["remote"], r
    assert r["exc_type"] == "AttributeError"
    assert r["text"] == 'The remote service named "NoSuchService" was not found.'
