"""What every part of the synthetic marketplace shares: sources, rules, tables, calendar."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from typing import Literal

import numpy as np
import polars as pl

from .._database import quote_ident
from ..transform.validate import STATUSES as STATUSES  # the generator plants what they reject

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

# How wide the text columns are: "real" follows production (long descriptions, full
# street addresses), "narrow" is the short text of quick tests.
Shape = Literal["real", "narrow"]
SHAPES: tuple[Shape, ...] = ("real", "narrow")

SOURCES = ("source1", "source2", "source3", "external_source")
SOURCE_SHARES = (0.30, 0.25, 0.25, 0.20)
FIRST_DAY = date(2021, 1, 1)
LAST_DAY = date(2024, 12, 31)
INVALID_SHARE = 0.02

# The rules of SPEC §3, in its order (rule 7 as two kinds, a date and a price out of
# range); GenerateSummary.invalid counts planted rows per rule.
RULES = (
    "created_date_null",
    "status_unknown",
    "completion_before_created",
    "price_not_positive",
    "email_malformed",
    "product_missing",
    "date_out_of_range",
    "price_out_of_range",
)
CREATED_NULL, STATUS, COMPLETION, PRICE, EMAIL, PRODUCT, DATE_RANGE, PRICE_RANGE = range(
    len(RULES))

# Rule 7 (bounds in transform.validate: FIRST_DATE, LAST_DATE, MAX_PRICE): planted
# dates are a millennium off (a mistyped year) or just before 1900, planted prices just
# over MAX_PRICE or the largest bigint.
MILLENNIUM = 365_243  # days in 1000 years, near enough
BIGINT_MAX = 2**63 - 1

# Source tables in insert order (parents first), with their identity columns; the
# first is the table's primary key.
TABLES: dict[str, tuple[str, ...]] = {
    "source1.craft_market_wide": ("id", "craftsman_id", "product_id", "order_id", "customer_id"),
    "source2.craft_market_masters_products": ("craftsman_id", "product_id"),
    "source2.craft_market_orders_customers": ("order_id", "customer_id"),
    "source3.craft_market_craftsmans": ("craftsman_id",),
    "source3.craft_market_customers": ("customer_id",),
    "source3.craft_market_orders": ("order_id", "product_id"),
    "external_source.customers": ("customer_id",),
    "external_source.craft_products_orders": ("id", "craftsman_id", "product_id", "order_id"),
}
EPOCH = date(1970, 1, 1)
D0 = (FIRST_DAY - EPOCH).days
D1 = (LAST_DAY - EPOCH).days
_MONTHS = np.arange("2021-01", "2025-02", dtype="datetime64[M]").astype("datetime64[D]")
MONTH_START = _MONTHS[:-1].astype(np.int64)
MONTH_LEN = np.diff(_MONTHS).astype(np.int64)

GARBAGE_STATUSES = ("cancelled", "unknown", "", "in-progress", "returned", "don", " N/A ")


def check_shape(shape: str) -> Shape:
    """``shape`` when it is one of SHAPES; else ``ValueError`` naming the choices."""
    if shape not in SHAPES:
        raise ValueError(f"unknown row shape {shape!r}; choose one of {', '.join(SHAPES)}")
    return shape


def stream(seed: int, *part: int) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, part)."""
    seed %= 2**64  # any int, negative ones included
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *part]))


def as_dates(values: np.ndarray | pl.Series) -> pl.Series:
    """Days since 1970-01-01 as a Date series."""
    return pl.Series(values, dtype=pl.Int32).cast(pl.Date)


def pick(pool: tuple[str, ...], index: np.ndarray) -> pl.Series:
    """The strings of ``pool`` at ``index``."""
    return pl.Series(pool, dtype=pl.String).gather(index)


def qualified(table: str) -> str:
    """``schema.table`` with both parts quoted."""
    schema, name = table.split(".")
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def counts_text(counts: dict[str, int]) -> str:
    """``name 1,234, other 5`` for a summary line."""
    return ", ".join(f"{name} {count:,}" for name, count in counts.items())
