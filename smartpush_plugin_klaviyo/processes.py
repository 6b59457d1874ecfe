"""Whether a process this one knew of is still the same, running process.

Two places need it: a lease names the process that holds it (a worker on the same host
takes over at once from one that was killed), and a helper process watches the sync it
decodes for (it must not outlive a ``kill -9`` of it). Both ask the same question, with
the same traps: a zombie (exited, not yet reaped by its parent) still answers
``kill(pid, 0)``, and a PID can be reused by a later process. On Linux ``/proc`` tells
them apart (state, and start time in clock ticks since boot); elsewhere only
``kill(pid, 0)`` is asked.
"""

from __future__ import annotations

import os


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time)`` of a process from ``/proc/<pid>/stat``; ``None`` if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields follow its last ")".
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot); ``None`` where unknown."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def is_gone(pid: int, start: int | None) -> bool:
    """Whether process ``pid``, started at ``start`` (``None``: unknown), has exited.

    A zombie counts as exited, and so does another process under the same PID (its start
    time differs). Without ``/proc``, a process that answers ``kill(pid, 0)`` is alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc here: the process exists, so it is alive
        return False
    state, started = stat
    if state in ("Z", "X"):
        return True
    return start is not None and started != start
