"""Incremental mart refresh on a real PostgreSQL: after every run each mart equals what a
full rebuild from the current sources gives (SPEC §5-§6), and the work follows the change.

Every check compares the incremental marts with three independent references:

- the SQL oracle of ``tests/oracle.py`` over the same DWH;
- ``run --full`` (or the same full refresh done in a transaction that is rolled back, so
  a sequence of incremental runs is not disturbed);
- a fresh database loaded from a copy of the same sources, compared by natural keys
  (surrogate ids differ between databases), DWH included.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import (
    CRAFTSMAN,
    CUSTOMER,
    DEFAULT_ORDER,
    MARTS,
    add_order,
    create_sources,
    query,
    run,
    sql,
    warehouse_state,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import expected_craftsman_mart, expected_customer_mart, expected_order_validity
from polars.testing import assert_frame_equal

from craftmart_batch import pipeline
from craftmart_batch._database import Database, connect, connection
from craftmart_batch._sql import execute, fetch_frame, fetch_value, stage
from craftmart_batch.config import CANONICAL_FIELDS, load_settings
from craftmart_batch.extract import queries
from craftmart_batch.load import refresh

#: numeric mart columns: ``mart()`` returns them as text, the oracle as decimals.
NUMERIC = {
    "customer_money": pl.Decimal(15, 2),
    "craftsman_money": pl.Decimal(15, 2),
    "platform_money": pl.Decimal(15, 2),
    "avg_price_order": pl.Decimal(10, 2),
    "avg_age_customer": pl.Decimal(4, 1),
    "median_time_order_completed": pl.Decimal(10, 1),
}

#: The source tables, parents before the tables that reference them.
SOURCE_TABLES = (
    "source1.craft_market_wide",
    "source2.craft_market_masters_products",
    "source2.craft_market_orders_customers",
    "source3.craft_market_craftsmans",
    "source3.craft_market_customers",
    "source3.craft_market_orders",
    "external_source.customers",
    "external_source.craft_products_orders",
)

# The people of the hand-written cases.
ANN = {"craftsman_email": "ann@craft.example", "craftsman_name": "Ann Potter"}
KIM = {
    "craftsman_email": "kim@craft.example",
    "craftsman_name": "Kim Glass",
    "craftsman_address": "9 Kiln Rd",
    "product_name": "Vase",
    "product_description": "A tall vase",
    "product_type": "glass",
}
BOB = {"customer_email": "bob@buyer.example", "customer_name": "Bob Buyer",
       "customer_birthday": dt.date(1990, 5, 6)}
CAT = {"customer_email": "cat@buyer.example", "customer_name": "Cat Client",
       "customer_address": "5 Mill Ln", "customer_birthday": dt.date(2000, 1, 10)}
DAN = {"customer_email": "dan@buyer.example", "customer_name": "Dan Dealer",
       "customer_address": "8 Pier St", "customer_birthday": dt.date(1970, 7, 7)}


# --------------------------------------------------------------------------- sources


def _order_row(source: str, field: str) -> tuple[str, str]:
    """(table, condition on the order key $2) of the source row holding ``field`` of an order."""
    group = field.split("_", 1)[0]  # craftsman, customer, product or order
    if source == "source1":
        return "source1.craft_market_wide", "order_id = $2"
    if source == "source2":
        if group in ("craftsman", "product"):
            return (
                "source2.craft_market_masters_products",
                "craftsman_id in (select craftsman_id from source2.craft_market_orders_customers"
                " where order_id = $2)",
            )
        return "source2.craft_market_orders_customers", "order_id = $2"
    if source == "source3":
        if group in ("craftsman", "customer"):
            parent = {"craftsman": "craftsmans", "customer": "customers"}[group]
            return (
                f"source3.craft_market_{parent}",
                f"{group}_id in (select {group}_id from source3.craft_market_orders"
                " where order_id = $2)",
            )
        return "source3.craft_market_orders", "order_id = $2"
    if source == "external_source":
        if group == "customer":
            return (
                "external_source.customers",
                "customer_id in (select customer_id from external_source.craft_products_orders"
                " where order_id = $2)",
            )
        return "external_source.craft_products_orders", "order_id = $2"
    raise ValueError(source)


_SQL_TYPE = {"date": "date", "text": "text", "integer": "bigint"}


def set_field(db: Database, source: str, key: int, field: str, value: Any) -> None:
    """Change one canonical field of one order where its source keeps it."""
    table, where = _order_row(source, field)
    cast = _SQL_TYPE[CANONICAL_FIELDS[field]]
    sql(db, f"update {table} set {field} = $1::{cast} where {where}", (value, key))


def delete_order(db: Database, source: str, key: int) -> None:
    """Delete an order's row from its source (parent rows stay: they are not orders)."""
    table = {
        "source1": "source1.craft_market_wide",
        "source2": "source2.craft_market_orders_customers",
        "source3": "source3.craft_market_orders",
        "external_source": "external_source.craft_products_orders",
    }[source]
    sql(db, f"delete from {table} where order_id = $1", (key,))


def copy_sources(source_db: Database, target_db: Database) -> None:
    """Create the sources in ``target_db`` and copy every source row into it, ids included."""
    create_sources(target_db)
    with connection(source_db) as src, connection(target_db) as dst:
        for table in SOURCE_TABLES:
            rows = fetch_frame(src, f"select * from {table}")
            if rows.is_empty():
                continue
            staged = stage(dst, "copy_" + table.replace(".", "_"), rows)
            execute(dst, f"insert into {table} overriding system value select * from {staged}")
        dst.commit()


# --------------------------------------------------------------------------- references


def _as_decimals(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(c).cast(dtype) for c, dtype in NUMERIC.items() if c in frame.columns
    )


def _mart_on(conn: Any, name: str) -> pl.DataFrame:
    """``helpers.mart`` read on an open connection (inside its transaction)."""
    columns = fetch_frame(
        conn,
        "select column_name, data_type from information_schema.columns"
        " where table_schema = 'marts' and table_name = $1 and column_name <> 'id'"
        " order by ordinal_position",
        (name,),
    )
    select = ", ".join(
        f"{c}::text as {c}" if t == "numeric" else c for c, t in columns.iter_rows()
    )
    entity = "customer_id" if name.startswith("customer") else "craftsman_id"
    return fetch_frame(conn, f"select {select} from marts.{name}").sort(entity, "report_period")


def mart(db: Database, name: str) -> pl.DataFrame:
    """``helpers.mart`` on one connection (connections are what costs most here)."""
    with connection(db) as conn:
        return _mart_on(conn, name)


def rebuilt_marts(conn: Any) -> dict[str, pl.DataFrame]:
    """Both marts as a full refresh makes them from the current DWH, computed in a
    transaction that is then rolled back: the database is left exactly as it was."""
    try:
        execute(conn, "select set_config('craftmart.run_ts', clock_timestamp()::text, true)")
        for m in refresh.MARTS:
            refresh.refresh(conn, m, full=True)
        return {name: _mart_on(conn, name) for name in MARTS}
    finally:
        conn.rollback()


def assert_marts_match_rebuild(db: Database) -> None:
    """Both marts equal the SQL oracle and a full refresh over the same DWH."""
    with connection(db) as conn:
        actual = {name: _mart_on(conn, name) for name in MARTS}
        oracle = {CUSTOMER: expected_customer_mart(conn), CRAFTSMAN: expected_craftsman_mart(conn)}
        conn.rollback()
        rebuilt = rebuilt_marts(conn)
    for name in MARTS:
        assert_frame_equal(_as_decimals(actual[name]), oracle[name], check_dtypes=False)
        assert_frame_equal(actual[name], rebuilt[name])


#: Every DWH table with surrogate ids replaced by natural keys.
_DWH_BY_NATURAL_KEY = {
    "d_craftsman": "select craftsman_email, craftsman_name, craftsman_address,"
    " craftsman_birthday from dwh.d_craftsman",
    "d_customer": "select customer_email, customer_name, customer_address, customer_birthday"
    " from dwh.d_customer",
    "d_product": """
        select c.craftsman_email, p.product_name, p.product_description, p.product_type,
            p.product_price
        from dwh.d_product as p
        inner join dwh.d_craftsman as c on c.craftsman_id = p.craftsman_id
    """,
    "f_order": """
        select f.source_name, f.source_order_id, cr.craftsman_email, cu.customer_email,
            p.product_name, p.product_description, f.order_created_date,
            f.order_completion_date, f.order_status, f.product_price
        from dwh.f_order as f
        inner join dwh.d_craftsman as cr on cr.craftsman_id = f.craftsman_id
        inner join dwh.d_customer as cu on cu.customer_id = f.customer_id
        inner join dwh.d_product as p on p.product_id = f.product_id
    """,
}


def _mart_by_natural_key(conn: Any, name: str) -> str:
    """A mart's select with ids left out (the top craftsman by email), numerics as text."""
    columns = fetch_frame(
        conn,
        "select column_name, data_type from information_schema.columns"
        " where table_schema = 'marts' and table_name = $1 order by ordinal_position",
        (name,),
    )
    select = [
        f"m.{c}::text as {c}" if t == "numeric" else f"m.{c}"
        for c, t in columns.iter_rows()
        if c not in ("id", "customer_id", "craftsman_id", "top_craftsman_id")
    ]
    if name == CUSTOMER:
        return (
            f"select {', '.join(select)}, top.craftsman_email as top_craftsman_email"
            " from marts.customer_report_datamart as m"
            " left join dwh.d_craftsman as top on top.craftsman_id = m.top_craftsman_id"
        )
    return f"select {', '.join(select)} from marts.{name} as m"


def _by_natural_key(db: Database) -> dict[str, pl.DataFrame]:
    with connection(db) as conn:
        selects = {**_DWH_BY_NATURAL_KEY,
                   **{name: _mart_by_natural_key(conn, name) for name in MARTS}}
        frames = {name: fetch_frame(conn, select) for name, select in selects.items()}
    return {name: f.sort(f.columns, nulls_last=True) for name, f in frames.items()}


def assert_same_as_fresh_load(db: Database, make_db: Callable[[], Database]) -> None:
    """DWH and marts equal, by natural keys, a first run on a copy of the same sources."""
    fresh = make_db()
    copy_sources(db, fresh)
    run(fresh)
    assert_tables_equal(_by_natural_key(db), _by_natural_key(fresh), "a fresh load")


def assert_tables_equal(
    mine: dict[str, pl.DataFrame], theirs: dict[str, pl.DataFrame], what: str
) -> None:
    """Every table of ``theirs`` equals the one of ``mine``; the error names the table."""
    for name in theirs:
        try:
            assert_frame_equal(mine[name], theirs[name])
        except AssertionError as exc:
            raise AssertionError(f"{name} differs from {what}: {exc}") from None


def assert_full_run_changes_nothing(db: Database, config: Path | None = None) -> None:
    """``run --full`` gives the very rows the incremental path left: it writes none."""
    before = {name: mart(db, name) for name in MARTS}
    report = run(db, full=True, config=config)
    for name in MARTS:
        done = report.marts[name]
        assert (done["full"], done["full_reason"]) == (True, "full_run")
        assert (done["rows_inserted"], done["rows_updated"], done["rows_deleted"]) == (0, 0, 0)
        assert_frame_equal(mart(db, name), before[name])


def assert_orders_match_validity_oracle(db: Database) -> None:
    """The DWH holds exactly the order keys with a valid source row (the SQL oracle of
    SPEC §3), and quarantine every other source row: nothing lost, nothing extra."""
    with connection(db) as conn:
        expected = expected_order_validity(conn)
    loaded = query(db, "select source_name, source_order_id from dwh.f_order")
    quarantined = query(db, "select source_name, source_order_id, count(*) as quarantined"
                            " from craftmart.quarantine group by 1, 2")
    key = ["source_name", "source_order_id"]
    assert_frame_equal(
        loaded.sort(key),
        expected.filter("has_valid_row").select(key).sort(key),
        check_dtypes=False,
    )
    assert_frame_equal(
        quarantined.sort(key),
        expected.select(
            *key, (pl.col("source_rows") - pl.col("has_valid_row").cast(pl.Int64))
            .alias("quarantined"),
        ).filter(pl.col("quarantined") > 0).sort(key),
        check_dtypes=False,
    )


def assert_incremental_is_full(
    db: Database, make_db: Callable[[], Database], *, shipped_rules: bool = True
) -> None:
    """DWH and marts equal a full rebuild; with ``shipped_rules`` (no rule patched in
    the test) the DWH also holds exactly what the SQL validity oracle calls valid."""
    if shipped_rules:
        assert_orders_match_validity_oracle(db)
    assert_marts_match_rebuild(db)
    assert_same_as_fresh_load(db, make_db)
    assert_full_run_changes_nothing(db)


# --------------------------------------------------------------------------- reading marts


def rows_of(db: Database, name: str, **where: Any) -> list[dict[str, Any]]:
    """The mart rows whose columns equal ``where`` (e.g. customer_email=...), as dicts."""
    frame = mart(db, name)
    for column, value in where.items():
        frame = frame.filter(pl.col(column) == value)
    return frame.to_dicts()


def row_of(db: Database, name: str, **where: Any) -> dict[str, Any]:
    rows = rows_of(db, name, **where)
    assert len(rows) == 1, rows
    return rows[0]


def periods(db: Database, name: str, **where: Any) -> list[str]:
    return [r["report_period"] for r in rows_of(db, name, **where)]


def customer_id(db: Database, email: str) -> int:
    return int(query(db, "select customer_id from dwh.d_customer where customer_email = $1",
                     (email,)).item())


def craftsman_id(db: Database, email: str) -> int:
    return int(query(db, "select craftsman_id from dwh.d_craftsman where craftsman_email = $1",
                     (email,)).item())


def xmins(db: Database, table: str, key: str) -> dict[Any, str]:
    """Row key -> xmin: a row rewritten by an update gets a new xmin."""
    frame = query(db, f"select {key} as key, xmin::text as xmin from {table}")
    return dict(zip(frame["key"].to_list(), frame["xmin"].to_list(), strict=True))


def mart_xmins(db: Database, name: str) -> dict[Any, str]:
    entity = "customer_id" if name == CUSTOMER else "craftsman_id"
    return xmins(db, f"marts.{name}", f"{entity}::text || ' ' || report_period")


def _key(entity_id: int, period: str) -> str:
    return f"{entity_id} {period}"


# --------------------------------------------------------------------------- the cases


def test_a_late_order_in_an_old_month_updates_only_that_months_row(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """A late order created in an old month changes that month's row, nothing else."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5),
              product_price=100)
    add_order(db, "source2", **ANN, **BOB, order_created_date=dt.date(2024, 3, 1),
              product_price=300)
    add_order(db, "source3", **ANN, **CAT, order_created_date=dt.date(2024, 3, 2),
              product_price=70)
    run(db)
    customers_before, craftsmen_before = mart(db, CUSTOMER), mart(db, CRAFTSMAN)
    bob, ann = customer_id(db, "bob@buyer.example"), craftsman_id(db, "ann@craft.example")

    add_order(db, "external_source", **KIM, **BOB, order_created_date=dt.date(2024, 1, 20),
              order_completion_date=dt.date(2024, 1, 24), order_status="Done",
              product_price=51)
    run(db)

    kim = craftsman_id(db, "kim@craft.example")
    january = row_of(db, CUSTOMER, customer_id=bob, report_period="2024-01")
    assert {k: january[k] for k in (
        "customer_money", "platform_money", "count_order", "avg_price_order",
        "median_time_order_completed", "top_product_category", "top_craftsman_id",
        "count_order_created", "count_order_done", "count_order_not_done")} == {
        "customer_money": "151.00", "platform_money": "15.10", "count_order": 2,
        "avg_price_order": "75.50", "median_time_order_completed": "4.0",
        # one order each: the ties go to the smallest type and craftsman email
        "top_product_category": "ceramics", "top_craftsman_id": ann,
        "count_order_created": 1, "count_order_done": 1, "count_order_not_done": 1,
    }
    kim_january = row_of(db, CRAFTSMAN, craftsman_id=kim)
    assert (kim_january["report_period"], kim_january["craftsman_money"],
            kim_january["platform_money"], kim_january["avg_age_customer"],
            kim_january["top_product_category"]) == ("2024-01", "45.90", "5.10", "33.0", "glass")
    # every other row is exactly as before
    assert_frame_equal(
        mart(db, CUSTOMER).filter(
            ~((pl.col("customer_id") == bob) & (pl.col("report_period") == "2024-01"))),
        customers_before.filter(
            ~((pl.col("customer_id") == bob) & (pl.col("report_period") == "2024-01"))),
    )
    assert_frame_equal(mart(db, CRAFTSMAN).filter(pl.col("craftsman_id") != kim),
                       craftsmen_before)
    assert_incremental_is_full(db, make_db)


def test_an_order_moving_month_leaves_its_old_month_and_joins_the_new_one(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """An order whose created date moves to another month moves between rows; the old
    month's row disappears when it was that month's last order."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5),
              product_price=100)
    moving = add_order(db, "source2", **ANN, **BOB, order_created_date=dt.date(2024, 1, 9),
                       product_price=50)
    last_of_march = add_order(db, "source3", **KIM, **BOB,
                              order_created_date=dt.date(2024, 3, 3), product_price=30)
    run(db)
    bob = customer_id(db, "bob@buyer.example")
    assert periods(db, CUSTOMER, customer_id=bob) == ["2024-01", "2024-03"]

    set_field(db, "source2", moving, "order_created_date", dt.date(2024, 2, 10))
    run(db)
    assert periods(db, CUSTOMER, customer_id=bob) == ["2024-01", "2024-02", "2024-03"]
    january = row_of(db, CUSTOMER, customer_id=bob, report_period="2024-01")
    february = row_of(db, CUSTOMER, customer_id=bob, report_period="2024-02")
    assert (january["count_order"], january["customer_money"]) == (1, "100.00")
    assert (february["count_order"], february["customer_money"]) == (1, "50.00")
    ann = craftsman_id(db, "ann@craft.example")
    assert periods(db, CRAFTSMAN, craftsman_id=ann) == ["2024-01", "2024-02"]
    assert_marts_match_rebuild(db)

    set_field(db, "source3", last_of_march, "order_created_date", dt.date(2024, 2, 29))
    run(db)
    assert periods(db, CUSTOMER, customer_id=bob) == ["2024-01", "2024-02"]
    february = row_of(db, CUSTOMER, customer_id=bob, report_period="2024-02")
    assert (february["count_order"], february["customer_money"], february["avg_price_order"],
            february["top_product_category"]) == (2, "80.00", "40.00", "ceramics")
    kim = craftsman_id(db, "kim@craft.example")
    assert periods(db, CRAFTSMAN, craftsman_id=kim) == ["2024-02"]
    assert_incremental_is_full(db, make_db)


def test_an_order_moving_customer_updates_both_customers(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """An order whose customer changes leaves the old customer's row and joins the new
    one's; the old customer's rows disappear with their last order."""
    create_sources(db)
    first = add_order(db, "source3", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5),
                      product_price=100)
    second = add_order(db, "external_source", **KIM, **BOB,
                       order_created_date=dt.date(2024, 1, 6), product_price=20)
    add_order(db, "source1", **ANN, **CAT, order_created_date=dt.date(2024, 2, 1),
              product_price=10)
    run(db)
    bob, cat = customer_id(db, "bob@buyer.example"), customer_id(db, "cat@buyer.example")
    ann, kim = craftsman_id(db, "ann@craft.example"), craftsman_id(db, "kim@craft.example")
    assert row_of(db, CRAFTSMAN, craftsman_id=kim)["avg_age_customer"] == "33.0"

    set_field(db, "external_source", second, "customer_email", " CAT@buyer.example")
    run(db)
    bob_january = row_of(db, CUSTOMER, customer_id=bob)
    assert (bob_january["count_order"], bob_january["customer_money"],
            bob_january["top_craftsman_id"]) == (1, "100.00", ann)
    cat_january = row_of(db, CUSTOMER, customer_id=cat, report_period="2024-01")
    assert (cat_january["count_order"], cat_january["customer_money"],
            cat_january["top_craftsman_id"], cat_january["top_product_category"]) == (
        1, "20.00", kim, "glass")
    # Kim's only order now belongs to Cat, who turns 24 only on 2024-01-10
    assert row_of(db, CRAFTSMAN, craftsman_id=kim)["avg_age_customer"] == "23.0"
    assert_marts_match_rebuild(db)

    set_field(db, "source3", first, "customer_email", "cat@buyer.example")
    run(db)
    assert rows_of(db, CUSTOMER, customer_id=bob) == []
    assert query(db, "select count(*) from dwh.d_customer where customer_id = $1",
                 (bob,)).item() == 0
    cat_january = row_of(db, CUSTOMER, customer_id=cat, report_period="2024-01")
    assert (cat_january["count_order"], cat_january["customer_money"],
            cat_january["top_craftsman_id"]) == (2, "120.00", ann)
    assert periods(db, CUSTOMER, customer_id=cat) == ["2024-01", "2024-02"]
    assert row_of(db, CRAFTSMAN, craftsman_id=ann, report_period="2024-01")[
        "avg_age_customer"] == "23.0"
    assert_incremental_is_full(db, make_db)


def test_an_address_change_updates_every_month_of_that_customer(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """A customer's new address (on their latest order) shows in all their months;
    the same change on an older order is outvoted (SPEC §2) and changes nothing."""
    create_sources(db)
    oldest = add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5))
    add_order(db, "source2", **ANN, **BOB, order_created_date=dt.date(2024, 2, 5))
    latest = add_order(db, "source3", **KIM, **BOB, order_created_date=dt.date(2024, 3, 5))
    add_order(db, "source1", **ANN, **CAT, order_created_date=dt.date(2024, 2, 7))
    run(db)
    bob = customer_id(db, "bob@buyer.example")
    others_before = mart(db, CUSTOMER).filter(pl.col("customer_id") != bob)
    customer_rows_before = xmins(db, "marts.customer_report_datamart", "id")

    set_field(db, "source1", oldest, "customer_address", "13 Old Rd")
    report = run(db)
    assert report.marts[CUSTOMER]["entities"] == 0
    assert xmins(db, "marts.customer_report_datamart", "id") == customer_rows_before

    set_field(db, "source3", latest, "customer_address", "77 New Ave")
    run(db)
    bob_rows = rows_of(db, CUSTOMER, customer_id=bob)
    assert [(r["report_period"], r["customer_address"]) for r in bob_rows] == [
        ("2024-01", "77 New Ave"), ("2024-02", "77 New Ave"), ("2024-03", "77 New Ave")]
    assert_frame_equal(mart(db, CUSTOMER).filter(pl.col("customer_id") != bob), others_before)
    assert_incremental_is_full(db, make_db)


def test_deleting_the_last_order_of_a_month_removes_that_row(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """An order deleted from its source leaves the DWH; its month's row goes with it
    when it was the last order of that month (in both marts)."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5))
    february = add_order(db, "source2", **KIM, **BOB, order_created_date=dt.date(2024, 2, 5),
                         product_price=40)
    add_order(db, "source3", **KIM, **CAT, order_created_date=dt.date(2024, 2, 6),
              product_price=60)
    run(db)
    bob, kim = customer_id(db, "bob@buyer.example"), craftsman_id(db, "kim@craft.example")
    assert periods(db, CUSTOMER, customer_id=bob) == ["2024-01", "2024-02"]

    delete_order(db, "source2", february)
    run(db)
    assert periods(db, CUSTOMER, customer_id=bob) == ["2024-01"]
    kim_february = row_of(db, CRAFTSMAN, craftsman_id=kim)
    assert (kim_february["count_order"], kim_february["craftsman_money"],
            kim_february["avg_age_customer"]) == (1, "54.00", "24.0")
    assert query(db, "select count(*) from dwh.f_order where source_name = 'source2'"
                 ).item() == 0
    assert_incremental_is_full(db, make_db)


def test_an_order_turning_invalid_leaves_the_marts(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """A row turning invalid leaves the DWH and the marts (its customer's rows vanish
    with their only order); fixed again, it comes back."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5),
              product_price=100)
    breaking = add_order(db, "source2", **ANN, **BOB, order_created_date=dt.date(2024, 1, 7),
                         product_price=50)
    cats_only = add_order(db, "external_source", **KIM, **CAT,
                          order_created_date=dt.date(2024, 1, 8))
    run(db)
    bob = customer_id(db, "bob@buyer.example")
    ann, kim = craftsman_id(db, "ann@craft.example"), craftsman_id(db, "kim@craft.example")
    full_january = row_of(db, CUSTOMER, customer_id=bob)

    set_field(db, "source2", breaking, "order_status", "cancelled")
    set_field(db, "external_source", cats_only, "product_price", 0)
    run(db)
    bob_january = row_of(db, CUSTOMER, customer_id=bob)
    assert (bob_january["count_order"], bob_january["customer_money"]) == (1, "100.00")
    assert rows_of(db, CUSTOMER, customer_email="cat@buyer.example") == []
    assert rows_of(db, CRAFTSMAN, craftsman_id=kim) == []
    assert row_of(db, CRAFTSMAN, craftsman_id=ann)["count_order"] == 1
    quarantined = query(db, "select source_name, source_order_id, reasons::text as reasons"
                            " from craftmart.quarantine order by source_name")
    assert quarantined.rows() == [
        ("external_source", cats_only, "{price_not_positive}"),
        ("source2", breaking, "{status_unknown}"),
    ]
    assert_marts_match_rebuild(db)

    set_field(db, "source2", breaking, "order_status", " Delivery")
    run(db)
    back = row_of(db, CUSTOMER, customer_id=bob)
    assert back == {**full_january, "count_order_created": 1, "count_order_delivery": 1}
    assert_incremental_is_full(db, make_db)


def test_a_product_type_change_changes_top_product_category(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """A product's type (from its latest order, SPEC §2) changes the top category of
    every customer and craftsman with orders of that product, in every month."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5))
    add_order(db, "source1", **ANN, **BOB, product_name="Bowl", product_description="Oak",
              product_type="wood", order_created_date=dt.date(2024, 1, 6))
    latest_mug = add_order(db, "source3", **ANN, **CAT, order_created_date=dt.date(2024, 2, 1))
    add_order(db, "source2", **KIM, **DAN, order_created_date=dt.date(2024, 1, 9))
    run(db)
    bob, cat = customer_id(db, "bob@buyer.example"), customer_id(db, "cat@buyer.example")
    ann = craftsman_id(db, "ann@craft.example")
    assert row_of(db, CUSTOMER, customer_id=bob)["top_product_category"] == "ceramics"
    dan_rows = xmins(db, "marts.customer_report_datamart",
                     "customer_id::text || report_period")

    set_field(db, "source3", latest_mug, "product_type", "stoneware")
    report = run(db)
    # every Mug order now counts as stoneware, Bob's January included, whose source row
    # still says ceramics: the mart reads d_product (SPEC §4)
    assert row_of(db, CUSTOMER, customer_id=bob)["top_product_category"] == "stoneware"
    assert row_of(db, CUSTOMER, customer_id=cat)["top_product_category"] == "stoneware"
    assert [r["top_product_category"] for r in rows_of(db, CRAFTSMAN, craftsman_id=ann)] == [
        "stoneware", "stoneware"]
    assert report.marts[CUSTOMER]["entities"] == 2
    # Dan bought no Mug: his row was not rewritten
    dan = customer_id(db, "dan@buyer.example")
    after = xmins(db, "marts.customer_report_datamart", "customer_id::text || report_period")
    assert after[f"{dan}2024-01"] == dan_rows[f"{dan}2024-01"]
    assert_incremental_is_full(db, make_db)


def test_a_customer_birthday_change_changes_avg_age_customer(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """A customer's new birthday changes avg_age_customer of the craftsmen they bought
    from; a missing birthday drops out of the mean."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5))
    bobs_latest = add_order(db, "source3", **ANN, **BOB, order_created_date=dt.date(2024, 1, 6))
    cats_latest = add_order(db, "external_source", **ANN, **CAT,
                            order_created_date=dt.date(2024, 1, 20))
    add_order(db, "source2", **KIM, **DAN, order_created_date=dt.date(2024, 1, 21))
    run(db)
    ann, kim = craftsman_id(db, "ann@craft.example"), craftsman_id(db, "kim@craft.example")
    # Bob is 33 on both orders, Cat 24: (33 + 33 + 24) / 3
    assert row_of(db, CRAFTSMAN, craftsman_id=ann)["avg_age_customer"] == "30.0"
    kim_before = row_of(db, CRAFTSMAN, craftsman_id=kim)

    set_field(db, "source3", bobs_latest, "customer_birthday", dt.date(1950, 1, 6))
    run(db)
    # 74 (a birthday on the day counts), 73, and 24
    assert row_of(db, CRAFTSMAN, craftsman_id=ann)["avg_age_customer"] == "57.0"
    assert {r["customer_birthday"] for r in rows_of(db, CUSTOMER,
                                                    customer_email="bob@buyer.example")} == {
        dt.date(1950, 1, 6)}
    assert row_of(db, CRAFTSMAN, craftsman_id=kim) == kim_before
    assert_marts_match_rebuild(db)

    set_field(db, "external_source", cats_latest, "customer_birthday", None)
    run(db)
    assert row_of(db, CRAFTSMAN, craftsman_id=ann)["avg_age_customer"] == "73.5"
    assert_incremental_is_full(db, make_db)


_FIFTH_SOURCE_DDL = """
    create table source5.orders (
        order_id bigint primary key,
        craftsman_name varchar, craftsman_address varchar, craftsman_birthday date,
        craftsman_email varchar, product_name varchar, product_description varchar,
        product_type varchar, product_price bigint, order_created_date date,
        order_completion_date date, order_status varchar, customer_name varchar,
        customer_address varchar, customer_birthday date, customer_email varchar
    )
"""


def _fifth_source_order(db: Database, order_id: int, **fields: Any) -> None:
    row = {"order_id": order_id, **DEFAULT_ORDER, **fields}
    placeholders = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    sql(db, f"insert into source5.orders ({', '.join(row)}) values ({placeholders})",
        tuple(row.values()))


def test_a_newly_registered_source_loads_and_leaves_incrementally(
    db: Database, tmp_path: Any
) -> None:
    """A fifth source registered in config.toml brings its orders on the next incremental
    run (it ranks last in attribute ties); disabled again, its orders leave the marts."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5),
              product_price=100)
    add_order(db, "source3", **KIM, **CAT, order_created_date=dt.date(2024, 2, 1))
    run(db)
    bob = customer_id(db, "bob@buyer.example")
    bob_alone = row_of(db, CUSTOMER, customer_id=bob)
    sql(db, "create schema source5")
    sql(db, _FIFTH_SOURCE_DDL)
    # same day as Bob's source1 order: the tie goes to the later source, source5
    _fifth_source_order(db, 1, **KIM, **BOB, customer_address="99 Fifth Ave",
                        order_created_date=dt.date(2024, 1, 5), product_price=20)
    _fifth_source_order(db, 2, **ANN, **DAN, order_created_date=dt.date(2024, 3, 3))
    registered = tmp_path / "registered.toml"
    registered.write_text('[sources.source5]\nschema = "source5"\ntable = "orders"\n'
                          'key = "order_id"\n')
    disabled = tmp_path / "disabled.toml"
    disabled.write_text(registered.read_text() + "enabled = false\n")

    report = run(db, config=registered)
    assert report.sources["source5"] == {"read": 2, "loaded": 2, "quarantined": 0}
    assert report.marts[CUSTOMER]["entities"] == 2  # Bob and Dan, not Cat
    bob_january = row_of(db, CUSTOMER, customer_id=bob)
    assert (bob_january["count_order"], bob_january["customer_money"],
            bob_january["customer_address"]) == (2, "120.00", "99 Fifth Ave")
    assert periods(db, CUSTOMER, customer_email="dan@buyer.example") == ["2024-03"]
    assert_marts_match_rebuild(db)
    assert_full_run_changes_nothing(db, config=registered)

    report = run(db, config=disabled)
    assert report.dwh["f_order"]["deleted"] == 2
    assert row_of(db, CUSTOMER, customer_id=bob) == bob_alone
    assert rows_of(db, CUSTOMER, customer_email="dan@buyer.example") == []
    assert_marts_match_rebuild(db)
    assert_full_run_changes_nothing(db, config=disabled)


def test_a_watermark_ahead_of_the_clock_hides_no_change(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """When the clock steps back (the stored watermark lies in the future), the next
    runs still see every change: a run's timestamp is always after the watermark."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5))
    changing = add_order(db, "source2", **ANN, **CAT, order_created_date=dt.date(2024, 1, 6))
    run(db)
    for name in MARTS:
        sql(db, f"insert into marts.load_dates_{name} (load_dttm)"
                " values (now() + interval '1 day')")

    set_field(db, "source2", changing, "order_status", "done")
    report = run(db)
    assert query(db, "select $1::timestamptz > now() + interval '23 hours'",
                 (report.run_ts,)).item() is True
    assert row_of(db, CUSTOMER, customer_email="cat@buyer.example")["count_order_done"] == 1
    set_field(db, "source2", changing, "product_price", 7)
    run(db)
    assert row_of(db, CUSTOMER, customer_email="cat@buyer.example")["customer_money"] == "7.00"
    assert_incremental_is_full(db, make_db)


# --------------------------------------------------------------------------- work follows change


def _marketplace(db: Database) -> None:
    """Six customers, three craftsmen, three months: 18 orders over all four sources."""
    create_sources(db)
    sources = ("source1", "source2", "source3", "external_source")
    for c in range(6):
        for month in range(3):
            k = (c + month) % 3
            add_order(
                db,
                sources[(c * 3 + month) % 4],
                craftsman_email=f"k{k}@craft.example",
                craftsman_name=f"Maker {k}",
                product_name=f"Item {k}",
                customer_email=f"c{c}@buyer.example",
                customer_name=f"Customer {c}",
                customer_birthday=dt.date(1980 + c, 1 + c, 1),
                product_price=10 * (c + 1) + month,
                order_created_date=dt.date(2024, 1 + month, 1 + 2 * c),
            )


def test_a_small_change_reaggregates_and_rewrites_only_the_touched_entities(db: Database) -> None:
    """A late order touches one customer and one craftsman in one month: only that month's
    orders of theirs are re-aggregated, only that month's rows are rewritten; DWH rows
    that did not change keep their xmin."""
    _marketplace(db)
    first = run(db)
    assert first.marts[CUSTOMER]["entities"] == 6 and first.marts[CUSTOMER]["full"]
    c3, k0 = customer_id(db, "c3@buyer.example"), craftsman_id(db, "k0@craft.example")
    marts_before = {name: mart_xmins(db, name) for name in MARTS}
    dwh_before = {
        table: xmins(db, f"dwh.{table}", key)
        for table, key in (("d_customer", "customer_id"), ("d_craftsman", "craftsman_id"),
                           ("d_product", "product_id"), ("f_order", "order_id"))
    }

    # c3's January order is with k0 already; this one is late and also with k0
    add_order(db, "source2", craftsman_email="k0@craft.example", craftsman_name="Maker 0",
              product_name="Item 0", customer_email="c3@buyer.example",
              customer_name="Customer 3", customer_birthday=dt.date(1983, 4, 1),
              product_price=5, order_created_date=dt.date(2024, 1, 30))
    report = run(db)

    assert report.dwh["f_order"] == {"inserted": 1, "updated": 0, "deleted": 0}
    # c3's orders of January: the one before and the late one (not those of February, March)
    assert report.marts[CUSTOMER] == {
        "mart": CUSTOMER, "full": False, "entities": 1, "orders": 2,
        "rows_inserted": 0, "rows_updated": 1, "rows_deleted": 0, "full_reason": None}
    k0_orders = int(query(
        db,
        "select count(*) from dwh.f_order where craftsman_id = $1"
        " and order_created_date between '2024-01-01' and '2024-01-31'",
        (k0,),
    ).item())
    assert 2 < k0_orders < int(query(
        db, "select count(*) from dwh.f_order where craftsman_id = $1", (k0,)).item())
    assert report.marts[CRAFTSMAN] == {
        "mart": CRAFTSMAN, "full": False, "entities": 1, "orders": k0_orders,
        "rows_inserted": 0, "rows_updated": 1, "rows_deleted": 0, "full_reason": None}
    for name, touched in ((CUSTOMER, _key(c3, "2024-01")), (CRAFTSMAN, _key(k0, "2024-01"))):
        after = mart_xmins(db, name)
        assert after.keys() == marts_before[name].keys()
        rewritten = {k for k in after if after[k] != marts_before[name][k]}
        assert rewritten == {touched}, name
    for table, before in dwh_before.items():
        after = xmins(db, f"dwh.{table}", "order_id" if table == "f_order" else
                      {"d_customer": "customer_id", "d_craftsman": "craftsman_id",
                       "d_product": "product_id"}[table])
        assert {k: after[k] for k in before} == before, table
    assert row_of(db, CUSTOMER, customer_id=c3, report_period="2024-01")["count_order"] == 2
    assert_marts_match_rebuild(db)


def _orders_in(db: Database, entity: str, entity_id: int, periods: tuple[str, ...]) -> int:
    """How many DWH orders the entity has in the given months."""
    return int(query(
        db,
        f"select count(*) from dwh.f_order where {entity} = $1"
        " and to_char(order_created_date, 'YYYY-MM') = any($2::text[])",
        (entity_id, list(periods)),
    ).item())


def _rewritten(before: dict[Any, str], after: dict[Any, str]) -> set[Any]:
    """Mart rows written or deleted between two ``mart_xmins``."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_an_order_moving_month_reaggregates_only_the_two_months_it_touches(
    db: Database,
) -> None:
    """An order moved from January to February re-aggregates its customer's and its
    craftsman's orders of those two months, not of March; the customer's January row,
    left without orders, is deleted."""
    _marketplace(db)
    run(db)
    c3 = customer_id(db, "c3@buyer.example")
    source, key, k = query(
        db,
        "select source_name, source_order_id, craftsman_id from dwh.f_order"
        " where customer_id = $1 and order_created_date < '2024-02-01'",
        (c3,),
    ).row(0)
    before = {name: mart_xmins(db, name) for name in MARTS}
    set_field(db, source, key, "order_created_date", dt.date(2024, 2, 20))
    report = run(db)

    two_months = ("2024-01", "2024-02")
    assert report.marts[CUSTOMER] == {
        "mart": CUSTOMER, "full": False, "entities": 1, "orders": 2,
        "rows_inserted": 0, "rows_updated": 1, "rows_deleted": 1, "full_reason": None}
    k_orders = _orders_in(db, "craftsman_id", k, two_months)
    assert 2 <= k_orders < _orders_in(db, "craftsman_id", k, (*two_months, "2024-03"))
    assert report.marts[CRAFTSMAN] == {
        "mart": CRAFTSMAN, "full": False, "entities": 1, "orders": k_orders,
        "rows_inserted": 0, "rows_updated": 2, "rows_deleted": 0, "full_reason": None}
    for name, entity_id in ((CUSTOMER, c3), (CRAFTSMAN, k)):
        written = _rewritten(before[name], mart_xmins(db, name))
        assert written == {_key(entity_id, p) for p in two_months}, name
    assert periods(db, CUSTOMER, customer_id=c3) == ["2024-02", "2024-03"]
    assert_marts_match_rebuild(db)


def test_a_change_log_row_without_a_month_reaggregates_every_month_of_its_entities(
    db: Database,
) -> None:
    """A change-log row without a month (as logged before months were kept) touches every
    month of its customer and craftsman; the rows, already right, are not rewritten."""
    _marketplace(db)
    run(db)
    c2, k1 = customer_id(db, "c2@buyer.example"), craftsman_id(db, "k1@craft.example")
    before = {name: mart_xmins(db, name) for name in MARTS}
    sql(db, "insert into craftmart.order_change_log (changed_at, customer_id, craftsman_id)"
            " values (clock_timestamp(), $1, $2)", (c2, k1))
    report = run(db)

    months = ("2024-01", "2024-02", "2024-03")
    for name, entity, entity_id in ((CUSTOMER, "customer_id", c2),
                                    (CRAFTSMAN, "craftsman_id", k1)):
        assert report.marts[name] == {
            "mart": name, "full": False, "entities": 1,
            "orders": _orders_in(db, entity, entity_id, months),
            "rows_inserted": 0, "rows_updated": 0, "rows_deleted": 0, "full_reason": None}
        assert mart_xmins(db, name) == before[name]
    assert report.marts[CUSTOMER]["orders"] == 3
    assert_marts_match_rebuild(db)


def test_an_attribute_change_rewrites_only_rows_whose_values_change(db: Database) -> None:
    """A customer's address change re-aggregates that customer only (an address is in no
    craftsman row), and rewrites that customer's rows only."""
    _marketplace(db)
    run(db)
    c2 = customer_id(db, "c2@buyer.example")
    marts_before = {name: mart_xmins(db, name) for name in MARTS}
    orders_of_c2 = query(
        db,
        "select source_name, source_order_id from dwh.f_order where customer_id = $1",
        (c2,),
    ).rows()
    for source, key in orders_of_c2:
        set_field(db, source, key, "customer_address", "1 Moved Rd")
    report = run(db)

    assert report.dwh["d_customer"] == {"inserted": 0, "updated": 1, "deleted": 0}
    assert (report.marts[CUSTOMER]["entities"], report.marts[CUSTOMER]["rows_updated"]) == (1, 3)
    # an address feeds no craftsman row: no craftsman is re-aggregated, none rewritten
    assert report.marts[CRAFTSMAN]["entities"] == 0
    assert report.marts[CRAFTSMAN]["rows_updated"] == 0
    assert mart_xmins(db, CRAFTSMAN) == marts_before[CRAFTSMAN]
    after = mart_xmins(db, CUSTOMER)
    rewritten = {k for k in after if after[k] != marts_before[CUSTOMER][k]}
    assert rewritten == {_key(c2, p) for p in ("2024-01", "2024-02", "2024-03")}
    assert {r["customer_address"] for r in rows_of(db, CUSTOMER, customer_id=c2)} == {
        "1 Moved Rd"}
    assert_marts_match_rebuild(db)


def test_a_birthday_change_reaggregates_the_customer_and_their_craftsmen_only(
    db: Database,
) -> None:
    """A customer's birthday feeds avg_age_customer: the customer and exactly the
    craftsmen they bought from are re-aggregated; the craftsman rows that change are
    the months with that customer's orders."""
    _marketplace(db)
    run(db)
    c4 = customer_id(db, "c4@buyer.example")
    craftsmen_of_c4 = query(
        db, "select distinct craftsman_id, to_char(order_created_date, 'YYYY-MM') as period"
            " from dwh.f_order where customer_id = $1", (c4,)).rows()
    before = mart_xmins(db, CRAFTSMAN)
    for source, key in query(db, "select source_name, source_order_id from dwh.f_order"
                                 " where customer_id = $1", (c4,)).rows():
        set_field(db, source, key, "customer_birthday", dt.date(1940, 6, 6))
    report = run(db)

    assert report.marts[CUSTOMER]["entities"] == 1
    assert report.marts[CRAFTSMAN]["entities"] == len({k for k, _ in craftsmen_of_c4})
    after = mart_xmins(db, CRAFTSMAN)
    assert {k for k in after if after[k] != before[k]} == {
        _key(k, p) for k, p in craftsmen_of_c4}
    assert_marts_match_rebuild(db)


def test_a_product_price_change_reaggregates_only_the_order_that_carries_it(
    db: Database,
) -> None:
    """A product's current price (d_product) feeds no mart: a new price on its latest
    order re-aggregates that order's customer and craftsman, not the product's other
    buyers, whose past orders keep the price they paid."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB, order_created_date=dt.date(2024, 1, 5),
              product_price=100)
    latest = add_order(db, "source1", **ANN, **CAT, order_created_date=dt.date(2024, 2, 5),
                       product_price=100)
    run(db)
    bob_before = row_of(db, CUSTOMER, customer_email="bob@buyer.example")

    set_field(db, "source1", latest, "product_price", 130)
    report = run(db)

    assert query(db, "select product_price from dwh.d_product").item() == 130
    assert report.marts[CUSTOMER]["entities"] == 1
    assert report.marts[CRAFTSMAN]["entities"] == 1
    assert row_of(db, CUSTOMER, customer_email="bob@buyer.example") == bob_before
    assert row_of(db, CUSTOMER, customer_email="cat@buyer.example")["customer_money"] == "130.00"
    assert_marts_match_rebuild(db)


def test_a_top_craftsman_tie_goes_to_the_smaller_email_on_an_incremental_refresh(
    db: Database,
) -> None:
    """k3 gets a smaller id than k2, so only the emails can break their tie in 2024-02;
    the customer's rows are then re-aggregated from the DWH by an incremental run."""
    create_sources(db)

    def order(craftsman: str, created: dt.date) -> None:
        add_order(db, "source1", craftsman_email=f"{craftsman}@craft.example",
                  order_created_date=created)

    order("k1", dt.date(2023, 12, 31))
    order("k3", dt.date(2024, 2, 15))
    run(db)
    order("k2", dt.date(2024, 2, 15))
    run(db)
    order("k1", dt.date(2023, 12, 31))  # touches the customer: every month is re-aggregated
    assert run(db).pull == "changes"

    k2 = query(db, "select craftsman_id from dwh.d_craftsman"
                   " where craftsman_email = 'k2@craft.example'").item()
    top = query(db, "select top_craftsman_id from marts.customer_report_datamart"
                    " where report_period = '2024-02'").item()
    assert top == k2
    assert_marts_match_rebuild(db)


def test_a_run_without_changes_reaggregates_and_writes_nothing(db: Database) -> None:
    """Nothing changed in the sources: no entity is re-aggregated, no DWH or mart row is
    written, and each mart's watermark advances to the run's timestamp."""
    _marketplace(db)
    run(db)
    tables = {"marts.customer_report_datamart": "id", "marts.craftsman_report_datamart": "id",
              "dwh.d_customer": "customer_id", "dwh.d_craftsman": "craftsman_id",
              "dwh.d_product": "product_id", "dwh.f_order": "order_id"}
    before = {t: xmins(db, t, k) for t, k in tables.items()}

    report = run(db)

    for name in MARTS:
        assert report.marts[name] == {"mart": name, "full": False, "entities": 0, "orders": 0,
                                      "rows_inserted": 0, "rows_updated": 0, "rows_deleted": 0,
                                      "full_reason": None}
        assert query(db, f"select count(*) = 2 and max(load_dttm) = $1::timestamptz"
                         f" from marts.load_dates_{name}", (report.run_ts,)).item() is True
    assert {t: xmins(db, t, k) for t, k in tables.items()} == before


# --------------------------------------------------------------------------- full == incremental


def test_run_full_gives_the_same_rows_as_the_incremental_path(
    db: Database, make_db: Callable[[], Database], tmp_path: Any
) -> None:
    """After a series of incremental runs over mixed changes, `craftmart-batch run --full`
    reproduces the marts exactly: it finds no row to insert, update or delete."""
    _marketplace(db)
    run(db)
    orders = query(db, "select source_name, source_order_id from dwh.f_order"
                       " order by order_id").rows()
    delete_order(db, *orders[0])
    set_field(db, *orders[1], "order_status", "done")
    set_field(db, *orders[1], "order_completion_date", dt.date(2024, 6, 1))
    set_field(db, *orders[2], "order_created_date", dt.date(2023, 11, 30))
    run(db)
    set_field(db, *orders[3], "customer_email", "c5@buyer.example")
    set_field(db, *orders[4], "product_type", "glass")
    add_order(db, "source3", customer_email="new@buyer.example",
              craftsman_email="k1@craft.example", craftsman_name="Maker 1",
              product_name="Item 1", order_created_date=dt.date(2024, 2, 2))
    run(db)
    incremental = {name: mart(db, name) for name in MARTS}
    assert_marts_match_rebuild(db)

    done = subprocess.run(
        [sys.executable, "-m", "craftmart_batch.cli", "run", "--full", "--json",
         "--dsn", db.libpq_uri()],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for name in MARTS:
        assert report["marts"][name]["full"] is True
        assert report["marts"][name]["entities"] == int(query(
            db, f"select count(*) from dwh.d_{name.split('_')[0]}").item())
        assert [report["marts"][name][k] for k in ("rows_inserted", "rows_updated",
                                                   "rows_deleted")] == [0, 0, 0]
        assert_frame_equal(mart(db, name), incremental[name])
    assert_same_as_fresh_load(db, make_db)


# --------------------------------------------------------------------------- property


SOURCES = ("source1", "source2", "source3", "external_source")
DATES = (dt.date(2023, 12, 31), dt.date(2024, 1, 1), dt.date(2024, 1, 31),
         dt.date(2024, 2, 15), dt.date(2024, 2, 29), dt.date(2024, 3, 10))

#: Valid values per canonical field: new orders draw from these.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "order_status": st.sampled_from(["created", "in progress", "delivery", "done", " Done ",
                                     "IN PROGRESS"]),
    "product_price": st.sampled_from([1, 3, 50, 99, 100, 333]),
    "order_created_date": st.sampled_from(DATES),
    "customer_email": st.sampled_from(["a@buyer.example", " A@Buyer.example", "b@buyer.example",
                                       "c@buyer.example"]),
    "customer_name": st.sampled_from(["Bob", "Cat", None]),
    "customer_address": st.sampled_from(["2 Market Rd", "5 Mill Ln", "7 Dock St"]),
    "customer_birthday": st.sampled_from([None, dt.date(1990, 5, 6), dt.date(2000, 2, 29),
                                          dt.date(2024, 2, 1)]),
    "craftsman_email": st.sampled_from(["k1@craft.example", "K1@craft.example ",
                                        "k2@craft.example", "k3@craft.example"]),
    "craftsman_name": st.sampled_from(["Ann", "Kim"]),
    "craftsman_address": st.sampled_from(["1 Clay St", "9 Kiln Rd"]),
    "craftsman_birthday": st.sampled_from([dt.date(1980, 1, 2), dt.date(1975, 2, 28)]),
    "product_name": st.sampled_from(["Mug", "Vase"]),
    "product_description": st.sampled_from(["blue", "tall"]),
    "product_type": st.sampled_from(["ceramics", "glass", "wood", "Glass"]),
}

#: What a field of an existing order may be changed to, invalid values included.
CHANGES: dict[str, st.SearchStrategy[Any]] = {
    **VALID,
    "order_status": st.sampled_from(["created", "in progress", "delivery", "done", " Done ",
                                     "cancelled"]),
    "product_price": st.sampled_from([1, 3, 50, 99, 100, 333, 0]),
    "order_created_date": st.sampled_from([*DATES, None]),
    "order_completion_date": st.sampled_from([None, *DATES, dt.date(2024, 4, 2)]),
    "customer_email": st.sampled_from(["a@buyer.example", "b@buyer.example",
                                       "C@BUYER.EXAMPLE", "not-an-email"]),
}

#: Ways to break a valid order (SPEC §3).
BREAKS = ("status", "price", "customer_email", "craftsman_email", "created_null",
          "completion_before", "missing_reference", "price_too_large", "completion_infinite",
          "created_undecodable", "created_year_3000")


@st.composite
def new_orders(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    fields = {name: draw(values) for name, values in VALID.items()}
    offset = draw(st.sampled_from([None, 0, 1, 2, 7, 30]))
    if offset is not None:
        fields["order_completion_date"] = fields["order_created_date"] + dt.timedelta(offset)
    return draw(st.sampled_from(SOURCES)), fields


ORDER_FIELDS = ("order_status", "product_price", "order_created_date", "order_completion_date")
IDENTITY_FIELDS = ("customer_email", "craftsman_email", "product_name", "product_description")
ATTRIBUTE_FIELDS = ("customer_name", "customer_address", "customer_birthday", "craftsman_name",
                    "craftsman_address", "craftsman_birthday", "product_type")


def _changes(fields: tuple[str, ...]) -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(*(st.tuples(st.just(f), CHANGES[f]) for f in fields))


PICK = st.integers(0, 99)  # an order, modulo the orders present
STEPS = st.one_of(
    st.tuples(st.just("insert"), new_orders()),
    st.tuples(st.just("delete"), PICK),
    st.tuples(st.just("set"), PICK, _changes(ORDER_FIELDS)),
    # an order moving to another customer, craftsman or product
    st.tuples(st.just("set"), PICK, _changes(IDENTITY_FIELDS)),
    # one source row's attribute: it counts only if that row is the latest (SPEC §2)
    st.tuples(st.just("set"), PICK, _changes(ATTRIBUTE_FIELDS)),
    # an attribute changed on every row of its customer, craftsman or product
    st.tuples(st.just("set everywhere"), PICK, _changes(ATTRIBUTE_FIELDS)),
    st.tuples(st.just("break"), PICK, st.sampled_from(BREAKS)),
    st.tuples(st.just("fix"), PICK),
    # a second source1 row with the same order key and one field changed
    st.tuples(st.just("duplicate"), PICK,
              _changes(ORDER_FIELDS + IDENTITY_FIELDS + ATTRIBUTE_FIELDS)),
    # no change in the sources, then `run --full` instead of an incremental run
    st.tuples(st.just("full run")),
)


def _break(db: Database, source: str, key: int, how: str) -> None:
    if how == "missing_reference" and source != "source2":
        how = "status"
    if how == "status":
        set_field(db, source, key, "order_status", "cancelled")
    elif how == "price":
        set_field(db, source, key, "product_price", -5)
    elif how == "customer_email":
        set_field(db, source, key, "customer_email", "no at sign")
    elif how == "craftsman_email":
        set_field(db, source, key, "craftsman_email", "two@@ats")
    elif how == "created_null":
        set_field(db, source, key, "order_created_date", None)
    elif how == "price_too_large":
        set_field(db, source, key, "product_price", 10_000_001)
    elif how == "completion_infinite":
        set_field(db, source, key, "order_completion_date", "infinity")
    elif how == "created_undecodable":
        set_field(db, source, key, "order_created_date", "5874897-12-31")
    elif how == "created_year_3000":
        set_field(db, source, key, "order_created_date", "3000-01-01")
    elif how == "completion_before":
        table, where = _order_row(source, "order_created_date")
        sql(db, f"update {table} set order_created_date = coalesce(order_created_date,"
                f" $1::date), order_completion_date = coalesce(order_created_date, $1::date) - 3"
                f" where {where}", (DATES[2], key))
    else:  # a source2 order whose product row is missing
        sql(db, "update source2.craft_market_orders_customers set product_id = -1"
                " where order_id = $1", (key,))


def _fix(db: Database, source: str, key: int) -> None:
    """Make an order valid again, whatever broke it."""
    set_field(db, source, key, "order_status", "done")
    set_field(db, source, key, "product_price", 42)
    table, where = _order_row(source, "order_created_date")
    sql(db, f"update {table} set order_created_date = case when order_created_date between"
            f" '1900-01-01' and '2999-12-31' then order_created_date else $1::date end,"
            f" order_completion_date = null where {where}", (DATES[3], key))
    for person, fallback in (("customer", "b@buyer.example"), ("craftsman", "k2@craft.example")):
        table, where = _order_row(source, f"{person}_email")
        sql(db, f"update {table} set {person}_email = $1::text where {where}"
                f" and btrim({person}_email, ' ') !~ '^[^@[:space:]]+@[^@[:space:]]+$'",
            (fallback, key))
    if source == "source2":
        sql(db, "update source2.craft_market_orders_customers as o set product_id = p.product_id"
                " from source2.craft_market_masters_products as p"
                " where o.order_id = $1 and p.craftsman_id = o.craftsman_id", (key,))


def _same_entity(db: Database, source: str, key: int, field: str) -> list[tuple[str, int]]:
    """Every order (valid or not) of the customer, craftsman or product that ``field`` of
    the given order belongs to, by the identity rules of SPEC §2."""
    identity = {
        "customer": ["customer_email"],
        "craftsman": ["craftsman_email"],
        "product": ["craftsman_email", "product_name", "product_description"],
    }[field.split("_", 1)[0]]
    canonical = " union all ".join(
        f"select source_name, source_order_id, {', '.join(identity)}"
        f" from ({queries.source_query(s)}) as o"
        for s in load_settings(None, dsn=db.libpq_uri()).sources
    )
    rows = query(db, canonical).with_columns(
        pl.col(c).str.strip_chars(" ").str.to_lowercase() for c in identity if "email" in c
    )
    picked = rows.filter(
        (pl.col("source_name") == source) & (pl.col("source_order_id") == key)
    ).select(identity)
    same = rows.join(picked, on=identity, nulls_equal=True)
    return [(str(s), int(k)) for s, k in same.select("source_name", "source_order_id").rows()]


def _duplicate(db: Database, key: int, field: str, value: Any) -> None:
    """Insert a second source1 row with order key ``key``: a copy with ``field`` changed."""
    columns = [*CANONICAL_FIELDS, "order_id"]
    values = [f"$2::{_SQL_TYPE[CANONICAL_FIELDS[c]]}" if c == field else c for c in columns]
    sql(db, f"insert into source1.craft_market_wide ({', '.join(columns)})"
            f" overriding system value select {', '.join(values)}"
            " from source1.craft_market_wide where order_id = $1 limit 1", (key, value))


def _apply(db: Database, orders: list[tuple[str, int]], step: tuple[Any, ...]) -> None:
    kind = step[0]
    if kind == "full run":
        return
    if kind == "duplicate":
        in_source1 = [key for source, key in orders if source == "source1"]
        if in_source1:
            _duplicate(db, in_source1[step[1] % len(in_source1)], *step[2])
        return
    if kind == "insert":
        source, fields = step[1]
        orders.append((source, add_order(db, source, **fields)))
        return
    if not orders:
        return
    index = step[1] % len(orders)
    source, key = orders[index]
    if kind == "delete":
        delete_order(db, source, key)
        del orders[index]
    elif kind == "set":
        field, value = step[2]
        set_field(db, source, key, field, value)
    elif kind == "set everywhere":
        field, value = step[2]
        for other_source, other_key in _same_entity(db, source, key, field):
            set_field(db, other_source, other_key, field, value)
    elif kind == "break":
        _break(db, source, key, step[2])
    else:
        _fix(db, source, key)


@pytest.mark.slow
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=st.lists(new_orders(), min_size=2, max_size=8),
       steps=st.lists(STEPS, min_size=3, max_size=6))
def test_any_sequence_of_source_changes_keeps_the_marts_equal_to_a_full_rebuild(
    make_db: Callable[[], Database],
    initial: list[tuple[str, dict[str, Any]]],
    steps: list[tuple[Any, ...]],
) -> None:
    """Random inserts, deletes, updates and rows turning invalid or valid, each followed by
    an incremental run: both marts always equal the oracle and a full rebuild."""
    db = make_db()
    create_sources(db)
    orders = [(source, add_order(db, source, **fields)) for source, fields in initial]
    run(db)
    assert_marts_match_rebuild(db)
    for step in steps:
        _apply(db, orders, step)
        run(db, full=step[0] == "full run")
        assert_marts_match_rebuild(db)
    assert_incremental_is_full(db, make_db)


# --------------------------------------------------------------------------- kill


#: Stage names the CLI prints on stderr as it enters them, in run order.
STAGES = ("lock", "schema", "pull", "validate", "dedup", "diff", "write",
          CUSTOMER, CRAFTSMAN, "commit")


def _runs(db: Database) -> int:
    """Successful runs recorded (a run records its success in its own transaction)."""
    exists = query(db, "select to_regclass('craftmart.runs') is not null").item()
    if not exists:
        return 0
    return int(query(db, "select count(*) from craftmart.runs where outcome = 'success'").item())


#: the database's other client backends: on Citus, not the maintenance daemon (a
#: background worker) and its connections (2PC recovery, deadlock detection)
_OTHER_CLIENTS = ("from pg_stat_activity where datname = current_database()"
                  " and pid <> pg_backend_pid() and backend_type = 'client backend'"
                  " and application_name not like 'citus\\_internal%'")


def _wait_for_backends_to_end(db: Database, timeout: float = 60.0) -> None:
    """A killed client's server backend ends (rolling back) once it notices; wait for it."""
    deadline = time.monotonic() + timeout
    with connection(db, autocommit=True) as conn:
        while time.monotonic() < deadline:
            others = fetch_value(conn, f"select count(*) {_OTHER_CLIENTS}")
            if others == 0:
                return
            time.sleep(0.02)
        left = fetch_frame(conn, f"select pid, application_name, state, query {_OTHER_CLIENTS}")
    raise AssertionError(f"the killed run's server backend did not end: {left}")


def _cli(db: Database, *args: str) -> list[str]:
    return [sys.executable, "-m", "craftmart_batch.cli", "run", "--dsn", db.libpq_uri(), *args]


def _kill_run(db: Database, cwd: Any, stage_name: str, delay: float) -> tuple[str, int | None]:
    """Start a run, SIGKILL it ``delay`` seconds after it enters ``stage_name``; return the
    last stage it announced and its exit code (None when killed)."""
    proc = subprocess.Popen(_cli(db), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen = bytearray()

    def read() -> None:
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 4096):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    marker = f"  {stage_name} ...".encode()
    deadline = time.monotonic() + 120
    while marker not in seen and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    reader.join(timeout=10)
    announced = [s for s in STAGES if f"  {s} ...".encode() in seen]
    _wait_for_backends_to_end(db)
    return (announced[-1] if announced else "start"), (None if code == -signal.SIGKILL else code)


@pytest.mark.slow
def test_a_run_killed_at_any_stage_leaves_everything_as_it_was(
    db: Database, make_db: Callable[[], Database], tmp_path: Any
) -> None:
    """SIGKILL at any stage leaves DWH, marts, bookkeeping and load dates exactly as they
    were (or, past the commit, exactly as a finished run); the next run finishes the job."""
    from craftmart_batch.synthetic import apply_changes, generate

    with connection(db) as conn:
        generate(conn, 4000, seed=11)
        conn.commit()
    rng = random.Random(20240611)
    hit: list[str] = []

    # the very first run, killed: nothing may appear
    empty = warehouse_state(db)
    assert empty == {}
    for stage_name in ("schema", "pull", "write", CUSTOMER):
        reached, code = _kill_run(db, tmp_path, stage_name, rng.uniform(0, 0.02))
        hit.append(reached)
        if code is None:
            assert warehouse_state(db) == empty, reached

    run(db)
    with connection(db) as conn:
        apply_changes(conn, 400, seed=12)
        conn.commit()
    before, runs_before = warehouse_state(db), _runs(db)
    finished_by_a_killed_run = False
    for stage_name in STAGES:
        reached, code = _kill_run(db, tmp_path, stage_name, rng.uniform(0, 0.03))
        hit.append(reached)
        if _runs(db) == runs_before:
            assert code is None, reached
            after = warehouse_state(db)
            assert after.keys() == before.keys()
            for table in before:
                assert after[table] == before[table], f"{table} changed, killed in {reached}"
        else:  # killed after its commit: a finished run
            assert reached == "commit", reached
            assert_marts_match_rebuild(db)
            before, runs_before = warehouse_state(db), _runs(db)
            finished_by_a_killed_run = True
    assert len(set(hit)) >= 6, hit

    report = run(db)
    if not finished_by_a_killed_run:  # the changes are still to be loaded
        assert report.dwh["f_order"]["updated"] > 0
        assert report.marts[CUSTOMER]["entities"] > 0
    assert_incremental_is_full(db, make_db)


# --------------------------------------------------------------------------- concurrency


def _hold_lock(db: Database) -> Any:
    holder = connect(db)
    execute(holder, "select pg_advisory_xact_lock($1)", (pipeline.LOCK_KEY,))
    return holder


def test_a_run_exits_3_in_one_line_while_another_holds_the_lock(
    db: Database, tmp_path: Any
) -> None:
    """While another run holds the warehouse lock, `run` exits 3 with a one-line error
    and writes nothing."""
    create_sources(db)
    add_order(db, "source1")
    holder = _hold_lock(db)
    try:
        done = subprocess.run(_cli(db), cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        holder.rollback()
        holder.close()
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "lock" in errors[0], done.stderr
    assert errors[0].startswith("craftmart-batch: error: ")
    assert done.stderr.splitlines()[-1] == errors[0]
    assert "Traceback" not in done.stderr
    assert query(db, "select to_regclass('marts.customer_report_datamart')").item() is None


def test_run_wait_waits_for_the_lock_and_then_succeeds(db: Database, tmp_path: Any) -> None:
    """`run --wait` blocks on the lock held by another run and succeeds once it is released."""
    create_sources(db)
    add_order(db, "source1", **ANN, **BOB)
    holder = _hold_lock(db)
    released = threading.Event()
    try:
        proc = subprocess.Popen(_cli(db, "--wait"), cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        with connection(db, autocommit=True) as watcher:
            while time.monotonic() < deadline:
                waiting = fetch_value(
                    watcher,
                    "select count(*) from pg_stat_activity where datname = current_database()"
                    " and wait_event_type = 'Lock' and wait_event = 'advisory'",
                )
                if waiting or proc.poll() is not None:
                    break
                time.sleep(0.05)
        assert waiting == 1, "the run is not waiting for the lock"

        def release() -> None:
            holder.rollback()
            released.set()

        threading.Timer(1.0, release).start()
        time.sleep(0.5)
        assert proc.poll() is None, "the run finished while the lock was held"
        _, stderr = proc.communicate(timeout=300)
    finally:
        released.wait(timeout=10)
        holder.close()
    assert proc.returncode == 0, stderr
    assert released.is_set()
    bob = row_of(db, CUSTOMER, customer_email="bob@buyer.example")
    assert (bob["count_order"], bob["customer_money"]) == (1, "100.00")
