"""The Polars marts equal the SQL oracle (SPEC §5 in plain PostgreSQL) on the same DWH."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import expected_craftsman_mart, expected_customer_mart
from polars.testing import assert_frame_equal

from craftmart_batch._database import Database, connect
from craftmart_batch.transform import marts

_DWH_MIGRATIONS = ("0001", "0002", "0003", "0004", "0005")


def _statements(script: str) -> list[str]:
    """A DDL file's statements: split at a ';' that ends a line (no function bodies)."""
    parts = re.split(r";[ \t]*$", script, flags=re.MULTILINE)
    return [p.strip() for p in parts if re.sub(r"--[^\n]*", "", p).strip()]


@pytest.fixture
def dwh(db: Database) -> Iterator[Any]:
    """An ADBC connection to a fresh database holding the empty ``dwh`` tables."""
    conn = connect(db)
    migrations = resources.files("craftmart_batch").joinpath("_schema/migrations")
    cur = conn.cursor()
    for path in sorted(migrations.iterdir(), key=lambda p: p.name):
        if path.name[:4] in _DWH_MIGRATIONS:
            for statement in _statements(path.read_text()):
                cur.execute(statement)
    cur.close()
    conn.commit()
    try:
        yield conn
    finally:
        conn.close()


@dataclass
class Warehouse:
    """The four DWH tables' rows (without load_dttm and the source bookkeeping)."""

    craftsmen: pl.DataFrame
    customers: pl.DataFrame
    products: pl.DataFrame
    orders: pl.DataFrame

    def mart_input(self) -> pl.DataFrame:
        """What the pipeline hands to the mart functions: orders with current attributes."""
        return (
            self.orders.join(
                self.products.select("product_id", "product_type"), on="product_id", how="left"
            )
            .join(self.customers, on="customer_id", how="left")
            .join(self.craftsmen, on="craftsman_id", how="left")
            .select(marts.ORDERS_SCHEMA.names())
        )


CRAFTSMAN_SCHEMA = pl.Schema(
    {"craftsman_id": pl.Int64, "craftsman_name": pl.String, "craftsman_address": pl.String,
     "craftsman_birthday": pl.Date, "craftsman_email": pl.String}
)
CUSTOMER_SCHEMA = pl.Schema(
    {"customer_id": pl.Int64, "customer_name": pl.String, "customer_address": pl.String,
     "customer_birthday": pl.Date, "customer_email": pl.String}
)
PRODUCT_SCHEMA = pl.Schema(
    {"product_id": pl.Int64, "craftsman_id": pl.Int64, "product_name": pl.String,
     "product_type": pl.String}
)
ORDER_SCHEMA = pl.Schema(
    {"order_id": pl.Int64, "customer_id": pl.Int64, "craftsman_id": pl.Int64,
     "product_id": pl.Int64, "order_created_date": pl.Date, "order_completion_date": pl.Date,
     "order_status": pl.String, "product_price": pl.Int64}
)


def load(conn: Any, warehouse: Warehouse) -> None:
    """Replace the DWH contents with ``warehouse`` (ids kept as given), uncommitted."""
    cur = conn.cursor()
    cur.execute("truncate dwh.f_order, dwh.d_product, dwh.d_customer, dwh.d_craftsman")
    for table, frame in (
        ("d_craftsman", warehouse.craftsmen),
        ("d_customer", warehouse.customers),
        ("d_product", warehouse.products),
        ("f_order", warehouse.orders),
    ):
        staging = f"staging_{table}"
        cur.adbc_ingest(staging, frame.to_arrow(), mode="replace", temporary=True)
        columns = ", ".join(frame.columns)
        extra_columns, extra_values = ", load_dttm", ", now()"
        if table == "f_order":
            extra_columns += ", source_name, source_order_id"
            extra_values += ", 'test', order_id"
        cur.execute(
            f"insert into dwh.{table} ({columns}{extra_columns}) overriding system value"
            f" select {columns}{extra_values} from {staging}"
        )
    cur.close()


def assert_marts_equal_oracle(conn: Any, warehouse: Warehouse) -> None:
    load(conn, warehouse)
    try:
        orders = warehouse.mart_input()
        assert_frame_equal(marts.customer_report(orders), expected_customer_mart(conn))
        assert_frame_equal(marts.craftsman_report(orders), expected_craftsman_mart(conn))
    finally:
        conn.rollback()


# Emails and types whose byte order (collate "C") differs from a case-insensitive one.
EMAILS = ["a@x", "B@x", "b@x", "_@x", "Z@y", "é@x", "ab@x"]
PRODUCT_TYPES = ["toys", "Toys", "art", "ärt", "B", None]
STATUSES = ["created", "in progress", "delivery", "done"]
NAMES = st.none() | st.sampled_from(["Ann", "Bob", "Çelik"])
BIRTHDAYS = st.none() | st.dates(dt.date(1900, 1, 1), dt.date(2030, 12, 31)) | st.sampled_from(
    [dt.date(2000, 2, 29), dt.date(2020, 2, 29), dt.date(2024, 2, 29), dt.date(2024, 3, 1)]
)
CREATED = st.dates(dt.date(2023, 12, 1), dt.date(2024, 3, 31)) | st.sampled_from(
    [dt.date(2024, 2, 28), dt.date(2024, 2, 29), dt.date(2024, 3, 1), dt.date(2023, 12, 31)]
)


@st.composite
def warehouses(draw: st.DrawFn) -> Warehouse:
    def people(role: str, max_size: int) -> list[dict[str, Any]]:
        emails = draw(st.lists(st.sampled_from(EMAILS), min_size=1, max_size=max_size,
                               unique=True))
        # ids in random order, so that "smallest email" and "smallest id" differ
        ids = draw(st.permutations(range(1, len(emails) + 1)))
        return [
            {f"{role}_id": i, f"{role}_name": draw(NAMES), f"{role}_address": draw(NAMES),
             f"{role}_birthday": draw(BIRTHDAYS), f"{role}_email": email}
            for i, email in zip(ids, emails, strict=True)
        ]

    craftsmen = people("craftsman", 3)
    customers = people("customer", 4)
    products = [
        {"product_id": i, "craftsman_id": draw(st.sampled_from(craftsmen))["craftsman_id"],
         "product_name": f"p{i}", "product_type": draw(st.sampled_from(PRODUCT_TYPES))}
        for i in range(1, draw(st.integers(1, 4)) + 1)
    ]
    orders = []
    for i in range(1, draw(st.integers(1, 25)) + 1):
        product = draw(st.sampled_from(products))
        created = draw(CREATED)
        days = draw(st.none() | st.integers(0, 40))
        orders.append({
            "order_id": i,
            "customer_id": draw(st.sampled_from(customers))["customer_id"],
            "craftsman_id": product["craftsman_id"],
            "product_id": product["product_id"],
            "order_created_date": created,
            "order_completion_date": None if days is None else created + dt.timedelta(days),
            "order_status": draw(st.sampled_from(STATUSES)),
            "product_price": draw(st.integers(1, 1000) | st.integers(1, 10**7)),
        })
    return Warehouse(
        pl.DataFrame(craftsmen, schema=CRAFTSMAN_SCHEMA),
        pl.DataFrame(customers, schema=CUSTOMER_SCHEMA),
        pl.DataFrame(products, schema=PRODUCT_SCHEMA),
        pl.DataFrame(orders, schema=ORDER_SCHEMA),
    )


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(warehouse=warehouses())
def test_polars_marts_equal_the_sql_oracle(dwh: Any, warehouse: Warehouse) -> None:
    """On any small DWH, both Polars marts equal SPEC §5 in SQL, row for row and column for column.

    Each example replaces the DWH contents and rolls back, so the shared database is
    reset between examples.
    """
    assert_marts_equal_oracle(dwh, warehouse)


def _days(date_or_days: dt.date | int) -> int:
    """Days since 1970-01-01; an int stands for itself (dates before AD 1)."""
    if isinstance(date_or_days, int):
        return date_or_days
    return (date_or_days - dt.date(1970, 1, 1)).days


def _one_customer(*created: dt.date | int, birthday: dt.date | None = None) -> Warehouse:
    """One customer and craftsman with one order per given created date."""
    orders = pl.DataFrame(
        {
            "order_id": range(1, len(created) + 1),
            "customer_id": 1,
            "craftsman_id": 1,
            "product_id": 1,
            "order_created_date": pl.Series([_days(c) for c in created]).cast(pl.Date),
            "order_completion_date": None,
            "order_status": "done",
            "product_price": 5,
        },
        schema=ORDER_SCHEMA,
    )
    return Warehouse(
        pl.DataFrame([{"craftsman_id": 1, "craftsman_email": "m@x"}], schema=CRAFTSMAN_SCHEMA),
        pl.DataFrame([{"customer_id": 1, "customer_email": "c@x", "customer_birthday": birthday}],
                     schema=CUSTOMER_SCHEMA),
        pl.DataFrame([{"product_id": 1, "craftsman_id": 1, "product_type": "t"}],
                     schema=PRODUCT_SCHEMA),
        orders,
    )


YEAR_0_JAN_1 = _days(dt.date(1, 1, 1)) - 366  # 1 BC, a leap year in the proleptic calendar


def test_extreme_years_have_the_periods_of_to_char(dwh: Any) -> None:
    """Years 1 and 9999 are zero-padded like to_char, and 1 BC shares AD 1's 'YYYY-MM'."""
    warehouse = _one_customer(
        dt.date(1, 1, 1), YEAR_0_JAN_1 + 10, dt.date(1, 2, 3), dt.date(9999, 12, 31)
    )
    assert_marts_equal_oracle(dwh, warehouse)
    periods = marts.customer_report(warehouse.mart_input())["report_period"].to_list()
    assert periods == ["0001-01", "0001-02", "9999-12"]


@pytest.mark.parametrize(
    ("created", "birthday", "age"),
    [(dt.date(2999, 12, 31), dt.date(1900, 1, 1), "1099.0"),
     (dt.date(1900, 1, 1), dt.date(2999, 12, 31), "-1099.0")],
)
def test_the_extreme_ages_of_valid_rows_agree_in_polars_and_in_sql(
    dwh: Any, created: dt.date, birthday: dt.date, age: str
) -> None:
    """Dates at the ends of rule 7's range make ages of ±1,099 years: both implementations
    compute them, and avg_age_customer numeric(5,1) holds them."""
    warehouse = _one_customer(created, birthday=birthday)
    assert_marts_equal_oracle(dwh, warehouse)
    ages = marts.craftsman_report(warehouse.mart_input())["avg_age_customer"].to_list()
    assert ages == [Decimal(age)]
