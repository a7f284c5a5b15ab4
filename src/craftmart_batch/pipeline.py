"""A run: lock, extract, validate, dedup, diff, write, refresh marts, record — one transaction.

The stages, in order (``run``): check the sources; take the lock; migrate and fix the
run's timestamp; decide what to pull (``extract.hashes``); pull, validate, deduplicate,
diff and write either everything (``_load_everything``) or the changed rows and what
they reach (``_load_changes``); refresh each mart (``load.refresh``); record the run and
commit. Pure frame work is in ``transform/``, reads from sources in ``extract/``, and
everything written in ``load/``.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import polars as pl

from . import schema
from ._database import Database, connect, first_line, redact
from ._sql import Connection, database_error, execute, fetch_value
from .config import Settings
from .errors import CraftmartError, LockHeldError
from .extract import hashes as row_hashes
from .extract import queries, read
from .load import dwh, refresh, runs
from .load.quarantine import write_quarantine
from .load.runs import RunReport
from .transform.changes import SourceDelta, rows_per_source
from .transform.diff import diff_warehouse, no_changes
from .transform.identity import ORDER_ATTRS, build_warehouse
from .transform.marts import orders_with_attributes
from .transform.validate import validate

logger = logging.getLogger(__name__)

#: pg_advisory_xact_lock key of the warehouse: "craftmar" as 8 ASCII bytes.
LOCK_KEY = int.from_bytes(b"craftmar", "big") & 0x7FFF_FFFF_FFFF_FFFF

Progress = Callable[[str], None]


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


def acquire_lock(conn: Connection, *, wait: bool) -> None:
    """Hold the warehouse lock until the transaction ends (or the process dies)."""
    if wait:
        execute(conn, "select pg_advisory_xact_lock($1)", (LOCK_KEY,))
    elif not fetch_value(conn, "select pg_try_advisory_xact_lock($1)", (LOCK_KEY,)):
        raise LockHeldError(
            "another craftmart-batch run holds the warehouse lock (use --wait to wait for it)"
        )


def _set_run_timestamp(conn: Connection) -> str:
    """The run's timestamp: now, but always after every stored watermark and DWH change,
    so a clock stepping back can never hide a change from the next refresh."""
    after_watermarks = "".join(
        f", (select max(load_dttm) from {m.load_dates}) + interval '1 microsecond'"
        for m in refresh.MARTS
    )
    run_ts = fetch_value(conn, f"select greatest(now(){after_watermarks})::text")
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
        queries.check_sources(conn, settings.sources)
        with _stage(report, "lock", progress):
            acquire_lock(conn, wait=settings.wait_for_lock)
            if settings.statement_timeout:
                execute(conn, "select set_config('statement_timeout', $1, true)",
                        (settings.statement_timeout,))
        with _stage(report, "schema", progress):
            report.migrations = schema.migrate(conn)
            report.run_ts = _set_run_timestamp(conn)
            pull_reason = (row_hashes.FULL_RUN if full
                           else row_hashes.full_pull_reason(conn, settings.sources))
        with _stage(report, "pull", progress):
            delta = (row_hashes.detect(db, settings.sources) if pull_reason is None
                     else None)
        mart_input = None
        if delta is None or not _load_changes(conn, db, settings, delta, report, progress):
            report.pull_reason = pull_reason or row_hashes.MANY_CHANGES
            mart_input = _load_everything(conn, db, settings, report, progress)
        for mart in refresh.MARTS:
            with _stage(report, mart.name, progress):
                outcome = refresh.refresh(conn, mart, full=full, dwh_orders=mart_input)
                report.marts[mart.name] = outcome.as_dict()
        refresh.prune_change_log(conn)
        with _stage(report, "commit", progress):
            runs.record_run(conn, report, started_at)
            conn.commit()
    except CraftmartError as exc:
        runs.rollback(conn)
        runs.record_failure(db, report, started_at, str(exc))
        raise
    except Exception as exc:
        runs.rollback(conn)
        if runs.is_driver_error(exc):
            error = database_error(exc, "the run")
            runs.record_failure(db, report, started_at, str(error))
            raise error from None
        runs.record_failure(db, report, started_at,
                            f"{type(exc).__name__}: {first_line(redact(str(exc)))}")
        raise
    finally:
        runs.close(conn)
    return report


#: Past this share of all source rows changed, pulling the changed rows by key and
#: resolving them against the DWH is no cheaper than pulling everything: the run does.
FULL_PULL_SHARE = 0.4


def _load_everything(
    conn: Connection, db: Database, settings: Settings, report: RunReport, progress: Progress | None
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
            canonical = read.pull_sources(db, [source])
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
        report.pulled = rows_per_source(hashes)
        report.sources = runs.source_counts(settings, hashes, valid, quarantine)
    with _stage(report, "dedup", progress):
        target = build_warehouse(valid)
        del valid
    with _stage(report, "diff", progress):
        current = dwh.read_current(conn)
        diff = diff_warehouse(current, target)
    with _stage(report, "write", progress):
        ids = dwh.write_warehouse(conn, current, diff, first_load=current.orders.is_empty())
        report.quarantine = write_quarantine(conn, quarantine)
        row_hashes.store_all(conn, settings.sources, hashes)
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
    conn: Connection,
    db: Database,
    settings: Settings,
    delta: SourceDelta,
    report: RunReport,
    progress: Progress | None,
) -> bool:
    """Pull only the changed rows, and the latest unchanged row of every entity they
    touch, and apply what they change to the DWH and quarantine. False, having done
    nothing, when so many rows changed that pulling everything is cheaper."""
    report.pull = "changes"
    if delta.is_empty:
        report.pulled = {}
        report.dwh = no_changes()
        report.quarantine = {"left": 0, "arrived": 0}
        report.sources = runs.stored_counts(conn, settings, delta)
        return True
    if delta.changed.height > FULL_PULL_SHARE * sum(delta.rows.values()):
        return False
    with _stage(report, "pull", progress):
        changed_keys = delta.pull_keys()
        changed = read.pull_sources(db, settings.sources, changed_keys)
    with _stage(report, "validate", progress):
        valid, quarantine = validate(changed.drop("row_hash"))
    with _stage(report, "diff", progress):
        scope = dwh.read_scope(conn, delta.changed, valid,
                                {s.name: s.rank for s in settings.sources})
    with _stage(report, "pull", progress):
        others = read.pull_sources(db, settings.sources, scope.latest_unchanged)
        report.pulled = rows_per_source(pl.concat([changed, others]))
    with _stage(report, "validate", progress):
        # Unchanged rows are valid; one that changed since the keys were compared is
        # left, whatever it now holds, to the next run, which sees its new hash.
        valid = pl.concat([valid, validate(others.drop("row_hash"))[0]])
    with _stage(report, "dedup", progress):
        target = scope.restrict(build_warehouse(valid), delta.changed)
    with _stage(report, "diff", progress):
        diff = diff_warehouse(scope.current, target)
    with _stage(report, "write", progress):
        dwh.write_warehouse(conn, scope.current, diff)
        report.quarantine = write_quarantine(conn, quarantine, scope=changed_keys)
        row_hashes.store_changes(conn, delta.changed, changed)
    report.dwh = diff.counts()
    report.sources = runs.stored_counts(conn, settings, delta)
    return True


