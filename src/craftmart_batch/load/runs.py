"""Run bookkeeping: what a run did (``RunReport``), its per-source counts, and its row in
``craftmart.runs``, for a success in the run's transaction, for a failure in one of its own."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from .._database import Database, connect, first_line, redact
from .._sql import Connection, execute, fetch_frame, fetch_value
from ..config import Settings
from ..transform.changes import SourceDelta

logger = logging.getLogger(__name__)


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
    #: partitions of the source rows, and groups of entities the marts were built in
    partitions: int = 0
    mart_groups: int = 0
    #: ranges of their keys the dimensions were resolved in (the most of the three; 1:
    #: their candidates were held whole) and candidate rows spilled to the warehouse
    dimension_ranges: int = 0
    spilled_candidates: int = 0
    #: the memory budget the partitions were planned for (MiB)
    memory_budget_mb: int = 0
    #: how each source's changes were found: "hash", "logical", "hash (why)"
    changes: dict[str, str] = field(default_factory=dict)
    #: what the user should know although the run succeeded, one line each
    warnings: list[str] = field(default_factory=list)
    #: where the partitions were computed: "local" or "ray"
    engine: str = "local"
    #: the peak memory (MiB) of the processes that computed partitions elsewhere
    #: (Ray workers), the largest one; 0 when they were computed here
    task_peak_rss_mb: int = 0

    def plan(self, plan: Any, budget: int) -> None:
        """Note what the run planned (``stages.Plan``) under a ``budget`` in bytes."""
        self.pull = plan.mode
        self.pull_reason = plan.reason
        self.partitions = plan.sizing.partitions
        self.mart_groups = plan.sizing.mart_groups
        self.memory_budget_mb = budget // 2**20

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
            "partitions": self.partitions,
            "mart_groups": self.mart_groups,
            "dimension_ranges": self.dimension_ranges,
            "spilled_candidates": self.spilled_candidates,
            "memory_budget_mb": self.memory_budget_mb,
            "changes": self.changes,
            "warnings": self.warnings,
            "engine": self.engine,
            "task_peak_rss_mb": self.task_peak_rss_mb,
        }


def stored_counts(
    conn: Connection, settings: Settings, delta: SourceDelta
) -> dict[str, dict[str, int]]:
    """Rows read, loaded and quarantined per source, as the DWH now holds them."""
    loaded, quarantined = (
        dict(fetch_frame(conn, f"select source_name, count(*) from {table} group by 1")
             .iter_rows())
        for table in ("dwh.f_order", "craftmart.quarantine")
    )
    read = dict(delta.rows)
    for name in delta.uncounted:  # read by logical decoding: what the warehouse accounts for
        read[name] = loaded.get(name, 0) + quarantined.get(name, 0)
    return by_source(settings, read, loaded, quarantined)


def unchanged_counts(
    conn: Connection, settings: Settings, delta: SourceDelta
) -> dict[str, dict[str, int]]:
    """Per-source counts of a run that changed nothing: the last successful run's loaded
    and quarantined rows (only a run writes the DWH, and none has since), without
    counting the DWH again; counted as ``stored_counts`` when no run recorded them."""
    last = fetch_value(conn, """
        select stats->'sources' from craftmart.runs
        where outcome = 'success' order by run_id desc limit 1
    """)
    previous = json.loads(last) if isinstance(last, str) else last
    if not isinstance(previous, dict) or set(previous) != {s.name for s in settings.sources}:
        return stored_counts(conn, settings, delta)
    loaded = {name: int(c["loaded"]) for name, c in previous.items()}
    quarantined = {name: int(c["quarantined"]) for name, c in previous.items()}
    read = dict(delta.rows)
    for name in delta.uncounted:
        read[name] = loaded[name] + quarantined[name]
    return by_source(settings, read, loaded, quarantined)


def by_source(
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


def record_run(conn: Connection, report: RunReport, started_at: float) -> None:
    _insert_run(conn, report, started_at, "success", report.as_dict())


def _insert_run(
    conn: Connection, report: RunReport, started_at: float, outcome: str, stats: dict[str, Any]
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


def record_failure(db: Database, report: RunReport, started_at: float, error: str) -> None:
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
        close(conn)


def is_driver_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("adbc_driver", "pyarrow")) or isinstance(exc, RuntimeError)


def rollback(conn: Connection) -> None:
    try:
        conn.rollback()
    except Exception:  # the connection may be gone; the server rolls back on its own
        logger.debug("rollback failed", exc_info=True)


def close(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:
        logger.debug("close failed", exc_info=True)
