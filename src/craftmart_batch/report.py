"""Human-readable and JSON views of runs, marts, quarantine and freshness."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from ._database import Database, connection
from ._sql import Connection, fetch_frame, fetch_value
from .errors import CraftmartError
from .load.refresh import MARTS
from .load.runs import RunReport

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
        [{"source": name, **counts, "changes found by": report.changes.get(name, "")}
         for name, counts in report.sources.items()]
    )
    dwh = pl.DataFrame([{"table": name, **counts} for name, counts in report.dwh.items()])
    marts = pl.DataFrame(
        [
            {
                "mart": name,
                "mode": _mart_mode(m),
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
        f"source rows pulled: {_pull(report.pull, report.pull_reason)}",
        f"partitions: {report.partitions} of the order keys,"
        + (f" {report.dimension_ranges} of the dimensions' keys"
           f" ({report.spilled_candidates:,} candidates spilled),"
           if report.dimension_ranges > 1 else "")
        + f" {report.mart_groups} of the marts' entities"
        f" (memory budget {report.memory_budget_mb} MB)"
        + (f", computed as Ray tasks (largest task peak {report.task_peak_rss_mb} MB)"
           if report.engine == "ray" else ""),
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
    lines += [f"warning: {warning}" for warning in report.warnings]
    return "\n".join(lines)


def _pull(pull: str | None, reason: str | None) -> str:
    """``everything (rules_changed)``, ``changes``: what a run pulled, and why everything."""
    return f"{pull} ({reason})" if pull and reason else (pull or "")


def _mart_mode(refreshed: dict[str, Any]) -> str:
    """``full (definition_changed)``, ``incremental``: how a mart was refreshed, and why
    in full (runs recorded before reasons were kept show ``full`` alone)."""
    if not refreshed.get("full"):
        return "incremental"
    reason = refreshed.get("full_reason")
    return f"full ({reason})" if reason else "full"


def require_warehouse(conn: Connection) -> None:
    """Refuse a database craftmart-batch has never run on, in one line."""
    if fetch_value(conn, "select to_regclass('craftmart.schema_migrations')::text") is None:
        raise CraftmartError("no warehouse in this database yet: run `craftmart-batch run` first")


def marts_summary(db: Database, months: int = 6) -> str:
    """Platform totals of the last months and the top customers of the latest month."""
    with connection(db) as conn:
        require_warehouse(conn)
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
    """Quarantined rows, filtered by source and rule, with their raw values.

    ``limit`` 0 shows every row. A rule that does not exist is an error naming the
    rules that do (a typo must not look like an empty quarantine).
    """
    from .transform.validate import RULE_NAMES

    if rule is not None and rule not in RULE_NAMES:
        raise CraftmartError(f"unknown rule {rule!r}; the rules are: {', '.join(RULE_NAMES)}")
    if limit < 0:
        raise CraftmartError(f"--limit must be 0 (all) or a positive number, got {limit}")
    with connection(db) as conn:
        require_warehouse(conn)
        frame = fetch_frame(
            conn,
            """
            with matching_rows as (
                select source_name, source_order_id, reasons, out_of_range, raw, first_seen
                from craftmart.quarantine
                where ($1::text is null or source_name = $1::text)
                    and ($2::text is null or $2::text = any(reasons))
            )
            select
                source_name,
                source_order_id,
                array_to_string(reasons, ',') as reasons,
                array_to_string(out_of_range, ',') as out_of_range_fields,
                (
                    select string_agg(field || '=' || coalesce(raw ->> field, 'null'), ', ')
                    from unnest(out_of_range) as field
                ) as out_of_range,
                raw::text as raw,
                first_seen::text as first_seen,
                count(*) over () as total
            from matching_rows
            order by source_name, source_order_id
            limit $3::bigint
            """,
            (source, rule, limit or None),
        )
    total = int(frame["total"][0]) if frame.height else 0
    frame = frame.drop("total")
    if as_json:
        return json.dumps(
            [{**row, "raw": json.loads(row["raw"]), "reasons": row["reasons"].split(","),
              "out_of_range": [f for f in fields.split(",") if f]}
             for row, fields in zip(frame.drop("out_of_range_fields").iter_rows(named=True),
                                    frame["out_of_range_fields"], strict=True)],
            indent=2,
        )
    if frame.is_empty():
        return "quarantine is empty" + (" for this filter" if source or rule else "")
    shown = _table(frame.drop("out_of_range_fields"))
    if total > frame.height:
        shown += f"\n{frame.height} of {total} rows shown (--limit 0 shows all)"
    return shown


# --------------------------------------------------------------------------- status

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` or a sum such as ``"1h30m"``, in seconds."""
    cleaned = text.strip().replace(" ", "")
    parts = _AGE.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise CraftmartError(
            f"--max-age must be a duration such as 90s, 15m, 2h, 1d or 1h30m, got {text!r}"
        )
    seconds = sum(float(n) * _SECONDS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise CraftmartError(f"--max-age must be more than zero, got {text!r}")
    return seconds


def format_age(seconds: float | None) -> str:
    """A duration for people: ``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    if seconds is None:
        return "never"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass(frozen=True)
class Status:
    """Freshness and size of each mart, the last run, and quarantine counts."""

    marts: pl.DataFrame  # mart, watermark, age_seconds, rows
    quarantine: pl.DataFrame  # source_name, reason, rows
    last_run: dict[str, Any] | None
    max_age: float | None = None

    def stale(self) -> list[str]:
        """One phrase per mart older than ``max_age`` (or never refreshed)."""
        if self.max_age is None:
            return []
        phrases = []
        for mart, age in self.marts.select("mart", "age_seconds").iter_rows():
            if age is None:
                phrases.append(f"{mart} was never refreshed")
            elif age > self.max_age:
                phrases.append(f"{mart} last refreshed {format_age(age)} ago")
        return phrases

    def stale_message(self) -> str:
        assert self.max_age is not None
        return (f"stale marts (max age {format_age(self.max_age)}): "
                + "; ".join(self.stale()))

    def render(self, *, as_json: bool) -> str:
        if as_json:
            doc: dict[str, Any] = {
                "marts": self.marts.to_dicts(),
                "last_run": self.last_run,
                "quarantine": self.quarantine.to_dicts(),
            }
            if self.max_age is not None:
                doc["max_age_seconds"] = self.max_age
                doc["stale"] = bool(self.stale())
            return json.dumps(doc, indent=2)
        ages = [format_age(age) for age in self.marts["age_seconds"].to_list()]
        marts = self.marts.with_columns(pl.Series("age", ages, dtype=pl.String)).select(
            "mart", "watermark", "age", "rows"
        )
        lines = ["marts:", _table(marts), ""]
        if self.last_run is not None:
            run = self.last_run
            lines += [f"last run: #{run['run_id']} {run['outcome']}, started {run['started_at']}"
                      f" ({run['seconds']:.1f}s)"
                      + (f": {run['error']}" if run.get("error") else ""), ""]
        lines += ["quarantine:",
                  _table(self.quarantine) if self.quarantine.height else "(empty)"]
        return "\n".join(lines)


def read_status(db: Database, *, max_age: float | None = None) -> Status:
    """Each mart's watermark, its age and row count; the last run; quarantine counts."""
    with connection(db) as conn:
        require_warehouse(conn)
        marts = fetch_frame(
            conn,
            """
            with watermarks as (
                select
                    'customer_report_datamart' as mart,
                    (select max(load_dttm) from marts.load_dates_customer_report_datamart)
                        as watermark,
                    (select count(*) from marts.customer_report_datamart) as rows
                union all
                select
                    'craftsman_report_datamart',
                    (select max(load_dttm) from marts.load_dates_craftsman_report_datamart),
                    (select count(*) from marts.craftsman_report_datamart)
            )
            select
                mart,
                watermark::text as watermark,
                extract(epoch from statement_timestamp() - watermark)::float8 as age_seconds,
                rows
            from watermarks
            """,
        )
        quarantined = fetch_frame(
            conn,
            """
            select source_name, reason, count(*) as rows
            from craftmart.quarantine
            cross join lateral unnest(reasons) as reason
            group by source_name, reason
            order by source_name, reason
            """,
        )
        last = _runs(conn, limit=1)
    return Status(marts, quarantined, last[0] if last else None, max_age)


def status(db: Database, *, as_json: bool, max_age: float | None = None) -> str:
    """Each mart's last refresh and size, and quarantine counts per source and rule."""
    return read_status(db, max_age=max_age).render(as_json=as_json)


# --------------------------------------------------------------------------- history


def _runs(conn: Connection, *, limit: int) -> list[dict[str, Any]]:
    """The last runs, newest first, with their stats summed up for people."""
    frame = fetch_frame(
        conn,
        """
        select
            run_id,
            started_at::text as started_at,
            finished_at::text as finished_at,
            extract(epoch from finished_at - started_at)::float8 as seconds,
            mode,
            outcome,
            stats::text as stats
        from craftmart.runs
        order by run_id desc
        limit $1::bigint
        """,
        (limit or None,),
    )
    return [_run_entry(row) for row in frame.iter_rows(named=True)]


def _run_entry(row: dict[str, Any]) -> dict[str, Any]:
    stats = json.loads(row.pop("stats"))
    sources = stats.get("sources") or {}
    dwh = stats.get("dwh") or {}
    marts = stats.get("marts") or {}

    def total(tables: dict[str, dict[str, Any]], key: str) -> int:
        return sum(int(counts.get(key, 0)) for counts in tables.values())

    return {
        **row,
        "error": stats.get("error"),
        # what the run pulled in full and why everything (None: recorded before reasons)
        "pull": stats.get("pull") or None,
        "pull_reason": stats.get("pull_reason"),
        # partitions of the source rows (None: recorded before runs were partitioned)
        "partitions": stats.get("partitions") or None,
        # the marts refreshed in full, and why
        "marts_full": {
            name: m.get("full_reason") for name, m in marts.items() if m.get("full")
        },
        "rows": {
            "read": total(sources, "read"),
            "loaded": total(sources, "loaded"),
            "quarantined": total(sources, "quarantined"),
            "inserted": total(dwh, "inserted"),
            "updated": total(dwh, "updated"),
            "deleted": total(dwh, "deleted"),
        },
        "mart_rows": {
            name: {k: m.get(f"rows_{k}", 0) for k in ("inserted", "updated", "deleted")}
            for name, m in marts.items()
        },
        "stages": stats.get("stages") or {},
    }


def history(db: Database, *, limit: int, as_json: bool) -> str:
    """The last ``limit`` runs (0: all), newest first: timing, outcome, rows, stage times."""
    if limit < 0:
        raise CraftmartError(f"--limit must be 0 (all) or a positive number, got {limit}")
    with connection(db) as conn:
        require_warehouse(conn)
        runs = _runs(conn, limit=limit)
    if as_json:
        return json.dumps(runs, indent=2)
    if not runs:
        return "no runs yet"
    overview = pl.DataFrame(
        [
            {
                "run": r["run_id"],
                "started_at": r["started_at"][:19],
                "seconds": round(r["seconds"], 1),
                "mode": r["mode"],
                "outcome": r["outcome"],
                "pull": _pull(r["pull"], r["pull_reason"]),
                "parts": r["partitions"],
                **{k: r["rows"][k] for k in ("read", "quarantined", "inserted", "updated",
                                              "deleted")},
                "mart_rows": sum(sum(m.values()) for m in r["mart_rows"].values()),
                "marts_full": _marts_full(r["marts_full"]),
            }
            for r in runs
        ]
    )
    seen = {name for r in runs for name in r["stages"]}
    # every stage, so the columns stay put: a run that skipped a stage shows it empty
    stage_names = [*STAGES, *sorted(seen.difference(STAGES))]
    stages = pl.DataFrame(
        [{"run": r["run_id"], **{_short(n): r["stages"].get(n) for n in stage_names}}
         for r in runs],
        schema={"run": pl.Int64, **{_short(n): pl.Float64 for n in stage_names}},
    )
    lines = ["runs (rows: DWH rows inserted / updated / deleted, source rows quarantined):",
             _table(overview), "", "seconds per stage:", _table(stages)]
    failed = [r for r in runs if r["error"]]
    if failed:
        lines += ["", "errors:", *(f"  run {r['run_id']}: {r['error']}" for r in failed)]
    return "\n".join(lines)


def _marts_full(reasons: dict[str, str | None]) -> str:
    """``customer, craftsman (first_refresh)``: the marts refreshed in full, by reason."""
    by_reason: dict[str | None, list[str]] = {}
    for name, reason in reasons.items():
        by_reason.setdefault(reason, []).append(_short(name))
    return "; ".join(
        ", ".join(names) + (f" ({reason})" if reason else "")
        for reason, names in by_reason.items()
    )


#: The stages of a run, in the order they run (the stats keep no order).
STAGES = ("lock", "schema", "plan", "pull", "validate", "dedup", "diff", "write",
          *(mart.name for mart in MARTS), "commit")


def _short(stage: str) -> str:
    return stage.removesuffix("_report_datamart")
