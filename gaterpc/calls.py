"""Call-side helpers of the client: the value-size check before sending, the latency histogram."""

from __future__ import annotations

import bisect
from typing import Any, Optional

from gaterpc.metrics import LATENCY_BUCKETS

__all__ = ("VALUE_LIMIT", "oversized", "check_value_sizes", "observe")

#: What msgpack decoders accept in one str/bytes value by default (ours and the original's).
VALUE_LIMIT = 32 * 1024 * 1024


def oversized(value: Any, depth: int = 0) -> Optional[int]:
    """The size of the first str/bytes value over the decode limit in ``value``, or None."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        size = len(value.encode("utf-8")) if isinstance(value, str) else memoryview(value).nbytes
        return size if size > VALUE_LIMIT else None
    if depth < 32:
        if isinstance(value, (list, tuple)):
            for item in value:
                found = oversized(item, depth + 1)
                if found is not None:
                    return found
        elif isinstance(value, dict):
            for key, item in value.items():
                found = oversized(key, depth + 1)
                if found is None:
                    found = oversized(item, depth + 1)
                if found is not None:
                    return found
    return None


def check_value_sizes(func_name: str, args: Any, kwargs: Any) -> None:
    """Refuse, before sending, an argument no receiver would decode (only asked for large frames)."""
    size = oversized(args)
    if size is None:
        size = oversized(kwargs)
    if size is not None:
        raise ValueError(
            f"an argument of {func_name}() is {size:,} bytes: a single str/bytes value above "
            f"{VALUE_LIMIT:,} bytes (32 MiB) is refused by msgpack receivers. Send large data as "
            "several smaller values, or return it from the worker as HugeData (gaterpc.utils.HugeData), "
            "which is compressed and sent in chunks.")


def observe(latency: dict[str, list[Any]], service: str, seconds: float) -> None:
    """Add one call's latency to the per-service histogram (buckets of gaterpc.metrics)."""
    entry = latency.get(service)
    if entry is None:
        entry = latency[service] = [[0] * (len(LATENCY_BUCKETS) + 1), 0, 0.0]
    entry[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    entry[1] += 1
    entry[2] += seconds
