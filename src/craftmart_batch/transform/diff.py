"""New, changed and deleted rows, target against current, by natural key: per table and for
the whole DWH, or the part of it a set of changed orders reaches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from .identity import (
    CRAFTSMAN_ATTRS,
    CRAFTSMAN_KEY,
    CUSTOMER_ATTRS,
    CUSTOMER_KEY,
    PRODUCT_ATTRS,
    PRODUCT_KEY,
    Warehouse,
)

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


@dataclass(frozen=True)
class WarehouseDiff:
    craftsmen: TableDiff
    customers: TableDiff
    products: TableDiff
    orders: TableDiff

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            table: {"inserted": d.inserted, "updated": d.updated, "deleted": d.deleted.height}
            for table, d in zip(
                DWH_TABLES, (self.craftsmen, self.customers, self.products, self.orders),
                strict=True,
            )
        }


DWH_TABLES = ("d_craftsman", "d_customer", "d_product", "f_order")


def no_changes() -> dict[str, dict[str, int]]:
    """``WarehouseDiff.counts`` of a run that changed nothing."""
    return {table: {"inserted": 0, "updated": 0, "deleted": 0} for table in DWH_TABLES}


def diff_dimensions(current: Warehouse, target: Warehouse) -> WarehouseDiff:
    """What differs between the DWH's dimensions and the sources', by natural key (the
    facts are diffed partition by partition: ``orders`` is an empty diff)."""
    return WarehouseDiff(
        craftsmen=diff_table(current.craftsmen, target.craftsmen, CRAFTSMAN_KEY, CRAFTSMAN_ATTRS),
        customers=diff_table(current.customers, target.customers, CUSTOMER_KEY, CUSTOMER_ATTRS),
        products=diff_table(current.products, target.products, PRODUCT_KEY, PRODUCT_ATTRS),
        orders=TableDiff(pl.DataFrame(), pl.DataFrame(), pl.DataFrame()),
    )


@dataclass(frozen=True)
class Scope:
    """The part of the DWH's dimensions a set of changed orders can reach, read in the
    run's transaction.

    ``current`` holds the entities they touch: the craftsmen, customers and products
    they named before (per ``f_order``) and name now. An entity's attributes come from
    its most recent valid row (SPEC §2); its rows are its changed rows and its unchanged
    ones, and of the unchanged ones only the most recent can win. ``latest_unchanged``
    holds that row's key for every touched entity: with the changed rows, the rows that
    resolve every touched entity.
    """

    current: Warehouse
    craftsmen: pl.DataFrame  # craftsman_email of every touched craftsman
    customers: pl.DataFrame  # customer_email of every touched customer
    products: pl.DataFrame  # PRODUCT_KEY of every touched product
    latest_unchanged: pl.DataFrame  # source_name, source_order_id

    def restrict(self, target: Warehouse) -> Warehouse:
        """``target``'s dimensions, built from the scope's rows, cut down to the touched
        entities: what the diff compares with ``current``."""
        return Warehouse(
            craftsmen=target.craftsmen.join(self.craftsmen, on=list(CRAFTSMAN_KEY), how="semi"),
            customers=target.customers.join(self.customers, on=list(CUSTOMER_KEY), how="semi"),
            products=target.products.join(self.products, on=list(PRODUCT_KEY), how="semi",
                                          nulls_equal=True),
            orders=target.orders,
        )
