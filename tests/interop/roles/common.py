"""Helpers shared by the interop role scripts and the tests.

Only the standard library is imported here: this module runs under the
original gaterpc's interpreter as well as under ours, and the test process
imports it too (to build requests and to compute expected values).

JSON cannot carry every msgpack value, so values travel between the test and
the client role in a small tagged encoding:

* ``{"$b": "<base64>"}``  bytes
* ``{"$t": [...]}``       tuple (only meaningful test -> role, for arguments)
* ``{"$d": [[k, v], ...]}`` dict whose keys are not all ``str``
* ``{"$r": "<repr>"}``    anything else that JSON cannot hold
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import signal
import sys
import tempfile
from pathlib import Path

# Service names the roles register under; the tests use the same constants.
SERVICE_DESCRIPTION = "interop test worker"

# Logging config for the roles: warnings and errors to stderr, which the test
# runner redirects into a per-process log file.  Nothing on stdout: stdout
# carries the protocol with the test (readiness line, JSON results).
QUIET_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING",
                            "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "gaterpc": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        "asyncio": {"level": "ERROR", "handlers": ["stderr"], "propagate": False},
        "multiprocessing": {"level": "ERROR", "handlers": ["stderr"], "propagate": False},
        "commands": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
    },
}


def payload(n: int) -> dict:
    """The known HugeData payload of size argument ``n``."""
    blob = random.Random(n).randbytes(n)  # incompressible: many chunks on the wire
    return {"n": n, "blob": blob, "tail": ["end", n, True]}


def payload_summary(value) -> dict:
    """A small, comparable summary of a HugeData result (avoids shipping MBs as JSON)."""
    if not isinstance(value, dict) or not isinstance(value.get("blob"), (bytes, bytearray)):
        return {"unexpected": encode(value) if not isinstance(value, (bytes, bytearray))
                else {"bytes_len": len(value)}}
    blob = bytes(value["blob"])
    return {"n": value.get("n"), "blob_len": len(blob),
            "blob_sha256": hashlib.sha256(blob).hexdigest(), "tail": encode(value.get("tail"))}


def encode(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return {"$t": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"$d": [[encode(k), encode(v)] for k, v in value.items()]}
    return {"$r": repr(value)}


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (key, inner), = value.items()
            if key == "$b":
                return base64.b64decode(inner)
            if key == "$t":
                return tuple(decode(v) for v in inner)
            if key == "$d":
                return {_hashable(decode(k)): decode(v) for k, v in inner}
            if key == "$r":
                return ("repr", inner)
        return {k: decode(v) for k, v in value.items()}
    return value


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def implementation(gaterpc_module) -> str:
    """``"ours"`` when the imported gaterpc has our compiled-backend package, else ``"orig"``."""
    import importlib.util
    try:
        ours = importlib.util.find_spec(gaterpc_module.__name__ + "._speedups") is not None
    except (ImportError, ValueError):
        ours = False
    return "ours" if ours else "orig"


def announce(role: str, gaterpc_module, **extra) -> None:
    """Print the readiness line the test runner waits for."""
    info = {"ready": role, "impl": implementation(gaterpc_module),
            "file": str(gaterpc_module.__file__),
            "version": getattr(gaterpc_module, "__version__", None),
            "python": sys.version.split()[0]}
    info.update(extra)
    print(dumps(info), flush=True)


def configure_settings(Settings, base_path: str | None, worker_addr: str | None) -> None:
    """Point the library's paths at a private directory; must run before setup()."""
    base = Path(base_path) if base_path else Path(tempfile.mkdtemp(prefix="gaterpc-interop-"))
    Settings.configure("BASE_PATH", base)
    if worker_addr:
        Settings.WORKER_ADDR = worker_addr
    Settings.configure("LOGGING", QUIET_LOGGING)


def install_stop(loop, stop_future) -> None:
    """SIGTERM/SIGINT resolve ``stop_future`` (clean shutdown)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop_future.done() or stop_future.set_result(None))
