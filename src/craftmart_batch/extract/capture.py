"""Logical change capture: which source rows changed, read from the source server's WAL.

A source with ``changes = "logical"`` has a replication slot on its server (plugin
``test_decoding``, built into PostgreSQL). A run:

1. ``start``: checks the source is ready, finds its slot, notes the server's current
   WAL position, and peeks (never consumes) the slot's changes up to that position.
   Each changed row of the order table names its key; each changed row of a joined
   table names the orders that reference it (asked of the source, by the join's
   columns). A slot that is missing, invalidated, ahead of what the warehouse holds,
   or on another server makes the run compare that source's hashes once instead and
   start capture afresh from the position noted.
2. ``store``: in the warehouse transaction, records the position each source was read
   up to (``craftmart.capture_state``).
3. ``advance``: after the commit, moves each slot to that position, so the server can
   recycle the WAL. A crash before this only means the next run reads those changes
   again, and applying a change twice is harmless: nothing is lost or duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from .._database import (
    Database,
    close_quietly,
    connect,
    first_line,
    quote_ident,
    quote_literal,
    redact,
)
from .._sql import Connection, execute, fetch_frame, fetch_value
from ..config import LOGICAL, ORDER_TABLE_ALIAS, Source
from ..errors import CraftmartError
from ..transform import decoded
from ..transform.changes import SourceDelta
from ..transform.validate import ORDER_KEY
from . import read, servers
from .queries import source_query

logger = logging.getLogger(__name__)

PLUGIN = "test_decoding"
_OPTIONS = "'include-xids', '0', 'skip-empty-xacts', '1'"

#: Why a logical source's hashes are compared this run (``SourceCapture.reason``).
CAPTURE_STARTED = "capture_started"  # the first run since the slot was created
SLOT_MISSING = "slot_missing"  # dropped since the last run: created again
SLOT_LOST = "slot_lost"  # invalidated (WAL it needed was removed): created again
SLOT_MOVED = "slot_moved"  # changes were consumed by someone else
SERVER_CHANGED = "server_changed"  # the dsn now names another server or database
UNDECODED = "undecoded_changes"  # a TRUNCATE, or a row without its key in the WAL
NOT_READY = "not_ready"  # fallback_to_hash: read by hash comparison, with a warning


@dataclass(frozen=True)
class SourceCapture:
    """One logical source in this run."""

    source: Source
    #: None: its changes are the decoded ones; else why its hashes are compared instead
    reason: str | None
    #: the WAL position read up to, stored and advanced to after the commit (None:
    #: capture is not working for this source this run)
    lsn: str | None
    server: str


@dataclass
class Capture:
    """The logical sources of a run, and the changes decoded for them."""

    sources: list[SourceCapture] = field(default_factory=list)
    delta: SourceDelta | None = None
    warnings: list[str] = field(default_factory=list)

    def compared_by_hash(self) -> set[str]:
        """The logical sources whose hashes are compared this run."""
        return {c.source.name for c in self.sources if c.reason is not None}

    def how(self) -> dict[str, str]:
        """How each logical source's changes were found, for the run report."""
        return {c.source.name: LOGICAL if c.reason is None else f"hash ({c.reason})"
                for c in self.sources}


# --------------------------------------------------------------------------- readiness


@dataclass(frozen=True)
class Problem:
    """What keeps a source from logical capture, and the SQL that fixes it (if any)."""

    what: str
    fix: str


def problems(conn: Connection, source: Source) -> list[Problem]:
    """Why logical capture cannot read ``source`` on the server ``conn`` is connected to."""
    found = []
    if fetch_value(conn, "select current_setting('wal_level')") != "logical":
        found.append(Problem("wal_level is not logical",
                             "alter system set wal_level = logical; -- then restart the server"))
    user = fetch_value(conn, "select current_user")
    if not fetch_value(conn, "select rolsuper or rolreplication from pg_roles"
                             " where rolname = current_user"):
        found.append(Problem(f"role {user} may not read replication slots",
                             f"alter role {quote_ident(user)} replication;"))
    for table, columns in logged_columns(source).items():
        qualified = f"{quote_ident(source.schema)}.{quote_ident(table)}"
        if not _identity_holds(conn, qualified, columns):
            found.append(Problem(
                f"updates and deletes of {source.schema}.{table} do not log"
                f" {', '.join(columns)}",
                f"alter table {qualified} replica identity full;"))
    return found


def logged_columns(source: Source) -> dict[str, list[str]]:
    """Each table of ``source`` and the columns its changes must name: the order key
    of the order table, the joined columns of a joined table."""
    columns: dict[str, list[str]] = {source.table: [source.key]}
    for join in source.joins:
        wanted = columns.setdefault(join.table, [])
        wanted += [right for _, right in join.on if right not in wanted]
    return columns


def _identity_holds(conn: Connection, qualified: str, columns: list[str]) -> bool:
    """The table's replica identity logs ``columns`` in every update and delete: FULL, or
    a key (the primary key, or the index named) that holds them all."""
    found = fetch_frame(conn, """
        select c.relreplident::text as identity, a.attname::text as column_name
        from pg_class as c
        left join pg_index as i on i.indrelid = c.oid
            and ((c.relreplident = 'd' and i.indisprimary)
                 or (c.relreplident = 'i' and i.indisreplident))
        left join pg_attribute as a on a.attrelid = c.oid and a.attnum = any(i.indkey)
        where c.oid = $1::regclass
    """, (qualified,))
    if found.is_empty():
        return False
    if found["identity"][0] == "f":
        return True
    return set(columns) <= set(found["column_name"].drop_nulls().to_list())


def setup(source_db: Database, source: Source, *, apply: bool) -> list[str]:
    """The SQL that makes ``source`` ready for logical capture on its database
    ``source_db``, its slot included; run there when ``apply`` (else only returned, for a
    DBA). wal_level needs a server restart: with ``apply`` it is refused in one line
    naming the fix."""
    try:
        conn = connect(source_db, autocommit=True)
    except CraftmartError as exc:
        raise CraftmartError(f"source {source.name!r}: {exc}") from None
    try:
        found = problems(conn, source)
        if apply and any(p.what.startswith("wal_level") for p in found):
            raise CraftmartError(
                f"source {source.name!r}: wal_level is not logical on {source_db.display()}:"
                " run `alter system set wal_level = logical` there and restart the server,"
                " then set up again")
        statements = [p.fix for p in found]
        if _slot(conn, source.slot) is None:
            statements.append(f"select lsn::text from pg_create_logical_replication_slot("
                              f"{quote_literal(source.slot)}, {quote_literal(PLUGIN)});")
        if apply:
            for statement in statements:
                # a SELECT's error comes with its result: read it (run() would not see it)
                run_sql = fetch_frame if statement.startswith("select") else execute
                run_sql(conn, statement.rstrip(";"))
        return statements
    except CraftmartError:
        raise
    except Exception as exc:
        raise servers.unreachable([source], source_db, exc) from None
    finally:
        close_quietly(conn)


# --------------------------------------------------------------------------- a run


def start(
    conn: Connection, db: Database, sources: Sequence[Source], *, read_changes: bool
) -> Capture:
    """Find where each logical source stands; with ``read_changes``, the keys of the rows
    changed since the last run (``Capture.delta``; the sources whose hashes must be
    compared instead are ``compared_by_hash``). ``conn`` is the run's warehouse
    connection (after migration), ``db`` the warehouse."""
    capture = Capture()
    logical = [s for s in sources if s.changes == LOGICAL]
    if not logical:
        return capture
    stored = {row["source_name"]: row for row in fetch_frame(
        conn, "select source_name, slot_name, server, lsn::text as lsn"
              " from craftmart.capture_state").iter_rows(named=True)}
    deltas = []
    for source_db, group in servers.by_database(logical, db):  # one connection a server
        try:
            remote = connect(source_db, autocommit=True)
        except CraftmartError as exc:
            raise CraftmartError(f"{servers.describe(group)}: {exc}") from None
        try:
            # the server and database the slots are on: one question per connection
            server, database = fetch_frame(remote, """
                select system_identifier::text || '/' || current_database() as server,
                    current_database()::text as database
                from pg_control_system()
            """).row(0)
            for source in group:
                one, delta = _start_one(remote, db, source_db, (server, database), source,
                                        stored.get(source.name), read_changes,
                                        capture.warnings)
                capture.sources.append(one)
                if delta is not None:
                    deltas.append(delta)
        except CraftmartError:
            raise
        except Exception as exc:
            raise servers.unreachable(group, source_db, exc) from None
        finally:
            close_quietly(remote)
    if read_changes:
        keys = (pl.concat([d.cast({"source_order_id": pl.Int64}) for d, _ in deltas]) if deltas
                else pl.DataFrame(schema={"source_name": pl.String, "source_order_id": pl.Int64}))
        keyless = tuple(sorted({name for _, names in deltas for name in names}))
        capture.delta = SourceDelta(
            changed=keys.filter(pl.col("source_order_id").is_not_null()).unique().sort(ORDER_KEY),
            keyless=keyless,
            hashes=pl.DataFrame(schema={**{k: keys.schema[k] for k in ORDER_KEY},
                                        "row_hash": pl.Int64}),
            rows={},
            uncounted=tuple(c.source.name for c in capture.sources if c.reason is None),
        )
    return capture


def _start_one(
    remote: Connection, warehouse: Database, source_db: Database, where: tuple[str, str],
    source: Source, stored: dict[str, str] | None, read_changes: bool, warnings: list[str],
) -> tuple[SourceCapture, tuple[pl.DataFrame, list[str]] | None]:
    label = f"source {source.name!r}"
    server, database = where
    issues = problems(remote, source)
    slot = _slot(remote, source.slot)
    if slot is None and stored is None:
        issues.append(Problem(f"replication slot {source.slot} does not exist", ""))
    if issues:
        what = "; ".join(p.what for p in issues)
        if source.fallback_to_hash:
            warnings.append(f"{label} is read by hash comparison: not ready for logical change"
                            f" capture ({what}); see `craftmart-batch sources setup"
                            f" {source.name}`")
            return SourceCapture(source, NOT_READY, None, server), None
        raise CraftmartError(
            f"{label} is not ready for logical change capture on {source_db.display()}:"
            f" {what}; `craftmart-batch sources setup {source.name}` fixes it, or prints"
            " the SQL for a DBA with --print")
    if slot is not None and (slot["plugin"] != PLUGIN
                             or slot["database"] != database):
        raise CraftmartError(
            f"{label}: replication slot {source.slot} on {source_db.display()} is not one"
            f" craftmart-batch can read (plugin {slot['plugin']}, database {slot['database']});"
            " name another with [sources.NAME] slot")
    reason: str | None = None
    if slot is not None and slot["lost"]:
        fetch_frame(remote, "select true as dropped from pg_drop_replication_slot($1)",
                    (source.slot,))
        slot, reason = None, SLOT_LOST
    if slot is None:
        _create_slot(remote, source)
        reason = reason or (SLOT_MISSING if stored is not None else CAPTURE_STARTED)
    elif stored is None:
        reason = CAPTURE_STARTED
    elif stored["server"] != server or stored["slot_name"] != source.slot:
        reason = SERVER_CHANGED
    elif _lsn_after(remote, slot["confirmed"], stored["lsn"]):
        reason = SLOT_MOVED
    # every change committed before this position is either decoded below or, for a
    # source compared by hash, seen by that comparison (which reads after it)
    upto = str(fetch_value(remote, "select pg_current_wal_lsn()::text"))
    if reason is not None or not read_changes:
        return SourceCapture(source, reason, upto, server), None
    lines, prefixes = _peek(remote, source, upto)
    keys, keyless, unknown = _changed_keys(warehouse, source, lines, prefixes)
    if unknown:
        warnings.append(f"{label}: {unknown} decoded change(s) name no row (a TRUNCATE?):"
                        " its hashes are compared this run")
        return SourceCapture(source, UNDECODED, upto, server), None
    return SourceCapture(source, None, upto, server), (keys, [source.name] if keyless else [])


def _slot(conn: Connection, name: str) -> dict[str, object] | None:
    found = fetch_frame(conn, """
        select plugin::text as plugin, database::text as database,
            confirmed_flush_lsn::text as confirmed,
            coalesce(wal_status = 'lost', false) as lost
        from pg_replication_slots
        where slot_name = $1
    """, (name,))
    return None if found.is_empty() else found.row(0, named=True)


def _create_slot(conn: Connection, source: Source) -> None:
    # fetched, not executed: a SELECT's error (no free slot...) comes with its result
    fetch_frame(conn, "select lsn::text from pg_create_logical_replication_slot($1, $2)",
                (source.slot, PLUGIN))


def _lsn_after(conn: Connection, a: object, b: str) -> bool:
    return bool(fetch_value(conn, "select $1::pg_lsn > $2::pg_lsn", (str(a), b)))


def _peek(conn: Connection, source: Source, upto: str) -> tuple[pl.Series, dict[str, str]]:
    """The slot's decoded lines of the source's tables, up to ``upto``, left in the slot;
    and each table's line prefix."""
    prefixes = {table: decoded.line_prefix(str(fetch_value(
        conn, "select quote_ident($1) || '.' || quote_ident($2)", (source.schema, table))))
        for table in logged_columns(source)}  # quoted as test_decoding quotes
    frame = fetch_frame(
        conn,
        f"""
        select data
        from pg_logical_slot_peek_changes($1, $2::pg_lsn, null, {_OPTIONS}) as c
        where exists (select from unnest($3::text[]) as p where starts_with(c.data, p))
        """,
        (source.slot, upto, list(prefixes.values())),
    )
    lines = frame["data"] if not frame.is_empty() else pl.Series("data", [], pl.String)
    return lines, prefixes


def _changed_keys(
    warehouse: Database, source: Source, lines: pl.Series, prefixes: dict[str, str]
) -> tuple[pl.DataFrame, bool, int]:
    """The order keys the decoded lines reach (``source_name, source_order_id``),
    whether a row without a key changed, and how many lines named no row."""
    keys: list[pl.DataFrame] = []
    keyless = False
    unknown = 0
    for table, columns in logged_columns(source).items():
        found, missing = decoded.values(lines, prefixes[table], columns)
        unknown += missing
        if found.is_empty():
            continue
        if table == source.table:
            order_keys = found[source.key]
            keyless = keyless or order_keys.has_nulls()
            keys.append(pl.DataFrame({"source_order_id": order_keys.drop_nulls()
                                      .cast(pl.Int64, strict=True)}))
        for join in source.joins:
            if join.table == table:
                keys.append(_orders_joined(warehouse, source, join.on, found))
    frame = (pl.concat(keys) if keys
             else pl.DataFrame(schema={"source_order_id": pl.Int64}))
    return (frame.select(pl.lit(source.name).alias("source_name"), "source_order_id").unique(),
            keyless, unknown)


def _orders_joined(
    warehouse: Database, source: Source, on: tuple[tuple[str, str], ...], values: pl.DataFrame,
) -> pl.DataFrame:
    """The order keys whose join ``on`` matches any row of ``values`` (the joined
    table's columns), asked of the source: orders of a changed product, customer...
    Matched on the order side of the join, so a deleted joined row still finds them."""
    arrays = values.select(decoded.sql_text_array(pl.col(right)).alias(right)
                           for _, right in on).row(0)
    left = ", ".join(f"{_ref(column)}::text" for column, _ in on)
    where = (f"where ({left}) in (select * from unnest({', '.join(arrays)}))")
    query = (f"select canonical.source_order_id from (\n{source_query(source, where)}\n)"
             " as canonical")
    return read.per_source(warehouse, [source], lambda _: query,
                           {"source_order_id": pl.Int64()})


def _ref(left: str) -> str:
    alias, _, column = left.partition(".")
    return f"{quote_ident(alias or ORDER_TABLE_ALIAS)}.{quote_ident(column)}"


def store(conn: Connection, capture: Capture) -> None:
    """Record, in the warehouse transaction, the position each logical source was read
    up to; forget the sources no longer read by capture."""
    execute(conn, "delete from craftmart.capture_state")
    for one in capture.sources:
        if one.lsn is not None:
            execute(conn, "insert into craftmart.capture_state"
                          " (source_name, slot_name, server, lsn) values ($1, $2, $3, $4::pg_lsn)",
                    (one.source.name, one.source.slot, one.server, one.lsn))


def advance(db: Database, capture: Capture) -> list[str]:
    """After the commit: move each slot to the position stored (never back). A failure
    is a warning: the next run reads those changes again, which is harmless."""
    warnings = []
    positions = {one.source.name: one for one in capture.sources if one.lsn is not None}
    for source_db, group in servers.by_database(
            (one.source for one in positions.values()), db):
        try:
            remote = connect(source_db, autocommit=True)
        except Exception as exc:
            warnings.append(f"{servers.describe(group)}: replication slots not advanced"
                            f" ({first_line(redact(str(exc)))}): the next run reads those"
                            " changes again")
            continue
        try:
            for source in group:
                lsn = positions[source.name].lsn
                try:
                    behind = fetch_value(remote, """
                        select confirmed_flush_lsn < $2::pg_lsn from pg_replication_slots
                        where slot_name = $1
                    """, (source.slot, lsn))
                    if behind:  # never back (a slot ahead is dealt with by the next run)
                        fetch_frame(remote, "select end_lsn::text from"
                                            " pg_replication_slot_advance($1, $2::pg_lsn)",
                                    (source.slot, lsn))
                except Exception as exc:
                    warnings.append(f"source {source.name!r}: replication slot {source.slot}"
                                    f" not advanced ({first_line(redact(str(exc)))}): the"
                                    " next run reads those changes again")
        finally:
            close_quietly(remote)
    return warnings
