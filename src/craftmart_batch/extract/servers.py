"""Where each source lives: the warehouse's own database, or a server of its own.

A source with ``[sources.NAME] dsn`` set is read from that database; without one, from
the warehouse's. Its password comes from the DSN, else from the environment variable
``password_env`` names, else (as libpq does) from ``$PGPASSWORD`` or the password file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import overload

from .._database import Database, first_line, parse_dsn, redact
from ..config import Source
from ..errors import CraftmartError

logger = logging.getLogger(__name__)


@overload
def database_of(source: Source, warehouse: Database) -> Database: ...
@overload
def database_of(source: Source, warehouse: None) -> Database | None: ...
def database_of(source: Source, warehouse: Database | None) -> Database | None:
    """The database ``source`` is read from (``warehouse`` when it has no dsn)."""
    if source.dsn is None:
        return warehouse
    try:
        params = parse_dsn(source.dsn)
    except CraftmartError as exc:
        raise CraftmartError(f"source {source.name!r}: dsn: {exc}") from None
    if source.password_env and "password" not in params:
        password = os.environ.get(source.password_env)
        if password is None:
            raise CraftmartError(
                f"source {source.name!r}: environment variable {source.password_env}"
                " (its password_env) is not set")
        params["password"] = password
    return Database(params)


def by_database(
    sources: Iterable[Source], warehouse: Database
) -> list[tuple[Database, list[Source]]]:
    """``sources`` grouped by the database they are read from, in their order."""
    groups: dict[str, tuple[Database, list[Source]]] = {}
    for source in sources:
        db = database_of(source, warehouse)
        groups.setdefault(db.libpq_uri(), (db, []))[1].append(source)
    return list(groups.values())


def describe(sources: Sequence[Source]) -> str:
    """``source 'a'`` or ``sources 'a', 'b'``, for messages."""
    names = ", ".join(repr(s.name) for s in sources)
    return f"source {names}" if len(sources) == 1 else f"sources {names}"


def unreachable(sources: Sequence[Source], db: Database, exc: BaseException) -> CraftmartError:
    """One line: which sources could not be read from which server, and why."""
    return CraftmartError(
        f"{describe(sources)}: cannot read {db.display()}: {first_line(redact(str(exc)))}")
