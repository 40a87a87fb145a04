"""``gaterpc.core``: the RPC roles.

This module re-exports the roles from their own modules (``gaterpc.base``,
``gaterpc.worker``, ``gaterpc.broker``, ``gaterpc.client``, ``gaterpc.zap``,
``gaterpc.gate``) so that imports written for the original keep working.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor  # noqa: F401 (re-export)
from logging import WARNING  # noqa: F401 (re-export)
from uuid import uuid4  # noqa: F401 (re-export)

import zmq
import zmq.asyncio as z_aio  # noqa: F401 (re-export)
import zmq.error as z_error  # noqa: F401 (re-export)
from zmq import Context as SyncContext  # noqa: F401 (re-export)
from zmq import Socket as SyncSocket  # noqa: F401 (re-export)
from zmq import ZMQError  # noqa: F401 (re-export)
from zmq import constants as z_const  # noqa: F401 (re-export)
from zmq.auth import Authenticator  # noqa: F401 (re-export)

from gaterpc.base import (  # noqa: F401 (re-export)
    ABCService, ABCWorker, Context, check_zap_args, generate_reply, parse_zap_frame, set_ctx, set_sock,
)
from gaterpc.broker import AMajordomo
from gaterpc.client import Client, SimpleClient, _RemoteMethodProxy  # noqa: F401 (re-export)
from gaterpc.exceptions import (  # noqa: F401 (re-export)
    BusyGateError, BusyWorkerError, GateUnAvailableError, RemoteException, ServiceUnAvailableError,
)
from gaterpc.gate import Gate, GateClusterService, RemoteGate
from gaterpc.global_settings import Settings  # noqa: F401 (re-export)
from gaterpc.helpers import (  # noqa: F401 (re-export)
    MulticastProtocol, check_socket_addr, from_bytes, generator_to_agenerator, interface, name2uuid,
    run_in_executor, throw_exception_agenerator, to_bytes,
)
from gaterpc.hugedata import HugeData  # noqa: F401 (re-export)
from gaterpc.cache import KVLRUCache  # noqa: F401 (re-export)
from gaterpc.lazy import Empty, empty  # noqa: F401 (re-export)
from gaterpc.serialization import MsgUnpackError, msg_pack, msg_unpack  # noqa: F401 (re-export)
from gaterpc.streams import StreamReply  # noqa: F401 (re-export)
from gaterpc.worker import RemoteWorker, Service, Worker
from gaterpc.zap import AsyncZAPService

curve_keypair = zmq.curve_keypair

__all__ = ["AsyncZAPService", "Context", "Worker", "RemoteWorker", "Service", "AMajordomo", "Client",
           "Gate", "RemoteGate", "GateClusterService"]

logger = logging.getLogger("gaterpc")
Wlogger = logging.getLogger("gaterpc.worker")
Mlogger = logging.getLogger("gaterpc.majordomo")
Glogger = logging.getLogger("gaterpc.gate")
Clogger = logging.getLogger("gaterpc.client")
