"""Which rows, customers and products a batch of changes takes, and how to spot them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from ..transform.validate import FIRST_DATE, LAST_DATE, MAX_PRICE
from .common import (
    COMPLETION,
    CREATED_NULL,
    DATE_RANGE,
    EMAIL,
    PRICE,
    PRICE_RANGE,
    PRODUCT,
    RULES,
    STATUS,
    STATUSES,
)
from .world import DOMAINS

logger = logging.getLogger(__name__)


# The share of each kind of change in a batch of changes.
CHANGE_MIX = {
    "new_orders_recent": 0.20,
    "new_orders_late": 0.08,
    "status_moves": 0.18,
    "month_moves": 0.06,
    "customer_moves": 0.06,
    "customer_address_changes": 0.08,
    "product_changes": 0.08,
    "order_deletions": 0.08,
    "invalid_order_deletions": 0.02,
    "rows_made_invalid": 0.08,
    "rows_made_valid": 0.08,
}


# Kinds that pick order rows, by code (the row's `_kind`).
ROW_KINDS = ("status_moves", "month_moves", "customer_moves", "order_deletions",
              "invalid_order_deletions", "rows_made_invalid", "rows_made_valid")


MOVE, SHIFT, REHOME, DELETE, DELETE_INVALID, SPOIL, FIX = range(len(ROW_KINDS))


_EMAIL_RE = r"^[^@\s]+@[^@\s]+$"


_DOMAIN_AT_END = "(?i)(" + "|".join(d.replace(".", r"\.") for d in
                                    sorted(DOMAINS, key=len, reverse=True)) + ")$"


@dataclass(frozen=True)
class Layout:
    """Where one source keeps what a change touches."""

    orders: str
    pk: str
    customers: str | None = None  # a customer table (else customer columns on the order)
    craftsmen: str | None = None  # a craftsman table (else inline, or on masters)
    masters: str | None = None  # source2's craftsman-with-product rows
    order_ids: tuple[str, ...] = ()  # further per-order identity columns to renumber


LAYOUTS = {
    "source1": Layout("source1.craft_market_wide", "id", order_ids=("order_id",)),
    "source2": Layout("source2.craft_market_orders_customers", "order_id",
                       masters="source2.craft_market_masters_products"),
    "source3": Layout("source3.craft_market_orders", "order_id",
                       customers="source3.craft_market_customers",
                       craftsmen="source3.craft_market_craftsmans"),
    "external_source": Layout("external_source.craft_products_orders", "id",
                               customers="external_source.customers", order_ids=("order_id",)),
}


PARENT_KEYS = {
    "source2.craft_market_masters_products": "craftsman_id",
    "source3.craft_market_craftsmans": "craftsman_id",
    "source3.craft_market_customers": "customer_id",
    "external_source.customers": "customer_id",
}


def email_ok(email: pl.Expr) -> pl.Expr:
    return email.str.strip_chars(" ").str.contains(_EMAIL_RE).fill_null(True)


def date_ok(day: pl.Expr) -> pl.Expr:
    """A date the warehouse can hold (SPEC §3 rule 7), or none."""
    return day.is_between(pl.lit(FIRST_DATE), pl.lit(LAST_DATE)).fill_null(True)


def price_ok(price: pl.Expr) -> pl.Expr:
    """A price within both price rules (SPEC §3 rules 4 and 7), or none."""
    return price.is_between(1, MAX_PRICE).fill_null(True)


#: The dates of an order row and of the people it joins, as canonical() reads them.
DATES = ("order_created_date", "order_completion_date", "craftsman_birthday",
         "customer_birthday")


def repaired(email: pl.Expr, fallback: pl.Expr) -> pl.Expr:
    """Undo a typo in an address where the typo shows how; else a new valid address."""
    e = email.str.strip_chars(" ")
    at = e.str.count_matches("@", literal=True)
    fixed = (
        pl.when(at >= 2).then(e.str.replace("@", ".", literal=True))
        .when(e.str.contains(" ", literal=True)).then(e.str.replace(" ", ".", literal=True))
        .when(at == 0).then(e.str.replace(_DOMAIN_AT_END, "@${1}"))
        .otherwise(e)
    )
    return pl.when(fixed.str.contains(_EMAIL_RE)).then(fixed).otherwise(fallback)


def canonical(source: str, t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Per order row (in table order): the fields validity depends on, and its rules."""
    lay = LAYOUTS[source]
    o = t[lay.orders]
    if source == "source2":
        masters = t[lay.masters].select(  # type: ignore[index]
            "craftsman_id", "product_id", "product_price", "craftsman_email",
            "craftsman_birthday", pl.lit(True).alias("joined"))
        o = o.join(masters, on=["craftsman_id", "product_id"], how="left",
                   maintain_order="left")
    else:
        o = o.with_columns(pl.lit(True).alias("joined"))
    if lay.craftsmen:
        o = o.join(t[lay.craftsmen].select("craftsman_id", "craftsman_email",
                                           "craftsman_birthday"),
                   on="craftsman_id", how="left", maintain_order="left")
    if lay.customers:
        o = o.join(t[lay.customers].select("customer_id", "customer_email",
                                           "customer_birthday"),
                   on="customer_id", how="left", maintain_order="left")
    created, completion = pl.col("order_created_date"), pl.col("order_completion_date")
    status = pl.col("order_status").str.strip_chars(" ").str.to_lowercase()
    product_key = "craftsman_id" if source == "source2" else "product_id"
    return o.select(
        pl.col("customer_id").alias("customer_key"),
        pl.col(product_key).alias("product_key"),
        status.alias("status"),
        created.is_null().alias(RULES[CREATED_NULL]),
        (~status.is_in(STATUSES)).alias(RULES[STATUS]),
        (completion < created).fill_null(False).alias(RULES[COMPLETION]),
        (pl.col("product_price") <= 0).fill_null(False).alias(RULES[PRICE]),
        ~(email_ok(pl.col("craftsman_email")) & email_ok(pl.col("customer_email")))
        .alias(RULES[EMAIL]),
        pl.col("joined").is_null().alias(RULES[PRODUCT]),
        ~pl.all_horizontal(date_ok(pl.col(c)) for c in DATES).alias(RULES[DATE_RANGE]),
        (pl.col("product_price") > MAX_PRICE).fill_null(False).alias(RULES[PRICE_RANGE]),
    ).with_columns(valid=~pl.any_horizontal(RULES))


def allocate(changes: int) -> dict[str, int]:
    """Split ``changes`` over the kinds by CHANGE_MIX (largest remainder, stable)."""
    exact = {k: changes * share for k, share in CHANGE_MIX.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(CHANGE_MIX, key=lambda k: -(exact[k] - counts[k]))
    for k in by_remainder[: changes - sum(counts.values())]:
        counts[k] += 1
    return counts


@dataclass
class Plan:
    """Which rows, customers and products each kind of change takes, per source."""

    kind: list[np.ndarray]  # per order row: index into ROW_KINDS, or -1
    recent: list[np.ndarray]  # template rows of new recent orders
    late: list[np.ndarray]  # template rows of new late orders
    addresses: list[np.ndarray]  # customer keys (customer_id) that move house
    products: list[np.ndarray]  # product keys (product_id; source2: craftsman_id)
    applied: dict[str, int]


def change_plan(
    rng: np.random.Generator, canon: list[pl.DataFrame], counts: dict[str, int]
) -> Plan:
    sizes = [c.height for c in canon]
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    valid = np.concatenate([c["valid"].to_numpy() for c in canon])
    status = pl.concat([c["status"] for c in canon])
    open_order = status.is_in(STATUSES[:3]).to_numpy()
    perm = rng.permutation(len(valid))
    used = np.zeros(len(valid), dtype=bool)
    kind = np.full(len(valid), -1, dtype=np.int64)
    applied: dict[str, int] = {}
    short = 0
    wanted = {
        MOVE: valid & open_order, SHIFT: valid, REHOME: valid, DELETE: valid,
        DELETE_INVALID: ~valid, SPOIL: valid, FIX: ~valid,
    }
    for code, name in enumerate(ROW_KINDS):
        candidates = perm[wanted[code][perm] & ~used[perm]]
        chosen = candidates[: counts[name]]
        used[chosen] = True
        kind[chosen] = code
        applied[name] = len(chosen)
        short += counts[name] - len(chosen)

    def pick_keys(column: str, name: str) -> list[np.ndarray]:
        nonlocal short
        keys = pl.concat([
            c.filter("valid").select(pl.lit(s).alias("src"), pl.col(column).alias("key"))
            for s, c in enumerate(canon)
        ]).unique().sort("src", "key")
        chosen = keys[np.sort(rng.permutation(keys.height)[: counts[name]])]
        applied[name] = chosen.height
        short += counts[name] - chosen.height
        return [chosen.filter(pl.col("src") == s)["key"].to_numpy() for s in range(len(canon))]

    addresses = pick_keys("customer_key", "customer_address_changes")
    products = pick_keys("product_key", "product_changes")

    templates = np.flatnonzero(valid)
    if not len(templates):
        short = 0
    new = {"new_orders_recent": counts["new_orders_recent"] + short,
           "new_orders_late": counts["new_orders_late"]}
    by_source: dict[str, list[np.ndarray]] = {}
    for name, k in new.items():
        rows = np.sort(rng.choice(templates, k)) if len(templates) else np.empty(0, np.int64)
        applied[name] = len(rows)
        by_source[name] = [rows[(rows >= offsets[s]) & (rows < offsets[s + 1])] - offsets[s]
                           for s in range(len(canon))]
    return Plan(
        kind=[kind[offsets[s]: offsets[s + 1]] for s in range(len(canon))],
        recent=by_source["new_orders_recent"],
        late=by_source["new_orders_late"],
        addresses=addresses,
        products=products,
        applied={k: applied[k] for k in CHANGE_MIX},
    )
