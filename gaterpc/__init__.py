"""gaterpc: RPC on ZeroMQ, asyncio and msgpack.

A drop-in replacement for gaterpc 0.2.12.  Importing the package defines
only ``__version__``; the public API lives in the submodules
(``gaterpc.core``, ``gaterpc.utils``, ``gaterpc.global_settings``,
``gaterpc.exceptions``, ``gaterpc.mixins``).
"""

__version__ = "0.3.0"
