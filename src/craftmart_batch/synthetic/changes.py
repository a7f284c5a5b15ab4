"""Realistic changes to filled sources (``generate --changes K``), in one transaction."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

import polars as pl

from .._database import quote_ident
from .._sql import execute, fetch_frame, stage
from ..errors import CraftmartError
from .change_plan import LAYOUTS, PARENT_KEYS, allocate, canonical, change_plan
from .change_rows import CUSTOMER_TEXTS_OF, TEXTS, TEXTS_OF, change_source, texts_added
from .common import D1, SOURCES, TABLES, Shape, check_shape, counts_text, qualified, stream
from .sources import create_sources, ingest, sync_identities

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangeSummary:
    """What ``apply_changes`` did: the number of changes of each kind, and row counts."""

    changes: int
    seed: int
    applied: dict[str, int]
    rows_inserted: int
    rows_deleted: int
    elapsed_seconds: float
    orders_delta: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.applied.values())

    def __str__(self) -> str:
        return "\n".join([
            f"applied {self.total:,} changes (seed {self.seed}) in {self.elapsed_seconds:.1f} s: "
            f"{self.rows_inserted:,} orders added, {self.rows_deleted:,} deleted",
            "  " + counts_text(self.applied),
        ])


def apply_changes(conn: Any, changes: int, seed: int, *, shape: Shape = "real") -> ChangeSummary:
    """Apply ``changes`` realistic changes to the sources, in one transaction.

    A mix (CHANGE_MIX) of new orders (recent ones, and late ones in old months), status
    moves along created -> in progress -> delivery -> done, orders moving month or
    customer, customer address changes, product price or type changes, deleted orders
    (order rows only: parents are ``on delete restrict``), valid rows turning invalid
    and invalid rows fixed. A kind that runs out of candidates hands its share to new
    recent orders, so ``summary.total == changes`` whenever a valid order exists.
    Deterministic for the same source contents and ``seed``. Commits on success, rolls
    back on failure; raises ``CraftmartError`` when the sources hold no orders.
    ``shape`` is that of the new addresses of customers who move (see ``generate``);
    all else a change writes is copied or derived from rows already there.
    """
    if changes < 0:
        raise CraftmartError(f"the number of changes must not be negative, got {changes}")
    shape = check_shape(shape)
    started = time.perf_counter()
    try:
        create_sources(conn)
        tables = _read_sources(conn)
        canon = [canonical(source, tables) for source in SOURCES]
        if not sum(c.height for c in canon):
            raise CraftmartError("the sources hold no orders; generate them first")
        plan = change_plan(stream(seed, 9), canon, allocate(changes))
        last = pl.concat([tables[LAYOUTS[s].orders]["order_created_date"] for s in SOURCES])
        latest = cast("int | None", last.cast(pl.Int32).max())  # days since 1970-01-01
        today = D1 if latest is None else latest
        inserted, deleted = {}, {}
        for s, source in enumerate(SOURCES):
            writes, inserted[source], deleted[source] = change_source(
                stream(seed, 10, s), s, tables, canon[s], plan, today,
                stream(seed, 11, s) if shape == "real" else None)
            # the texts of appended rows are read before the rows they come from go
            writes = [(table, operation, _texts_added(conn, table, frame)
                       if operation == "append" else frame)
                      for table, operation, frame in writes]
            for table, operation, frame in writes:
                _write(conn, table, operation, frame)
        sync_identities(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    elapsed = time.perf_counter() - started
    logger.info("applied %d changes in %.1f s", changes, elapsed)
    return ChangeSummary(
        changes=changes,
        seed=seed,
        applied=plan.applied,
        rows_inserted=sum(inserted.values()),
        rows_deleted=sum(deleted.values()),
        elapsed_seconds=elapsed,
        orders_delta={s: inserted[s] - deleted[s] for s in SOURCES},
    )


def _write(conn: Any, table: str, operation: str, frame: pl.DataFrame) -> None:
    """``update`` parent rows by key (identity columns untouched), ``delete`` order rows
    by key, ``append`` order rows with their ids (binary COPY)."""
    if not frame.height:
        return
    target = qualified(table)
    if operation == "append":
        ingest(conn, table, frame)
        return
    if operation == "update":
        key = PARENT_KEYS[table]
        staged = stage(conn, "craftmart_generate_rows", frame)
        sets = ", ".join(f"{quote_ident(c)} = s.{quote_ident(c)}"
                         for c in frame.columns if c not in TABLES[table])
        execute(conn, f"update {target} as t set {sets} from {staged} as s "
                      f"where t.{quote_ident(key)} = s.{quote_ident(key)}")
    else:
        key = TABLES[table][0]
        staged = stage(conn, "craftmart_generate_keys", frame)
        execute(conn, f"delete from {target} as t using {staged} as s "
                      f"where t.{quote_ident(key)} = s.{quote_ident(key)}")
    execute(conn, f"drop table {staged}")


def _read_sources(conn: Any) -> dict[str, pl.DataFrame]:
    """Every source table in key order; order tables without their ``TEXTS``."""
    orders = {layout.orders for layout in LAYOUTS.values()}
    tables = {}
    for table, identity in TABLES.items():
        columns = "*"
        if table in orders:
            columns = ", ".join(quote_ident(c) for c in _columns(conn, table) if c not in TEXTS)
        tables[table] = fetch_frame(
            conn, f"select {columns} from {qualified(table)} order by {quote_ident(identity[0])}")
    return tables


def _columns(conn: Any, table: str) -> list[str]:
    return fetch_frame(conn, f"select * from {qualified(table)} limit 0").columns


def _texts_added(conn: Any, table: str, rows: pl.DataFrame) -> pl.DataFrame:
    """Appended order rows with the texts of the rows they name (``texts_added``)."""
    columns = _columns(conn, table)
    if not rows.height:
        return rows.select(c for c in rows.columns if c in columns)
    key = TABLES[table][0]
    keys = pl.concat([rows[TEXTS_OF], rows[CUSTOMER_TEXTS_OF]]).unique().alias(key)
    staged = stage(conn, "craftmart_generate_texts", keys.to_frame())
    texts = ", ".join(f"t.{quote_ident(c)}" for c in columns if c in TEXTS)
    found = fetch_frame(conn, f"select t.{quote_ident(key)}, {texts} from {qualified(table)}"
                              f" as t join {staged} as s using ({quote_ident(key)})")
    execute(conn, f"drop table {staged}")
    return texts_added(rows, found, key, columns)
