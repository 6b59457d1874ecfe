"""The SmartPush host platform's plugin contract.

``hookspecs`` holds what a SmartPush integration plugin may rely on:

* the pluggy markers (:data:`hookspec`, :data:`hookimpl`), both named ``smartpush``;
* the typed hook specifications in :mod:`hookspecs.specs`;
* the host-side interfaces a plugin may use (storage, contacts, scheduler, plan,
  secrets) in :mod:`hookspecs.interfaces`, and the values that cross the contract in
  :mod:`hookspecs.types`;
* :func:`get_plugin_manager`, the one factory that builds the plugin manager;
* :mod:`hookspecs.fastsql`, part of the storage interface: statements compiled once per
  dialect and run on the caller's :class:`~hookspecs.interfaces.Storage` connection, which
  the host's contact store and the plugins' page writers share for their hot paths.

The development host that implements those interfaces on SQLModel and drives the plugins
from the ``smartpush`` CLI is a separate package, :mod:`smartpush_devhost`.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "smartpush"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

from hookspecs.manager import get_plugin_manager  # noqa: E402  (markers first: specs import them)

__all__ = ["PROJECT_NAME", "hookspec", "hookimpl", "get_plugin_manager"]
