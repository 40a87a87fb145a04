"""Public utility namespace of gaterpc, kept for compatibility.

This module only re-exports: every name the original ``gaterpc.utils``
offered is importable from here, but each is defined in its own module
(see docs/ARCHITECTURE.md).  Logging configurations refer to
``gaterpc.utils.AQueueHandler``, ``gaterpc.utils.ColorFormatter`` and
``gaterpc.utils.singleton_aqueue_listener`` by dotted path.

``__all__`` lists every public name of the module, the standard-library
names it imports included, so that ``from gaterpc.utils import *`` binds
what it always did; it also makes the re-exports explicit for type checkers
(``mypy --strict`` accepts ``from gaterpc.utils import interface``).  The few
private helpers that code imports from here are re-exported as ``X as X``,
which type checkers also accept, without adding them to ``import *``.
"""

# ruff: noqa: F401 (re-exports)
import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from multiprocessing import Manager
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import msgpack

from gaterpc.exceptions import BadGzip, HugeDataException, RemoteException
from gaterpc.cache import KVLRUCache, LRUCache, coroutine_lru_cache
from gaterpc.cache import _CacheInfo as _CacheInfo
from gaterpc.cache import _coroutine_lru_cache_wrapper as _coroutine_lru_cache_wrapper
from gaterpc.helpers import (
    MulticastProtocol,
    SyncManager,
    UnixEPollEventLoopPolicy,
    check_socket_addr,
    decrypt,
    encrypt,
    from_bytes,
    generator_to_agenerator,
    interface,
    name2uuid,
    resolve_module_attr,
    run_in_executor,
    singleton,
    throw_exception_agenerator,
    to_bytes,
)
from gaterpc.helpers import _BaseEventLoopPolicy as _BaseEventLoopPolicy
from gaterpc.helpers import _LazySyncManager as _LazySyncManager
from gaterpc.hugedata import (
    GzipCompressor,
    GzipDecompressor,
    HugeData,
    ensure_shm_unlink,
)
from gaterpc.hugedata import _incremental_compress as _incremental_compress
from gaterpc.hugedata import _incremental_decompress as _incremental_decompress
from gaterpc.lazy import Empty, LazyAttribute, TypeValidator, Validator, empty, ensure_mkdir
from gaterpc.log import (
    AQueueHandler,
    AQueueListener,
    ColorFormatter,
    QueueListener,
    singleton_aqueue_listener,
    singleton_queue_listener,
)
from gaterpc.serialization import (
    MessagePack,
    MsgPackError,
    MsgUnpackError,
    message_pack,
    msg_pack,
    msg_unpack,
)
from gaterpc.streams import StreamReply

logger = logging.getLogger("commands")
"""Logger for utility messages (configured by the default logging setup)."""

__all__ = (
    # helpers
    "MulticastProtocol", "SyncManager", "UnixEPollEventLoopPolicy", "check_socket_addr", "decrypt", "encrypt",
    "from_bytes", "generator_to_agenerator", "interface", "name2uuid", "resolve_module_attr",
    "run_in_executor", "singleton", "throw_exception_agenerator", "to_bytes",
    # caches
    "KVLRUCache", "LRUCache", "coroutine_lru_cache",
    # exceptions
    "BadGzip", "HugeDataException", "RemoteException",
    # HugeData
    "GzipCompressor", "GzipDecompressor", "HugeData", "ensure_shm_unlink",
    # lazy settings
    "Empty", "LazyAttribute", "TypeValidator", "Validator", "empty", "ensure_mkdir",
    # logging
    "AQueueHandler", "AQueueListener", "ColorFormatter", "QueueListener", "singleton_aqueue_listener",
    "singleton_queue_listener", "logger",
    # serialization and streams
    "MessagePack", "MsgPackError", "MsgUnpackError", "message_pack", "msg_pack", "msg_unpack", "StreamReply",
    # standard-library and msgpack names the module has always carried (``import *`` binds them)
    "asyncio", "logging", "msgpack", "OrderedDict", "ProcessPoolExecutor", "ThreadPoolExecutor", "partial",
    "Manager", "SharedMemory", "Path",
)
