"""The four source schemas: their DDL, and filling them with a generated marketplace."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import polars as pl

from .._database import quote_ident
from .._sql import append, execute, fetch_value, split_statements
from ..errors import CraftmartError
from .common import (
    EMAIL,
    PRICE,
    PRICE_RANGE,
    PRODUCT,
    RULES,
    SOURCE_SHARES,
    SOURCES,
    TABLES,
    Progress,
    Shape,
    check_shape,
    counts_text,
    qualified,
    stream,
)
from .orders import (
    Orders,
    break_inline,
    build_orders,
    local_ids,
    malformed,
    order_columns,
    person_columns,
    product_columns,
)
from .world import View, World, build_view, build_world

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateSummary:
    """What ``generate`` wrote: rows per source table, invalid rows planted per rule."""

    orders: int
    seed: int
    orders_per_source: dict[str, int]
    rows: dict[str, int]
    invalid: dict[str, int]
    elapsed_seconds: float
    shape: Shape = "real"

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    def __str__(self) -> str:
        return "\n".join([
            f"generated {self.orders:,} orders (seed {self.seed}, {self.shape} rows) in "
            f"{self.elapsed_seconds:.1f} s",
            "  orders: " + counts_text(self.orders_per_source),
            "  rows: " + counts_text(self.rows),
            f"  invalid rows planted ({self.invalid_total:,}): " + counts_text(self.invalid),
        ])


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
        table: int(fetch_value(conn, f"select count(*) from {qualified(table)}"))
        for table in TABLES
    }


def sync_identities(conn: Any) -> None:
    """Move every identity sequence past the largest id stored, so plain inserts work."""
    for table, columns in TABLES.items():
        maxima = ", ".join(f"coalesce(max({quote_ident(c)}), 0)" for c in columns)
        cur = conn.cursor()
        try:
            cur.execute(f"select {maxima} from {qualified(table)}")
            values = cur.fetchone()
        finally:
            cur.close()
        for column, value in zip(columns, values, strict=True):
            execute(
                conn,
                "select setval(pg_get_serial_sequence($1, $2), $3, false)",
                (table, column, int(value) + 1),
            )


def ingest(conn: Any, table: str, frame: pl.DataFrame) -> None:
    """Append a frame to a source table with binary COPY.

    COPY stores the values given even for ``generated always`` identity columns, which
    is what makes the ids deterministic; ``sync_identities`` then fixes the sequences.
    """
    schema, name = table.split(".")
    append(conn, schema, name, frame)


def _source1(seed: int, world: World, view: View, o: Orders) -> dict[str, pl.DataFrame]:
    rng = stream(seed, 4, 0)
    n = len(o.created)
    ids = pl.Series(np.arange(1, n + 1), dtype=pl.Int64)
    _, craft_id = local_ids(rng, o.craftsman, world.people.height)
    _, cust_id = local_ids(rng, o.customer, world.people.height)
    frame = pl.DataFrame({
        "id": ids,
        "craftsman_id": craft_id[o.craftsman],
        **person_columns(rng, world, view, o.craftsman, "craftsman", on_day=o.created,
                          respell=0.1),
        "product_id": o.product + 1,
        **product_columns(world, view, o.product, o.created),
        "order_id": ids,
        **order_columns(rng, o),
        "customer_id": cust_id[o.customer],
        **person_columns(rng, world, view, o.customer, "customer", on_day=o.created,
                          nullable=("name", "address", "birthday"), respell=0.1),
    })
    frame = break_inline(frame, o.rule, o.variant, {"customer_email": 0, "craftsman_email": 1},
                         price=True)
    return {"source1.craft_market_wide": frame}


def _source2(seed: int, world: World, view: View, o: Orders) -> dict[str, pl.DataFrame]:
    """Masters-with-product rows (one product per ``craftsman_id``) and order rows."""
    rng = stream(seed, 4, 1)
    n = len(o.created)
    n_prod = world.products.height
    unused = rng.choice(n_prod, n_prod // 50 if n else 0, replace=False)
    products, row_id = local_ids(rng, np.concatenate([o.product, unused]), n_prod)
    rows = products[np.argsort(row_id[products])]
    # Broken craftsman emails and prices live on a masters row of their own.
    own_row = (((o.rule == EMAIL) & (o.variant % 2 == 1))
               | (o.rule == PRICE) | (o.rule == PRICE_RANGE))
    own = np.flatnonzero(own_row)
    extra_ids = len(rows) + 1 + np.arange(len(own))
    masters_product = np.concatenate([rows, o.product[own]])
    owner = world.prod_owner[masters_product]
    masters = pl.DataFrame({
        "craftsman_id": np.concatenate([np.arange(1, len(rows) + 1), extra_ids]),
        **person_columns(rng, world, view, owner, "craftsman", respell=0.1),
        "product_id": masters_product + 1,
        **product_columns(world, view, masters_product, None),
    })
    broken = np.concatenate([np.full(len(rows), -1), o.rule[own]])
    flavour = np.concatenate([np.zeros(len(rows), dtype=np.int64), o.variant[own]])
    masters = break_inline(masters, broken, flavour, {"craftsman_email": 1}, price=True)

    craftsman_id = row_id[o.product]
    craftsman_id[own] = extra_ids
    product_id = o.product + 1
    missing = np.flatnonzero(o.rule == PRODUCT)
    # Either an id no row has, or the product of another craftsman's row.
    other = products[(np.searchsorted(products, o.product[missing]) + 1) % len(products)] + 1
    product_id[missing] = np.where(
        (o.variant[missing] % 2 == 0) | (other == product_id[missing]),
        n_prod + 1 + np.arange(len(missing)), other)
    _, cust_id = local_ids(rng, o.customer, world.people.height)
    orders = pl.DataFrame({
        "order_id": np.arange(1, n + 1),
        "craftsman_id": craftsman_id,
        "product_id": product_id,
        **order_columns(rng, o),
        "customer_id": cust_id[o.customer],
        **person_columns(rng, world, view, o.customer, "customer", on_day=o.created,
                          nullable=("name", "birthday"), respell=0.1),
    })
    orders = break_inline(orders, o.rule, o.variant, {"customer_email": 0}, price=False)
    return {
        "source2.craft_market_masters_products": masters,
        "source2.craft_market_orders_customers": orders,
    }


def _people_table(
    rng: np.random.Generator,
    world: World,
    view: View,
    o: Orders,
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
    distinct, lookup = local_ids(rng, np.concatenate([person, extra]), world.people.height)
    distinct = distinct[np.argsort(lookup[distinct])]
    own = np.flatnonzero((o.rule == EMAIL) & (o.variant % 2 == parity))
    ids = lookup[person]
    ids[own] = len(distinct) + 1 + np.arange(len(own))
    everyone = np.concatenate([distinct, person[own]])
    table = pl.DataFrame({
        f"{role}_id": np.arange(1, len(everyone) + 1),
        **person_columns(rng, world, view, everyone, role, nullable=nullable),
    })
    bad = pl.lit(pl.Series(np.concatenate([np.zeros(len(distinct), bool),
                                           np.ones(len(own), bool)])))
    flavour = pl.lit(pl.Series(np.concatenate([np.zeros(len(distinct), np.int64),
                                               o.variant[own] // 2])))
    email = pl.col(f"{role}_email")
    table = table.with_columns(pl.when(bad).then(malformed(email, flavour)).otherwise(email))
    return table, ids


def _source3(seed: int, world: World, view: View, o: Orders) -> dict[str, pl.DataFrame]:
    rng = stream(seed, 4, 2)
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
        **order_columns(rng, o),
        **product_columns(world, view, o.product, o.created),
    })
    orders = break_inline(orders, o.rule, o.variant, {}, price=True)
    return {
        "source3.craft_market_craftsmans": craftsmen,
        "source3.craft_market_customers": customers,
        "source3.craft_market_orders": orders,
    }


def _external(seed: int, world: World, view: View, o: Orders) -> dict[str, pl.DataFrame]:
    rng = stream(seed, 4, 3)
    n = len(o.created)
    idle = world.customers[rng.choice(len(world.customers), n // 100)]
    customers, cust_id = _people_table(rng, world, view, o, o.customer, "customer", 0, idle,
                                       ("name", "address", "birthday"))
    _, craft_id = local_ids(rng, o.craftsman, world.people.height)
    ids = np.arange(1, n + 1)
    orders = pl.DataFrame({
        "id": ids,
        "craftsman_id": craft_id[o.craftsman],
        **person_columns(rng, world, view, o.craftsman, "craftsman", on_day=o.created,
                          respell=0.1),
        "product_id": o.product + 1,
        **product_columns(world, view, o.product, o.created),
        "order_id": ids,
        **order_columns(rng, o),
        "customer_id": cust_id,
    })
    orders = break_inline(orders, o.rule, o.variant, {"craftsman_email": 1}, price=True)
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
    shape: Shape = "real",
) -> GenerateSummary:
    """Fill the four sources with ``orders`` orders of a synthetic marketplace.

    The same ``(orders, seed)`` always gives byte-identical source tables, ids
    included; identity sequences are then moved past the ids used. About 2 % of the
    order rows break one validity rule each (every rule of SPEC §3 that applies to
    a source is represented once it has 10 orders per rule: 70, source2 80; rule 7
    as a date and a price out of range). Creates the source tables if missing.
    Refuses with ``CraftmartError`` when the sources hold rows, unless ``replace``,
    which empties them first. Commits on success, rolls back on failure.
    ``progress(stage, fraction_done)`` is called a few times per source.

    ``shape`` sets the width of the text columns: ``"real"`` (the default) writes
    product descriptions of 300-600 characters and full street addresses, as
    production holds; ``"narrow"`` short ones, for quick tests. Both shapes hold the
    same people, products, orders and invalid rows; only those texts differ.
    """
    if orders < 0:
        raise CraftmartError(f"the number of orders must not be negative, got {orders}")
    shape = check_shape(shape)
    started = time.perf_counter()
    report = progress or (lambda _stage, _fraction: None)
    try:
        create_sources(conn)
        held = sum(_source_rows(conn).values())
        if held:
            if not replace:
                raise CraftmartError(f"the sources already hold {held} rows; "
                                     "replace them (--replace) to start over")
            execute(conn, "truncate table " + ", ".join(qualified(t) for t in TABLES))
        report("people and products", 0.0)
        world = build_world(seed, orders, shape)
        counts = split_orders(orders)
        invalid = dict.fromkeys(RULES, 0)
        rows: dict[str, int] = {}
        done = 0
        for s, source in enumerate(SOURCES):
            n = counts[source]
            report(f"{source}: building", done / max(orders, 1))
            # a missing product is a source2 breakage only (its orders join products)
            rules = tuple(r for r in range(len(RULES)) if source == "source2" or r != PRODUCT)
            planned = build_orders(seed, s, n, world, rules)
            tables = _BUILDERS[s](seed, world, build_view(seed, s, world), planned)
            for r, c in zip(*np.unique(planned.rule[planned.rule >= 0], return_counts=True),
                            strict=True):
                invalid[RULES[r]] += int(c)
            report(f"{source}: writing", (done + 0.5 * n) / max(orders, 1))
            for table, frame in tables.items():
                ingest(conn, table, frame)
                rows[table] = frame.height
            done += n
        report("finishing", 1.0 if not orders else 0.99)
        sync_identities(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    elapsed = time.perf_counter() - started
    report("done", 1.0)
    logger.info("generated %d orders (%s rows) in %.1f s", orders, shape, elapsed)
    return GenerateSummary(orders, seed, counts, rows, invalid, elapsed, shape)
