"""The development host: wires storage, keyring and the per-store services into
:class:`hookspecs.interfaces.HostContext` objects."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hookspecs.fastsql import dialect_insert
from hookspecs.interfaces import HostContext
from smartpush_devhost.contacts import SqlContactStore
from smartpush_devhost.crypto import Keyring, load_keyring
from smartpush_devhost.models import stores_t, utcnow
from smartpush_devhost.plan import SqlPlan
from smartpush_devhost.scheduler import JobRun, SqlScheduler, run_due
from smartpush_devhost.secrets import SqlSecretStore
from smartpush_devhost.storage import SqlStorage

log = logging.getLogger(__name__)

ENV_HOME = "SMARTPUSH_HOME"
ENV_DATABASE_URL = "SMARTPUSH_DATABASE_URL"
DEFAULT_HOME = ".smartpush"
DEFAULT_STORE = "default"
SETTINGS_ENV_PREFIXES = ("KLAVIYO_",)
"""Environment variables with these prefixes are copied into ``HostContext.settings``
(``KLAVIYO_BASE_URL``, ``KLAVIYO_TIME_SCALE``, ``KLAVIYO_RATE_LIMITS`` ...), except
secret-looking ones."""
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")


def settings_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Plugin settings found in the environment; never API keys or other secrets
    (``KLAVIYO_API_KEY`` reaches a plugin only through ``smartpush authorize``)."""
    return {
        name: value
        for name, value in env.items()
        if value and name.startswith(SETTINGS_ENV_PREFIXES) and not any(w in name for w in _SECRET_WORDS)
    }

_STORE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def validate_store_id(store_id: str) -> str:
    """Return ``store_id`` if it is a safe name (letters, digits, ``_.-``), else raise ValueError."""
    if not isinstance(store_id, str) or not _STORE_ID.match(store_id):
        raise ValueError(f"invalid store id {store_id!r}: use letters, digits, '_', '.', '-' (max 200)")
    return store_id


def resolve_data_dir(data_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The data directory (``data_dir``, env ``SMARTPUSH_HOME`` or ``./.smartpush``), created 0700."""
    env = os.environ if env is None else env
    path = Path(data_dir or env.get(ENV_HOME) or DEFAULT_HOME).expanduser().resolve()
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
    elif path.stat().st_mode & 0o077:
        # the directory holds the database and (by default) the master key file
        log.warning("data directory %s is accessible by group/others; consider chmod 700", path)
    return path


def default_database_url(data_dir: Path) -> str:
    """``sqlite:///<data dir>/smartpush.db``."""
    return f"sqlite:///{data_dir / 'smartpush.db'}"


class _LazyQueue:
    """Opens the host's queue only when a job is actually (un)scheduled."""

    def __init__(self, host: "DevHost"):
        self._host = host

    def enqueue(self, store_id, integration, version, eta) -> None:
        self._host.queue.enqueue(store_id, integration, version, eta)

    def revoke(self, store_id, integration, version) -> None:
        self._host.queue.revoke(store_id, integration, version)


class DevHost:
    """A development host: one database, one keyring, any number of stores.

    :param database_url: SQLAlchemy URL; default env ``SMARTPUSH_DATABASE_URL`` or
        SQLite in the data directory.
    :param data_dir: where the SQLite file and ``master.key`` live; default env
        ``SMARTPUSH_HOME`` or ``./.smartpush``.
    :param settings: host settings handed to plugins; they override the ones found
        in the environment (see :func:`settings_from_env`).
    :param default_store: the store :meth:`host_context` returns without argument.
    :param keyring: an explicit keyring (tests); default loads env/key file.
    """

    def __init__(
        self,
        database_url: str | None = None,
        data_dir: str | os.PathLike | None = None,
        settings: Mapping[str, str] | None = None,
        *,
        default_store: str = DEFAULT_STORE,
        keyring: Keyring | None = None,
        env: Mapping[str, str] | None = None,
    ):
        env = os.environ if env is None else env
        self.data_dir = resolve_data_dir(data_dir, env)
        self.database_url = database_url or env.get(ENV_DATABASE_URL) or default_database_url(self.data_dir)
        self.settings: dict[str, str] = settings_from_env(env)
        self.settings.update(settings or {})
        self.default_store = validate_store_id(default_store)
        self.keyring = keyring or load_keyring(self.data_dir, env)
        self.storage = SqlStorage(self.database_url)
        self.storage.create_all()
        self._known_stores: set[str] = set()
        self.stop_requested = threading.Event()
        """Set when this host shuts down: running syncs checkpoint and return ``"stopped"``
        (every context's ``stop_requested``)."""
        from smartpush_devhost.engine import queue_url_from

        self.queue_url = self.settings.get("SMARTPUSH_QUEUE_URL") or queue_url_from(env, self.data_dir)
        self._queue = None

    def __repr__(self) -> str:
        return f"DevHost(storage={self.storage!r}, data_dir={str(self.data_dir)!r})"

    @property
    def queue(self):
        """The job engine's queue (:class:`smartpush_devhost.engine.HueyJobQueue`), opened on first use."""
        if self._queue is None:
            from smartpush_devhost.engine import HueyJobQueue

            self._queue = HueyJobQueue(self.queue_url)
        return self._queue

    # --------------------------------------------------------------- stores
    def ensure_store(self, store_id: str) -> None:
        """Create the store row if missing (idempotent)."""
        validate_store_id(store_id)
        if store_id in self._known_stores:
            return
        with self.storage.transaction() as tx:
            stmt = dialect_insert(tx, stores_t).values(store_id=store_id, created_at=utcnow())
            tx.execute(stmt.on_conflict_do_nothing())
        self._known_stores.add(store_id)

    def list_stores(self) -> list[str]:
        """Every store id, sorted."""
        with self.storage.transaction(readonly=True) as tx:
            return list(tx.execute(select(stores_t.c.store_id).order_by(stores_t.c.store_id)).scalars())

    # -------------------------------------------------------------- context
    def contacts(self, store_id: str) -> SqlContactStore:
        """The contact store of ``store_id`` (store created on first use)."""
        self.ensure_store(store_id)
        return SqlContactStore(store_id, self.keyring)

    def plan(self, store_id: str) -> SqlPlan:
        """The plan of ``store_id`` (store created on first use)."""
        self.ensure_store(store_id)
        return SqlPlan(self.storage, store_id)

    def context(self, store_id: str | None = None) -> HostContext:
        """The :class:`HostContext` of ``store_id`` (created on first use)."""
        store_id = store_id or self.default_store
        self.ensure_store(store_id)
        return HostContext(
            store_id=store_id,
            storage=self.storage,
            contacts=SqlContactStore(store_id, self.keyring),
            scheduler=SqlScheduler(self.storage, store_id, _LazyQueue(self)),
            plan=SqlPlan(self.storage, store_id),
            secrets=SqlSecretStore(self.storage, self.keyring, store_id),
            settings=dict(self.settings),
            stop_requested=self.stop_requested,
        )

    def host_context(self, store_id: str | None = None) -> HostContext:
        """:class:`hookspecs.interfaces.HostProvider`: same as :meth:`context`."""
        return self.context(store_id)

    # ------------------------------------------------------------ operations
    def pm_call_sync(self, pm, store_id: str, integration: str, mode: str) -> Any:
        """Call ``smartpush_sync`` for one store, keyword arguments only."""
        return pm.hook.smartpush_sync(integration=integration, host=self.context(store_id), mode=mode)

    def set_plan(self, pm, store_id: str, plan: str) -> list[Any]:
        """Change the store's plan, then tell every integration at once
        (``smartpush_plan_changed``, keyword arguments only); returns their statuses."""
        self.plan(store_id).set(plan)
        ctx = self.context(store_id)
        statuses = []
        for info in pm.hook.smartpush_integration_info():
            result = pm.hook.smartpush_plan_changed(integration=info.name, host=ctx, plan=plan)
            if result is not None:
                statuses.append(result)
        return statuses

    def run_due(self, pm, *, now=None, store: str | None = None, worker_id: str | None = None) -> list[JobRun]:
        """Run the due scheduled jobs; see :func:`smartpush_devhost.scheduler.run_due`."""
        return run_due(self, pm, now=now, store=store, worker_id=worker_id)

    def rotate_keys(self, *, batch_size: int = 500):
        """Rotate the master key and re-encrypt everything; see :mod:`smartpush_devhost.rotation`."""
        from smartpush_devhost.rotation import rotate_keys

        return rotate_keys(self, batch_size=batch_size)

    def close(self) -> None:
        """Release database connections."""
        self.storage.dispose()
