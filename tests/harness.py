"""In-process harness: a dev host on a real database, the stand-in over HTTP, a fresh plugin manager."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hookspecs import get_plugin_manager
from smartpush_devhost.host import DevHost
from smartpush_devhost.transfer import iter_export
from smartpush_plugin_klaviyo.streams import MEMBER_PATHS

CLOCK_SCALE = 20.0
MEMBER_TEMPLATES = tuple(MEMBER_PATHS.values())
"""The group member endpoints the plugin reads, as the stand-in's fault templates name them."""


def hold_member_pages(server, delay: float = 2.0) -> None:
    """Every membership page the stand-in ``server`` serves takes ``delay`` seconds, until
    ``server.clear_faults()``: a run cannot complete before the test stops it (a small sync
    takes about a second on a fast machine, no longer than a stop takes to be sent)."""
    for template in MEMBER_TEMPLATES:
        server.inject(template, kind="slow", delay=delay, count=100_000)


@dataclass
class Harness:
    host: DevHost
    server: object
    account: object
    store: str = "shop"

    def __post_init__(self):
        self.pm = get_plugin_manager()

    @property
    def ctx(self):
        return self.host.context(self.store)

    def call(self, hook: str, **kwargs):
        return getattr(self.pm.hook, f"smartpush_{hook}")(integration="klaviyo", host=self.ctx, **kwargs)

    def install_and_authorize(self, key: str):
        self.call("install")
        result = self.call("authorize", credentials=key)
        assert result.ok, result.message
        return result

    def sync(self, mode: str = "full"):
        return self.call("sync", mode=mode)

    def status(self):
        return self.call("status")

    def export(self) -> list[dict]:
        ctx = self.ctx
        return list(iter_export(self.host.storage, ctx.contacts))


def cli_environment(tmp_path, db_url: str, server) -> dict[str, str]:
    """Environment for running the real ``smartpush`` command against ``server``."""
    env = dict(os.environ)
    env.update(
        SMARTPUSH_HOME=str(tmp_path / "home"),
        SMARTPUSH_DATABASE_URL=db_url,
        KLAVIYO_BASE_URL=server.base_url,
        KLAVIYO_TIME_SCALE=str(CLOCK_SCALE),
    )
    env.pop("KLAVIYO_API_KEY", None)
    return env


def make_host(db_url: str, tmp_path, server, **settings) -> DevHost:
    return DevHost(
        database_url=db_url,
        data_dir=tmp_path / "home",
        settings={"KLAVIYO_BASE_URL": server.base_url, "KLAVIYO_TIME_SCALE": str(CLOCK_SCALE), **settings},
        env={},
    )
