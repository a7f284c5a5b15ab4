"""Versioned DDL for dwh, marts and craftmart's bookkeeping: apply what is missing, in order."""

from __future__ import annotations

import logging
import re
from importlib import resources

from ._sql import Connection, execute, fetch_value, split_statements

logger = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_(.+)\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """Every shipped migration as (version, name, script), by version."""
    folder = resources.files("craftmart_batch").joinpath("_schema/migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    return sorted(found)


def current_version(conn: Connection) -> int:
    """The highest applied migration, 0 for a database craftmart-batch never touched."""
    if fetch_value(conn, "select to_regclass('craftmart.schema_migrations')::text") is None:
        return 0
    return int(
        fetch_value(conn, "select coalesce(max(version), 0) from craftmart.schema_migrations")
    )


def migrate(conn: Connection) -> list[str]:
    """Apply missing migrations inside the caller's transaction; return their names.

    Idempotent: a database at the latest version is not touched. The caller holds the
    warehouse lock, so two processes never migrate at once.
    """
    version = current_version(conn)
    applied = []
    for number, name, script in migrations():
        if number <= version:
            continue
        logger.info("applying schema migration %04d_%s", number, name)
        for statement in split_statements(script):
            if not _creates_an_existing_schema(conn, statement):
                execute(conn, statement)
        execute(
            conn,
            "insert into craftmart.schema_migrations (version, name) values ($1, $2)",
            (number, name),
        )
        applied.append(f"{number:04d}_{name}")
    return applied


_CREATE_SCHEMA_IF_NOT_EXISTS = re.compile(
    r"create\s+schema\s+if\s+not\s+exists\s+(\w+)\s*;?", re.IGNORECASE
)


def _creates_an_existing_schema(conn: Connection, statement: str) -> bool:
    """Whether ``statement`` is ``create schema if not exists S`` for an S that exists.

    PostgreSQL checks CREATE on the database before it looks whether the schema exists,
    so the statement fails for an account that owns pre-created schemas but may not
    create new ones (docs/reliability.md). Skipping it changes nothing else.
    """
    code = " ".join(
        line for line in statement.splitlines() if not line.strip().startswith("--")
    ).strip()
    match = _CREATE_SCHEMA_IF_NOT_EXISTS.fullmatch(code)
    if match is None:
        return False
    return bool(fetch_value(
        conn, "select exists (select from pg_namespace where nspname = $1)", (match.group(1),)
    ))


def latest_version() -> int:
    return migrations()[-1][0]
