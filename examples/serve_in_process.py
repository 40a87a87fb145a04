"""A broker and a worker in one process, stopped gracefully by SIGTERM/SIGINT.

    python examples/serve_in_process.py ipc:///tmp/calc-front
    gaterpc call ipc:///tmp/calc-front Calc.add 2 3        # in another shell
    kill -TERM <pid>                                       # calls in flight finish, exit 0
"""

import asyncio
import sys
import uuid

from gaterpc.core import AMajordomo, Context, Service
from gaterpc.serve import serve

from calc import Calc


async def main(frontend):
    ctx = Context()
    backend = f"inproc://calc-{uuid.uuid4().hex}"
    broker = AMajordomo(context=ctx)
    broker.bind_frontend(frontend)
    broker.bind_backend(backend)
    worker = Service(name="Calc").create_worker(Calc, backend, context=ctx)
    print("serving on", frontend, flush=True)
    signal_name = await serve(broker, worker, grace=30)   # runs both until SIGTERM/SIGINT
    print("stopped by", signal_name, flush=True)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ipc:///tmp/calc-front"))
