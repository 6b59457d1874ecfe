"""In-process harness: a dev host on a real database, the stand-in over HTTP, a fresh plugin manager."""

from __future__ import annotations

from dataclasses import dataclass

from hookspecs import get_plugin_manager
from hookspecs.devhost.host import DevHost
from hookspecs.devhost.transfer import iter_export

CLOCK_SCALE = 20.0


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


def make_host(db_url: str, tmp_path, server, **settings) -> DevHost:
    return DevHost(
        database_url=db_url,
        data_dir=tmp_path / "home",
        settings={"KLAVIYO_BASE_URL": server.base_url, "KLAVIYO_TIME_SCALE": str(CLOCK_SCALE), **settings},
        env={},
    )
