"""How the ``smartpush`` command stops on Ctrl-C (SIGINT) and SIGTERM.

A sync is never interrupted in the middle of a database write: while one runs (inside
:meth:`GracefulStop.asking`), the first signal only sets the host's
``stop_requested`` event; the plugin notices it within a second, keeps its checkpoints,
releases its lease and returns ``outcome="stopped"``, and the command then exits 130
(Ctrl-C) or 143 (SIGTERM). A second signal, or one outside a sync, stops at once:
SIGINT raises :class:`KeyboardInterrupt`, SIGTERM :class:`Terminated` (a
KeyboardInterrupt, so everything unwinds the same way). An exception thrown into a
database driver mid-statement can leave its connection unusable and turn the stop
into an error, which is why the first signal asks instead.

:func:`end_helpers` ends any helper process still left after an interrupt.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from smartpush_devhost import exit_codes


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a signal stands for: :class:`Terminated` for SIGTERM, else KeyboardInterrupt."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class GracefulStop:
    """The process's SIGINT/SIGTERM handler (install once, from the main thread)."""

    def __init__(self) -> None:
        self._events: list[threading.Event] = []
        self.signum: int | None = None
        """The first signal received while a sync was asked to stop, if any."""

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    @contextmanager
    def asking(self, event: threading.Event | None) -> Iterator["GracefulStop"]:
        """While the block runs, the first signal sets ``event`` instead of raising."""
        if event is None:
            yield self
            return
        self._events.append(event)
        try:
            yield self
        finally:
            self._events.remove(event)

    def raise_if_signalled(self) -> None:
        """After an asked stop: raise the interrupt the signal stands for."""
        if self.signum is not None:
            raise interrupt_for(self.signum)

    def _handle(self, signum, frame) -> None:
        if self._events and self.signum is None:
            self.signum = signum
            for event in self._events:
                event.set()
            return
        raise interrupt_for(signum)


def interrupted_exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return exit_codes.TERMINATED if isinstance(exc, Terminated) else exit_codes.INTERRUPTED


def end_helpers(timeout: float = 5.0) -> None:
    """Terminate (then kill) every process this one started that is still alive: the
    sync's decoding helpers and their forkserver. Called after an interrupt."""
    import psutil

    me = psutil.Process()
    children = [c for c in me.children(recursive=True) if not _is_resource_tracker(c)]
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def _is_resource_tracker(proc) -> bool:
    # multiprocessing's resource tracker ignores SIGTERM by design and exits by itself
    # once this process has exited (end of its pipe), after releasing what helpers leaked
    import psutil

    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return False



PROCESS = GracefulStop()
"""This process's handler: :func:`smartpush_devhost.cli.main` installs it."""
