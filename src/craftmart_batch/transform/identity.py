"""Identity (SPEC §2): valid order rows -> deduplicated dimension and fact frames."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl

from .validate import normalised_email

logger = logging.getLogger(__name__)

CRAFTSMAN_KEY = ("craftsman_email",)
CUSTOMER_KEY = ("customer_email",)
PRODUCT_KEY = ("craftsman_email", "product_name", "product_description")
ORDER_KEY = ("source_name", "source_order_id")

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


def latest_per_key(rows: pl.LazyFrame, key: tuple[str, ...], attrs: tuple[str, ...]) -> pl.LazyFrame:
    """One row per ``key`` whose ``attrs`` come from the most recent row (``RECENCY``)."""
    return (
        rows.sort(list(RECENCY), nulls_last=False)
        .group_by(list(key), maintain_order=False)
        .agg(pl.col(list(attrs)).last())
        .sort(list(key), nulls_last=True)
    )


def build_warehouse(valid: pl.DataFrame) -> Warehouse:
    """Deduplicate valid canonical rows into dimensions and facts.

    People are one row per normalised email, however many sources and spellings;
    products one row per craftsman, name and description; orders one row per
    (source, order key). Emails are stored normalised.
    """
    rows = valid.lazy().with_columns(
        normalised_email("craftsman_email").alias("craftsman_email"),
        normalised_email("customer_email").alias("customer_email"),
    )
    craftsmen = latest_per_key(rows, CRAFTSMAN_KEY, CRAFTSMAN_ATTRS)
    customers = latest_per_key(rows, CUSTOMER_KEY, CUSTOMER_ATTRS)
    products = latest_per_key(rows, PRODUCT_KEY, PRODUCT_ATTRS)
    orders = rows.select(*ORDER_KEY, *ORDER_ATTRS).sort(list(ORDER_KEY))
    craftsmen_df, customers_df, products_df, orders_df = pl.collect_all(
        [craftsmen, customers, products, orders]
    )
    return Warehouse(craftsmen_df, customers_df, products_df, orders_df)
