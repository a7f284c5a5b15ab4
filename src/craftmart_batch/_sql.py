"""Small helpers over an ADBC connection: scripts, frames in and out, one-line errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from ._database import first_line, quote_ident, redact
from ._signals import checkpoint
from .errors import CraftmartError

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)


class Cursor(Protocol):
    """What craftmart-batch uses of a DB-API cursor of the ADBC PostgreSQL driver."""

    @property
    def description(self) -> list[tuple[Any, ...]] | None: ...
    def execute(self, operation: str, parameters: Any = None) -> None: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def fetch_arrow_table(self) -> pa.Table: ...
    def adbc_ingest(self, table_name: str, data: Any, mode: str = ..., *,
                    db_schema_name: str | None = ..., temporary: bool = ...) -> int: ...
    def close(self) -> None: ...


class Connection(Protocol):
    """What craftmart-batch uses of an ADBC connection: cursors and the transaction."""

    def cursor(self) -> Cursor: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


def split_statements(script: str) -> list[str]:
    """Split a DDL script into statements (ADBC runs one statement per execute).

    Statements end with ``;`` at the end of a line; the scripts have no function bodies.
    """
    statements, current = [], []
    for line in script.splitlines():
        current.append(line)
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip()
            if _has_code(statement):
                statements.append(statement)
            current = []
    tail = "\n".join(current).strip()
    if _has_code(tail):
        statements.append(tail)
    return statements


def _has_code(statement: str) -> bool:
    return any(
        line.strip() and not line.strip().startswith("--") for line in statement.splitlines()
    )


def execute(conn: Connection, sql: str, parameters: Sequence[Any] | None = None) -> None:
    """Run one statement, its result (if any) read and dropped: the driver streams a
    query's rows, and an error raised while the server produces them (a function that
    fails, a timeout) arrives with them, not with ``execute``."""
    cur = conn.cursor()
    try:
        cur.execute(sql, parameters=parameters)
        if cur.description is not None:
            cur.fetchall()
    finally:
        cur.close()
    checkpoint()


def execute_script(conn: Connection, script: str) -> None:
    for statement in split_statements(script):
        execute(conn, statement)


def fetch_frame(
    conn: Connection, sql: str, parameters: Sequence[Any] | None = None
) -> pl.DataFrame:
    """Run a query on the connection (inside its transaction) and return a Polars frame."""
    cur = conn.cursor()
    try:
        cur.execute(sql, parameters=parameters)
        frame = pl.from_arrow(cur.fetch_arrow_table())
    finally:
        cur.close()
    checkpoint()
    assert isinstance(frame, pl.DataFrame)
    return frame


def fetch_value(conn: Connection, sql: str, parameters: Sequence[Any] | None = None) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql, parameters=parameters)
        row = cur.fetchone()
    finally:
        cur.close()
    checkpoint()
    return None if row is None else row[0]


#: Rows converted to Arrow at a time when a frame is written (COPY streams them).
ARROW_SLICE_ROWS = 250_000


def arrow_stream(frame: pl.DataFrame) -> pa.RecordBatchReader:
    """A frame as a stream of Arrow batches, converted slice by slice as they are
    written: a large frame is never held as Arrow all at once beside its Polars self."""
    import pyarrow as pa

    schema = frame.head(0).to_arrow().schema
    batches = (
        batch
        for piece in frame.iter_slices(ARROW_SLICE_ROWS)
        for batch in piece.to_arrow().cast(schema).to_batches()
    )
    return pa.RecordBatchReader.from_batches(schema, batches)


def _ingest(conn: Connection, name: str, frame: pl.DataFrame, mode: str,
            **where: Any) -> None:
    """Write a frame into a table with binary COPY, streamed slice by slice."""
    cur = conn.cursor()
    try:
        cur.adbc_ingest(name, arrow_stream(frame), mode=mode, **where)
    finally:
        cur.close()
    checkpoint()


def append(conn: Connection, schema: str, table: str, frame: pl.DataFrame) -> None:
    """Append a frame to an existing table with binary COPY, streamed slice by slice."""
    _ingest(conn, table, frame, "append", db_schema_name=schema)


def stage(
    conn: Connection, name: str, frame: pl.DataFrame, *, analyze: Sequence[str] | None = None
) -> str:
    """Bulk-load a frame into a new temporary table (binary COPY); return its quoted name.

    The table is analysed, on the ``analyze`` columns only when given (the ones it is
    joined on: statistics of wide tables cost more than they help).
    """
    execute(conn, f"drop table if exists pg_temp.{quote_ident(name)}")
    _ingest(conn, name, frame, "create", temporary=True)
    qualified = f"pg_temp.{quote_ident(name)}"
    # Temporary tables have no statistics until analysed; the planner needs them to
    # pick index lookups for a small stage and hash joins for a large one.
    columns = f" ({', '.join(quote_ident(c) for c in analyze)})" if analyze else ""
    execute(conn, f"analyze {qualified}{columns}")
    return qualified


#: What the driver says when the transaction was aborted by an error it never passed on.
_ABORTED_UNSEEN = "the connection is in an error state"


def database_error(
    exc: BaseException, doing: str, *, statement_timeout: str = ""
) -> CraftmartError:
    """A driver error as one redacted line that says what was being done.

    A statement timeout that fires just as a statement finishes is raised by the server
    after it has reported the statement done (seen on PostgreSQL 15 under load): the error
    arrives while the client is idle, libpq takes it for a notice, the driver drops
    notices, and the next statement only finds the transaction aborted. Every error a
    statement returns is read (``execute``), so with a ``statement_timeout`` set that is
    what the unseen error was; without one, the server log says."""
    text = redact(str(exc))
    if _ABORTED_UNSEEN in text:
        if statement_timeout:
            return CraftmartError(
                f"{doing} failed: statement timeout ({statement_timeout}) reached as a"
                " statement finished; the server aborted the transaction")
        return CraftmartError(
            f"{doing} failed: the server aborted the transaction between two statements"
            " without telling the client why (its log says)")
    # libpq's text starts with the statement, which may span lines; the server's own
    # "ERROR:  ..." line is what says what went wrong.
    server = re.search(r"ERROR:\s+(\S.*)", text)
    message = server.group(1).strip() if server else first_line(text)
    return CraftmartError(f"{doing} failed: {message}")


def append_temporary(conn: Connection, name: str, frame: pl.DataFrame) -> str:
    """Append a frame to a temporary table, created by the first append (binary COPY,
    streamed slice by slice); return its quoted name. Not analysed: the caller does,
    once the appends are done."""
    _ingest(conn, name, frame, "create_append", temporary=True)
    return f"pg_temp.{quote_ident(name)}"


@dataclass(frozen=True)
class DroppedIndexes:
    """A table's indexes, dropped for a bulk write (``drop_indexes``)."""

    statements: tuple[str, ...]  # what builds them again, as declared

    def build(self, conn: Connection) -> None:
        """Build the indexes again: one sorted build each, instead of an entry per row
        written (a unique one checks its uniqueness now)."""
        for statement in self.statements:
            execute(conn, statement)


def drop_indexes(
    conn: Connection, schema: str, table: str, *, unique: bool = True
) -> DroppedIndexes:
    """Drop a table's indexes for a bulk write; with ``unique``, its primary key and
    unique constraints too, else only the indexes that enforce nothing. Inside the run's
    transaction: a failure before ``build`` rolls the drop back with everything else."""
    found = fetch_frame(conn, """
        select c.relname::text as name, pg_get_indexdef(i.indexrelid) as index_definition,
            k.conname::text as constraint_name, pg_get_constraintdef(k.oid) as definition
        from pg_index as i
        inner join pg_class as c on c.oid = i.indexrelid
        left join pg_constraint as k on k.conindid = i.indexrelid and k.conrelid = i.indrelid
            and k.contype in ('p', 'u')
        where i.indrelid = ($1 || '.' || $2)::regclass and (not i.indisunique or $3)
        order by k.contype nulls last, c.relname
    """, (quote_ident(schema), quote_ident(table), unique))
    qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
    statements = []
    for name, index, constraint, definition in found.iter_rows():
        if constraint is None:
            execute(conn, f"drop index {quote_ident(schema)}.{quote_ident(name)}")
            statements.append(index)
        else:
            execute(conn, f"alter table {qualified} drop constraint {quote_ident(constraint)}")
            statements.append(f"alter table {qualified} add constraint"
                              f" {quote_ident(constraint)} {definition}")
    return DroppedIndexes(tuple(statements))

