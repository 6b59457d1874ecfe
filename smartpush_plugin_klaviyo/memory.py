"""Hand freed heap memory back to the operating system during long runs.

Pages are decoded by fetcher threads and freed by the writer thread. glibc gives each
thread its own malloc arena and keeps freed chunks in the arena they came from, so over
a run of millions of profiles the resident size creeps up although live memory stays
flat (measured: 200k profiles, 143 MiB peak without trimming, 133 MiB with it).
``malloc_trim(0)`` returns those free pages; it changes no allocation, only releases
what is already free. Elsewhere (macOS, musl) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import time


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_heap() -> bool:
    """Return free heap pages to the OS; ``True`` if the C library supports it."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


class HeapTrimmer:
    """Calls :func:`release_free_heap` at most once per ``interval`` seconds."""

    def __init__(self, interval: float = 1.0, clock=time.monotonic):
        self.interval = interval
        self._clock = clock
        self._last = clock()

    def maybe_trim(self) -> None:
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            release_free_heap()
