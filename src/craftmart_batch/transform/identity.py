"""Identity (SPEC §2): valid order rows -> deduplicated dimension and fact frames."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl

from .validate import ORDER_KEY, normalised_email

logger = logging.getLogger(__name__)

CRAFTSMAN_KEY = ("craftsman_email",)
CUSTOMER_KEY = ("customer_email",)
PRODUCT_KEY = ("craftsman_email", "product_name", "product_description")

CRAFTSMAN_ATTRS = ("craftsman_name", "craftsman_address", "craftsman_birthday")
CUSTOMER_ATTRS = ("customer_name", "customer_address", "customer_birthday")
PRODUCT_ATTRS = ("product_type", "product_price")
ORDER_ATTRS = (
    "craftsman_email",
    "customer_email",
    "product_name",
    "product_description",
    "order_created_date",
    "order_completion_date",
    "order_status",
    "product_price",
)

#: Which row wins when valid rows disagree about an entity: the latest order, then the
#: later source, then the larger source order key (unique once orders are deduplicated).
RECENCY = ("order_created_date", "source_rank", "source_order_id")


@dataclass(frozen=True)
class Warehouse:
    """The DWH as the sources say it should be, by natural key (no surrogate ids)."""

    craftsmen: pl.DataFrame
    customers: pl.DataFrame
    products: pl.DataFrame
    orders: pl.DataFrame


@dataclass(frozen=True)
class RecencyOrder:
    """Rows ordered by ``RECENCY``: ``rows[by_recency]`` is that order, and
    ``position[i]`` is where row ``i`` stands in it (the inverse permutation)."""

    by_recency: pl.Series
    position: pl.Series

    @classmethod
    def of(cls, rows: pl.DataFrame) -> RecencyOrder:
        by_recency = rows.select(pl.arg_sort_by(list(RECENCY)))[:, 0]
        position = pl.zeros(rows.height, pl.UInt32, eager=True).scatter(
            by_recency, pl.int_range(rows.height, dtype=pl.UInt32, eager=True)
        )
        return cls(by_recency, position)


def latest_per_key(
    rows: pl.DataFrame, order: RecencyOrder, key: tuple[str, ...], attrs: tuple[str, ...]
) -> pl.DataFrame:
    """One row per ``key`` whose ``attrs`` come from its most recent row.

    Keys are grouped by their dictionary codes (a Categorical cast: one copy of each
    distinct text, not of every row's), the most recent position of each is kept, and
    only those rows' attributes are gathered. Null key parts group together.
    """
    codes = rows.select(
        *(pl.col(k).cast(pl.Categorical).to_physical() for k in key),
        order.position.alias("__position"),
    )
    latest = codes.group_by(list(key)).agg(pl.col("__position").max())["__position"]
    del codes
    return rows.select(*key, *attrs)[order.by_recency.gather(latest)].sort(
        list(key), nulls_last=True
    )


def build_warehouse(valid: pl.DataFrame) -> Warehouse:
    """Deduplicate valid canonical rows into dimensions and facts.

    People are one row per normalised email, however many sources and spellings;
    products one row per craftsman, name and description; orders one row per
    (source, order key). Emails are stored normalised. Dimension frames come sorted
    by key; the order frame in no particular order (it shares the input's memory).
    """
    rows = valid.with_columns(
        normalised_email("craftsman_email").alias("craftsman_email"),
        normalised_email("customer_email").alias("customer_email"),
    )
    order = RecencyOrder.of(rows)  # one order for all three dimensions
    return Warehouse(
        craftsmen=latest_per_key(rows, order, CRAFTSMAN_KEY, CRAFTSMAN_ATTRS),
        customers=latest_per_key(rows, order, CUSTOMER_KEY, CUSTOMER_ATTRS),
        products=latest_per_key(rows, order, PRODUCT_KEY, PRODUCT_ATTRS),
        orders=rows.select(*ORDER_KEY, *ORDER_ATTRS),
    )


@dataclass(frozen=True)
class SurrogateIds:
    """Every entity's surrogate id by natural key, as the DWH holds them after the write."""

    craftsmen: pl.DataFrame  # craftsman_id, craftsman_email
    customers: pl.DataFrame  # customer_id, customer_email
    products: pl.DataFrame  # product_id, craftsman_email, product_name, product_description
