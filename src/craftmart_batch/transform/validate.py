"""Validity rules (SPEC §3) as Polars expressions: valid rows, and quarantine rows with reasons."""

from __future__ import annotations

import datetime as dt
import logging

import polars as pl

from ..config import CANONICAL_FIELDS

logger = logging.getLogger(__name__)

STATUSES = ("created", "in progress", "delivery", "done")
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"
ORDER_KEY = ("source_name", "source_order_id")

#: Rule 7: the values the warehouse can hold and compute with. Every mart column fits
#: any valid row within these bounds (transform/marts.py).
FIRST_DATE = dt.date(1900, 1, 1)
LAST_DATE = dt.date(2999, 12, 31)
MAX_PRICE = 10_000_000

#: The canonical date fields. A source value outside [FIRST_DATE, LAST_DATE] (infinite
#: ones and those no reader can decode included) arrives as null, its raw text kept in
#: the ``out_of_range`` column (see ``extract.source_query``).
DATE_FIELDS = tuple(name for name, kind in CANONICAL_FIELDS.items() if kind == "date")
OUT_OF_RANGE = "out_of_range"
OUT_OF_RANGE_SCHEMA = pl.Struct({name: pl.String for name in DATE_FIELDS})


def btrim(expr: pl.Expr) -> pl.Expr:
    """PostgreSQL's ``btrim(x)``: strips spaces only, not other whitespace."""
    return expr.str.strip_chars(" ")


def normalised_email(column: str) -> pl.Expr:
    """Identity of a person: ``lower(btrim(email))``."""
    return btrim(pl.col(column)).str.to_lowercase()


def normalised_status() -> pl.Expr:
    return btrim(pl.col("order_status")).str.to_lowercase()


def _email_invalid(column: str) -> pl.Expr:
    return ~btrim(pl.col(column)).str.contains(EMAIL_PATTERN).fill_null(False)


def _date_out_of_range(field: str) -> pl.Expr:
    """Whether the source held a value for ``field`` that is out of range (read as null)."""
    return pl.col(OUT_OF_RANGE).str.contains(f'"{field}"', literal=True).fill_null(False)


#: Every rule, in the order reasons are listed. A rule's expression is true when broken.
RULES: dict[str, pl.Expr] = {
    "order_key_missing": pl.col("source_order_id").is_null(),
    "created_date_missing": (
        pl.col("order_created_date").is_null() & ~_date_out_of_range("order_created_date")
    ),
    "status_unknown": ~normalised_status().is_in(STATUSES).fill_null(False),
    "completion_before_created": (
        pl.col("order_completion_date") < pl.col("order_created_date")
    ).fill_null(False),
    "date_out_of_range": pl.col(OUT_OF_RANGE).is_not_null(),
    "price_not_positive": ~(pl.col("product_price") > 0).fill_null(False),
    "price_out_of_range": (pl.col("product_price") > MAX_PRICE).fill_null(False),
    "craftsman_email_invalid": _email_invalid("craftsman_email"),
    "customer_email_invalid": _email_invalid("customer_email"),
    "missing_reference": pl.col("missing_reference").is_not_null(),
}
DUPLICATE_RULE = "duplicate_order_key"
RULE_NAMES = (*RULES, DUPLICATE_RULE)


def validate(canonical: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split canonical rows into valid rows and quarantine rows.

    Valid rows keep every canonical column, with ``order_status`` normalised. Quarantine
    rows are ``source_name, source_order_id, reasons (list of rule names), raw (JSON of
    the row as read: an out-of-range value as the source's text), out_of_range (the
    fields that broke rule 7, empty when none)``. Every input row lands in exactly one
    of the two: per source, rows read = valid + quarantined.

    Two rows of one source with the same order key are one order: the first valid one
    (in a content order, so the choice does not depend on row order) is kept and the
    others are quarantined as ``duplicate_order_key``.
    """
    flagged = _mark_duplicates(
        canonical.with_columns(pl.any_horizontal(*RULES.values()).alias(_BROKEN))
    )
    rejected = pl.col(_BROKEN) | pl.col(_DUPLICATE)
    valid = flagged.filter(~rejected).select(
        pl.exclude(_BROKEN, _DUPLICATE, "missing_reference", OUT_OF_RANGE)
    ).with_columns(normalised_status().alias("order_status"))
    # Reasons are spelled out for the rejected rows only: a list per row is costly.
    reasons = [pl.when(expr).then(pl.lit(name)) for name, expr in RULES.items()]
    reasons.append(pl.when(pl.col(_DUPLICATE)).then(pl.lit(DUPLICATE_RULE)))
    raw_dates = pl.col(OUT_OF_RANGE).str.json_decode(OUT_OF_RANGE_SCHEMA)
    raw_fields = [
        pl.coalesce(raw_dates.struct.field(name), pl.col(name).cast(pl.String)).alias(name)
        if name in DATE_FIELDS
        else pl.col(name)
        for name in ["source_order_id", *CANONICAL_FIELDS]
    ]
    out_of_range = [
        *(pl.when(_date_out_of_range(name)).then(pl.lit(name)) for name in DATE_FIELDS),
        pl.when(RULES["price_out_of_range"]).then(pl.lit("product_price")),
    ]
    quarantine = flagged.filter(rejected).select(
        "source_name",
        "source_order_id",
        pl.concat_list(reasons).list.drop_nulls().alias("reasons"),
        pl.struct(raw_fields).struct.json_encode().alias("raw"),
        pl.concat_list(out_of_range).list.drop_nulls().alias(OUT_OF_RANGE),
    )
    return valid, quarantine


_BROKEN = "__broken"
_DUPLICATE = "__duplicate"


def _mark_duplicates(frame: pl.DataFrame) -> pl.DataFrame:
    """Flag all but one row of each repeated order key (the first unbroken one)."""
    has_key = pl.col("source_order_id").is_not_null()
    repeated = pl.struct(*ORDER_KEY).is_duplicated() & has_key
    if not frame.select(repeated.any()).item():
        return frame.with_columns(pl.lit(False).alias(_DUPLICATE))
    # Normalised values first, so the spelling of an email or status never decides
    # which row stands for the order; the raw content then breaks the remaining ties.
    content = [c for c in frame.columns if c != _BROKEN]
    ranked = frame.sort(
        [
            pl.col(_BROKEN),
            normalised_email("customer_email"),
            normalised_email("craftsman_email"),
            normalised_status(),
            *content,
        ],
        nulls_last=True,
    )
    first_of_key = pl.int_range(pl.len()).over(ORDER_KEY) == 0
    return ranked.with_columns((has_key & ~first_of_key).alias(_DUPLICATE))
