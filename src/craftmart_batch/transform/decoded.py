"""Column values named by logically decoded changes (pure Polars).

A replication slot with PostgreSQL's ``test_decoding`` plugin gives one text line per
changed row::

    table source1.orders: INSERT: order_id[bigint]:5 customer_name[text]:'Ann'
    table source1.orders: UPDATE: old-key: order_id[bigint]:5 new-tuple: order_id[bigint]:6 ...
    table source1.orders: DELETE: order_id[bigint]:6
    table source1.orders: TRUNCATE: (no-flags)

An update's ``old-key`` part is there when the replica identity's columns changed (or
always, under ``REPLICA IDENTITY FULL``). ``values`` reads the columns a run needs (an
order key, a join's columns) from each tuple of each line: the old one and the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

logger = logging.getLogger(__name__)

#: One ``name[type]:value`` of a decoded line: a name (quoted when it needs to be), a
#: type (``integer[]`` holds brackets), a value (quoted with '' inside, or one word).
_IDENT = r'"(?:[^"]|"")*"|[^\s\[\]"]+'
_TYPE = r"\[(?:[^\[\]]|\[\])*\]"
_VALUE = r"'(?:[^']|'')*'|\S+"
_NEW_TUPLE = "new-tuple:"  # an update's new tuple follows (after its old key)
TOKEN = rf"{_NEW_TUPLE}|(?:{_IDENT}){_TYPE}:(?:{_VALUE})"
_PARTS = rf"^(?P<name>{_IDENT}){_TYPE}:(?P<value>{_VALUE})$"

#: What test_decoding prints for a TOASTed value an update left as it was.
UNCHANGED_TOAST = "unchanged-toast-datum"


def line_prefix(qualified_table: str) -> str:
    """The start of every line of a table (``schema.table`` as ``quote_ident`` gives it)."""
    return f"table {qualified_table}: "


def values(lines: pl.Series, prefix: str, columns: Sequence[str]) -> tuple[pl.DataFrame, int]:
    """The values (as text, null for SQL NULL) of ``columns`` in every tuple of the lines
    that start with ``prefix``, one row per tuple (an update gives two when it logs its
    old key), and how many of those lines do not name them all (a TRUNCATE, a delete
    without a replica identity that holds the columns): their rows are unknown."""
    frame = pl.DataFrame({"data": lines}, schema={"data": pl.String})
    mine = frame.filter(pl.col("data").str.starts_with(prefix)).with_row_index("line")
    schema = {name: pl.String() for name in columns}
    if mine.is_empty():
        return pl.DataFrame(schema=schema), 0
    tokens = (
        mine.select("line", pl.col("data").str.slice(len(prefix)).str.extract_all(TOKEN)
                    .alias("token"))
        .explode("token")
        .drop_nulls("token")
        .with_columns(
            # 0: the only tuple, or an update's old key; 1: an update's new tuple
            (pl.col("token") == _NEW_TUPLE).cast(pl.Int32).cum_sum().over("line").alias("tuple"),
            pl.col("token").str.extract_groups(_PARTS).alias("parts"),
        )
        .unnest("parts")
        .with_columns(_unquoted_name(pl.col("name")).alias("name"))
        .filter(pl.col("name").is_in(list(columns)))
        .with_columns(
            _unquoted_value(pl.col("value")).alias("value"),
            (pl.col("value") == UNCHANGED_TOAST).alias("unknown"),
        )
    )
    tuples = tokens.group_by("line", "tuple", maintain_order=True).agg(
        *(pl.col("value").filter(pl.col("name") == name).first().alias(name)
          for name in columns),
        (pl.col("name").n_unique() == len(columns)).alias("complete"),
        pl.col("unknown").any().alias("unknown"),
    )
    known = tuples.filter(pl.col("complete") & ~pl.col("unknown"))
    unknown_lines = mine.height - known["line"].n_unique()
    return known.select(columns).unique(maintain_order=True), unknown_lines


def _unquoted_name(name: pl.Expr) -> pl.Expr:
    quoted = name.str.starts_with('"')
    return (pl.when(quoted)
            .then(name.str.slice(1, name.str.len_chars() - 2).str.replace_all('""', '"'))
            .otherwise(name))


def _unquoted_value(value: pl.Expr) -> pl.Expr:
    quoted = value.str.starts_with("'")
    return (pl.when(quoted)
            .then(value.str.slice(1, value.str.len_chars() - 2).str.replace_all("''", "'"))
            .when(value == "null").then(None)
            .otherwise(value))


def sql_text_array(column: pl.Expr) -> pl.Expr:
    """A column of text values as one SQL array literal, ``array[...]::text[]``."""
    quoted = pl.when(column.is_null()).then(pl.lit("null")).otherwise(
        pl.lit("'") + column.str.replace_all("'", "''") + pl.lit("'"))
    return pl.lit("array[") + quoted.str.join(",") + pl.lit("]::text[]")
