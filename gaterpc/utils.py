"""Public utility namespace of gaterpc, kept for compatibility.

This module only re-exports: every name the original ``gaterpc.utils``
offered is importable from here, but each is defined in its own module
(see docs/ARCHITECTURE.md).  Logging configurations refer to
``gaterpc.utils.AQueueHandler``, ``gaterpc.utils.ColorFormatter`` and
``gaterpc.utils.singleton_aqueue_listener`` by dotted path.
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
from gaterpc.cache import KVLRUCache, LRUCache, _CacheInfo, _coroutine_lru_cache_wrapper, coroutine_lru_cache
from gaterpc.helpers import (
    MulticastProtocol,
    SyncManager,
    UnixEPollEventLoopPolicy,
    _BaseEventLoopPolicy,
    _LazySyncManager,
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
from gaterpc.hugedata import (
    GzipCompressor,
    GzipDecompressor,
    HugeData,
    _incremental_compress,
    _incremental_decompress,
    ensure_shm_unlink,
)
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
