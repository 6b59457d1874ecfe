"""Heap trimming during long runs (glibc's malloc_trim; a no-op elsewhere)."""

from __future__ import annotations

import platform
import sys

import pytest

from smartpush_plugin_klaviyo import memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_free_heap_works_on_glibc():
    junk = [bytearray(200_000) for _ in range(50)]  # freed below: something to give back
    del junk
    assert memory.release_free_heap() is True


def test_trimmer_trims_at_most_once_per_interval(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(1) or True)
    now = [100.0]
    trimmer = memory.HeapTrimmer(interval=1.0, clock=lambda: now[0])
    for _ in range(12):  # 3 s in 0.25 s steps (exact in binary)
        now[0] += 0.25
        trimmer.maybe_trim()
    assert len(calls) == 3
