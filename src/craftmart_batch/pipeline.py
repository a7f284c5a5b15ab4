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

from . import citus, schema, stages
from ._database import Database, connect, first_line, redact
from ._sql import Connection, database_error, execute, fetch_value
from .config import HASH, LOCAL, Settings
from .engine import Engine, open_engine
from .errors import CraftmartError, LockHeldError
from .extract import capture, queries
from .extract import hashes as row_hashes
from .load import dwh, refresh, runs
from .load.runs import RunReport
from .transform.changes import SourceDelta, merge_deltas
from .transform.diff import no_changes

logger = logging.getLogger(__name__)

#: pg_advisory_xact_lock key of the warehouse: "craftmar" as 8 ASCII bytes.
LOCK_KEY = int.from_bytes(b"craftmar", "big") & 0x7FFF_FFFF_FFFF_FFFF

Progress = Callable[[str], None]


@contextmanager
def _stage(
    report: RunReport, name: str, progress: Progress | None, partition: int = 0,
    partitions: int = 1,
) -> Iterator[None]:
    """Time a stage; a stage entered again (once per partition) adds to its time and is
    announced the first time, and then at each partition's start."""
    if progress and name not in report.stages:
        progress(name)
    elif progress and partitions > 1:
        progress(f"{name} {partition + 1}/{partitions}")
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
    if citus.is_distributed(conn):
        # statements whose select Citus runs on the workers read it there too
        citus.set_local(conn, "craftmart.run_ts", str(run_ts))
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
    instant, the run leaves DWH, marts and load dates as they were. Every run goes the
    same way: plan, stage each partition, resolve the dimensions, write each
    partition's orders, refresh each mart group by group, record and commit.
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
        queries.check_sources(conn, db, settings.sources)
        on_citus = citus.check(conn, settings.citus)
        if on_citus:
            citus.prepare_transaction(conn)
        with _stage(report, "lock", progress):
            acquire_lock(conn, wait=settings.wait_for_lock)
            if settings.statement_timeout:
                execute(conn, "select set_config('statement_timeout', $1, true)",
                        (settings.statement_timeout,))
        with _stage(report, "schema", progress):
            report.migrations = schema.migrate(conn)
            if on_citus:
                report.migrations += [f"citus: {t}" for t in citus.distribute(conn)]
            report.run_ts = _set_run_timestamp(conn)
            reason = (row_hashes.FULL_RUN if full
                      else row_hashes.full_pull_reason(conn, settings.sources))
        with _stage(report, "plan", progress):
            captured = capture.start(conn, db, settings.sources, read_changes=reason is None)
            delta = _changes(conn, db, settings, captured) if reason is None else None
            plan = stages.plan(conn, db, settings, reason=reason, delta=delta)
            report.changes = (
                {s.name: s.changes for s in settings.sources} | captured.how()
                if plan.mode == stages.CHANGES
                else dict.fromkeys((s.name for s in settings.sources), "read in full"))
            report.warnings += captured.warnings
            report.plan(plan, settings.memory_budget)
        if plan.is_empty:
            report.dwh, report.quarantine = no_changes(), {"left": 0, "arrived": 0}
            assert plan.delta is not None
            report.sources = runs.unchanged_counts(conn, settings, plan.delta)
        else:
            if settings.engine == LOCAL:
                engine = open_engine(settings)
            else:
                with _stage(report, settings.engine, progress):  # joining or starting Ray
                    engine = open_engine(settings)
            report.engine = engine.name
            try:
                _load(conn, db, settings, plan, report, progress, engine)
            finally:
                engine.close()
        for mart in refresh.MARTS:
            with _stage(report, mart.name, progress):
                outcome = refresh.refresh(conn, mart, full=full, groups=plan.sizing.mart_groups)
                report.marts[mart.name] = outcome.as_dict()
        refresh.prune_change_log(conn)
        with _stage(report, "commit", progress):
            capture.store(conn, captured)
            runs.record_run(conn, report, started_at)
            conn.commit()
        if on_citus and plan.mode == stages.EVERYTHING:
            with _stage(report, "analyze", progress):
                report.warnings += citus.analyze_cluster_tables(conn)
        report.warnings += capture.advance(db, captured)
    except CraftmartError as exc:
        runs.rollback(conn)
        runs.record_failure(db, report, started_at, str(exc))
        raise
    except Exception as exc:
        runs.rollback(conn)
        if runs.is_driver_error(exc):
            error = database_error(exc, "the run",
                                   statement_timeout=settings.statement_timeout)
            runs.record_failure(db, report, started_at, str(error))
            raise error from None
        runs.record_failure(db, report, started_at,
                            f"{type(exc).__name__}: {first_line(redact(str(exc)))}")
        raise
    finally:
        runs.close(conn)
    return report


def _changes(
    conn: Connection, db: Database, settings: Settings, captured: capture.Capture
) -> SourceDelta:
    """The changed keys of every source: decoded from a replication slot (``captured``)
    or found by comparing hashes; and, either way, the keys that repeated in their
    source at the last run and the sources that had keyless rows."""
    by_hash = [s for s in settings.sources
               if s.changes == HASH or s.name in captured.compared_by_hash()]
    deltas = [row_hashes.detect(conn, db, by_hash)] if by_hash else []
    if captured.delta is not None:
        deltas.append(captured.delta)
    return merge_deltas(deltas).including(*row_hashes.read_every_run(conn, settings.sources))


def _load(
    conn: Connection, db: Database, settings: Settings, plan: stages.Plan, report: RunReport,
    progress: Progress | None, engine: Engine,
) -> None:
    """The DWH and quarantine made to match the sources, partition by partition."""
    found = stages.Collected()
    # a full pull appends every hash afresh; their key is built once they are all in
    hashes_key = row_hashes.reset(conn) if plan.mode == stages.EVERYTHING else None
    works = [stages.partition_work(db, settings, plan, p) for p in range(plan.partitions)]
    computing = engine.map(works)
    try:
        for partition in range(plan.partitions):
            # the engine pulls, validates and reduces the partition (here, or in a Ray
            # task); what it found is written here, in the run's transaction
            with _stage(report, "pull", progress, partition, plan.partitions):
                result = next(computing)
            with _stage(report, "validate", progress, partition, plan.partitions):
                stages.apply_partition(conn, plan, result, found)
            if engine.name == LOCAL:  # computed during the wait: time its steps as they went
                report.stages["pull"] -= result.seconds["validate"]
                report.stages["validate"] += result.seconds["validate"]
            else:
                report.task_peak_rss_mb = max(report.task_peak_rss_mb, result.peak_rss_mb)
            del result
    finally:
        computing.close()  # a run stopped midway: the engine drops the work ahead
    if hashes_key is not None:  # its partitions staged their quarantine rows
        with _stage(report, "validate", progress):
            stages.write_quarantine(conn, found)
            hashes_key.build(conn)
    dims = stages.resolve_dimensions(conn, db, settings, plan, found,
                                     lambda name: _stage(report, name, progress))
    orders = {"inserted": 0, "updated": 0, "deleted": 0}
    bulk = plan.first_load and found.staged_orders >= dwh.BULK_LOAD_ROWS
    with dwh.bulk_load(conn, "dwh", "f_order", enabled=bulk):
        for partition in range(plan.partitions):
            with _stage(report, "write", progress, partition, plan.partitions):
                for name, n in stages.write_partition(conn, plan, partition).items():
                    orders[name] += n
    with _stage(report, "write", progress):
        stages.finish(conn, settings, plan, dims)
    report.pulled = found.pulled
    report.dimension_ranges = found.dimension_ranges
    report.spilled_candidates = sum(found.spilled.values())
    report.dwh = stages.dwh_counts(dims, orders)
    report.quarantine = found.quarantine
    report.sources = stages.source_counts(conn, settings, plan, found)
