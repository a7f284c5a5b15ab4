"""The world the sources talk about: people, products, and how each source spells them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from .addresses import addresses
from .common import D0, D1, SOURCE_SHARES, SOURCES, Shape, pick, stream
from .products import TYPES, product_texts

logger = logging.getLogger(__name__)

FIRST_NAMES = (
    ("Anna", True), ("Maria", True), ("Elena", True), ("Olga", True), ("Natalia", True),
    ("Irina", True), ("Svetlana", True), ("Tatiana", True), ("Daria", True), ("Sofia", True),
    ("Emma", True), ("Chloe", True), ("Zoe", True), ("Alexei", False), ("Dmitry", False),
    ("Ivan", False), ("Sergei", False), ("Andrei", False), ("Mikhail", False),
    ("Nikolai", False), ("Pavel", False), ("Oleg", False), ("Artem", False), ("Liam", False),
    ("Noah", False), ("Hugo", False), ("Leo", False), ("Lucas", False),
)
LAST_NAMES = (
    "Petrov", "Ivanov", "Smirnov", "Kuznetsov", "Popov", "Volkov", "Sokolov", "Lebedev",
    "Kozlov", "Novikov", "Morozov", "Orlov", "Fedorov", "Egorov", "Pavlov", "Belyaev",
    "Nikitin", "Karpov", "Smith", "Taylor", "Brown", "Dubois", "Rossi", "Garcia",
    "O'Connor", "O'Brien", "D'Angelo",
)
DOMAINS = ("mail.com", "gmail.com", "yandex.ru", "mail.ru", "outlook.com", "inbox.ru",
           "proton.me", "craftmail.org")


@dataclass
class World:
    """Everyone and everything the sources talk about, before any source spells it."""

    people: pl.DataFrame  # name, email (canonical), address0, address1
    birthday: np.ndarray  # days since epoch, per person
    move_day: np.ndarray  # from this day on a person lives at address1
    craftsmen: np.ndarray  # person index of each craftsman
    customers: np.ndarray  # person index of each customer
    craft_member: np.ndarray  # (craftsmen, sources) bool: sells there
    cust_member: np.ndarray  # (customers, sources) bool: buys there
    craft_weight: np.ndarray
    cust_weight: np.ndarray
    products: pl.DataFrame  # name, description, type, alt_type
    base_price: np.ndarray
    prod_owner: np.ndarray  # craftsman index of each product
    prod_start: np.ndarray  # first product of each craftsman
    prod_count: np.ndarray


def build_world(seed: int, orders: int, shape: Shape = "real") -> World:
    """The people and products of a marketplace of about ``orders`` orders.

    The real shape draws its long texts from a stream of their own, so both shapes
    hold the same people, products and orders, and differ only in those texts.
    """
    rng = stream(seed, 1)
    full = stream(seed, 5) if shape == "real" else None
    n_craft = max(8, orders // 150)
    n_cust = max(8, orders // 7)
    both = n_craft // 10  # craftsmen who also buy
    n_people = n_craft + n_cust - both
    first = rng.integers(0, len(FIRST_NAMES), n_people)
    female = np.array([f for _, f in FIRST_NAMES])[first]
    names = pl.DataFrame({
        "first": pick(tuple(n for n, _ in FIRST_NAMES), first),
        "last": pick(LAST_NAMES, rng.integers(0, len(LAST_NAMES), n_people)),
        "female": female,
        "domain": pick(DOMAINS, rng.integers(0, len(DOMAINS), n_people)),
        "i": np.arange(n_people),
    })
    last = (
        pl.when(pl.col("female") & pl.col("last").str.contains("(ov|ev|in)$"))
        .then(pl.col("last") + "a")
        .otherwise(pl.col("last"))
    )
    people = names.select(
        pl.format("{} {}", "first", last).alias("name"),
        pl.format(
            "{}.{}{}@{}",
            pl.col("first").str.to_lowercase(),
            last.str.to_lowercase().str.replace_all("'", "", literal=True),
            "i",
            "domain",
        ).alias("email"),
    ).with_columns(address0=addresses(rng, n_people, full),
                   address1=addresses(rng, n_people, full))
    birthday = rng.integers(-7305, 12784, n_people)  # 1950-01-01 .. 2004-12-31
    move_day = rng.integers(D0 - 365, D1 + 365, n_people)

    def membership(n: int, extra: float) -> np.ndarray:
        member = rng.random((n, len(SOURCES))) < extra
        member[np.arange(n), rng.choice(len(SOURCES), n, p=SOURCE_SHARES)] = True
        member[np.arange(len(SOURCES)), np.arange(len(SOURCES))] = True
        return member

    craft_member = membership(n_craft, 0.25)
    cust_member = membership(n_cust, 0.12)

    count = rng.integers(1, 9, n_craft)
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    n_prod = int(count.sum())
    owner = np.repeat(np.arange(n_craft), count)
    main_type = rng.integers(0, len(TYPES), n_craft)
    type_idx = np.where(rng.random(n_prod) < 0.75, main_type[owner],
                        rng.integers(0, len(TYPES), n_prod))
    products = product_texts(rng, type_idx, full)
    base_price = np.clip(np.round(np.exp(rng.normal(7.3, 0.8, n_prod)) / 10) * 10, 50, 200_000)
    return World(
        people=people,
        birthday=birthday,
        move_day=move_day,
        craftsmen=np.arange(n_craft),
        customers=np.arange(n_craft - both, n_people),
        craft_member=craft_member,
        cust_member=cust_member,
        craft_weight=rng.lognormal(0.0, 0.6, n_craft),
        cust_weight=rng.lognormal(0.0, 1.0, n_cust),
        products=products,
        base_price=base_price.astype(np.int64),
        prod_owner=owner,
        prod_start=start,
        prod_count=count,
    )


@dataclass
class View:
    """How one source spells the world: email case and padding, which address, gaps."""

    email: pl.Series  # per person
    use_address1: np.ndarray
    name_null: np.ndarray
    address_null: np.ndarray
    birthday_null: np.ndarray
    birthday_typo: np.ndarray
    alt_type: np.ndarray  # per product: this source files it under another type


def build_view(seed: int, s: int, world: World) -> View:
    """How source ``s`` spells ``world``."""
    rng = stream(seed, 2, s)
    n = world.people.height
    email = spell_emails(rng, world.people["email"])
    return View(
        email=email,
        use_address1=rng.random(n) < 0.5,
        name_null=rng.random(n) < 0.04,
        address_null=rng.random(n) < 0.03,
        birthday_null=rng.random(n) < 0.06,
        birthday_typo=rng.random(n) < 0.01,
        alt_type=rng.random(world.products.height) < 0.03,
    )


def spell_emails(rng: np.random.Generator, canonical: pl.Series) -> pl.Series:
    """Valid spellings of the same address: other letter case, stray spaces around it."""
    n = canonical.len()
    frame = pl.DataFrame({
        "e": canonical,
        "case": rng.choice(4, n, p=(0.6, 0.2, 0.07, 0.13)),
        "pad": rng.choice(4, n, p=(0.82, 0.06, 0.06, 0.06)),
    })
    e, case, pad = pl.col("e"), pl.col("case"), pl.col("pad")
    cased = (
        pl.when(case == 1).then(e.str.to_titlecase())
        .when(case == 2).then(e.str.to_uppercase())
        .when(case == 3).then(e.str.slice(0, 1).str.to_uppercase() + e.str.slice(1))
        .otherwise(e)
    )
    padded = (
        pl.when(pad == 1).then("  " + cased)
        .when(pad == 2).then(cased + " ")
        .when(pad == 3).then(" " + cased + "  ")
        .otherwise(cased)
    )
    return frame.select(padded.alias("email")).to_series()
