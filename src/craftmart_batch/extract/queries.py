"""The source queries: each registered source's tables -> canonical order rows, in SQL."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from .._database import Database, close_quietly, connect, quote_ident, quote_literal
from .._sql import Connection, fetch_value
from ..config import CANONICAL_FIELDS, ORDER_TABLE_ALIAS, Source
from ..errors import CraftmartError
from ..transform.partition import KeyRanges
from ..transform.validate import FIRST_DATE, LAST_DATE, OUT_OF_RANGE
from . import servers

logger = logging.getLogger(__name__)

#: The canonical frame's schema: what every source is turned into (SPEC §1).
CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    "source_name": pl.String(),
    "source_rank": pl.Int32(),
    "source_order_id": pl.Int64(),
    **{
        name: {"date": pl.Date(), "text": pl.String(), "integer": pl.Int64()}[kind]
        for name, kind in CANONICAL_FIELDS.items()
    },
    # comma-separated names of required joins that found no row; null when all did
    "missing_reference": pl.String(),
    # JSON object of the date fields out of range (read as null): field -> source text
    OUT_OF_RANGE: pl.String(),
}

_ACCEPTED_TYPES = {
    "date": {"date", "timestamp without time zone", "timestamp with time zone"},
    "text": {"character varying", "text", "character", "name", "citext"},
    "integer": {"smallint", "integer", "bigint"},
}
_SQL_CAST = {"date": "date", "text": "text", "integer": "bigint"}
_FIRST_DATE = f"date {quote_literal(FIRST_DATE.isoformat())}"
_LAST_DATE = f"date {quote_literal(LAST_DATE.isoformat())}"


def check_sources(conn: Connection, db: Database, sources: Sequence[Source]) -> None:
    """Refuse, before anything is written, a source whose server cannot be reached or
    logged into, or whose schema, table or column is missing or has a type the canonical
    row cannot take. One line names the source and the object. ``conn`` is a connection
    to the warehouse ``db``, where the sources without a server of their own are."""
    for source_db, group in servers.by_database(sources, db):
        if source_db is db:
            _check_tables(conn, group)
            continue
        try:
            remote = connect(source_db, autocommit=True)
        except CraftmartError as exc:
            raise CraftmartError(f"{servers.describe(group)}: {exc}") from None
        try:
            version = int(fetch_value(remote, "select current_setting('server_version_num')"))
            if version < MIN_SERVER_VERSION:
                raise CraftmartError(
                    f"{servers.describe(group)}: {source_db.display()} runs PostgreSQL"
                    f" {version // 10000}; sources need {MIN_SERVER_VERSION // 10000}"
                    " or later (row hashes)")
            _check_tables(remote, group)
        except CraftmartError:
            raise
        except Exception as exc:  # the driver's own errors, e.g. a server gone mid-check
            raise servers.unreachable(group, source_db, exc) from None
        finally:
            close_quietly(remote)


#: hash_record_extended, which hashes each source row, came with PostgreSQL 14.
MIN_SERVER_VERSION = 140000


def _check_tables(conn: Connection, sources: Sequence[Source]) -> None:
    cur = conn.cursor()
    schemas = sorted({s.schema for s in sources})
    cur.execute(
        "select nspname from pg_namespace where nspname = any($1)", parameters=(schemas,)
    )
    present_schemas = {row[0] for row in cur.fetchall()}
    cur.execute(
        """
        select table_schema, table_name, column_name, data_type
        from information_schema.columns
        where table_schema = any($1)
        """,
        parameters=(schemas,),
    )
    columns: dict[tuple[str, str], dict[str, str]] = {}
    for schema, table, column, data_type in cur.fetchall():
        columns.setdefault((schema, table), {})[column] = data_type
    cur.close()

    for source in sources:
        if source.schema not in present_schemas:
            raise CraftmartError(f"source {source.name!r}: schema {source.schema} does not exist")
        aliases = {ORDER_TABLE_ALIAS: source.table} | {j.name: j.table for j in source.joins}
        for table in aliases.values():
            if (source.schema, table) not in columns:
                raise CraftmartError(
                    f"source {source.name!r}: table {source.schema}.{table} does not exist"
                )
        needed: list[tuple[str, str, str | None, str]] = [
            (ORDER_TABLE_ALIAS, source.key, "integer", "order key")
        ]
        for join in source.joins:
            for left, right in join.on:
                left_alias, _, left_col = left.partition(".")
                needed += [(left_alias, left_col, None, f"join {join.name}"),
                           (join.name, right, None, f"join {join.name}")]
        needed += [(alias, column, CANONICAL_FIELDS[canonical], canonical)
                   for canonical, alias, column in source.columns]
        for alias, column, kind, what in needed:
            table = aliases[alias]
            _require_column(source, table, columns[(source.schema, table)], column, kind, what)


def _require_column(
    source: Source,
    table: str,
    table_columns: dict[str, str],
    column: str,
    kind: str | None,
    what: str,
) -> None:
    found = table_columns.get(column)
    qualified = f"{source.schema}.{table}.{column}"
    label = f"source {source.name!r}"
    if found is None:
        raise CraftmartError(f"{label}: column {qualified} ({what}) does not exist")
    if kind is not None and found not in _ACCEPTED_TYPES[kind]:
        raise CraftmartError(
            f"{label}: column {qualified} ({what}) has type {found}, "
            f"expected {kind} ({', '.join(sorted(_ACCEPTED_TYPES[kind]))})"
        )


def source_query(source: Source, where: str = "") -> str:
    """The one SELECT that turns a source's tables into canonical rows (those ``where``
    selects, a condition on the order table's columns, when given).

    Joins are left joins, so an order whose joined row is missing is still read (and
    then quarantined): rows read always equals rows in the order table.

    A date outside the range the warehouse holds (SPEC §3 rule 7: infinite ones, BC
    ones, and years no reader can decode such as 5874897) is read as null, and its text
    as the source has it goes into ``out_of_range`` (a JSON object, field -> text; null
    when every date is in range). So no value a source can hold fails the read.
    """
    schema = quote_ident(source.schema)

    def ref(alias: str, column: str) -> str:
        return f"{quote_ident(alias)}.{quote_ident(column)}"

    select = [
        f"{quote_literal(source.name)}::text as source_name",
        f"{int(source.rank)}::integer as source_rank",
        f"{ref(ORDER_TABLE_ALIAS, source.key)}::bigint as source_order_id",
    ]
    in_range: list[tuple[str, str, str]] = []  # (field, its condition, its source text)
    for canonical, alias, column in source.columns:
        value = f"{ref(alias, column)}::{_SQL_CAST[CANONICAL_FIELDS[canonical]]}"
        if CANONICAL_FIELDS[canonical] == "date":
            condition = f"coalesce({value} between {_FIRST_DATE} and {_LAST_DATE}, true)"
            in_range.append((canonical, condition, f"{ref(alias, column)}::text"))
            value = f"case when {condition} then {value} end"
        select.append(f"{value} as {quote_ident(canonical)}")
    missing = [
        f"case when {ref(join.name, join.on[0][1])} is null then {quote_literal(join.name)} end"
        for join in source.joins
    ]
    select.append(
        f"nullif(concat_ws(',', {', '.join(missing)}), '')::text as missing_reference"
        if missing
        else "null::text as missing_reference"
    )
    if in_range:
        # the object is built only for the rare row with a date out of range
        all_in_range = " and ".join(condition for _, condition, _ in in_range)
        pairs = ", ".join(f"{quote_literal(name)}, case when not {condition} then {text} end"
                          for name, condition, text in in_range)
        select.append(f"case when not ({all_in_range}) then"
                      f" json_strip_nulls(json_build_object({pairs}))::text end as {OUT_OF_RANGE}")
    else:
        select.append(f"null::text as {OUT_OF_RANGE}")
    lines = [
        "select",
        "    " + ",\n    ".join(select),
        f"from {schema}.{quote_ident(source.table)} as {quote_ident(ORDER_TABLE_ALIAS)}",
    ]
    for join in source.joins:
        conditions = " and ".join(
            f"{ref(*left.split('.', 1))} = {ref(join.name, right)}" for left, right in join.on
        )
        lines.append(
            f"left join {schema}.{quote_ident(join.table)} as {quote_ident(join.name)}"
            f" on {conditions}"
        )
    if where:
        lines.append(where)
    return "\n".join(lines)


def one_row_per_key_query(source: Source) -> str:
    """Whether the source query can give no key twice and no row without a key, by the
    catalog: the order key is NOT NULL with a unique index of its own, and every join
    matches at most one row (a unique index of the joined table on columns its
    condition fixes). A table with inheritance children (other than a partitioned
    table's partitions) never qualifies: its indexes do not cover its children's rows.
    One row: ``source_name``, ``one_row_per_key``."""
    schema = quote_ident(source.schema)

    def unique_on(table: str, columns: Sequence[str]) -> str:
        regclass = f"{quote_literal(f'{schema}.{quote_ident(table)}')}::regclass"
        names = ", ".join(quote_literal(c) for c in columns)
        return f"""not exists (
            select from pg_inherits as h
            inner join pg_class as c on c.oid = h.inhparent
            where h.inhparent = {regclass} and c.relkind <> 'p'
        ) and exists (
            select from pg_index as i
            where i.indrelid = {regclass} and i.indisunique and i.indisvalid
                and i.indpred is null and i.indexprs is null
                and not exists (
                    select from unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) as k (attnum)
                    where k.attnum not in (
                        select a.attnum from pg_attribute as a
                        where a.attrelid = {regclass} and a.attname in ({names}))
                )
        )"""

    order_table = f"{quote_literal(f'{schema}.{quote_ident(source.table)}')}::regclass"
    key_not_null = (f"(select a.attnotnull from pg_attribute as a where a.attrelid ="
                    f" {order_table} and a.attname = {quote_literal(source.key)})")
    conditions = [key_not_null, unique_on(source.table, [source.key])]
    conditions += [unique_on(join.table, [right for _, right in join.on])
                   for join in source.joins]
    return (f"select {quote_literal(source.name)}::text as source_name,"
            f" coalesce({' and '.join(conditions)}, false) as one_row_per_key")


ONE_ROW_PER_KEY_SCHEMA: dict[str, pl.DataType] = {
    "source_name": pl.String(), "one_row_per_key": pl.Boolean()}


#: The hash of a canonical row, computed by the server in the source query, over the
#: whole row (source name and rank, key, every mapped field, missing references) with
#: each type's own hash function (PostgreSQL 14+; twice as fast as hashing its text).
ROW_HASH = "hash_record_extended(canonical, 0)"


def pull_query(
    source: Source, *, fields: bool = True, keys: pl.Series | None = None,
    partition: tuple[KeyRanges, int] | None = None,
) -> str:
    """The source query with each row's hash; ``fields=False`` keeps only the key and the
    hash. With ``keys``, only the rows with those order keys (a null among them: and the
    rows without a key); with ``partition`` (ranges, index), only the rows of that
    partition (an index range on the key column, or on the source's scan column)."""
    columns = "canonical.*" if fields else "canonical.source_name, canonical.source_order_id"
    where = ""
    if partition is not None:
        ranges, index = partition
        key = f"{quote_ident(ORDER_TABLE_ALIAS)}.{quote_ident(source.key)}"
        scan = ranges.scans.get(source.name)
        column = f"{quote_ident(ORDER_TABLE_ALIAS)}.{quote_ident(scan.column)}" if scan else None
        where = f"where {ranges.pull_sql(source.name, key, index, column)}"
    if keys is not None:
        # on the key column itself (not the bigint cast of the select), so that a few
        # keys are index lookups
        key = f"{quote_ident(ORDER_TABLE_ALIAS)}.{quote_ident(source.key)}"
        array = "{" + keys.drop_nulls().cast(pl.String).str.join(",").item() + "}"
        where = f"where {key} = any('{array}'::bigint[])"
        if keys.has_nulls():
            where += f" or {key} is null"
    return (f"select {columns}, {ROW_HASH} as row_hash\n"
            f"from (\n{source_query(source, where)}\n) as canonical")
