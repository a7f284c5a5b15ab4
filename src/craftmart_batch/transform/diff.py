"""New, changed and deleted rows of one table, target against current, by natural key."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

logger = logging.getLogger(__name__)

_EXISTS = "__exists"
_CURRENT = "__current"


@dataclass(frozen=True)
class TableDiff:
    """What must be written for one table to go from current to target.

    ``inserts`` holds target rows (key + attributes) whose key is new, ``updates``
    target rows whose key exists but some attribute differs, and ``deleted`` current
    rows (with all their columns, surrogate id included) whose key is no longer in
    the target.
    """

    inserts: pl.DataFrame
    updates: pl.DataFrame
    deleted: pl.DataFrame

    @property
    def upserts(self) -> pl.DataFrame:
        """New and changed target rows together."""
        return pl.concat([self.inserts, self.updates])

    @property
    def inserted(self) -> int:
        return self.inserts.height

    @property
    def updated(self) -> int:
        return self.updates.height

    @property
    def is_empty(self) -> bool:
        return self.inserts.is_empty() and self.updates.is_empty() and self.deleted.is_empty()


def diff_table(
    current: pl.DataFrame,
    target: pl.DataFrame,
    key: Sequence[str],
    attrs: Sequence[str],
) -> TableDiff:
    """Compare ``target`` with ``current`` on ``key``; nulls compare equal everywhere.

    A row counts as changed only when some attribute differs, so an unchanged warehouse
    yields an empty diff and nothing is written.
    """
    key, attrs = list(key), list(attrs)
    if current.is_empty():  # a first load: everything is new (and not copied)
        inserts = target.select(*key, *attrs)
        return TableDiff(inserts=inserts, updates=inserts.clear(),
                         deleted=current)
    current_side = current.select(
        *key,
        *(pl.col(a).alias(a + _CURRENT) for a in attrs),
        pl.lit(True).alias(_EXISTS),
    )
    joined = target.select(*key, *attrs).join(
        current_side, on=key, how="left", nulls_equal=True
    )
    exists = pl.col(_EXISTS).fill_null(False)
    differs = (
        pl.any_horizontal(pl.col(a).ne_missing(pl.col(a + _CURRENT)) for a in attrs)
        if attrs
        else pl.lit(False)
    )
    flagged = joined.with_columns(exists.alias(_EXISTS), differs.alias("__differs"))
    columns = [*key, *attrs]
    return TableDiff(
        inserts=flagged.filter(~pl.col(_EXISTS)).select(columns),
        updates=flagged.filter(pl.col(_EXISTS) & pl.col("__differs")).select(columns),
        deleted=current.join(target.select(key), on=key, how="anti", nulls_equal=True),
    )
