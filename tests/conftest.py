"""Shared fixtures: real databases, a real Klaviyo stand-in over HTTP, a fresh plugin manager.

``SMARTPUSH_TEST_DATABASE=postgres`` (the tox ``postgres`` environment) runs every test
that uses ``db_url`` on a fresh PostgreSQL database; the server comes from
``SMARTPUSH_TEST_POSTGRES_URL`` or is started by ``scripts/start-postgres.sh``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

# The Klaviyo stand-in is a test fixture, not in the wheel: pytest's `pythonpath` finds it for
# this process; child processes (`python -m klaviyo_standin`, `smartpush demo`, helper
# processes) find it through PYTHONPATH, also when pytest runs outside tox.
if str(FIXTURES) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH")) if p)


def _postgres_admin_url() -> str:
    url = os.environ.get("SMARTPUSH_TEST_POSTGRES_URL")
    if url:
        return url
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "start-postgres.sh")], check=True, capture_output=True, text=True
    ).stdout
    url = out.strip().split("=", 1)[1]
    os.environ["SMARTPUSH_TEST_POSTGRES_URL"] = url
    return url


def using_postgres() -> bool:
    return os.environ.get("SMARTPUSH_TEST_DATABASE", "sqlite").lower() == "postgres"


@pytest.fixture
def db_url(tmp_path):
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database."""
    if not using_postgres():
        yield f"sqlite:///{tmp_path / 'smartpush.db'}"
        return
    from sqlalchemy import create_engine, text

    admin = _postgres_admin_url()
    name = f"sp_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture
def spec_path() -> Path:
    path = Path(os.environ.get("KLAVIYO_OPENAPI_SPEC", ROOT.parent / "shared" / "klaviyo" / "openapi" / "stable.json"))
    if not path.exists():
        pytest.skip(f"Klaviyo OpenAPI spec not found at {path}")
    return path


@pytest.fixture
def store_ids():
    """Unique store ids, so tests sharing one database never see each other's rows."""
    prefix = uuid.uuid4().hex[:10]
    return lambda n: [f"t{prefix}-{i}" for i in range(n)]


@pytest.fixture
def host(tmp_path, db_url):
    """A development host on a fresh database, reading no environment."""
    from smartpush_devhost.host import DevHost

    h = DevHost(db_url, tmp_path / "home", env={})
    yield h
    h.close()


@pytest.fixture
def server(account):
    """The stand-in serving the test module's ``account`` fixture on 127.0.0.1."""
    from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer

    from tests.harness import CLOCK_SCALE

    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE) as srv:
        yield srv


@pytest.fixture
def make_harness(db_url, tmp_path):
    """A harness on a fresh database for a test server (``tests/_spec_server.py`` or a
    scripted one), installed and authorized with ``key`` (``""``: not authorized)."""
    hosts = []

    def make(server, key: str | None = None, **settings):
        from tests._spec_server import KEY
        from tests.harness import Harness, make_host

        key = KEY if key is None else key
        settings = {"KLAVIYO_RATE_LIMITS": "off", "KLAVIYO_MAX_RETRIES": "2", **settings}
        host = make_host(db_url, tmp_path / f"h{len(hosts)}", server, **settings)
        hosts.append(host)
        h = Harness(host=host, server=server, account=None)
        if key:
            h.install_and_authorize(key)
        return h

    yield make
    for host in hosts:
        host.close()
