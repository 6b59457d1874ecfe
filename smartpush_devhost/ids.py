"""Contact uids: ``sp_`` + a 32-hex-digit ULID-like id (48-bit ms time, 80 random bits).

Uids sort by creation time (monotonic within a process), so ``iter_all`` in uid
order is creation order and B-tree inserts stay append-mostly (fast on SQLite).
"""

from __future__ import annotations

import os
import threading
import time

_MASK80 = (1 << 80) - 1
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0

UID_PREFIX = "sp_"


def new_uids(n: int) -> list[str]:
    """``n`` new unique uids, increasing."""
    global _last_ms, _last_rand
    out = []
    with _lock:
        for _ in range(n):
            ms = time.time_ns() // 1_000_000
            if ms <= _last_ms:
                # same millisecond (or clock stepped back): keep increasing
                ms = _last_ms
                _last_rand += 1
            else:
                _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for +1s
            _last_ms = ms
            # hex keeps the sort order of the numbers and formats far faster than base32
            out.append(f"{UID_PREFIX}{ms:012x}{_last_rand & _MASK80:020x}")
    return out


def new_uid() -> str:
    """One new uid."""
    return new_uids(1)[0]
