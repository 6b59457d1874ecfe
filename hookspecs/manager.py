"""The one factory that builds the SmartPush plugin manager."""

from __future__ import annotations

import pluggy

from hookspecs import PROJECT_NAME, specs


def get_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the SmartPush hook specs.

    Installed plugins are loaded from the ``smartpush`` entry-point group, then
    ``check_pending()`` verifies that every hook implementation matches a spec, so a
    plugin with a misspelt hook fails here, loudly, instead of being silently ignored.
    Pass ``load_entry_points=False`` (tests) to get a manager with no plugins.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(specs)
    if load_entry_points:
        pm.load_setuptools_entrypoints(PROJECT_NAME)
    pm.check_pending()
    return pm
