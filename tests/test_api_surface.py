"""The import surface and signatures of the original's public modules (``gaterpc.core``, ``gaterpc.utils``, ...)."""

from __future__ import annotations

import importlib
import inspect

import pytest

SURFACE = {
    "gaterpc": ["__version__"],
    "gaterpc.global_settings": [
        "GlobalSettings", "Settings", "user_settings_render", "logging_render", "logging_process",
        "debug_format", "verbose_format", "simple_format", "_DEFAULT_LOGGING",
        "LazyAttribute", "TypeValidator", "UnixEPollEventLoopPolicy", "empty", "ensure_mkdir",
        "Path", "import_module", "dictConfig", "os", "z_const",
    ],
    "gaterpc.exceptions": [
        "ServiceUnAvailableError", "GateUnAvailableError", "BusyWorkerError", "BusyGateError",
        "RemoteException", "BadGzip", "HugeDataException", "DictFull",
    ],
    "gaterpc.utils": [
        "SyncManager", "UnixEPollEventLoopPolicy", "singleton", "resolve_module_attr", "check_socket_addr",
        "MulticastProtocol", "to_bytes", "from_bytes", "name2uuid", "encrypt", "decrypt",
        "generator_to_agenerator", "throw_exception_agenerator", "Empty", "empty", "KVLRUCache",
        "coroutine_lru_cache", "Validator", "TypeValidator", "ensure_mkdir", "LazyAttribute",
        "ColorFormatter", "QueueListener", "AQueueListener", "AQueueHandler", "singleton_aqueue_listener",
        "singleton_queue_listener", "MessagePack", "MsgPackError", "MsgUnpackError", "message_pack",
        "msg_pack", "msg_unpack", "ensure_shm_unlink", "StreamReply", "GzipCompressor", "GzipDecompressor",
        "HugeData", "interface", "run_in_executor", "logger", "_incremental_compress",
        "_incremental_decompress", "BadGzip", "HugeDataException", "RemoteException", "LRUCache",
    ],
    "gaterpc.mixins": ["_LoopBoundMixin", "_global_lock"],
    "gaterpc.core": [
        "AsyncZAPService", "Context", "Worker", "RemoteWorker", "Service", "AMajordomo", "Client", "Gate",
        "RemoteGate", "GateClusterService", "SimpleClient", "ABCWorker", "ABCService", "_RemoteMethodProxy",
        "generate_reply", "set_ctx", "set_sock", "check_zap_args", "parse_zap_frame",
        "logger", "Wlogger", "Mlogger", "Glogger", "Clogger",
        "Settings", "BusyGateError", "BusyWorkerError", "GateUnAvailableError", "ServiceUnAvailableError",
        "RemoteException", "MulticastProtocol", "HugeData", "KVLRUCache", "MsgUnpackError", "StreamReply",
        "check_socket_addr", "Empty", "empty", "generator_to_agenerator", "throw_exception_agenerator",
        "interface", "run_in_executor", "from_bytes", "msg_pack", "msg_unpack", "to_bytes", "name2uuid",
        "z_const", "z_aio", "z_error", "curve_keypair", "SyncContext", "SyncSocket", "ZMQError",
        "Authenticator", "ProcessPoolExecutor", "ThreadPoolExecutor", "uuid4", "WARNING",
    ],
}


@pytest.mark.parametrize("module", sorted(SURFACE))
def test_every_name_imports(module):
    mod = importlib.import_module(module)
    missing = [name for name in SURFACE[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lacks {missing}"


def test_core_all_is_exact():
    import gaterpc.core

    assert gaterpc.core.__all__ == ["AsyncZAPService", "Context", "Worker", "RemoteWorker", "Service",
                                    "AMajordomo", "Client", "Gate", "RemoteGate", "GateClusterService"]


def test_shared_objects():
    import gaterpc.core
    import gaterpc.global_settings
    import gaterpc.utils

    assert gaterpc.core.Settings is gaterpc.global_settings.Settings
    assert gaterpc.core.empty is gaterpc.utils.empty is gaterpc.global_settings.empty
    assert isinstance(gaterpc.__version__, str)


def _sig(obj):
    return [(p.name, p.kind.name, p.default if p.default is not inspect.Parameter.empty else "<req>")
            for p in inspect.signature(obj).parameters.values()]


P, K, V = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY", "VAR_POSITIONAL"

SIGNATURES = {
    "gaterpc.core:Worker": [
        ("broker_addr", P, "<req>"), ("service", P, "<req>"), ("identity", P, None), ("heartbeat", P, None),
        ("context", P, None), ("zap_mechanism", P, None), ("zap_credentials", P, None),
        ("max_allowed_request", P, None), ("thread_executor", P, None), ("process_executor", P, None)],
    "gaterpc.core:Service": [("name", P, None), ("description", P, "gate-rpc service")],
    "gaterpc.core:Service.create_worker": [
        ("self", P, "<req>"), ("worker_class", P, None), ("workers_addr", P, None),
        ("workers_heartbeat", P, None), ("context", P, None), ("zap_mechanism", P, None),
        ("zap_credentials", P, None), ("max_allowed_request", P, None), ("thread_executor", P, None),
        ("process_executor", P, None)],
    "gaterpc.core:AMajordomo": [
        ("identity", K, None), ("context", K, None), ("heartbeat", K, None), ("thread_executor", K, None),
        ("process_executor", K, None)],
    "gaterpc.core:Client": [
        ("broker_addr", P, None), ("identity", P, None), ("context", P, None), ("heartbeat", P, None),
        ("reply_timeout", P, None), ("zap_mechanism", P, None), ("zap_credentials", P, None)],
    "gaterpc.core:SimpleClient": [
        ("broker_addr", P, "<req>"), ("reply_timeout", P, None), ("zap_mechanism", P, None),
        ("zap_credentials", P, None)],
    "gaterpc.core:Context": [("io_threads", K, 1), ("shadow", K, 0)],
    "gaterpc.core:Gate": [
        ("port", P, "<req>"), ("identity", K, None), ("context", K, None), ("heartbeat", K, None),
        ("multicast", K, True), ("cluster_name", K, None), ("gate_zap_mechanism", K, None),
        ("gate_zap_credentials", K, None), ("thread_executor", K, None), ("process_executor", K, None)],
    "gaterpc.core:AsyncZAPService": [("addr", P, None), ("context", P, None)],
    "gaterpc.core:RemoteWorker": [
        ("identity", P, "<req>"), ("heartbeat", P, "<req>"), ("max_allowed_request", P, "<req>"),
        ("sock", P, "<req>"), ("mdp_version", P, "<req>"), ("service", P, "<req>")],
    "gaterpc.utils:HugeData": [
        ("end_tag", P, "<req>"), ("except_tag", P, "<req>"), ("data", K, None), ("compress_module", K, "gzip"),
        ("compress_level", K, 1), ("blksize", K, 1000), ("timeout", K, 1), ("max_decompressed_size", K, None)],
    "gaterpc.utils:StreamReply": [("end_message", P, "<req>"), ("maxsize", P, 0), ("timeout", P, 0)],
    "gaterpc.utils:KVLRUCache": [("maxsize", P, 128), ("max_tracking_entries", P, 1000), ("debug", P, False)],
}


@pytest.mark.parametrize("target", sorted(SIGNATURES))
def test_signatures(target):
    module, _, qual = target.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    try:
        got = _sig(obj)
    except ValueError:
        # A compiled (cdef) class exposes no signature: check its pure twin,
        # which has the same API by contract (tests/test_lru.py runs both).
        twin = importlib.import_module(obj.__module__.replace("_c", "_py"))
        got = _sig(getattr(twin, obj.__name__))
    expected = SIGNATURES[target]
    # Extensions may only add keyword-only parameters with defaults at the end.
    assert got[:len(expected)] == expected
    for name, kind, default in got[len(expected):]:
        assert kind in (K, "VAR_KEYWORD") and default != "<req>", (name, kind)


def test_client_namespace_has_no_extra_public_names():
    from gaterpc.core import Client

    allowed = {"connect", "disconnect", "close", "knock"}
    public = {n for n in vars(Client) if not n.startswith("_")}
    assert public <= allowed, public - allowed


async def test_client_instance_public_attributes():
    from gaterpc.core import Client, Context

    ctx = Context()
    cli = Client("inproc://nowhere", context=ctx)
    allowed = {"identity", "ready", "ctx", "socket", "heartbeat", "heartbeat_liveness",
               "last_message_sent_time", "reply_timeout", "replies", "stream_reply_maxsize",
               "default_service", "zap_frames"}
    public = {n for n in vars(cli) if not n.startswith("_")}
    assert public == allowed
    assert hasattr(cli, "anything") and hasattr(cli.Svc, "method")
    with pytest.raises(AttributeError):
        cli._private_thing
    ctx.destroy(linger=0)


def test_interface_marks():
    from gaterpc.utils import interface

    def f():
        pass

    assert interface(f) is f and f.__interface__ is True and f.__executor__ == "none"
    for executor in ("thread", "process", "none"):
        def g():
            pass
        assert interface(executor)(g) is g and g.__executor__ == executor
    with pytest.raises(TypeError):
        interface("gpu")
    with pytest.raises(TypeError):
        interface(staticmethod(f))
