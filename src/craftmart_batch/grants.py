"""Read access to the marts for a reporting role: the marts only, nothing else, read-only."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ._database import Database, connection, quote_ident
from ._sql import database_error, execute, fetch_value
from .errors import CraftmartError

logger = logging.getLogger(__name__)

MARTS_SCHEMA = "marts"


@dataclass(frozen=True)
class ReaderGrant:
    """What ``grant_reader`` did: the role, the mart tables it can read now, the statements."""

    role: str
    tables: list[str]
    statements: list[str]


def grant_reader(db: Database, role: str) -> ReaderGrant:
    """Let ``role`` read every table of schema ``marts``, now and in the future.

    Grants ``connect`` on the database, ``usage`` on schema ``marts``, ``select`` on its
    tables (the two marts and their load dates) and default privileges so tables a
    later schema migration adds to ``marts`` are readable too. Nothing on the sources,
    ``dwh`` or ``craftmart``, and no write privilege anywhere. Idempotent; one
    transaction.

    The default privileges are set for the owner of schema ``marts`` (the account that
    runs ``craftmart-batch run`` and creates the mart tables), so the command must run
    as that owner or as a superuser. Raises ``CraftmartError`` when the role or the
    warehouse does not exist.
    """
    with connection(db) as conn:
        if not fetch_value(conn, "select exists (select from pg_roles where rolname = $1)",
                           (role,)):
            raise CraftmartError(f"role {role!r} does not exist: create it first "
                                 f"(create role ... login)")
        owner = fetch_value(
            conn,
            "select pg_get_userbyid(nspowner)::text from pg_namespace where nspname = $1",
            (MARTS_SCHEMA,),
        )
        if owner is None:
            raise CraftmartError("no marts in this database yet: run `craftmart-batch run` "
                                 "first")
        database = fetch_value(conn, "select current_database()::text")
        grantee, schema = quote_ident(role), quote_ident(MARTS_SCHEMA)
        statements = [
            f"grant connect on database {quote_ident(database)} to {grantee}",
            f"grant usage on schema {schema} to {grantee}",
            f"grant select on all tables in schema {schema} to {grantee}",
            f"alter default privileges for role {quote_ident(owner)} in schema {schema}"
            f" grant select on tables to {grantee}",
        ]
        try:
            for statement in statements:
                execute(conn, statement)
            tables = fetch_value(
                conn,
                "select coalesce(string_agg(c.relname::text, ',' order by c.relname), '')"
                " from pg_class as c inner join pg_namespace as n on n.oid = c.relnamespace"
                " where n.nspname = $1 and c.relkind in ('r', 'p', 'v', 'm')",
                (MARTS_SCHEMA,),
            )
            conn.commit()
        except Exception as exc:  # a driver error: one redacted line
            raise database_error(exc, f"granting read access to {role!r}") from None
    logger.info("granted %s read access to schema %s", role, MARTS_SCHEMA)
    return ReaderGrant(role, [t for t in str(tables).split(",") if t], statements)
