"""The orders each source holds, and the columns a source writes for them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from ..transform.validate import FIRST_DATE, MAX_PRICE
from .common import (
    BIGINT_MAX,
    COMPLETION,
    CREATED_NULL,
    D0,
    D1,
    DATE_RANGE,
    EMAIL,
    GARBAGE_STATUSES,
    INVALID_SHARE,
    LAST_DAY,
    MILLENNIUM,
    MONTH_LEN,
    MONTH_START,
    PRICE,
    PRICE_RANGE,
    STATUS,
    STATUSES,
    as_dates,
    pick,
    stream,
)
from .world import View, World, spell_emails

logger = logging.getLogger(__name__)


_BASKET_SIZES = (0.45, 0.30, 0.14, 0.07, 0.04)  # orders per customer, source and month

# Days back from an order's creation to a created date in the last years before 1900
# (for every creation day up to LAST_DAY).
_TO_1890S = (LAST_DAY - FIRST_DATE).days + 1


@dataclass
class Orders:
    """One source's orders as indexes into the world, sorted by creation day."""

    customer: np.ndarray  # person index
    craftsman: np.ndarray  # craftsman index (= person index)
    product: np.ndarray
    created: np.ndarray
    status: np.ndarray  # index into STATUSES
    completion: np.ndarray
    has_completion: np.ndarray
    rule: np.ndarray  # -1 for a valid row, else the index into RULES it breaks
    variant: np.ndarray  # which flavour of the broken rule (or of the spelling)


def dates_out_of_range(rule: np.ndarray, variant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows planted with a date out of range (rule 7), by flavour: a completion
    date a millennium after creation; a created date before 1900 and no completion."""
    planted = rule == DATE_RANGE
    return planted & (variant % 2 == 0), planted & (variant % 2 == 1)


def lifecycle(
    rng: np.random.Generator, created: np.ndarray, today: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Status and completion day of orders created on ``created``, seen on ``today``."""
    n = len(created)
    settled = (today - created) > 60
    status = np.where(
        settled,
        rng.choice(4, n, p=(0.03, 0.04, 0.05, 0.88)),
        rng.choice(4, n, p=(0.25, 0.30, 0.20, 0.25)),
    )
    lag = np.floor(rng.gamma(2.0, 4.0, n)).astype(np.int64)
    u = rng.random(n)
    has_completion = ((status == 3) & (u > 0.03)) | ((status == 2) & (u < 0.05))
    return status, created + lag, has_completion


def build_orders(seed: int, s: int, n: int, world: World, rules: tuple[int, ...]) -> Orders:
    """Source ``s``'s ``n`` orders: baskets of 1-5 orders per customer and month, a
    craftsman per basket (often kept for the whole basket), ~2 % planted with a broken
    rule out of ``rules`` (indexes into RULES), each kind at least once when n allows."""
    rng = stream(seed, 3, s)
    sizes = rng.choice(len(_BASKET_SIZES), n, p=_BASKET_SIZES) + 1
    baskets = int(np.searchsorted(np.cumsum(sizes), n)) + 1 if n else 0
    basket = np.repeat(np.arange(baskets), sizes[:baskets])[:n]
    cust_pool = np.flatnonzero(world.cust_member[:, s])
    cust_p = world.cust_weight[cust_pool] / world.cust_weight[cust_pool].sum()
    craft_pool = np.flatnonzero(world.craft_member[:, s])
    craft_p = world.craft_weight[craft_pool] / world.craft_weight[craft_pool].sum()
    basket_customer = world.customers[rng.choice(cust_pool, baskets, p=cust_p)]
    basket_month = rng.integers(0, len(MONTH_START), baskets)
    basket_craftsman = rng.choice(craft_pool, baskets, p=craft_p)
    month = basket_month[basket]
    created = MONTH_START[month] + (rng.random(n) * MONTH_LEN[month]).astype(np.int64)
    craftsman = np.where(rng.random(n) < 0.6, basket_craftsman[basket],
                         rng.choice(craft_pool, n, p=craft_p))
    product = world.prod_start[craftsman] + (rng.random(n) * world.prod_count[craftsman]).astype(
        np.int64)
    order = np.argsort(created, kind="stable")  # ids grow with time, as in production
    created, craftsman, product = created[order], craftsman[order], product[order]
    customer = basket_customer[basket][order]
    status, completion, has_completion = lifecycle(rng, created, D1)

    rule = np.full(n, -1, dtype=np.int64)
    planted = round(n * INVALID_SHARE)
    if n >= 10 * len(rules):
        planted = max(planted, len(rules))  # every rule shows up even in small samples
    rows = rng.choice(n, planted, replace=False)
    rule[rows] = np.asarray(rules)[rng.permutation(planted) % len(rules)]
    variant = rng.integers(0, 8, n)
    # A rule's planted rows take its eight flavours in turn (in a random order), so that
    # the few rows a rule has in a small sample already show most of them.
    for r in rules:
        broken = np.flatnonzero(rule == r)
        if len(broken):
            turns = [rng.permutation(8) for _ in range(-(-len(broken) // 8))]
            variant[broken] = np.concatenate(turns)[: len(broken)]
    # A row breaks exactly the rule it was planted with.
    status = np.where(rule == COMPLETION, 3, status)
    has_completion = np.where(rule == COMPLETION, True, has_completion)
    has_completion = np.where(rule == CREATED_NULL, False, has_completion)
    completion = np.where(rule == COMPLETION, created - 1 - variant % 14, completion)
    # ``created`` stays the real day (prices and addresses follow it); a date out of
    # range is written by order_columns.
    far, early = dates_out_of_range(rule, variant)
    status = np.where(far, 3, status)
    has_completion = (has_completion | far) & ~early
    return Orders(customer, craftsman, product, created, status, completion, has_completion,
                   rule, variant)


def order_columns(rng: np.random.Generator, o: Orders) -> dict[str, pl.Series]:
    """created/completion dates and status, valid spellings and planted breakage."""
    n = len(o.created)
    spelling = rng.choice(5, n, p=(0.88, 0.04, 0.03, 0.03, 0.02))
    frame = pl.DataFrame({
        "status": pick(STATUSES, o.status),
        "spelling": spelling,
        "garbage": pick(GARBAGE_STATUSES, o.variant % len(GARBAGE_STATUSES)),
        "rule": o.rule,
    })
    st, sp = pl.col("status"), pl.col("spelling")
    spelled = (
        pl.when(sp == 1).then(st.str.to_uppercase())
        .when(sp == 2).then(st.str.to_titlecase())
        .when(sp == 3).then(" " + st + " ")
        .when(sp == 4).then(st + "  ")
        .otherwise(st)
    )
    status = frame.select(
        pl.when(pl.col("rule") == STATUS).then("garbage").otherwise(spelled)
    ).to_series()
    # Rule 7: a year mistyped a millennium off (2023 written 3023 or 1023), or a
    # created date in the 1890s.
    far, early = dates_out_of_range(o.rule, o.variant)
    back = np.where(o.variant % 4 == 1, MILLENNIUM, _TO_1890S)
    created_day = np.where(early, o.created - back, o.created)
    completion_day = np.where(far, o.created + MILLENNIUM, o.completion)
    created = as_dates(created_day).scatter(np.flatnonzero(o.rule == CREATED_NULL), None)
    completion = as_dates(completion_day).scatter(np.flatnonzero(~o.has_completion), None)
    return {
        "order_created_date": created,
        "order_completion_date": completion,
        "order_status": status,
    }


def price_on(base: np.ndarray, day: np.ndarray) -> np.ndarray:
    """A product's price on a day: 7 % a year of inflation, in whole tens."""
    years = (day - D0) / 365.25
    return (np.round(base * (1.0 + 0.07 * years) / 10) * 10).astype(np.int64)


def person_columns(
    rng: np.random.Generator,
    world: World,
    view: View,
    person: np.ndarray,
    prefix: str,
    *,
    on_day: np.ndarray | None = None,
    nullable: tuple[str, ...] = (),
    respell: float = 0.0,
) -> dict[str, pl.Series]:
    """A person's columns as one source writes them.

    With ``on_day`` (rows written per order) the address is the one the person had on
    that day and a share ``respell`` of the rows spells the email in its own way;
    without it (a table of people) the source keeps one of the person's two addresses.
    """
    people = world.people
    second = view.use_address1[person] if on_day is None else on_day >= world.move_day[person]
    address = pl.DataFrame({
        "a0": people["address0"].gather(person),
        "a1": people["address1"].gather(person),
        "second": second,
    }).select(pl.when("second").then("a1").otherwise("a0")).to_series()
    birthday = as_dates(world.birthday[person] + 365 * view.birthday_typo[person])
    email = view.email.gather(person)
    if respell:
        rows = np.flatnonzero(rng.random(len(person)) < respell)
        email = email.scatter(rows, spell_emails(rng, people["email"].gather(person[rows])))
    columns = {
        "name": people["name"].gather(person),
        "address": address,
        "birthday": birthday,
        "email": email,
    }
    gaps = {"name": view.name_null, "address": view.address_null, "birthday": view.birthday_null}
    for column in nullable:
        columns[column] = columns[column].scatter(np.flatnonzero(gaps[column][person]), None)
    return {f"{prefix}_{k}": v for k, v in columns.items()}


def product_columns(
    world: World, view: View, product: np.ndarray, on_day: np.ndarray | None
) -> dict[str, pl.Series]:
    products = world.products
    kind = pl.DataFrame({
        "type": products["type"].gather(product),
        "alt": products["alt_type"].gather(product),
        "use_alt": view.alt_type[product],
    }).select(pl.when("use_alt").then("alt").otherwise("type")).to_series()
    base = world.base_price[product]
    price = base if on_day is None else price_on(base, on_day)
    return {
        "product_name": products["name"].gather(product),
        "product_description": products["description"].gather(product),
        "product_type": kind,
        "product_price": pl.Series(price, dtype=pl.Int64),
    }


def local_ids(
    rng: np.random.Generator, keys: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Source-local ids 1..k for the distinct keys (in random order): (keys, lookup)."""
    distinct = np.unique(keys)
    lookup = np.zeros(size, dtype=np.int64)
    lookup[distinct] = rng.permutation(len(distinct)) + 1
    return distinct, lookup


def malformed(email: pl.Expr, variant: pl.Expr) -> pl.Expr:
    """Invalid addresses (SPEC §3 rule 5): no @, two @, a space inside, empty."""
    return (
        pl.when(variant == 0).then(email.str.replace("@", "", literal=True))
        .when(variant == 1).then(email.str.replace(".", "@", literal=True))
        .when(variant == 2).then(email.str.replace(".", " ", literal=True))
        .otherwise(pl.lit(""))
    )


def break_inline(
    frame: pl.DataFrame,
    rules: np.ndarray,
    variants: np.ndarray,
    emails: dict[str, int],
    price: bool,
) -> pl.DataFrame:
    """Plant price and email breakage in the columns of the rows themselves: a price of
    zero or below, or over MAX_PRICE (just over it, or the largest bigint).

    ``rules``/``variants`` are per row (as in ``Orders``); ``emails`` maps an email
    column to the variant parity that breaks it in this table.
    """
    rule, variant = pl.lit(pl.Series(rules)), pl.lit(pl.Series(variants))
    updates = []
    if price:
        p = pl.col("product_price")
        updates.append(
            pl.when(rule == PRICE).then(pl.when(variant % 2 == 0).then(0).otherwise(-p))
            .when(rule == PRICE_RANGE).then(
                pl.when(variant % 4 == 0).then(MAX_PRICE + 1)
                .when(variant % 4 == 2).then(MAX_PRICE + p)
                .otherwise(pl.lit(BIGINT_MAX, dtype=pl.Int64)))
            .otherwise(p).alias("product_price")
        )
    for column, parity in emails.items():
        c = pl.col(column)
        updates.append(
            pl.when((rule == EMAIL) & (variant % 2 == parity)).then(malformed(c, variant // 2))
            .otherwise(c).alias(column)
        )
    return frame.with_columns(updates) if updates else frame
