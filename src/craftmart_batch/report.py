"""Human-readable and JSON views of runs, marts, quarantine and freshness."""

from __future__ import annotations

import json
import logging
from typing import Any

import polars as pl

from ._database import Database, connection
from ._sql import fetch_frame, fetch_value
from .errors import CraftmartError
from .pipeline import RunReport

logger = logging.getLogger(__name__)


def _table(frame: pl.DataFrame) -> str:
    with pl.Config(
        tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
        fmt_str_lengths=40, tbl_width_chars=160, tbl_formatting="ASCII_MARKDOWN",
    ):
        return str(frame)


def run_summary(report: RunReport) -> str:
    """Per-source counts, DWH changes and mart refreshes of one run."""
    sources = pl.DataFrame(
        [{"source": name, **counts} for name, counts in report.sources.items()]
    )
    dwh = pl.DataFrame([{"table": name, **counts} for name, counts in report.dwh.items()])
    marts = pl.DataFrame(
        [
            {
                "mart": name,
                "mode": "full" if m["full"] else "incremental",
                "entities": m["entities"],
                "orders": m["orders"],
                "inserted": m["rows_inserted"],
                "updated": m["rows_updated"],
                "deleted": m["rows_deleted"],
            }
            for name, m in report.marts.items()
        ]
    )
    total = sum(report.stages.values())
    lines = [
        f"run {report.run_ts} finished in {total:.1f}s",
        "",
        "sources (rows read = loaded + quarantined):",
        _table(sources),
        "",
        "dwh changes:",
        _table(dwh),
        "",
        "marts:",
        _table(marts),
    ]
    if report.migrations:
        lines[1:1] = [f"schema migrations applied: {', '.join(report.migrations)}"]
    return "\n".join(lines)


def _require_warehouse(conn: Any) -> None:
    if fetch_value(conn, "select to_regclass('craftmart.schema_migrations')::text") is None:
        raise CraftmartError("no warehouse in this database yet: run `craftmart-batch run` first")


def marts_summary(db: Database, months: int = 6) -> str:
    """Platform totals of the last months and the top customers of the latest month."""
    with connection(db) as conn:
        _require_warehouse(conn)
        per_month = fetch_frame(
            conn,
            f"""
            select
                report_period as month,
                count(*) as customers,
                sum(count_order) as orders,
                sum(customer_money)::text as customer_money,
                sum(platform_money)::text as platform_money,
                sum(count_order_done) as done
            from marts.customer_report_datamart
            group by report_period
            order by report_period desc
            limit {int(months)}
            """,
        )
        top = fetch_frame(
            conn,
            """
            select customer_email, customer_money::text as paid, count_order,
                   top_product_category, report_period
            from marts.customer_report_datamart
            where report_period = (select max(report_period) from marts.customer_report_datamart)
            order by customer_report_datamart.customer_money desc, customer_email
            limit 5
            """,
        )
    return "\n".join([
        "customer_report_datamart, latest months:",
        _table(per_month.sort("month")),
        "",
        "top customers of the latest month:",
        _table(top),
    ])


def quarantine_listing(
    db: Database, *, source: str | None, rule: str | None, limit: int, as_json: bool
) -> str:
    """Quarantined rows, filtered by source and rule, with their raw values."""
    with connection(db) as conn:
        _require_warehouse(conn)
        frame = fetch_frame(
            conn,
            """
            select source_name, source_order_id, array_to_string(reasons, ',') as reasons,
                   raw::text as raw, first_seen::text as first_seen
            from craftmart.quarantine
            where ($1::text is null or source_name = $1::text)
              and ($2::text is null or $2::text = any(reasons))
            order by source_name, source_order_id
            """,
            (source, rule),
        )
    if limit > 0:
        frame = frame.head(limit)
    if as_json:
        return json.dumps(
            [{**row, "raw": json.loads(row["raw"]), "reasons": row["reasons"].split(",")}
             for row in frame.iter_rows(named=True)],
            indent=2,
        )
    if frame.is_empty():
        return "quarantine is empty" + (" for this filter" if source or rule else "")
    return _table(frame)


def status(db: Database, *, as_json: bool) -> str:
    """Each mart's last refresh and size, and quarantine counts per source and rule."""
    with connection(db) as conn:
        _require_warehouse(conn)
        marts = fetch_frame(
            conn,
            """
            select 'customer_report_datamart' as mart,
                   (select max(load_dttm)::text from marts.load_dates_customer_report_datamart)
                       as watermark,
                   (select count(*) from marts.customer_report_datamart) as rows
            union all
            select 'craftsman_report_datamart',
                   (select max(load_dttm)::text from marts.load_dates_craftsman_report_datamart),
                   (select count(*) from marts.craftsman_report_datamart)
            """,
        )
        quarantined = fetch_frame(
            conn,
            """
            select source_name, reason, count(*) as rows
            from craftmart.quarantine, unnest(reasons) as reason
            group by source_name, reason
            order by source_name, reason
            """,
        )
    if as_json:
        return json.dumps(
            {"marts": marts.to_dicts(), "quarantine": quarantined.to_dicts()}, indent=2
        )
    return "\n".join(["marts:", _table(marts), "", "quarantine:", _table(quarantined)])
