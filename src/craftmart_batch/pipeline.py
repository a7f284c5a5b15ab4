"""A run: lock, extract, validate, dedup, diff, write, refresh marts, record — one transaction."""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from . import delta as delta_module
from . import extract, load, refresh, schema
from ._database import Database, connect, first_line, redact
from ._sql import database_error, execute, fetch_frame, fetch_value
from .config import Settings
from .errors import CraftmartError, LockHeldError
from .transform.identity import ORDER_ATTRS, build_warehouse
from .transform.marts import orders_with_attributes
from .transform.validate import validate

logger = logging.getLogger(__name__)

#: pg_advisory_xact_lock key of the warehouse: "craftmar" as 8 ASCII bytes.
LOCK_KEY = int.from_bytes(b"craftmar", "big") & 0x7FFF_FFFF_FFFF_FFFF

Progress = Callable[[str], None]


@dataclass
class RunReport:
    """What a run did: per-source counts, per-table changes, per-stage seconds."""

    full: bool
    run_ts: str = ""
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    dwh: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantine: dict[str, int] = field(default_factory=dict)
    marts: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    migrations: list[str] = field(default_factory=list)
    #: "everything", or "changes": only changed rows and their people's other rows
    pull: str = ""
    #: why everything was pulled (``delta.FIRST_RUN``, ``FULL_RUN``,
    #: ``VERSION_OR_QUERIES_CHANGED``, ``RULES_CHANGED``, ``MANY_CHANGES``); None for changes
    pull_reason: str | None = None
    pulled: dict[str, int] = field(default_factory=dict)
    #: the process's peak memory (MiB) when each stage ended: which stage set the peak
    peak_rss_mb: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "full": self.full,
            "run_ts": self.run_ts,
            "sources": self.sources,
            "dwh": self.dwh,
            "quarantine": self.quarantine,
            "marts": self.marts,
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
            "migrations": self.migrations,
            "pull": self.pull,
            "pull_reason": self.pull_reason,
            "pulled": self.pulled,
            "peak_rss_mb": self.peak_rss_mb,
        }


@contextmanager
def _stage(report: RunReport, name: str, progress: Progress | None) -> Iterator[None]:
    """Time a stage; a stage entered again (a run pulls in steps) adds to its time and
    is announced only the first time."""
    if progress and name not in report.stages:
        progress(name)
    started = time.perf_counter()
    yield
    report.stages[name] = report.stages.get(name, 0.0) + time.perf_counter() - started
    report.peak_rss_mb[name] = max(report.peak_rss_mb.get(name, 0), _peak_rss_mb())


def _peak_rss_mb() -> int:
    """This process's peak resident memory so far, in MiB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def acquire_lock(conn: Any, *, wait: bool) -> None:
    """Hold the warehouse lock until the transaction ends (or the process dies)."""
    if wait:
        execute(conn, "select pg_advisory_xact_lock($1)", (LOCK_KEY,))
    elif not fetch_value(conn, "select pg_try_advisory_xact_lock($1)", (LOCK_KEY,)):
        raise LockHeldError(
            "another craftmart-batch run holds the warehouse lock (use --wait to wait for it)"
        )


def _set_run_timestamp(conn: Any) -> str:
    """The run's timestamp: now, but always after every stored watermark and DWH change,
    so a clock stepping back can never hide a change from the next refresh."""
    run_ts = fetch_value(
        conn,
        """
        select greatest(
            now(),
            (select max(load_dttm) from marts.load_dates_customer_report_datamart)
                + interval '1 microsecond',
            (select max(load_dttm) from marts.load_dates_craftsman_report_datamart)
                + interval '1 microsecond'
        )::text
        """,
    )
    execute(conn, "select set_config('craftmart.run_ts', $1, true)", (run_ts,))
    return str(run_ts)


def run(
    settings: Settings,
    db: Database,
    *,
    full: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Load every registered source into the DWH and refresh both marts, atomically.

    Everything happens in one transaction under an advisory lock: killed at any
    instant, the run leaves DWH, marts and load dates as they were.
    """
    report = RunReport(full=full)
    started_at = time.time()
    conn = connect(db)
    try:
        # The server checks every second that this process is still there, even in the
        # middle of a statement or a lock wait: a killed run's transaction, and the
        # warehouse lock with it, never outlive the process by more than a second.
        execute(conn, "select set_config('client_connection_check_interval', '1s', true)")
        # Refuse a broken source before the first stage is reported or anything is
        # written: a run that cannot start is one error line (SPEC §7).
        extract.check_sources(conn, settings.sources)
        with _stage(report, "lock", progress):
            acquire_lock(conn, wait=settings.wait_for_lock)
            if settings.statement_timeout:
                execute(conn, "select set_config('statement_timeout', $1, true)",
                        (settings.statement_timeout,))
        with _stage(report, "schema", progress):
            report.migrations = schema.migrate(conn)
            report.run_ts = _set_run_timestamp(conn)
            pull_reason = (delta_module.FULL_RUN if full
                           else delta_module.full_pull_reason(conn, settings.sources))
        with _stage(report, "pull", progress):
            delta = (delta_module.detect(conn, db, settings.sources) if pull_reason is None
                     else None)
        mart_input = None
        if delta is None or not _load_changes(conn, db, settings, delta, report, progress):
            report.pull_reason = pull_reason or delta_module.MANY_CHANGES
            mart_input = _load_everything(conn, db, settings, report, progress)
        for mart in refresh.MARTS:
            with _stage(report, mart.name, progress):
                outcome = refresh.refresh(conn, mart, full=full, dwh_orders=mart_input)
                report.marts[mart.name] = outcome.as_dict()
        refresh.prune_change_log(conn)
        with _stage(report, "commit", progress):
            _record_run(conn, report, started_at)
            conn.commit()
    except CraftmartError as exc:
        _rollback(conn)
        _record_failure(db, report, started_at, str(exc))
        raise
    except Exception as exc:
        _rollback(conn)
        if _is_driver_error(exc):
            error = database_error(exc, "the run")
            _record_failure(db, report, started_at, str(error))
            raise error from None
        _record_failure(db, report, started_at,
                        f"{type(exc).__name__}: {first_line(redact(str(exc)))}")
        raise
    finally:
        _close(conn)
    return report


#: Past this share of all source rows changed, pulling the changed rows by key and
#: resolving them against the DWH is no cheaper than pulling everything: the run does.
FULL_PULL_SHARE = 0.4


def _load_everything(
    conn: Any, db: Database, settings: Settings, report: RunReport, progress: Progress | None
) -> pl.DataFrame:
    """Pull every source row and make the DWH and quarantine match them.

    Returns every DWH order with its attributes, as written: what the marts aggregate.
    """
    report.pull = "everything"
    valid_parts, quarantine_parts, hash_parts = [], [], []
    # One source at a time: only one source's rows are held as read (as Arrow, then as
    # Polars) at any moment, beside the valid rows of the sources before it.
    for source in settings.sources:
        with _stage(report, "pull", progress):
            canonical = extract.pull_sources(db, [source])
        with _stage(report, "validate", progress):
            hash_parts.append(canonical.select("source_name", "source_order_id", "row_hash"))
            valid, quarantine = validate(canonical.drop("row_hash"))
            del canonical
            valid_parts.append(valid)
            quarantine_parts.append(quarantine)
    with _stage(report, "validate", None):
        valid = pl.concat(valid_parts, rechunk=False)
        quarantine = pl.concat(quarantine_parts, rechunk=False)
        hashes = pl.concat(hash_parts, rechunk=False)
        del valid_parts, quarantine_parts, hash_parts
        report.pulled = extract.rows_per_source(hashes)
        report.sources = _source_counts(settings, hashes, valid, quarantine)
    with _stage(report, "dedup", progress):
        target = build_warehouse(valid)
        del valid
    with _stage(report, "diff", progress):
        current = load.read_current(conn)
        diff = load.diff_warehouse(current, target)
    with _stage(report, "write", progress):
        ids = load.write_warehouse(conn, current, diff, first_load=current.orders.is_empty())
        report.quarantine = load.write_quarantine(conn, quarantine)
        delta_module.store_all(conn, settings.sources, hashes)
        del current, quarantine, hashes
        # Statistics for what was just written, in this transaction: without them the
        # next statements (and the next run, if it comes before autovacuum does) plan
        # for the tables as they were, e.g. empty before a first load.
        execute(conn, "analyze dwh.d_craftsman, dwh.d_customer, dwh.d_product, dwh.f_order,"
                      " craftmart.source_rows")
    report.dwh = diff.counts()
    # The DWH as now written, in memory: what the marts aggregate on an
    # incremental refresh (--full re-reads it from the database instead).
    needed = ["craftsman_id", "customer_id", *ORDER_ATTRS]
    return orders_with_attributes(
        ids.resolve(target.orders, needed), target.craftsmen, target.customers, target.products
    )


def _load_changes(
    conn: Any,
    db: Database,
    settings: Settings,
    delta: delta_module.SourceDelta,
    report: RunReport,
    progress: Progress | None,
) -> bool:
    """Pull only the changed rows, and the latest unchanged row of every entity they
    touch, and apply what they change to the DWH and quarantine. False, having done
    nothing, when so many rows changed that pulling everything is cheaper."""
    report.pull = "changes"
    if delta.is_empty:
        report.pulled = {}
        report.dwh = load.no_changes()
        report.quarantine = {"left": 0, "arrived": 0}
        report.sources = _stored_counts(conn, settings, delta)
        return True
    if delta.changed.height > FULL_PULL_SHARE * sum(delta.rows.values()):
        return False
    with _stage(report, "pull", progress):
        changed_keys = delta.pull_keys()
        changed = extract.pull_sources(db, settings.sources, changed_keys)
    with _stage(report, "validate", progress):
        valid, quarantine = validate(changed.drop("row_hash"))
    with _stage(report, "diff", progress):
        scope = load.read_scope(conn, delta.changed, valid,
                                {s.name: s.rank for s in settings.sources})
    with _stage(report, "pull", progress):
        others = extract.pull_sources(db, settings.sources, scope.latest_unchanged)
        report.pulled = extract.rows_per_source(pl.concat([changed, others]))
    with _stage(report, "validate", progress):
        # Unchanged rows are valid; one that changed since the keys were compared is
        # left, whatever it now holds, to the next run, which sees its new hash.
        valid = pl.concat([valid, validate(others.drop("row_hash"))[0]])
    with _stage(report, "dedup", progress):
        target = scope.restrict(build_warehouse(valid), delta.changed)
    with _stage(report, "diff", progress):
        diff = load.diff_warehouse(scope.current, target)
    with _stage(report, "write", progress):
        load.write_warehouse(conn, scope.current, diff)
        report.quarantine = load.write_quarantine(conn, quarantine, scope=changed_keys)
        delta_module.store_changes(conn, delta.changed, changed)
    report.dwh = diff.counts()
    report.sources = _stored_counts(conn, settings, delta)
    return True


def _stored_counts(
    conn: Any, settings: Settings, delta: delta_module.SourceDelta
) -> dict[str, dict[str, int]]:
    """Rows read, loaded and quarantined per source, as the DWH now holds them."""
    loaded, quarantined = (
        dict(fetch_frame(conn, f"select source_name, count(*) from {table} group by 1")
             .iter_rows())
        for table in ("dwh.f_order", "craftmart.quarantine")
    )
    return _by_source(settings, delta.rows, loaded, quarantined)


def _source_counts(
    settings: Settings, canonical: pl.DataFrame, valid: pl.DataFrame, quarantine: pl.DataFrame
) -> dict[str, dict[str, int]]:
    return _by_source(settings, extract.rows_per_source(canonical), extract.rows_per_source(valid),
                      extract.rows_per_source(quarantine))


def _by_source(
    settings: Settings, read: dict[str, int], loaded: dict[str, int],
    quarantined: dict[str, int],
) -> dict[str, dict[str, int]]:
    """The report's rows read, loaded and quarantined, for every registered source."""
    return {
        s.name: {
            "read": read.get(s.name, 0),
            "loaded": loaded.get(s.name, 0),
            "quarantined": quarantined.get(s.name, 0),
        }
        for s in settings.sources
    }


def _record_run(conn: Any, report: RunReport, started_at: float) -> None:
    _insert_run(conn, report, started_at, "success", report.as_dict())


def _insert_run(
    conn: Any, report: RunReport, started_at: float, outcome: str, stats: dict[str, Any]
) -> None:
    """One ``craftmart.runs`` row: the run's mode, ``outcome`` and ``stats``."""
    execute(
        conn,
        """
        insert into craftmart.runs (started_at, finished_at, mode, outcome, stats)
        values (to_timestamp($1), clock_timestamp(), $2, $3, $4::jsonb)
        """,
        (started_at, "full" if report.full else "incremental", outcome,
         json.dumps(stats, default=str)),
    )


def _record_failure(db: Database, report: RunReport, started_at: float, error: str) -> None:
    """Record a failed run in ``craftmart.runs``, in a short autocommit transaction of its
    own, after the run's rollback: outcome ``failed`` and the one-line, redacted error.

    Only a run that got the lock is recorded; one that could not start (a broken source,
    another run holding the lock) did nothing. Best effort: a database that is gone, or
    a warehouse whose first run failed (no ``craftmart.runs`` yet), records nothing, and
    the run's own error is what the caller sees either way.
    """
    if "lock" not in report.stages:
        return
    try:
        # A short connect timeout: the run may have failed because the server went away.
        conn = connect(Database({**db.params, "connect_timeout": "5"}), autocommit=True)
    except Exception:
        logger.info("could not record the failed run: the database is unreachable")
        return
    try:
        if fetch_value(conn, "select to_regclass('craftmart.runs')::text") is None:
            return
        # what it read and how long each finished stage took, but no DWH, mart or
        # quarantine changes: the rollback kept none of them
        _insert_run(conn, report, started_at, "failed",
                    {**report.as_dict(), "dwh": {}, "quarantine": {}, "marts": {},
                     "error": redact(error)})
    except Exception as exc:
        logger.info("could not record the failed run: %s", first_line(redact(str(exc))))
    finally:
        _close(conn)


def _is_driver_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("adbc_driver", "pyarrow")) or isinstance(exc, RuntimeError)


def _rollback(conn: Any) -> None:
    try:
        conn.rollback()
    except Exception:  # the connection may be gone; the server rolls back on its own
        logger.debug("rollback failed", exc_info=True)


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        logger.debug("close failed", exc_info=True)
