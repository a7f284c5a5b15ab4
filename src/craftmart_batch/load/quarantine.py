"""ADBC: craftmart.quarantine made to hold exactly the current invalid source rows."""

from __future__ import annotations

import logging

import polars as pl

from .._sql import Connection, execute, fetch_frame, stage
from ..transform.validate import ORDER_KEY
from .dwh import RUN_TS

logger = logging.getLogger(__name__)


def staged_rows(quarantine: pl.DataFrame) -> pl.DataFrame:
    """Quarantine rows (``validate``'s) as they are staged in the warehouse."""
    return quarantine.with_columns(pl.col("reasons", "out_of_range").list.join(","))


def write_quarantine(
    conn: Connection, quarantine: pl.DataFrame, scope: pl.DataFrame | None = None
) -> dict[str, int]:
    """Make ``craftmart.quarantine`` hold exactly the current invalid rows.

    Rows still invalid in the same way are left alone (their ``first_seen`` stays);
    rows fixed or gone leave; new ones arrive. Returns how many left and arrived.
    With ``scope`` (``source_name, source_order_id``; a null key standing for a source's
    rows without a key) only rows of those orders are considered: ``quarantine`` holds
    the invalid rows among them, and every other quarantine row stays as it is.
    """
    staged = stage(conn, "stage_quarantine", staged_rows(quarantine))
    return write_staged(conn, staged, scope)


def write_staged(
    conn: Connection, table: str, scope: pl.DataFrame | None = None
) -> dict[str, int]:
    """``write_quarantine`` of the rows staged in the temporary ``table`` (``staged_rows``,
    e.g. appended to it partition by partition)."""
    # Identical rows (one order's row repeated verbatim in its source) are each a row of
    # the quarantine: a row's ``copy`` numbers it among its identical ones, here and in
    # the table, so that rows are matched as a multiset and not as a set.
    execute(conn, "drop table if exists pg_temp.quarantine_staged")
    execute(conn, f"""
        create temporary table quarantine_staged as
        select s.*, row_number() over (partition by s.source_name, s.raw, s.reasons) - 1 as copy
        from {table} as s
    """)
    execute(conn, "analyze pg_temp.quarantine_staged")
    staged = "pg_temp.quarantine_staged"
    if scope is not None:
        staged_scope = stage(conn, "stage_quarantine_scope", scope.select(ORDER_KEY))
        in_scope = f"""
            where (q.source_name, q.source_order_id) in (
                select source_name, source_order_id from {staged_scope}
            )
            or (q.source_order_id is null and q.source_name in (
                select source_name from {staged_scope} where source_order_id is null
            ))"""
    else:
        in_scope = ""
    execute(conn, "drop table if exists pg_temp.quarantine_in_scope")
    execute(conn, f"""
        create temporary table quarantine_in_scope as
        select
            q.quarantine_id, q.source_name, q.raw, q.reasons,
            row_number() over (
                partition by q.source_name, q.raw, q.reasons order by q.quarantine_id
            ) - 1 as copy
        from craftmart.quarantine as q
        {in_scope}
    """)
    same_row = """
        staged.source_name = q.source_name
        and staged.raw::jsonb = q.raw
        and string_to_array(staged.reasons, ',') = q.reasons
        and staged.copy = q.copy
    """
    left = fetch_frame(
        conn,
        f"""
        with left_quarantine as (
            delete from craftmart.quarantine as t
            using pg_temp.quarantine_in_scope as q
            where t.quarantine_id = q.quarantine_id
                and not exists (select from {staged} as staged where {same_row})
            returning 1
        )
        select count(*) as n from left_quarantine
        """,
    ).item()
    arrived = fetch_frame(
        conn,
        f"""
        with arrived as (
            insert into craftmart.quarantine (
                source_name, source_order_id, reasons, raw, out_of_range, first_seen
            )
            select
                staged.source_name,
                staged.source_order_id,
                string_to_array(staged.reasons, ','),
                staged.raw::jsonb,
                string_to_array(staged.out_of_range, ','),
                {RUN_TS}
            from {staged} as staged
            where not exists (select from pg_temp.quarantine_in_scope as q where {same_row})
            returning 1
        )
        select count(*) as n from arrived
        """,
    ).item()
    return {"left": int(left), "arrived": int(arrived)}
