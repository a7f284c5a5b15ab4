"""The synthetic marketplace: deterministic source data and realistic changes to it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from typing import Any, cast

import numpy as np
import polars as pl

from ._database import quote_ident
from ._sql import append, execute, fetch_frame, fetch_value, split_statements, stage
from .errors import CraftmartError

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

SOURCES = ("source1", "source2", "source3", "external_source")
SOURCE_SHARES = (0.30, 0.25, 0.25, 0.20)
FIRST_DAY = date(2021, 1, 1)
LAST_DAY = date(2024, 12, 31)
INVALID_SHARE = 0.02

# The rules of SPEC §3, in its order; GenerateSummary.invalid counts planted rows per rule.
RULES = (
    "created_date_null",
    "status_unknown",
    "completion_before_created",
    "price_not_positive",
    "email_malformed",
    "product_missing",
)
_CREATED_NULL, _STATUS, _COMPLETION, _PRICE, _EMAIL, _PRODUCT = range(len(RULES))

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
_EPOCH = date(1970, 1, 1)
_D0 = (FIRST_DAY - _EPOCH).days
_D1 = (LAST_DAY - _EPOCH).days
_MONTHS = np.arange("2021-01", "2025-02", dtype="datetime64[M]").astype("datetime64[D]")
_MONTH_START = _MONTHS[:-1].astype(np.int64)
_MONTH_LEN = np.diff(_MONTHS).astype(np.int64)

STATUSES = ("created", "in progress", "delivery", "done")
_GARBAGE_STATUSES = ("cancelled", "unknown", "", "in-progress", "returned", "don", " N/A ")
_BASKET_SIZES = (0.45, 0.30, 0.14, 0.07, 0.04)  # orders per customer, source and month

_FIRST_NAMES = (
    ("Anna", True), ("Maria", True), ("Elena", True), ("Olga", True), ("Natalia", True),
    ("Irina", True), ("Svetlana", True), ("Tatiana", True), ("Daria", True), ("Sofia", True),
    ("Emma", True), ("Chloe", True), ("Zoe", True), ("Alexei", False), ("Dmitry", False),
    ("Ivan", False), ("Sergei", False), ("Andrei", False), ("Mikhail", False),
    ("Nikolai", False), ("Pavel", False), ("Oleg", False), ("Artem", False), ("Liam", False),
    ("Noah", False), ("Hugo", False), ("Leo", False), ("Lucas", False),
)
_LAST_NAMES = (
    "Petrov", "Ivanov", "Smirnov", "Kuznetsov", "Popov", "Volkov", "Sokolov", "Lebedev",
    "Kozlov", "Novikov", "Morozov", "Orlov", "Fedorov", "Egorov", "Pavlov", "Belyaev",
    "Nikitin", "Karpov", "Smith", "Taylor", "Brown", "Dubois", "Rossi", "Garcia",
    "O'Connor", "O'Brien", "D'Angelo",
)
_DOMAINS = ("mail.com", "gmail.com", "yandex.ru", "mail.ru", "outlook.com", "inbox.ru",
            "proton.me", "craftmail.org")
_CITIES = ("Moscow", "Saint Petersburg", "Kazan", "Novosibirsk", "Yekaterinburg",
           "Nizhny Novgorod", "Samara", "Tver", "Vladimir", "Yaroslavl", "Pskov", "Tula")
_STREETS = ("Lenina", "Pushkina", "Gagarina", "Sadovaya", "Mira", "Tverskaya", "Nevsky",
            "Lesnaya", "Shkolnaya", "Tsentralnaya", "Sovetskaya", "Molodezhnaya")
_TYPES = ("jewelry", "ceramics", "textiles", "woodwork", "leather goods", "toys", "candles",
          "soap", "paintings", "knitwear", "home decor", "stationery")
_NOUNS = (  # four per product type, in _TYPES order
    "silver ring", "beaded bracelet", "pendant", "earrings",
    "mug", "vase", "plate", "teapot",
    "linen tablecloth", "embroidered towel", "quilt", "cushion cover",
    "cutting board", "spoon set", "jewelry box", "wall shelf",
    "wallet", "belt", "card holder", "notebook cover",
    "teddy bear", "rag doll", "wooden puzzle", "rocking horse",
    "soy candle", "beeswax candle", "scented candle set", "candle holder",
    "lavender soap", "honey soap", "bath bomb set", "shampoo bar",
    "watercolor landscape", "oil portrait", "city sketch", "still life",
    "wool scarf", "knitted hat", "mittens", "cardigan",
    "macrame wall hanging", "dried flower wreath", "photo frame", "mosaic mirror",
    "leather journal", "greeting card set", "bookmark", "hand-bound sketchbook",
)
_ADJECTIVES = ("Handmade", "Rustic", "Vintage", "Cozy", "Minimalist", "Hand-painted",
               "Nordic", "Classic", "Boho", "Tiny", "Elegant", "Bright")
_COLLECTIONS = ("Aurora", "Grandma's Garden", "Taiga", "Sea Breeze", "Birch", "White Nights",
                "Maker's Choice", "Old Town")
_MATERIALS = ("linen", "oak", "birch", "clay", "silver", "wool", "cotton", "leather",
              "beeswax", "glass", "paper")
_CARE = ("hand wash only", "wipe with a dry cloth", "keep away from direct sunlight",
         "don't put it in the dishwasher")


@dataclass(frozen=True)
class GenerateSummary:
    """What ``generate`` wrote: rows per source table, invalid rows planted per rule."""

    orders: int
    seed: int
    orders_per_source: dict[str, int]
    rows: dict[str, int]
    invalid: dict[str, int]
    elapsed_seconds: float

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    def __str__(self) -> str:
        return "\n".join([
            f"generated {self.orders:,} orders (seed {self.seed}) in "
            f"{self.elapsed_seconds:.1f} s",
            "  orders: " + _counts(self.orders_per_source),
            "  rows: " + _counts(self.rows),
            f"  invalid rows planted ({self.invalid_total:,}): " + _counts(self.invalid),
        ])


@dataclass(frozen=True)
class ChangeSummary:
    """What ``apply_changes`` did: the number of changes of each kind, and row counts."""

    changes: int
    seed: int
    applied: dict[str, int]
    rows_inserted: int
    rows_deleted: int
    elapsed_seconds: float
    orders_delta: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.applied.values())

    def __str__(self) -> str:
        return "\n".join([
            f"applied {self.total:,} changes (seed {self.seed}) in {self.elapsed_seconds:.1f} s: "
            f"{self.rows_inserted:,} orders added, {self.rows_deleted:,} deleted",
            "  " + _counts(self.applied),
        ])


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counts.items())


# --------------------------------------------------------------------------- sources DDL


def sources_ddl() -> str:
    """The packaged DDL of the four sources (``_schema/sources.sql``)."""
    return (resources.files("craftmart_batch") / "_schema" / "sources.sql").read_text("utf-8")


def create_sources(conn: Any) -> None:
    """Create the four source schemas and their tables exactly as the DDL says.

    Idempotent (the DDL uses ``if not exists``). Runs in the connection's transaction
    and commits it.
    """
    for statement in split_statements(sources_ddl()):
        execute(conn, statement)
    conn.commit()


def _source_rows(conn: Any) -> dict[str, int]:
    return {
        table: int(fetch_value(conn, f"select count(*) from {_qualified(table)}"))
        for table in TABLES
    }


def _qualified(table: str) -> str:
    schema, name = table.split(".")
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def _sync_identities(conn: Any) -> None:
    """Move every identity sequence past the largest id stored, so plain inserts work."""
    for table, columns in TABLES.items():
        maxima = ", ".join(f"coalesce(max({quote_ident(c)}), 0)" for c in columns)
        cur = conn.cursor()
        try:
            cur.execute(f"select {maxima} from {_qualified(table)}")
            values = cur.fetchone()
        finally:
            cur.close()
        for column, value in zip(columns, values, strict=True):
            execute(
                conn,
                "select setval(pg_get_serial_sequence($1, $2), $3, false)",
                (table, column, int(value) + 1),
            )


def _ingest(conn: Any, table: str, frame: pl.DataFrame) -> None:
    """Append a frame to a source table with binary COPY.

    COPY stores the values given even for ``generated always`` identity columns, which
    is what makes the ids deterministic; ``_sync_identities`` then fixes the sequences.
    """
    schema, name = table.split(".")
    append(conn, schema, name, frame)


# --------------------------------------------------------------------------- the world


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, part)."""
    seed %= 2**64  # any int, negative ones included
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *stream]))


def _days(values: np.ndarray | pl.Series) -> pl.Series:
    return pl.Series(values, dtype=pl.Int32).cast(pl.Date)


def _pick(pool: tuple[str, ...], index: np.ndarray) -> pl.Series:
    return pl.Series(pool, dtype=pl.String).gather(index)


def _addresses(rng: np.random.Generator, n: int) -> pl.Series:
    frame = pl.DataFrame({
        "city": _pick(_CITIES, rng.integers(0, len(_CITIES), n)),
        "street": _pick(_STREETS, rng.integers(0, len(_STREETS), n)),
        "house": rng.integers(1, 120, n),
        "apt": np.where(rng.random(n) < 0.7, rng.integers(1, 300, n), 0),
    })
    apt = pl.when(pl.col("apt") > 0).then(pl.format(", apt. {}", "apt")).otherwise(pl.lit(""))
    return frame.select(
        pl.format("{}, {} st. {}", "city", "street", "house").add(apt).alias("a")
    ).to_series()


@dataclass
class _World:
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


def _build_world(seed: int, orders: int) -> _World:
    rng = _rng(seed, 1)
    n_craft = max(8, orders // 150)
    n_cust = max(8, orders // 7)
    both = n_craft // 10  # craftsmen who also buy
    n_people = n_craft + n_cust - both
    first = rng.integers(0, len(_FIRST_NAMES), n_people)
    female = np.array([f for _, f in _FIRST_NAMES])[first]
    names = pl.DataFrame({
        "first": _pick(tuple(n for n, _ in _FIRST_NAMES), first),
        "last": _pick(_LAST_NAMES, rng.integers(0, len(_LAST_NAMES), n_people)),
        "female": female,
        "domain": _pick(_DOMAINS, rng.integers(0, len(_DOMAINS), n_people)),
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
    ).with_columns(address0=_addresses(rng, n_people), address1=_addresses(rng, n_people))
    birthday = rng.integers(-7305, 12784, n_people)  # 1950-01-01 .. 2004-12-31
    move_day = rng.integers(_D0 - 365, _D1 + 365, n_people)

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
    main_type = rng.integers(0, len(_TYPES), n_craft)
    type_idx = np.where(rng.random(n_prod) < 0.75, main_type[owner],
                        rng.integers(0, len(_TYPES), n_prod))
    parts = pl.DataFrame({
        "type": _pick(_TYPES, type_idx),
        "alt_type": _pick(_TYPES, (type_idx + rng.integers(1, len(_TYPES), n_prod)) % len(_TYPES)),
        "noun": _pick(_NOUNS, type_idx * 4 + rng.integers(0, 4, n_prod)),
        "adj": _pick(_ADJECTIVES, rng.integers(0, len(_ADJECTIVES), n_prod)),
        "coll": _pick(_COLLECTIONS, rng.integers(0, len(_COLLECTIONS), n_prod)),
        "has_coll": rng.random(n_prod) < 0.4,
        "material": _pick(_MATERIALS, rng.integers(0, len(_MATERIALS), n_prod)),
        "care": _pick(_CARE, rng.integers(0, len(_CARE), n_prod)),
        "size": rng.integers(5, 120, n_prod),
        "years": rng.integers(2, 40, n_prod),
        "template": rng.integers(0, 5, n_prod),
        "code": pl.Series(np.arange(1, n_prod + 1)).cast(pl.String).str.zfill(6),
    })
    name = pl.format("{} {}", "adj", "noun") + pl.when("has_coll").then(
        pl.format(' "{}"', "coll")).otherwise(pl.lit(""))
    template = pl.col("template")
    description = (
        pl.when(template == 0)
        .then(pl.format("{} {} made by hand in a small workshop. Item code CM-{}.",
                        "adj", "noun", "code"))
        .when(template == 1)
        .then(pl.format('From the "{}" collection: a {} that makes a great gift. '
                        "Item code CM-{}.", "coll", "noun", "code"))
        .when(template == 2)
        .then(pl.format("Each {} is unique, it's made to order.\nCare: {}.\nItem code CM-{}.",
                        "noun", "care", "code"))
        .when(template == 3)
        .then(pl.format("{} {}\n- material: {}\n- size: {} cm\nItem code CM-{}.",
                        "adj", "noun", "material", "size", "code"))
        .otherwise(pl.format("Maker's note: \"I've been making these for {} years.\"\n"
                             "Item code CM-{}.", "years", "code"))
    )
    products = parts.select(
        name.alias("name"), description.alias("description"), "type", "alt_type"
    )
    base_price = np.clip(np.round(np.exp(rng.normal(7.3, 0.8, n_prod)) / 10) * 10, 50, 200_000)
    return _World(
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
class _View:
    """How one source spells the world: email case and padding, which address, gaps."""

    email: pl.Series  # per person
    use_address1: np.ndarray
    name_null: np.ndarray
    address_null: np.ndarray
    birthday_null: np.ndarray
    birthday_typo: np.ndarray
    alt_type: np.ndarray  # per product: this source files it under another type


def _build_view(seed: int, s: int, world: _World) -> _View:
    rng = _rng(seed, 2, s)
    n = world.people.height
    email = _spell_emails(rng, world.people["email"])
    return _View(
        email=email,
        use_address1=rng.random(n) < 0.5,
        name_null=rng.random(n) < 0.04,
        address_null=rng.random(n) < 0.03,
        birthday_null=rng.random(n) < 0.06,
        birthday_typo=rng.random(n) < 0.01,
        alt_type=rng.random(world.products.height) < 0.03,
    )


def _spell_emails(rng: np.random.Generator, canonical: pl.Series) -> pl.Series:
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


def _malformed(email: pl.Expr, variant: pl.Expr) -> pl.Expr:
    """Invalid addresses (SPEC §3 rule 5): no @, two @, a space inside, empty."""
    return (
        pl.when(variant == 0).then(email.str.replace("@", "", literal=True))
        .when(variant == 1).then(email.str.replace(".", "@", literal=True))
        .when(variant == 2).then(email.str.replace(".", " ", literal=True))
        .otherwise(pl.lit(""))
    )


# --------------------------------------------------------------------------- orders


@dataclass
class _Orders:
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


def _lifecycle(
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


def _build_orders(seed: int, s: int, n: int, world: _World, rules: tuple[int, ...]) -> _Orders:
    """Source ``s``'s ``n`` orders: baskets of 1-5 orders per customer and month, a
    craftsman per basket (often kept for the whole basket), ~2 % planted with a broken
    rule out of ``rules`` (indexes into RULES), each kind at least once when n allows."""
    rng = _rng(seed, 3, s)
    sizes = rng.choice(len(_BASKET_SIZES), n, p=_BASKET_SIZES) + 1
    baskets = int(np.searchsorted(np.cumsum(sizes), n)) + 1 if n else 0
    basket = np.repeat(np.arange(baskets), sizes[:baskets])[:n]
    cust_pool = np.flatnonzero(world.cust_member[:, s])
    cust_p = world.cust_weight[cust_pool] / world.cust_weight[cust_pool].sum()
    craft_pool = np.flatnonzero(world.craft_member[:, s])
    craft_p = world.craft_weight[craft_pool] / world.craft_weight[craft_pool].sum()
    basket_customer = world.customers[rng.choice(cust_pool, baskets, p=cust_p)]
    basket_month = rng.integers(0, len(_MONTH_START), baskets)
    basket_craftsman = rng.choice(craft_pool, baskets, p=craft_p)
    month = basket_month[basket]
    created = _MONTH_START[month] + (rng.random(n) * _MONTH_LEN[month]).astype(np.int64)
    craftsman = np.where(rng.random(n) < 0.6, basket_craftsman[basket],
                         rng.choice(craft_pool, n, p=craft_p))
    product = world.prod_start[craftsman] + (rng.random(n) * world.prod_count[craftsman]).astype(
        np.int64)
    order = np.argsort(created, kind="stable")  # ids grow with time, as in production
    created, craftsman, product = created[order], craftsman[order], product[order]
    customer = basket_customer[basket][order]
    status, completion, has_completion = _lifecycle(rng, created, _D1)

    rule = np.full(n, -1, dtype=np.int64)
    planted = round(n * INVALID_SHARE)
    if n >= 10 * len(rules):
        planted = max(planted, len(rules))  # every rule shows up even in small samples
    rows = rng.choice(n, planted, replace=False)
    rule[rows] = np.asarray(rules)[rng.permutation(planted) % len(rules)]
    variant = rng.integers(0, 8, n)
    # A row breaks exactly the rule it was planted with.
    status = np.where(rule == _COMPLETION, 3, status)
    has_completion = np.where(rule == _COMPLETION, True, has_completion)
    has_completion = np.where(rule == _CREATED_NULL, False, has_completion)
    completion = np.where(rule == _COMPLETION, created - 1 - variant % 14, completion)
    return _Orders(customer, craftsman, product, created, status, completion, has_completion,
                   rule, variant)


def _order_columns(rng: np.random.Generator, o: _Orders) -> dict[str, pl.Series]:
    """created/completion dates and status, valid spellings and planted breakage."""
    n = len(o.created)
    spelling = rng.choice(5, n, p=(0.88, 0.04, 0.03, 0.03, 0.02))
    frame = pl.DataFrame({
        "status": _pick(STATUSES, o.status),
        "spelling": spelling,
        "garbage": _pick(_GARBAGE_STATUSES, o.variant % len(_GARBAGE_STATUSES)),
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
        pl.when(pl.col("rule") == _STATUS).then("garbage").otherwise(spelled)
    ).to_series()
    created = _days(o.created).scatter(np.flatnonzero(o.rule == _CREATED_NULL), None)
    completion = _days(o.completion).scatter(np.flatnonzero(~o.has_completion), None)
    return {
        "order_created_date": created,
        "order_completion_date": completion,
        "order_status": status,
    }


def _price_on(base: np.ndarray, day: np.ndarray) -> np.ndarray:
    """A product's price on a day: 7 % a year of inflation, in whole tens."""
    years = (day - _D0) / 365.25
    return (np.round(base * (1.0 + 0.07 * years) / 10) * 10).astype(np.int64)


def _person_columns(
    rng: np.random.Generator,
    world: _World,
    view: _View,
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
    birthday = _days(world.birthday[person] + 365 * view.birthday_typo[person])
    email = view.email.gather(person)
    if respell:
        rows = np.flatnonzero(rng.random(len(person)) < respell)
        email = email.scatter(rows, _spell_emails(rng, people["email"].gather(person[rows])))
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


def _product_columns(
    world: _World, view: _View, product: np.ndarray, on_day: np.ndarray | None
) -> dict[str, pl.Series]:
    products = world.products
    kind = pl.DataFrame({
        "type": products["type"].gather(product),
        "alt": products["alt_type"].gather(product),
        "use_alt": view.alt_type[product],
    }).select(pl.when("use_alt").then("alt").otherwise("type")).to_series()
    base = world.base_price[product]
    price = base if on_day is None else _price_on(base, on_day)
    return {
        "product_name": products["name"].gather(product),
        "product_description": products["description"].gather(product),
        "product_type": kind,
        "product_price": pl.Series(price, dtype=pl.Int64),
    }


def _local_ids(
    rng: np.random.Generator, keys: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Source-local ids 1..k for the distinct keys (in random order): (keys, lookup)."""
    distinct = np.unique(keys)
    lookup = np.zeros(size, dtype=np.int64)
    lookup[distinct] = rng.permutation(len(distinct)) + 1
    return distinct, lookup


def _break_inline(
    frame: pl.DataFrame,
    rules: np.ndarray,
    variants: np.ndarray,
    emails: dict[str, int],
    price: bool,
) -> pl.DataFrame:
    """Plant price and email breakage in the columns of the rows themselves.

    ``rules``/``variants`` are per row (as in ``_Orders``); ``emails`` maps an email
    column to the variant parity that breaks it in this table.
    """
    rule, variant = pl.lit(pl.Series(rules)), pl.lit(pl.Series(variants))
    updates = []
    if price:
        p = pl.col("product_price")
        updates.append(
            pl.when(rule == _PRICE).then(pl.when(variant % 2 == 0).then(0).otherwise(-p))
            .otherwise(p).alias("product_price")
        )
    for column, parity in emails.items():
        c = pl.col(column)
        updates.append(
            pl.when((rule == _EMAIL) & (variant % 2 == parity)).then(_malformed(c, variant // 2))
            .otherwise(c).alias(column)
        )
    return frame.with_columns(updates) if updates else frame


def _source1(seed: int, world: _World, view: _View, o: _Orders) -> dict[str, pl.DataFrame]:
    rng = _rng(seed, 4, 0)
    n = len(o.created)
    ids = pl.Series(np.arange(1, n + 1), dtype=pl.Int64)
    _, craft_id = _local_ids(rng, o.craftsman, world.people.height)
    _, cust_id = _local_ids(rng, o.customer, world.people.height)
    frame = pl.DataFrame({
        "id": ids,
        "craftsman_id": craft_id[o.craftsman],
        **_person_columns(rng, world, view, o.craftsman, "craftsman", on_day=o.created,
                          respell=0.1),
        "product_id": o.product + 1,
        **_product_columns(world, view, o.product, o.created),
        "order_id": ids,
        **_order_columns(rng, o),
        "customer_id": cust_id[o.customer],
        **_person_columns(rng, world, view, o.customer, "customer", on_day=o.created,
                          nullable=("name", "address", "birthday"), respell=0.1),
    })
    frame = _break_inline(frame, o.rule, o.variant, {"customer_email": 0, "craftsman_email": 1},
                         price=True)
    return {"source1.craft_market_wide": frame}


def _source2(seed: int, world: _World, view: _View, o: _Orders) -> dict[str, pl.DataFrame]:
    """Masters-with-product rows (one product per ``craftsman_id``) and order rows."""
    rng = _rng(seed, 4, 1)
    n = len(o.created)
    n_prod = world.products.height
    unused = rng.choice(n_prod, n_prod // 50 if n else 0, replace=False)
    products, row_id = _local_ids(rng, np.concatenate([o.product, unused]), n_prod)
    rows = products[np.argsort(row_id[products])]
    # Broken craftsman emails and prices live on a masters row of their own.
    own_row = ((o.rule == _EMAIL) & (o.variant % 2 == 1)) | (o.rule == _PRICE)
    own = np.flatnonzero(own_row)
    extra_ids = len(rows) + 1 + np.arange(len(own))
    masters_product = np.concatenate([rows, o.product[own]])
    owner = world.prod_owner[masters_product]
    masters = pl.DataFrame({
        "craftsman_id": np.concatenate([np.arange(1, len(rows) + 1), extra_ids]),
        **_person_columns(rng, world, view, owner, "craftsman", respell=0.1),
        "product_id": masters_product + 1,
        **_product_columns(world, view, masters_product, None),
    })
    broken = np.concatenate([np.full(len(rows), -1), o.rule[own]])
    flavour = np.concatenate([np.zeros(len(rows), dtype=np.int64), o.variant[own]])
    masters = _break_inline(masters, broken, flavour, {"craftsman_email": 1}, price=True)

    craftsman_id = row_id[o.product]
    craftsman_id[own] = extra_ids
    product_id = o.product + 1
    missing = np.flatnonzero(o.rule == _PRODUCT)
    # Either an id no row has, or the product of another craftsman's row.
    other = products[(np.searchsorted(products, o.product[missing]) + 1) % len(products)] + 1
    product_id[missing] = np.where(
        (o.variant[missing] % 2 == 0) | (other == product_id[missing]),
        n_prod + 1 + np.arange(len(missing)), other)
    _, cust_id = _local_ids(rng, o.customer, world.people.height)
    orders = pl.DataFrame({
        "order_id": np.arange(1, n + 1),
        "craftsman_id": craftsman_id,
        "product_id": product_id,
        **_order_columns(rng, o),
        "customer_id": cust_id[o.customer],
        **_person_columns(rng, world, view, o.customer, "customer", on_day=o.created,
                          nullable=("name", "birthday"), respell=0.1),
    })
    orders = _break_inline(orders, o.rule, o.variant, {"customer_email": 0}, price=False)
    return {
        "source2.craft_market_masters_products": masters,
        "source2.craft_market_orders_customers": orders,
    }


def _people_table(
    rng: np.random.Generator,
    world: _World,
    view: _View,
    o: _Orders,
    person: np.ndarray,
    role: str,
    parity: int,
    extra: np.ndarray,
    nullable: tuple[str, ...],
) -> tuple[pl.DataFrame, np.ndarray]:
    """A source's table of people (those in ``person`` plus ``extra`` without orders).

    Orders planted with a broken email of this role get a person row of their own.
    Returns the table and each order's id in it.
    """
    distinct, lookup = _local_ids(rng, np.concatenate([person, extra]), world.people.height)
    distinct = distinct[np.argsort(lookup[distinct])]
    own = np.flatnonzero((o.rule == _EMAIL) & (o.variant % 2 == parity))
    ids = lookup[person]
    ids[own] = len(distinct) + 1 + np.arange(len(own))
    everyone = np.concatenate([distinct, person[own]])
    table = pl.DataFrame({
        f"{role}_id": np.arange(1, len(everyone) + 1),
        **_person_columns(rng, world, view, everyone, role, nullable=nullable),
    })
    bad = pl.lit(pl.Series(np.concatenate([np.zeros(len(distinct), bool),
                                           np.ones(len(own), bool)])))
    flavour = pl.lit(pl.Series(np.concatenate([np.zeros(len(distinct), np.int64),
                                               o.variant[own] // 2])))
    email = pl.col(f"{role}_email")
    table = table.with_columns(pl.when(bad).then(_malformed(email, flavour)).otherwise(email))
    return table, ids


def _source3(seed: int, world: _World, view: _View, o: _Orders) -> dict[str, pl.DataFrame]:
    rng = _rng(seed, 4, 2)
    n = len(o.created)
    idle = world.customers[rng.choice(len(world.customers), n // 100)]
    customers, cust_id = _people_table(rng, world, view, o, o.customer, "customer", 0, idle,
                                       ("name", "address", "birthday"))
    craftsmen, craft_id = _people_table(rng, world, view, o, o.craftsman, "craftsman", 1,
                                        np.empty(0, np.int64), ())
    orders = pl.DataFrame({
        "order_id": np.arange(1, n + 1),
        "product_id": o.product + 1,
        "craftsman_id": craft_id,
        "customer_id": cust_id,
        **_order_columns(rng, o),
        **_product_columns(world, view, o.product, o.created),
    })
    orders = _break_inline(orders, o.rule, o.variant, {}, price=True)
    return {
        "source3.craft_market_craftsmans": craftsmen,
        "source3.craft_market_customers": customers,
        "source3.craft_market_orders": orders,
    }


def _external(seed: int, world: _World, view: _View, o: _Orders) -> dict[str, pl.DataFrame]:
    rng = _rng(seed, 4, 3)
    n = len(o.created)
    idle = world.customers[rng.choice(len(world.customers), n // 100)]
    customers, cust_id = _people_table(rng, world, view, o, o.customer, "customer", 0, idle,
                                       ("name", "address", "birthday"))
    _, craft_id = _local_ids(rng, o.craftsman, world.people.height)
    ids = np.arange(1, n + 1)
    orders = pl.DataFrame({
        "id": ids,
        "craftsman_id": craft_id[o.craftsman],
        **_person_columns(rng, world, view, o.craftsman, "craftsman", on_day=o.created,
                          respell=0.1),
        "product_id": o.product + 1,
        **_product_columns(world, view, o.product, o.created),
        "order_id": ids,
        **_order_columns(rng, o),
        "customer_id": cust_id,
    })
    orders = _break_inline(orders, o.rule, o.variant, {"craftsman_email": 1}, price=True)
    return {
        "external_source.customers": customers,
        "external_source.craft_products_orders": orders,
    }


_BUILDERS = (_source1, _source2, _source3, _external)


def split_orders(orders: int) -> dict[str, int]:
    """How ``orders`` are shared out between the sources (30/25/25/20 %)."""
    counts = [int(orders * share) for share in SOURCE_SHARES[:-1]]
    counts.append(orders - sum(counts))
    return dict(zip(SOURCES, counts, strict=True))


def generate(
    conn: Any,
    orders: int,
    seed: int,
    progress: Progress | None = None,
    *,
    replace: bool = False,
) -> GenerateSummary:
    """Fill the four sources with ``orders`` orders of a synthetic marketplace.

    The same ``(orders, seed)`` always gives byte-identical source tables, ids
    included; identity sequences are then moved past the ids used. About 2 % of the
    order rows break one validity rule each (every rule of SPEC §3 that applies to
    a source is represented once it has 60 orders). Creates the source tables if missing.
    Refuses with ``CraftmartError`` when the sources hold rows, unless ``replace``,
    which empties them first. Commits on success, rolls back on failure.
    ``progress(stage, fraction_done)`` is called a few times per source.
    """
    if orders < 0:
        raise CraftmartError(f"the number of orders must not be negative, got {orders}")
    started = time.perf_counter()
    report = progress or (lambda _stage, _fraction: None)
    try:
        create_sources(conn)
        held = sum(_source_rows(conn).values())
        if held:
            if not replace:
                raise CraftmartError(f"the sources already hold {held} rows; "
                                     "replace them (--replace) to start over")
            execute(conn, "truncate table " + ", ".join(_qualified(t) for t in TABLES))
        report("people and products", 0.0)
        world = _build_world(seed, orders)
        counts = split_orders(orders)
        invalid = dict.fromkeys(RULES, 0)
        rows: dict[str, int] = {}
        done = 0
        for s, source in enumerate(SOURCES):
            n = counts[source]
            report(f"{source}: building", done / max(orders, 1))
            rules = RULES if source == "source2" else RULES[:-1]
            planned = _build_orders(seed, s, n, world, tuple(RULES.index(r) for r in rules))
            tables = _BUILDERS[s](seed, world, _build_view(seed, s, world), planned)
            for r, c in zip(*np.unique(planned.rule[planned.rule >= 0], return_counts=True),
                            strict=True):
                invalid[RULES[r]] += int(c)
            report(f"{source}: writing", (done + 0.5 * n) / max(orders, 1))
            for table, frame in tables.items():
                _ingest(conn, table, frame)
                rows[table] = frame.height
            done += n
        report("finishing", 1.0 if not orders else 0.99)
        _sync_identities(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    elapsed = time.perf_counter() - started
    report("done", 1.0)
    logger.info("generated %d orders in %.1f s", orders, elapsed)
    return GenerateSummary(orders, seed, counts, rows, invalid, elapsed)


# --------------------------------------------------------------------------- changes

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
_ROW_KINDS = ("status_moves", "month_moves", "customer_moves", "order_deletions",
              "invalid_order_deletions", "rows_made_invalid", "rows_made_valid")
_MOVE, _SHIFT, _REHOME, _DELETE, _DELETE_INVALID, _SPOIL, _FIX = range(len(_ROW_KINDS))

_EMAIL_RE = r"^[^@\s]+@[^@\s]+$"
_DOMAIN_AT_END = "(?i)(" + "|".join(d.replace(".", r"\.") for d in
                                    sorted(_DOMAINS, key=len, reverse=True)) + ")$"


@dataclass(frozen=True)
class _Layout:
    """Where one source keeps what a change touches."""

    orders: str
    pk: str
    customers: str | None = None  # a customer table (else customer columns on the order)
    craftsmen: str | None = None  # a craftsman table (else inline, or on masters)
    masters: str | None = None  # source2's craftsman-with-product rows
    order_ids: tuple[str, ...] = ()  # further per-order identity columns to renumber


_LAYOUTS = {
    "source1": _Layout("source1.craft_market_wide", "id", order_ids=("order_id",)),
    "source2": _Layout("source2.craft_market_orders_customers", "order_id",
                       masters="source2.craft_market_masters_products"),
    "source3": _Layout("source3.craft_market_orders", "order_id",
                       customers="source3.craft_market_customers",
                       craftsmen="source3.craft_market_craftsmans"),
    "external_source": _Layout("external_source.craft_products_orders", "id",
                               customers="external_source.customers", order_ids=("order_id",)),
}
_PARENT_KEYS = {
    "source2.craft_market_masters_products": "craftsman_id",
    "source3.craft_market_craftsmans": "craftsman_id",
    "source3.craft_market_customers": "customer_id",
    "external_source.customers": "customer_id",
}


def _email_ok(email: pl.Expr) -> pl.Expr:
    return email.str.strip_chars(" ").str.contains(_EMAIL_RE).fill_null(True)


def _repaired(email: pl.Expr, fallback: pl.Expr) -> pl.Expr:
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


def _canonical(source: str, t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Per order row (in table order): the fields validity depends on, and its rules."""
    lay = _LAYOUTS[source]
    o = t[lay.orders]
    if source == "source2":
        masters = t[lay.masters].select(  # type: ignore[index]
            "craftsman_id", "product_id", "product_price", "craftsman_email",
            pl.lit(True).alias("joined"))
        o = o.join(masters, on=["craftsman_id", "product_id"], how="left",
                   maintain_order="left")
    else:
        o = o.with_columns(pl.lit(True).alias("joined"))
    if lay.craftsmen:
        o = o.join(t[lay.craftsmen].select("craftsman_id", "craftsman_email"),
                   on="craftsman_id", how="left", maintain_order="left")
    if lay.customers:
        o = o.join(t[lay.customers].select("customer_id", "customer_email"),
                   on="customer_id", how="left", maintain_order="left")
    created, completion = pl.col("order_created_date"), pl.col("order_completion_date")
    status = pl.col("order_status").str.strip_chars(" ").str.to_lowercase()
    product_key = "craftsman_id" if source == "source2" else "product_id"
    return o.select(
        pl.col("customer_id").alias("customer_key"),
        pl.col(product_key).alias("product_key"),
        status.alias("status"),
        created.is_null().alias(RULES[_CREATED_NULL]),
        (~status.is_in(STATUSES)).alias(RULES[_STATUS]),
        (completion < created).fill_null(False).alias(RULES[_COMPLETION]),
        (pl.col("product_price") <= 0).fill_null(False).alias(RULES[_PRICE]),
        ~(_email_ok(pl.col("craftsman_email")) & _email_ok(pl.col("customer_email")))
        .alias(RULES[_EMAIL]),
        pl.col("joined").is_null().alias(RULES[_PRODUCT]),
    ).with_columns(valid=~pl.any_horizontal(RULES))


def _allocate(changes: int) -> dict[str, int]:
    """Split ``changes`` over the kinds by CHANGE_MIX (largest remainder, stable)."""
    exact = {k: changes * share for k, share in CHANGE_MIX.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(CHANGE_MIX, key=lambda k: -(exact[k] - counts[k]))
    for k in by_remainder[: changes - sum(counts.values())]:
        counts[k] += 1
    return counts


def _read_sources(conn: Any) -> dict[str, pl.DataFrame]:
    tables = {}
    for table, identity in TABLES.items():
        tables[table] = fetch_frame(
            conn, f"select * from {_qualified(table)} order by {quote_ident(identity[0])}")
    return tables


@dataclass
class _Plan:
    """Which rows, customers and products each kind of change takes, per source."""

    kind: list[np.ndarray]  # per order row: index into _ROW_KINDS, or -1
    recent: list[np.ndarray]  # template rows of new recent orders
    late: list[np.ndarray]  # template rows of new late orders
    addresses: list[np.ndarray]  # customer keys (customer_id) that move house
    products: list[np.ndarray]  # product keys (product_id; source2: craftsman_id)
    applied: dict[str, int]


def _change_plan(
    rng: np.random.Generator, canon: list[pl.DataFrame], counts: dict[str, int]
) -> _Plan:
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
        _MOVE: valid & open_order, _SHIFT: valid, _REHOME: valid, _DELETE: valid,
        _DELETE_INVALID: ~valid, _SPOIL: valid, _FIX: ~valid,
    }
    for code, name in enumerate(_ROW_KINDS):
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
    return _Plan(
        kind=[kind[offsets[s]: offsets[s + 1]] for s in range(len(canon))],
        recent=by_source["new_orders_recent"],
        late=by_source["new_orders_late"],
        addresses=addresses,
        products=products,
        applied={k: applied[k] for k in CHANGE_MIX},
    )


def apply_changes(conn: Any, changes: int, seed: int) -> ChangeSummary:
    """Apply ``changes`` realistic changes to the sources, in one transaction.

    A mix (CHANGE_MIX) of new orders (recent ones, and late ones in old months), status
    moves along created -> in progress -> delivery -> done, orders moving month or
    customer, customer address changes, product price or type changes, deleted orders
    (order rows only: parents are ``on delete restrict``), valid rows turning invalid
    and invalid rows fixed. A kind that runs out of candidates hands its share to new
    recent orders, so ``summary.total == changes`` whenever a valid order exists.
    Deterministic for the same source contents and ``seed``. Commits on success, rolls
    back on failure; raises ``CraftmartError`` when the sources hold no orders.
    """
    if changes < 0:
        raise CraftmartError(f"the number of changes must not be negative, got {changes}")
    started = time.perf_counter()
    try:
        create_sources(conn)
        tables = _read_sources(conn)
        canon = [_canonical(source, tables) for source in SOURCES]
        if not sum(c.height for c in canon):
            raise CraftmartError("the sources hold no orders; generate them first")
        plan = _change_plan(_rng(seed, 9), canon, _allocate(changes))
        last = pl.concat([tables[_LAYOUTS[s].orders]["order_created_date"] for s in SOURCES])
        latest = cast("int | None", last.cast(pl.Int32).max())  # days since 1970-01-01
        today = _D1 if latest is None else latest
        inserted, deleted = {}, {}
        for s, source in enumerate(SOURCES):
            writes, inserted[source], deleted[source] = _change_source(
                _rng(seed, 10, s), s, tables, canon[s], plan, today)
            for table, operation, frame in writes:
                _write(conn, table, operation, frame)
        _sync_identities(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    elapsed = time.perf_counter() - started
    logger.info("applied %d changes in %.1f s", changes, elapsed)
    return ChangeSummary(
        changes=changes,
        seed=seed,
        applied=plan.applied,
        rows_inserted=sum(inserted.values()),
        rows_deleted=sum(deleted.values()),
        elapsed_seconds=elapsed,
        orders_delta={s: inserted[s] - deleted[s] for s in SOURCES},
    )


_Write = tuple[str, str, pl.DataFrame]  # (table, "update" | "delete" | "append", rows)


def _write(conn: Any, table: str, operation: str, frame: pl.DataFrame) -> None:
    """``update`` parent rows by key (identity columns untouched), ``delete`` order rows
    by key, ``append`` order rows with their ids (binary COPY)."""
    if not frame.height:
        return
    target = _qualified(table)
    if operation == "append":
        _ingest(conn, table, frame)
        return
    if operation == "update":
        key = _PARENT_KEYS[table]
        staged = stage(conn, "craftmart_generate_rows", frame)
        sets = ", ".join(f"{quote_ident(c)} = s.{quote_ident(c)}"
                         for c in frame.columns if c not in TABLES[table])
        execute(conn, f"update {target} as t set {sets} from {staged} as s "
                      f"where t.{quote_ident(key)} = s.{quote_ident(key)}")
    else:
        key = TABLES[table][0]
        staged = stage(conn, "craftmart_generate_keys", frame)
        execute(conn, f"delete from {target} as t using {staged} as s "
                      f"where t.{quote_ident(key)} = s.{quote_ident(key)}")
    execute(conn, f"drop table {staged}")


def _change_source(
    rng: np.random.Generator,
    s: int,
    tables: dict[str, pl.DataFrame],
    canon: pl.DataFrame,
    plan: _Plan,
    today: int,
) -> tuple[list[_Write], int, int]:
    """One source's share of the plan as table writes; and its inserted, deleted orders.

    Changed order rows are deleted and appended again: an update may not set the
    ``generated always`` identity columns that a customer move changes in source1/2.
    """
    source = SOURCES[s]
    lay = _LAYOUTS[source]
    orders = tables[lay.orders]
    n = orders.height
    inline_price = "product_price" in orders.columns
    kind = plan.kind[s]
    aux = pl.DataFrame({
        "_kind": kind,
        "_lag": 1 + np.floor(rng.gamma(2.0, 4.0, n)).astype(np.int64),
        "_shift": rng.choice((-1, 1), n) * rng.integers(20, 91, n),
        "_variant": rng.integers(0, 4, n),
        "_price": _new_prices(rng, n),
        "_garbage": _pick(_GARBAGE_STATUSES, rng.integers(0, len(_GARBAGE_STATUSES), n)),
        "_someday": _days(rng.integers(_D0, today + 1, n)),
    })
    flags = canon.select(pl.col(RULES).name.prefix("_"))
    w = pl.concat([orders, aux, flags], how="horizontal")
    k, variant, lag = pl.col("_kind"), pl.col("_variant"), pl.duration(days="_lag")
    created, completion = pl.col("order_created_date"), pl.col("order_completion_date")
    status = pl.col("order_status")
    norm = status.str.strip_chars(" ").str.to_lowercase()
    after = (pl.when(norm == "created").then(pl.lit("in progress"))
             .when(norm == "in progress").then(pl.lit("delivery")).otherwise(pl.lit("done")))

    # status moves; reaching done sets the completion date
    w = w.with_columns(
        pl.when(k == _MOVE).then(after).otherwise(status).alias("order_status"),
        pl.when((k == _MOVE) & (after == "done")).then(pl.coalesce(completion, created + lag))
        .otherwise(completion).alias("order_completion_date"),
    )
    # month moves: the order shifts by three weeks to three months, completion with it
    moved = (created + pl.duration(days="_shift")).clip(
        pl.lit(FIRST_DAY), pl.lit(date.fromordinal(_EPOCH.toordinal() + today)))
    w = w.with_columns(
        pl.when(k == _SHIFT).then(moved).otherwise(created).alias("order_created_date"),
        pl.when(k == _SHIFT).then(completion + (moved - created)).otherwise(completion)
        .alias("order_completion_date"),
    )
    # valid rows turning invalid: garbage status, completion before creation,
    # created date lost, or a zero price (source2 keeps prices on masters: garbage)
    garbage = (variant == 0) | ((variant == 3) & ~pl.lit(inline_price))
    w = w.with_columns(
        pl.when((k == _SPOIL) & garbage).then("_garbage").otherwise(status).alias("order_status"),
        pl.when((k == _SPOIL) & (variant == 1)).then(created - lag)
        .when((k == _SPOIL) & (variant == 2)).then(None)
        .otherwise(completion).alias("order_completion_date"),
        pl.when((k == _SPOIL) & (variant == 2)).then(None).otherwise(created)
        .alias("order_created_date"),
        *([pl.when((k == _SPOIL) & (variant == 3)).then(0).otherwise("product_price")
           .alias("product_price")] if inline_price else []),
    )
    # invalid rows fixed: every rule the row breaks on the order row is repaired here,
    # those it breaks through a parent row further down
    fix = k == _FIX
    w = w.with_columns(
        pl.when(fix & pl.col("_created_date_null"))
        .then(pl.coalesce(completion - pl.duration(days=5), "_someday"))
        .otherwise(created).alias("order_created_date"),
        pl.when(fix & pl.col("_status_unknown"))
        .then(pl.when(completion.is_not_null()).then(pl.lit("done")).otherwise(pl.lit("created")))
        .otherwise(status).alias("order_status"),
        *([pl.when(fix & pl.col("_price_not_positive")).then("_price")
           .otherwise("product_price").alias("product_price")] if inline_price else []),
        *[pl.when(fix & ~_email_ok(pl.col(c)))
          .then(_repaired(pl.col(c), pl.format(f"{c[:-6]}.{s}.{{}}@example.org", lay.pk)))
          .otherwise(c).alias(c)
          for c in ("craftsman_email", "customer_email") if c in orders.columns],
    )
    w = w.with_columns(
        pl.when(fix & (completion < created)).then(created + lag).otherwise(completion)
        .alias("order_completion_date"))
    fixed = w.filter(fix)

    # orders moving to another customer
    if lay.customers:
        customers = tables[lay.customers]
        good = customers.filter(_email_ok(pl.col("customer_email")))["customer_id"].to_numpy()
        new_id = good[rng.integers(0, len(good), n)] if len(good) else np.zeros(n, np.int64)
        w = w.with_columns(pl.when(k == _REHOME).then(pl.Series(new_id))
                           .otherwise("customer_id").alias("customer_id"))
    else:  # the customer's columns come from another valid order of the source
        donor = np.arange(n)
        movers = np.flatnonzero(kind == _REHOME)
        valid_rows = np.flatnonzero(canon["valid"].to_numpy())
        if len(movers):
            donor[movers] = valid_rows[rng.integers(0, len(valid_rows), len(movers))]
        cols = [c for c in orders.columns if c.startswith("customer_")]
        donated = w.select(cols)[donor].rename({c: f"_donor_{c}" for c in cols})
        w = pl.concat([w, donated], how="horizontal").with_columns(
            pl.when(k == _REHOME).then(f"_donor_{c}").otherwise(c).alias(c) for c in cols)
    w = w.with_columns(_touched=k.is_in([_MOVE, _SHIFT, _SPOIL, _FIX, _REHOME]))

    writes: list[_Write] = []
    moving = pl.DataFrame({
        "customer_id": pl.Series(plan.addresses[s], dtype=pl.Int64),
        "_new_address": _addresses(rng, len(plan.addresses[s])),
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
    if lay.customers:
        writes.append((lay.customers, "update", _changed_parent(
            rng, tables[lay.customers], "customer", s, fixed["customer_id"], moving=moving)))
    else:  # a move rewrites the address on every order row of the customer
        w = w.join(moving, on="customer_id", how="left", maintain_order="left").with_columns(
            pl.coalesce("_new_address", "customer_address").alias("customer_address"),
            (pl.col("_touched") | pl.col("_new_address").is_not_null()).alias("_touched"))

    deleted = k.is_in([_DELETE, _DELETE_INVALID])
    new = _new_orders(rng, orders, lay, plan.recent[s], plan.late[s], today)
    writes.append((lay.orders, "delete",
                   w.filter(pl.col("_touched") | deleted).select(lay.pk)))
    writes.append((lay.orders, "append", pl.concat([
        w.filter(pl.col("_touched") & ~deleted).select(orders.columns), new])))
    return writes, new.height, int(np.isin(kind, (_DELETE, _DELETE_INVALID)).sum())


def _new_prices(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(np.round(np.exp(rng.normal(7.3, 0.8, n)) / 10) * 10, 50, 200_000).astype(
        np.int64)


def _product_changes(rng: np.random.Generator, keys: np.ndarray, key: str) -> pl.DataFrame:
    """Half of the products get 5-30 % dearer, the others move to another type."""
    m = len(keys)
    repriced = rng.random(m) < 0.5
    first = rng.integers(0, len(_TYPES), m)
    return pl.DataFrame({
        key: pl.Series(keys, dtype=pl.Int64),
        "_factor": pl.Series(rng.uniform(1.05, 1.30, m)).scatter(np.flatnonzero(~repriced), None),
        "_new_type": _pick(_TYPES, first).scatter(np.flatnonzero(repriced), None),
        "_other_type": _pick(_TYPES, (first + 1) % len(_TYPES)),
    })


def _scaled_price() -> pl.Expr:
    price = pl.col("product_price")
    return (pl.when(pl.col("_factor").is_not_null())
            .then(((price * pl.col("_factor") / 10).round(0) * 10).cast(pl.Int64))
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
    price), products that change price or type, customers that move house."""
    key = f"{role}_id"
    email = pl.col(f"{role}_email")
    needed = pl.col(key).is_in(fixed_refs.implode())
    w = parent.with_columns(_price=pl.Series(_new_prices(rng, parent.height)))
    touched = needed & ~_email_ok(email)
    updates = [
        pl.when(needed & ~_email_ok(email))
        .then(_repaired(email, pl.format(f"{role}.{s}.{{}}@example.org", key)))
        .otherwise(email).alias(f"{role}_email"),
    ]
    if "product_price" in parent.columns:
        touched = touched | (needed & (pl.col("product_price") <= 0))
        updates.append(pl.when(needed & (pl.col("product_price") <= 0)).then("_price")
                       .otherwise("product_price").alias("product_price"))
    w = w.with_columns(_touched=touched).with_columns(updates)
    if products is not None:
        w = w.join(products, on=key, how="left", maintain_order="left").with_columns(
            _scaled_price().alias("product_price"),
            _retyped().alias("product_type"),
            (pl.col("_touched") | pl.col("_factor").is_not_null()
             | pl.col("_new_type").is_not_null()).alias("_touched"))
    if moving is not None:
        w = w.join(moving, on=key, how="left", maintain_order="left").with_columns(
            pl.coalesce("_new_address", f"{role}_address").alias(f"{role}_address"),
            (pl.col("_touched") | pl.col("_new_address").is_not_null()).alias("_touched"))
    return w.filter("_touched").select(parent.columns)


def _new_orders(
    rng: np.random.Generator,
    orders: pl.DataFrame,
    lay: _Layout,
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
        rng.integers(_D0, max(_D0 + 1, today - 90), len(late)),
    ])
    status, completion, has_completion = _lifecycle(rng, created, today + 14)
    ids = {column: cast(int, orders[column].max() or 0) for column in (lay.pk, *lay.order_ids)}
    return orders[rows].with_columns(
        *[pl.Series(column, top + 1 + np.arange(m), dtype=pl.Int64) for column, top in ids.items()],
        order_created_date=_days(created),
        order_completion_date=_days(completion).scatter(np.flatnonzero(~has_completion), None),
        order_status=_pick(STATUSES, status),
    )
