"""Test helpers: put orders into the real source schemas, run the pipeline, read tables."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from craftmart_batch import citus, pipeline
from craftmart_batch._database import Database, connect, connection
from craftmart_batch._sql import execute, execute_script, fetch_frame, fetch_value
from craftmart_batch.config import Settings, load_settings

SOURCES = ("source1", "source2", "source3", "external_source")

CUSTOMER = "customer_report_datamart"
CRAFTSMAN = "craftsman_report_datamart"
MARTS = (CUSTOMER, CRAFTSMAN)

#: Each default source's table with one row per order.
ORDER_TABLES = {
    "source1": "source1.craft_market_wide",
    "source2": "source2.craft_market_orders_customers",
    "source3": "source3.craft_market_orders",
    "external_source": "external_source.craft_products_orders",
}

#: A valid canonical order; tests override what they care about.
DEFAULT_ORDER: dict[str, Any] = {
    "craftsman_name": "Ann Potter",
    "craftsman_address": "1 Clay St",
    "craftsman_birthday": dt.date(1980, 1, 2),
    "craftsman_email": "ann@craft.example",
    "product_name": "Mug",
    "product_description": "A blue mug",
    "product_type": "ceramics",
    "product_price": 100,
    "order_created_date": dt.date(2024, 1, 5),
    "order_completion_date": None,
    "order_status": "created",
    "customer_name": "Bob Buyer",
    "customer_address": "2 Market Rd",
    "customer_birthday": dt.date(1990, 5, 6),
    "customer_email": "bob@buyer.example",
}


@functools.cache
def _citus_nodes(params: tuple[tuple[str, str], ...]) -> tuple[tuple[str, int], ...] | None:
    return citus.nodes(Database(dict(params)))


def citus_nodes(server: Database) -> tuple[tuple[str, int], ...] | None:
    """The Citus nodes behind ``server`` (coordinator first), None for plain PostgreSQL."""
    return _citus_nodes(tuple(sorted(server.params.items())))


def create_database(server: Database, name: str) -> Database:
    """A new empty database ``name`` on ``server``; on a Citus coordinator, on every node,
    with the citus extension in each and the workers registered with the coordinator."""
    return citus.create_database(server, name)


def drop_database(server: Database, name: str) -> None:
    """Drop ``name`` (``create_database``), with its replication slots, on every node."""
    citus.drop_database(server, name, citus_nodes(server))


def create_sources(db: Database) -> None:
    """Create the four source schemas exactly as the contract's DDL."""
    conn = connect(db)
    try:
        script = resources.files("craftmart_batch").joinpath("_schema/sources.sql").read_text()
        execute_script(conn, script)
        conn.commit()
    finally:
        conn.close()


class SqlDate(str):
    """A date as PostgreSQL's text for it, for dates Python cannot hold: ``infinity``,
    ``-infinity``, ``4714-11-24 BC``, ``5874897-12-31``. ``add_order`` casts it in SQL."""


def _insert(conn: Any, table: str, values: dict[str, Any], returning: str) -> int:
    columns = list(values)
    placeholders = ", ".join(
        f"${i}::date" if isinstance(value, SqlDate) else f"${i}"
        for i, value in enumerate(values.values(), start=1)
    )
    return int(
        fetch_value(
            conn,
            f"insert into {table} ({', '.join(columns)}) values ({placeholders})"
            f" returning {returning}",
            tuple(str(v) if isinstance(v, SqlDate) else v for v in values.values()),
        )
    )


def add_order(db: Database, source: str, **fields: Any) -> int:
    """Insert one order into ``source``'s tables; return its source order key.

    source2 and source3 get their own parent rows (craftsman/product, customer) for
    each order, which is how they look when different people sell and buy.
    """
    row = {**DEFAULT_ORDER, **fields}
    pick = {k: row[k] for k in row}
    craftsman = {k: pick[k] for k in pick if k.startswith("craftsman_")}
    customer = {k: pick[k] for k in pick if k.startswith("customer_")}
    product = {k: pick[k] for k in pick if k.startswith("product_")}
    order = {k: pick[k] for k in pick if k.startswith("order_")}
    conn = connect(db)
    try:
        if source == "source1":
            key = _insert(conn, "source1.craft_market_wide",
                          {**craftsman, **product, **order, **customer}, "order_id")
        elif source == "source2":
            craftsman_id = _insert(conn, "source2.craft_market_masters_products",
                                   {**craftsman, **product}, "craftsman_id")
            product_id = fetch_value(
                conn,
                "select product_id from source2.craft_market_masters_products"
                " where craftsman_id = $1",
                (craftsman_id,),
            )
            if fields.get("_missing_product"):
                product_id = -1
            key = _insert(conn, "source2.craft_market_orders_customers",
                          {"craftsman_id": craftsman_id, "product_id": product_id, **order,
                           **customer}, "order_id")
        elif source == "source3":
            craftsman_id = _insert(conn, "source3.craft_market_craftsmans", craftsman,
                                   "craftsman_id")
            customer_id = _insert(conn, "source3.craft_market_customers", customer,
                                  "customer_id")
            key = _insert(conn, "source3.craft_market_orders",
                          {"craftsman_id": craftsman_id, "customer_id": customer_id, **product,
                           **order}, "order_id")
        elif source == "external_source":
            customer_id = _insert(conn, "external_source.customers", customer, "customer_id")
            key = _insert(conn, "external_source.craft_products_orders",
                          {**craftsman, **product, **order, "customer_id": customer_id},
                          "order_id")
        else:
            raise ValueError(source)
        conn.commit()
    finally:
        conn.close()
    return key


def sql(db: Database, statement: str, parameters: tuple[Any, ...] | None = None) -> None:
    """Run one statement on the database and commit."""
    conn = connect(db)
    try:
        execute(conn, statement, parameters)
        conn.commit()
    finally:
        conn.close()


def query(db: Database, statement: str, parameters: tuple[Any, ...] | None = None) -> pl.DataFrame:
    conn = connect(db)
    try:
        return fetch_frame(conn, statement, parameters)
    finally:
        conn.close()


def settings_for(db: Database, config: Path | None = None, **overrides: Any) -> Settings:
    """Settings that point at ``db`` (the default four sources unless a config adds more)."""
    return load_settings(config, dsn=db.libpq_uri(), **overrides)


def run(
    db: Database, *, full: bool = False, config: Path | None = None, **overrides: Any
) -> pipeline.RunReport:
    """One run on ``db``; ``overrides`` are settings such as ``partitions=3`` or
    ``memory_budget="300MB"``."""
    return pipeline.run(settings_for(db, config, **overrides), db, full=full)


def mart(db: Database, name: str) -> pl.DataFrame:
    """A mart without its row id, numerics as text, in a stable order: for equality checks."""
    columns = query(
        db,
        "select column_name, data_type from information_schema.columns"
        " where table_schema = 'marts' and table_name = $1 and column_name <> 'id'"
        " order by ordinal_position",
        (name,),
    )
    select = ", ".join(
        f"{c}::text as {c}" if t == "numeric" else c
        for c, t in columns.iter_rows()
    )
    entity = "customer_id" if name.startswith("customer") else "craftsman_id"
    return query(db, f"select {select} from marts.{name}").sort(entity, "report_period")


def warehouse_state(db: Database) -> dict[str, str]:
    """Every table of dwh, marts (load dates included) and craftmart, except the run
    history, as sorted row texts: what an unfinished or refused run must leave as it was."""
    conn = connect(db)
    try:
        tables = fetch_frame(
            conn,
            "select table_schema || '.' || table_name as t from information_schema.tables"
            " where table_schema in ('dwh', 'marts', 'craftmart') and table_type = 'BASE TABLE'"
            " and (table_schema, table_name) <> ('craftmart', 'runs') order by 1",
        )["t"].to_list()
        return {
            table: str(fetch_value(conn, "select coalesce(string_agg(x::text, E'\\n'"
                                         f" order by x::text), '') from {table} as x"))
            for table in tables
        }
    finally:
        conn.close()


def mart_rows(conn: Any) -> dict[str, pl.DataFrame]:
    """Both marts as JSON text rows without their ids, in key order, read on ``conn``
    (inside whatever transaction it holds)."""
    frames = {}
    for name in MARTS:
        entity = "customer_id" if name == CUSTOMER else "craftsman_id"
        frames[name] = fetch_frame(
            conn,
            f"select (to_jsonb(m) - 'id')::text as row from marts.{name} as m"
            f" order by {entity}, report_period",
        )
    return frames


def rows_per_source(db: Database) -> dict[str, dict[str, int]]:
    """Per default source: rows in its order table, in f_order and in quarantine."""
    counts = {}
    for source, table in ORDER_TABLES.items():
        counts[source] = query(
            db,
            f"""
            select
                (select count(*) from {table}) as read,
                (select count(*) from dwh.f_order where source_name = $1) as loaded,
                (select count(*) from craftmart.quarantine where source_name = $1)
                    as quarantined
            """,
            (source,),
        ).row(0, named=True)
    return counts


@contextmanager
def generated_warehouse(server: Database, label: str, orders: int, seed: int) -> Iterator[Database]:
    """A throwaway database with ``orders`` generated orders, loaded by one run;
    dropped on exit. For module-scoped fixtures that only read the warehouse."""
    from craftmart_batch import synthetic

    name = f"cm_test_{label}_{uuid.uuid4().hex[:10]}"
    db = create_database(server, name)
    try:
        with connection(db) as conn:
            synthetic.generate(conn, orders, seed=seed)
        pipeline.run(settings_for(db), db)
        yield db
    finally:
        drop_database(server, name)


def database_on(handle: Any, dbname: str) -> Database:
    """A database of an embedded server ``handle`` (``own_server``), by name."""
    info = handle.get_postmaster_info()
    return Database({"user": "postgres", "dbname": dbname, "host": str(info.socket_dir),
                     "port": str(info.port)})
