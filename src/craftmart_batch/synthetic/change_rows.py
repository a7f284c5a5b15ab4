"""One source's share of a change plan, as rows to update, delete and append."""

from __future__ import annotations

import logging
from datetime import date
from typing import cast

import numpy as np
import polars as pl

from ..transform.validate import FIRST_DATE, LAST_DATE, MAX_PRICE
from .addresses import addresses
from .change_plan import (
    DELETE,
    DELETE_INVALID,
    FIX,
    LAYOUTS,
    MOVE,
    REHOME,
    SHIFT,
    SPOIL,
    Layout,
    Plan,
    date_ok,
    email_ok,
    price_ok,
    repaired,
)
from .common import (
    BIGINT_MAX,
    D0,
    EPOCH,
    FIRST_DAY,
    GARBAGE_STATUSES,
    RULES,
    SOURCES,
    STATUSES,
    as_dates,
    pick,
)
from .orders import lifecycle
from .products import TYPES

logger = logging.getLogger(__name__)


Write = tuple[str, str, pl.DataFrame]  # (table, "update" | "delete" | "append", rows)


#: Text columns of the order tables that no change reads (names, addresses, product
#: descriptions: hundreds of characters per row in real-shaped sources). Changes are
#: worked out on the order rows without them, so that changing a large source does not
#: hold its texts; the rows a change appends carry where to take them from instead
#: (``TEXT_SOURCES``), and ``texts_added`` puts them back.
TEXTS = ("craftsman_name", "craftsman_address", "product_name", "product_description",
         "customer_name", "customer_address")
TEXTS_OF = "_texts_of"  # the key of the order row whose texts an appended row keeps
CUSTOMER_TEXTS_OF = "_customer_texts_of"  # the same for its customer's texts (a move's donor)
NEW_ADDRESS = "_new_address"  # a moving customer's new address, in place of the one read
TEXT_SOURCES = (TEXTS_OF, CUSTOMER_TEXTS_OF, NEW_ADDRESS)


def texts_added(rows: pl.DataFrame, texts: pl.DataFrame, key: str, columns: list[str]
                ) -> pl.DataFrame:
    """Appended order ``rows`` with their texts, in the table's ``columns``: ``texts``
    holds the texts of the rows they were taken from, by ``key``."""
    customer = [c for c in texts.columns if c.startswith("customer_")]
    other = [c for c in texts.columns if c != key and c not in customer]
    rows = rows.join(texts.select(pl.col(key).alias(TEXTS_OF), *other), on=TEXTS_OF,
                     how="left", maintain_order="left")
    rows = rows.join(texts.select(pl.col(key).alias(CUSTOMER_TEXTS_OF), *customer),
                     on=CUSTOMER_TEXTS_OF, how="left", maintain_order="left")
    if "customer_address" in customer:
        rows = rows.with_columns(
            pl.coalesce(NEW_ADDRESS, "customer_address").alias("customer_address"))
    return rows.select(columns)


def change_source(
    rng: np.random.Generator,
    s: int,
    tables: dict[str, pl.DataFrame],
    canon: pl.DataFrame,
    plan: Plan,
    today: int,
    full: np.random.Generator | None = None,
) -> tuple[list[Write], int, int]:
    """One source's share of the plan as table writes; and its inserted, deleted orders.

    Changed order rows are deleted and appended again: an update may not set the
    ``generated always`` identity columns that a customer move changes in source1/2.
    The order rows come without their ``TEXTS``; so do the appended ones, which say
    where to take them from (``TEXT_SOURCES``, for ``texts_added``).
    With ``full``, customers who move get full street addresses drawn from it.
    """
    source = SOURCES[s]
    lay = LAYOUTS[source]
    orders = tables[lay.orders]
    n = orders.height
    inline_price = "product_price" in orders.columns
    kind = plan.kind[s]
    aux = pl.DataFrame({
        "_kind": kind,
        "_lag": 1 + np.floor(rng.gamma(2.0, 4.0, n)).astype(np.int64),
        "_shift": rng.choice((-1, 1), n) * rng.integers(20, 91, n),
        "_variant": rng.integers(0, 6, n),
        "_price": new_prices(rng, n),
        "_garbage": pick(GARBAGE_STATUSES, rng.integers(0, len(GARBAGE_STATUSES), n)),
        "_someday": as_dates(rng.integers(D0, today + 1, n)),
    })
    flags = canon.select(pl.col(RULES).name.prefix("_"))
    w = pl.concat([orders, aux, flags], how="horizontal").with_columns(
        pl.col(lay.pk).alias(TEXTS_OF), pl.col(lay.pk).alias(CUSTOMER_TEXTS_OF))
    k, variant, lag = pl.col("_kind"), pl.col("_variant"), pl.duration(days="_lag")
    created, completion = pl.col("order_created_date"), pl.col("order_completion_date")
    status = pl.col("order_status")
    norm = status.str.strip_chars(" ").str.to_lowercase()
    after = (pl.when(norm == "created").then(pl.lit("in progress"))
             .when(norm == "in progress").then(pl.lit("delivery")).otherwise(pl.lit("done")))

    # status moves; reaching done sets the completion date
    w = w.with_columns(
        pl.when(k == MOVE).then(after).otherwise(status).alias("order_status"),
        pl.when((k == MOVE) & (after == "done")).then(pl.coalesce(completion, created + lag))
        .otherwise(completion).alias("order_completion_date"),
    )
    # month moves: the order shifts by three weeks to three months, completion with it
    moved = (created + pl.duration(days="_shift")).clip(
        pl.lit(FIRST_DAY), pl.lit(date.fromordinal(EPOCH.toordinal() + today)))
    w = w.with_columns(
        pl.when(k == SHIFT).then(moved).otherwise(created).alias("order_created_date"),
        pl.when(k == SHIFT).then(completion + (moved - created)).otherwise(completion)
        .alias("order_completion_date"),
    )
    # valid rows turning invalid: garbage status, completion before creation,
    # created date lost, a zero price, a year mistyped a millennium off (the completion's
    # when there is one, else the creation's) or a price out of range (source2 keeps
    # prices on masters, shared with other orders: garbage, a mistyped year)
    spoil = k == SPOIL
    garbage = (variant == 0) | ((variant == 3) & ~pl.lit(inline_price))
    far_off = (variant == 4) | ((variant == 5) & ~pl.lit(inline_price))
    price = pl.col("product_price")
    w = w.with_columns(
        pl.when(spoil & garbage).then("_garbage").otherwise(status).alias("order_status"),
        pl.when(spoil & (variant == 1)).then(created - lag)
        .when(spoil & (variant == 2)).then(None)
        .when(spoil & far_off).then(completion.dt.offset_by("1000y"))
        .otherwise(completion).alias("order_completion_date"),
        pl.when(spoil & (variant == 2)).then(None)
        .when(spoil & far_off & completion.is_null()).then(created.dt.offset_by("-1000y"))
        .otherwise(created).alias("order_created_date"),
        *([pl.when(spoil & (variant == 3)).then(0)
           .when(spoil & (variant == 5)).then(
               pl.when(price % 20 == 0).then(pl.lit(BIGINT_MAX, dtype=pl.Int64))
               .otherwise(MAX_PRICE + price))
           .otherwise(price).alias("product_price")] if inline_price else []),
    )
    # invalid rows fixed: every rule the row breaks on the order row is repaired here,
    # those it breaks through a parent row further down
    fix = k == FIX
    held = pl.when(date_ok(completion)).then(completion)  # a completion date in range
    w = w.with_columns(
        pl.when(fix & (pl.col("_created_date_null") | ~date_ok(created)))
        .then(pl.coalesce(held - pl.duration(days=5), "_someday"))
        .otherwise(created).alias("order_created_date"),
        pl.when(fix & pl.col("_status_unknown"))
        .then(pl.when(completion.is_not_null()).then(pl.lit("done")).otherwise(pl.lit("created")))
        .otherwise(status).alias("order_status"),
        *([pl.when(fix & ~price_ok(price)).then("_price")
           .otherwise(price).alias("product_price")] if inline_price else []),
        *[pl.when(fix & ~date_ok(pl.col(c))).then(pl.col(c).clip(FIRST_DATE, LAST_DATE))
          .otherwise(c).alias(c)
          for c in ("craftsman_birthday", "customer_birthday") if c in orders.columns],
        *[pl.when(fix & ~email_ok(pl.col(c)))
          .then(repaired(pl.col(c), pl.format(f"{c[:-6]}.{s}.{{}}@example.org", lay.pk)))
          .otherwise(c).alias(c)
          for c in ("craftsman_email", "customer_email") if c in orders.columns],
    )
    w = w.with_columns(
        pl.when(fix & ((completion < created) | ~date_ok(completion))).then(created + lag)
        .otherwise(completion).alias("order_completion_date"))
    fixed = w.filter(fix)

    # orders moving to another customer
    if lay.customers:
        customers = tables[lay.customers]
        good = customers.filter(email_ok(pl.col("customer_email")))["customer_id"].to_numpy()
        new_id = good[rng.integers(0, len(good), n)] if len(good) else np.zeros(n, np.int64)
        w = w.with_columns(pl.when(k == REHOME).then(pl.Series(new_id))
                           .otherwise("customer_id").alias("customer_id"))
    else:  # the customer's columns come from another valid order of the source
        donor = np.arange(n)
        movers = np.flatnonzero(kind == REHOME)
        valid_rows = np.flatnonzero(canon["valid"].to_numpy())
        if len(movers):
            donor[movers] = valid_rows[rng.integers(0, len(valid_rows), len(movers))]
        cols = [c for c in orders.columns if c.startswith("customer_")] + [CUSTOMER_TEXTS_OF]
        donated = w.select(cols)[donor].rename({c: f"_donor_{c}" for c in cols})
        w = pl.concat([w, donated], how="horizontal").with_columns(
            pl.when(k == REHOME).then(f"_donor_{c}").otherwise(c).alias(c) for c in cols)
    w = w.with_columns(_touched=k.is_in([MOVE, SHIFT, SPOIL, FIX, REHOME]))

    writes: list[Write] = []
    moving = pl.DataFrame({
        "customer_id": pl.Series(plan.addresses[s], dtype=pl.Int64),
        NEW_ADDRESS: addresses(rng, len(plan.addresses[s]), full),
    })
    changes = _product_changes(rng, plan.products[s], "craftsman_id" if lay.masters else
                               "product_id")
    if lay.masters:  # source2: prices, craftsman emails and product ids
        masters = tables[lay.masters]
        own = masters.select("craftsman_id", pl.col("product_id").alias("_own_product"))
        w = w.join(own, on="craftsman_id", how="left", maintain_order="left").with_columns(
            pl.when(fix & pl.col("_product_missing")).then("_own_product")
            .otherwise("product_id").alias("product_id"))
        writes.append((lay.masters, "update", _changed_parent(
            rng, masters, "craftsman", s, fixed["craftsman_id"], products=changes)))
    else:
        w = w.join(changes, on="product_id", how="left", maintain_order="left").with_columns(
            _scaled_price().alias("product_price"),
            _retyped().alias("product_type"),
            (pl.col("_touched") | pl.col("_factor").is_not_null()
             | pl.col("_new_type").is_not_null()).alias("_touched"))
    if lay.craftsmen:
        writes.append((lay.craftsmen, "update", _changed_parent(
            rng, tables[lay.craftsmen], "craftsman", s, fixed["craftsman_id"])))
    if lay.customers:  # the move is the customer row's: the order rows keep theirs
        writes.append((lay.customers, "update", _changed_parent(
            rng, tables[lay.customers], "customer", s, fixed["customer_id"], moving=moving)))
        w = w.with_columns(pl.lit(None, pl.String).alias(NEW_ADDRESS))
    else:  # a move rewrites the address on every order row of the customer (texts_added)
        w = w.join(moving, on="customer_id", how="left", maintain_order="left").with_columns(
            (pl.col("_touched") | pl.col(NEW_ADDRESS).is_not_null()).alias("_touched"))

    deleted = k.is_in([DELETE, DELETE_INVALID])
    new = _new_orders(rng, orders, lay, plan.recent[s], plan.late[s], today)
    writes.append((lay.orders, "delete",
                   w.filter(pl.col("_touched") | deleted).select(lay.pk)))
    writes.append((lay.orders, "append", pl.concat([
        w.filter(pl.col("_touched") & ~deleted).select(*orders.columns, *TEXT_SOURCES), new])))
    return writes, new.height, int(np.isin(kind, (DELETE, DELETE_INVALID)).sum())


def new_prices(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(np.round(np.exp(rng.normal(7.3, 0.8, n)) / 10) * 10, 50, 200_000).astype(
        np.int64)


def _product_changes(rng: np.random.Generator, keys: np.ndarray, key: str) -> pl.DataFrame:
    """Half of the products get 5-30 % dearer, the others move to another type."""
    m = len(keys)
    repriced = rng.random(m) < 0.5
    first = rng.integers(0, len(TYPES), m)
    return pl.DataFrame({
        key: pl.Series(keys, dtype=pl.Int64),
        "_factor": pl.Series(rng.uniform(1.05, 1.30, m)).scatter(np.flatnonzero(~repriced), None),
        "_new_type": pick(TYPES, first).scatter(np.flatnonzero(repriced), None),
        "_other_type": pick(TYPES, (first + 1) % len(TYPES)),
    })


def _scaled_price() -> pl.Expr:
    """A changed product's price scaled by its factor, in whole tens; a price out of
    range stays as it is (and one in range stays in range)."""
    price = pl.col("product_price")
    in_range = pl.when(price <= MAX_PRICE).then(price)  # no float overflows past bigint
    scaled = ((in_range * pl.col("_factor") / 10).round(0) * 10).cast(pl.Int64)
    return (pl.when(pl.col("_factor").is_not_null() & (price <= MAX_PRICE))
            .then(scaled.clip(upper_bound=MAX_PRICE))
            .otherwise(price))


def _retyped() -> pl.Expr:
    new, current = pl.col("_new_type"), pl.col("product_type")
    return (pl.when(new.is_null()).then(current)
            .when(new == current).then("_other_type").otherwise(new))


def _changed_parent(
    rng: np.random.Generator,
    parent: pl.DataFrame,
    role: str,
    s: int,
    fixed_refs: pl.Series,
    *,
    products: pl.DataFrame | None = None,
    moving: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The rows of a parent table that change: those fixed orders need repaired (email,
    price, birthday), products that change price or type, customers that move house."""
    key = f"{role}_id"
    email = pl.col(f"{role}_email")
    needed = pl.col(key).is_in(fixed_refs.implode())
    w = parent.with_columns(_price=pl.Series(new_prices(rng, parent.height)))
    birthday = pl.col(f"{role}_birthday")
    touched = needed & ~(email_ok(email) & date_ok(birthday))
    updates = [
        pl.when(needed & ~email_ok(email))
        .then(repaired(email, pl.format(f"{role}.{s}.{{}}@example.org", key)))
        .otherwise(email).alias(f"{role}_email"),
        pl.when(needed & ~date_ok(birthday)).then(birthday.clip(FIRST_DATE, LAST_DATE))
        .otherwise(birthday).alias(f"{role}_birthday"),
    ]
    if "product_price" in parent.columns:
        price = pl.col("product_price")
        touched = touched | (needed & ~price_ok(price))
        updates.append(pl.when(needed & ~price_ok(price)).then("_price")
                       .otherwise(price).alias("product_price"))
    w = w.with_columns(_touched=touched).with_columns(updates)
    if products is not None:
        w = w.join(products, on=key, how="left", maintain_order="left").with_columns(
            _scaled_price().alias("product_price"),
            _retyped().alias("product_type"),
            (pl.col("_touched") | pl.col("_factor").is_not_null()
             | pl.col("_new_type").is_not_null()).alias("_touched"))
    if moving is not None:
        w = w.join(moving, on=key, how="left", maintain_order="left").with_columns(
            pl.coalesce(NEW_ADDRESS, f"{role}_address").alias(f"{role}_address"),
            (pl.col("_touched") | pl.col(NEW_ADDRESS).is_not_null()).alias("_touched"))
    return w.filter("_touched").select(parent.columns)


def _new_orders(
    rng: np.random.Generator,
    orders: pl.DataFrame,
    lay: Layout,
    recent: np.ndarray,
    late: np.ndarray,
    today: int,
) -> pl.DataFrame:
    """New orders copied from valid template orders (same customer, craftsman, product):
    recent ones around ``today``, late ones arriving for months long past."""
    rows = np.concatenate([recent, late]).astype(np.int64)
    m = len(rows)
    created = np.concatenate([
        today - 40 + rng.integers(0, 55, len(recent)),
        rng.integers(D0, max(D0 + 1, today - 90), len(late)),
    ])
    status, completion, has_completion = lifecycle(rng, created, today + 14)
    ids = {column: cast(int, orders[column].max() or 0) for column in (lay.pk, *lay.order_ids)}
    return orders[rows].with_columns(
        pl.col(lay.pk).alias(TEXTS_OF),  # a template's texts, customer's included, as they are
        pl.col(lay.pk).alias(CUSTOMER_TEXTS_OF),
        pl.lit(None, pl.String).alias(NEW_ADDRESS),
        *[pl.Series(column, top + 1 + np.arange(m), dtype=pl.Int64) for column, top in ids.items()],
        order_created_date=as_dates(created),
        order_completion_date=as_dates(completion).scatter(np.flatnonzero(~has_completion), None),
        order_status=pick(STATUSES, status),
    )
