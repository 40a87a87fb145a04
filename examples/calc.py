"""An example worker module: ``gaterpc worker calc:Calc --backend ADDR`` (run from this directory)."""

import asyncio

from gaterpc.core import Worker
from gaterpc.utils import interface


class Calc(Worker):
    @interface
    async def add(self, a, b):
        return a + b

    @interface
    def count(self, n):          # a generator becomes a stream
        yield from range(n)

    @interface
    async def slow(self, seconds):
        await asyncio.sleep(seconds)
        return "done"
