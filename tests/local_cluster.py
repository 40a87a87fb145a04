"""A broker, one worker and one client in this process, over ipc (shared test set-up)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Optional

from gaterpc.core import AMajordomo, Client, Context, Service


@dataclass
class LocalCluster:
    ctx: Any
    broker: Any
    worker: Any
    client: Any
    front: str
    back: str


@contextlib.asynccontextmanager
async def local_cluster(tmp_path: Path, worker_cls: type, service: str,
                        reply_timeout: Optional[float] = None) -> AsyncIterator[LocalCluster]:
    """Start them, wait (bounded) until ``service`` has its worker, connect the client; stop all after."""
    ctx = Context()
    front, back = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    broker = AMajordomo(context=ctx)
    worker = client = None
    try:
        broker.bind_frontend(front)
        broker.bind_backend(back)
        broker.run()
        worker = Service(name=service).create_worker(worker_cls, back, context=ctx)
        worker.run()
        for _ in range(500):
            if service in broker.services and broker.services[service].workers:
                break
            await asyncio.sleep(0.01)
        client = Client(front, context=ctx, reply_timeout=reply_timeout)
        await client.connect()
        yield LocalCluster(ctx, broker, worker, client, front, back)
    finally:
        if client is not None:
            client.close()
        if worker is not None:
            worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)
