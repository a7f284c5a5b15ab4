"""ADBC: craftmart.quarantine made to hold exactly the current invalid source rows."""

from __future__ import annotations

import logging

import polars as pl

from .._sql import Connection, execute, fetch_frame, stage
from ..transform.validate import ORDER_KEY
from .dwh import RUN_TS

logger = logging.getLogger(__name__)


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
    staged = stage(
        conn,
        "stage_quarantine",
        quarantine.with_columns(pl.col("reasons", "out_of_range").list.join(",")),
    )
    # raw holds the source key too: equal raw rows are rows of the same order
    same_row = """
        staged.source_name = q.source_name
        and staged.raw::jsonb = q.raw
        and string_to_array(staged.reasons, ',') = q.reasons
    """
    in_scope = ""
    if scope is not None:
        staged_scope = stage(conn, "stage_quarantine_scope", scope.select(ORDER_KEY))
        execute(conn, "drop table if exists pg_temp.quarantine_in_scope")
        execute(
            conn,
            f"""
            create temporary table quarantine_in_scope as
            select q.quarantine_id
            from craftmart.quarantine as q
            inner join {staged_scope} as s
                on s.source_name = q.source_name and s.source_order_id = q.source_order_id
            union all
            select q.quarantine_id
            from craftmart.quarantine as q
            inner join (
                select distinct source_name from {staged_scope} where source_order_id is null
            ) as s on s.source_name = q.source_name
            where q.source_order_id is null
            """,
        )
        in_scope = """
            using pg_temp.quarantine_in_scope as in_scope
            where in_scope.quarantine_id = q.quarantine_id and"""
    left = fetch_frame(
        conn,
        f"""
        with left_quarantine as (
            delete from craftmart.quarantine as q
            {in_scope or "where"}
                not exists (select from {staged} as staged where {same_row})
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
            where not exists (select from craftmart.quarantine as q where {same_row})
            returning 1
        )
        select count(*) as n from arrived
        """,
    ).item()
    return {"left": int(left), "arrived": int(arrived)}
