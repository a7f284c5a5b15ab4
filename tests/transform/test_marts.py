"""The mart metrics (SPEC §5) computed by craftmart_batch.transform.marts, one behaviour a test."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from importlib import resources
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from craftmart_batch.errors import CraftmartError
from craftmart_batch.transform import marts
from craftmart_batch.transform.validate import FIRST_DATE, LAST_DATE, MAX_PRICE

MARCH = dt.date(2024, 3, 5)

_DEFAULT: dict[str, Any] = {
    "customer_id": 1,
    "craftsman_id": 10,
    "product_id": 100,
    "order_created_date": MARCH,
    "order_completion_date": None,
    "order_status": "done",
    "product_price": 100,
    "product_type": "ceramics",
    "customer_name": "Bob Buyer",
    "customer_address": "2 Market Rd",
    "customer_birthday": dt.date(1990, 5, 6),
    "customer_email": "bob@buyer.example",
    "craftsman_name": "Ann Potter",
    "craftsman_address": "1 Clay St",
    "craftsman_birthday": dt.date(1980, 1, 2),
    "craftsman_email": "ann@craft.example",
}


def orders(*overrides: dict[str, Any]) -> pl.DataFrame:
    """One order per dict of overrides of a valid default order, ids 1, 2, ..."""
    rows = [{**_DEFAULT, "order_id": i, **o} for i, o in enumerate(overrides, start=1)]
    return pl.DataFrame(rows, schema=marts.ORDERS_SCHEMA)


def completed_after(*days: int | None) -> pl.DataFrame:
    """Orders created in March, each completed the given number of days later (or never)."""
    return orders(*(
        {"order_completion_date": None if d is None else MARCH + dt.timedelta(d)} for d in days
    ))


def one_row(mart: pl.DataFrame) -> dict[str, Any]:
    assert mart.height == 1, mart
    return mart.row(0, named=True)


def customer_row(*overrides: dict[str, Any]) -> dict[str, Any]:
    return one_row(marts.customer_report(orders(*overrides)))


def craftsman_row(*overrides: dict[str, Any]) -> dict[str, Any]:
    return one_row(marts.craftsman_report(orders(*overrides)))


def _table_columns(migration_prefix: str) -> list[str]:
    migrations = resources.files("craftmart_batch").joinpath("_schema/migrations")
    (path,) = [p for p in migrations.iterdir() if p.name.startswith(migration_prefix)]
    body = path.read_text().split("(", 1)[1]
    names = re.findall(r"^\s+(\w+)\s+(?:bigint|varchar|date|numeric)", body, flags=re.MULTILINE)
    return [n for n in names if n != "id"]


# --- shape ----------------------------------------------------------------------------


def test_columns_are_the_mart_tables_columns_in_table_order() -> None:
    """MART_COLUMNS and the returned frames follow the DDL of both mart tables, minus id."""
    assert marts.MART_COLUMNS["customer_report_datamart"] == _table_columns("0009")
    assert marts.MART_COLUMNS["craftsman_report_datamart"] == _table_columns("0010")
    assert marts.customer_report(orders({})).columns == _table_columns("0009")
    assert marts.craftsman_report(orders({})).columns == _table_columns("0010")
    assert marts.MART_KEYS == {
        "customer_report_datamart": "customer_id",
        "craftsman_report_datamart": "craftsman_id",
    }


def test_dtypes_are_the_mart_column_types() -> None:
    """Money is Decimal(15,2), averages Decimal(10,2)/(5,1), the median Decimal(10,1)."""
    customer = marts.customer_report(orders({}))
    craftsman = marts.craftsman_report(orders({}))
    assert customer.schema == marts.MART_SCHEMAS["customer_report_datamart"]
    assert craftsman.schema == marts.MART_SCHEMAS["craftsman_report_datamart"]
    assert customer.schema["customer_money"] == pl.Decimal(15, 2)
    assert customer.schema["avg_price_order"] == pl.Decimal(10, 2)
    assert customer.schema["median_time_order_completed"] == pl.Decimal(10, 1)
    assert craftsman.schema["avg_age_customer"] == pl.Decimal(5, 1)
    assert customer.schema["top_craftsman_id"] == pl.Int64


def test_no_orders_give_an_empty_mart_with_the_mart_schema() -> None:
    """An empty input is no error: zero rows, same columns and dtypes."""
    empty = orders().clear()
    assert marts.customer_report(empty).schema == marts.MART_SCHEMAS["customer_report_datamart"]
    assert marts.craftsman_report(empty).height == 0


def test_a_lazy_frame_is_accepted() -> None:
    """The functions take a LazyFrame as well as a DataFrame and give the same rows."""
    frame = orders({}, {"customer_id": 2})
    assert_frame_equal(marts.customer_report(frame.lazy()), marts.customer_report(frame))


def test_entity_attributes_are_the_current_dimension_values() -> None:
    """Name, address, birthday and email come through unchanged for each mart."""
    customer = customer_row({})
    assert (customer["customer_name"], customer["customer_address"],
            customer["customer_birthday"], customer["customer_email"]) == (
        "Bob Buyer", "2 Market Rd", dt.date(1990, 5, 6), "bob@buyer.example")
    craftsman = craftsman_row({})
    assert (craftsman["craftsman_name"], craftsman["craftsman_address"],
            craftsman["craftsman_birthday"], craftsman["craftsman_email"]) == (
        "Ann Potter", "1 Clay St", dt.date(1980, 1, 2), "ann@craft.example")


# --- grouping -------------------------------------------------------------------------


def test_orders_are_grouped_by_entity_and_month_of_creation() -> None:
    """Each (customer, month) is one row, sorted by customer then report_period."""
    mart = marts.customer_report(orders(
        {"customer_id": 2, "order_created_date": dt.date(2024, 1, 31)},
        {"customer_id": 1, "order_created_date": dt.date(2024, 2, 1)},
        {"customer_id": 1, "order_created_date": dt.date(2024, 1, 31)},
        {"customer_id": 1, "order_created_date": dt.date(2024, 1, 1)},
        {"customer_id": 1, "order_created_date": dt.date(2023, 12, 31)},
    ))
    assert mart.select("customer_id", "report_period", "count_order").rows() == [
        (1, "2023-12", 1), (1, "2024-01", 2), (1, "2024-02", 1), (2, "2024-01", 1),
    ]


def test_craftsman_mart_groups_by_craftsman() -> None:
    """Two customers' orders of one craftsman in a month make one craftsman row."""
    mart = marts.craftsman_report(orders({"customer_id": 1}, {"customer_id": 2},
                                         {"craftsman_id": 11}))
    assert mart.select("craftsman_id", "count_order").rows() == [(10, 2), (11, 1)]


def test_year_one_period_is_zero_padded() -> None:
    """An order on 0001-01-01 belongs to '0001-01', as to_char(date, 'YYYY-MM') writes it."""
    row = customer_row({"order_created_date": dt.date(1, 1, 1), "customer_birthday": None})
    assert row["report_period"] == "0001-01"


def test_one_bc_shares_the_period_of_ad_one() -> None:
    """to_char shows 1 BC as '0001', so its January orders join AD 1's January row."""
    ad_1 = (dt.date(1, 1, 1) - dt.date(1970, 1, 1)).days
    created = pl.Series([ad_1 - 366 + 5, ad_1 + 5]).cast(pl.Date)  # 0000-01-06, 0001-01-06
    frame = orders({}, {}).with_columns(order_created_date=created)
    assert marts.customer_report(frame).select("report_period", "count_order").rows() == [
        ("0001-01", 2)
    ]


# --- money ----------------------------------------------------------------------------


def test_customer_money_is_the_sum_and_platform_money_a_tenth() -> None:
    """Prices 1 and 2: the customer paid 3.00, the platform keeps 0.30."""
    row = customer_row({"product_price": 1}, {"product_price": 2})
    assert row["customer_money"] == Decimal("3.00")
    assert row["platform_money"] == Decimal("0.30")


def test_craftsman_money_is_the_sum_minus_platform_money() -> None:
    """Prices 1 and 2: the craftsman earns 2.70 and the platform 0.30."""
    row = craftsman_row({"product_price": 1}, {"product_price": 2})
    assert row["craftsman_money"] == Decimal("2.70")
    assert row["platform_money"] == Decimal("0.30")


def _big_month(last_price: int) -> pl.DataFrame:
    """100,000 orders of 99,999,999 and one of ``last_price``, in one month."""
    many = orders({"product_price": 99_999_999}).select(pl.all().repeat_by(100_000).explode())
    return pl.concat([many, orders({"product_price": last_price})])


def test_money_is_exact_up_to_the_column_limit() -> None:
    """A month summing to 9,999,999,999,999 (the most numeric(15,2) holds) stays exact."""
    row = customer_row_of(_big_month(99_999))
    assert row["customer_money"] == Decimal("9999999999999.00")
    assert row["platform_money"] == Decimal("999999999999.90")
    assert one_row(marts.craftsman_report(_big_month(99_999)))["craftsman_money"] == (
        Decimal("8999999999999.10"))


def test_money_one_unit_over_the_column_limit_is_an_error() -> None:
    """A month summing to 10**13 no longer fits customer_money numeric(15,2)."""
    with pytest.raises(CraftmartError, match=r"customer_money = 10000000000000\.00 "):
        marts.customer_report(_big_month(100_000))


def customer_row_of(frame: pl.DataFrame) -> dict[str, Any]:
    return one_row(marts.customer_report(frame))


@pytest.mark.parametrize(
    ("prices", "average"),
    [
        ([1, 2], "1.50"),
        ([3, 3, 4], "3.33"),
        ([2, 1, 1, 1, 1, 1, 1, 1], "1.13"),  # 9 / 8 = 1.125: half away from zero, not to even
        ([1, 1, 1, 1, 1, 2], "1.17"),  # 7 / 6 = 1.1666...
        ([7], "7.00"),
    ],
)
def test_avg_price_is_rounded_half_away_from_zero(prices: list[int], average: str) -> None:
    """avg_price_order = round(sum / count, 2) of the exact quotient."""
    row = customer_row(*({"product_price": p} for p in prices))
    assert row["avg_price_order"] == Decimal(average)


# --- median ---------------------------------------------------------------------------


def test_median_of_an_odd_number_of_completions_is_the_middle_value() -> None:
    """Completions after 10, 1 and 5 days: the median is 5.0."""
    assert customer_row_of(completed_after(10, 1, 5))["median_time_order_completed"] == (
        Decimal("5.0"))


def test_median_of_an_even_number_of_completions_is_the_mean_of_the_middle_two() -> None:
    """Completions after 1 and 2 days give 1.5; after 1, 4, 6 and 100 days give 5.0."""
    assert customer_row_of(completed_after(1, 2))["median_time_order_completed"] == (
        Decimal("1.5"))
    assert customer_row_of(completed_after(1, 4, 6, 100))["median_time_order_completed"] == (
        Decimal("5.0"))


def test_median_ignores_orders_without_a_completion_date() -> None:
    """Orders never completed do not count: completions [-, 3, -] give 3.0."""
    assert customer_row_of(completed_after(None, 3, None))["median_time_order_completed"] == (
        Decimal("3.0"))


def test_median_is_null_without_completed_orders() -> None:
    """No order of the month has a completion date: the median is null."""
    assert customer_row_of(completed_after(None, None))["median_time_order_completed"] is None


def test_same_day_completion_is_zero_days() -> None:
    """An order completed on its creation day took 0.0 days."""
    assert customer_row_of(completed_after(0))["median_time_order_completed"] == Decimal("0.0")


# --- favourites -----------------------------------------------------------------------


def test_top_product_category_is_the_most_frequent_type() -> None:
    """Two toys and one art order: toys."""
    row = customer_row({"product_type": "toys"}, {"product_type": "art"},
                       {"product_type": "toys"})
    assert row["top_product_category"] == "toys"


def test_top_product_category_tie_goes_to_the_smallest_in_byte_order() -> None:
    """One 'toys', one 'art', one 'B': all tied, and 'B' < 'art' < 'toys' under collate C."""
    row = craftsman_row({"product_type": "toys"}, {"product_type": "art"},
                        {"product_type": "B"})
    assert row["top_product_category"] == "B"


def test_null_product_types_are_not_counted() -> None:
    """Two orders of unknown type and one 'art': the top category is 'art'."""
    row = customer_row({"product_type": None}, {"product_type": None}, {"product_type": "art"})
    assert row["top_product_category"] == "art"


def test_top_product_category_is_null_when_every_type_is_null() -> None:
    """Only orders of unknown type: no top category."""
    assert customer_row({"product_type": None})["top_product_category"] is None


def test_top_craftsman_is_the_one_with_most_orders() -> None:
    """Craftsman 11 has two of the customer's three orders of the month."""
    row = customer_row(
        {"craftsman_id": 10, "craftsman_email": "a@x"},
        {"craftsman_id": 11, "craftsman_email": "z@x"},
        {"craftsman_id": 11, "craftsman_email": "z@x"},
    )
    assert row["top_craftsman_id"] == 11


def test_top_craftsman_tie_goes_to_the_smallest_email_in_byte_order() -> None:
    """Tied craftsmen 10 ('a@x') and 11 ('B@x'): 'B@x' < 'a@x' under collate C, so 11."""
    row = customer_row(
        {"craftsman_id": 10, "craftsman_email": "a@x"},
        {"craftsman_id": 11, "craftsman_email": "B@x"},
    )
    assert row["top_craftsman_id"] == 11


# --- status counts --------------------------------------------------------------------


def test_orders_are_counted_by_status() -> None:
    """One created, two in progress, none in delivery, three done: six, three not done."""
    statuses = ["created", "in progress", "in progress", "done", "done", "done"]
    row = customer_row(*({"order_status": s} for s in statuses))
    assert {k: v for k, v in row.items() if k.startswith("count_order")} == {
        "count_order": 6,
        "count_order_created": 1,
        "count_order_in_progress": 2,
        "count_order_delivery": 0,
        "count_order_done": 3,
        "count_order_not_done": 3,
    }


# --- customer age ---------------------------------------------------------------------


def age_on(created: dt.date, birthday: dt.date | None) -> Decimal | None:
    row = craftsman_row({"order_created_date": created, "customer_birthday": birthday})
    value = row["avg_age_customer"]
    assert value is None or isinstance(value, Decimal)
    return value


@pytest.mark.parametrize(
    ("created", "birthday", "age"),
    [
        (dt.date(2024, 5, 6), dt.date(1990, 5, 6), "34.0"),  # birthday itself
        (dt.date(2024, 5, 5), dt.date(1990, 5, 6), "33.0"),  # the day before
        (dt.date(2024, 2, 28), dt.date(2000, 2, 29), "23.0"),  # a leap-day birthday ...
        (dt.date(2024, 2, 29), dt.date(2000, 2, 29), "24.0"),
        (dt.date(2023, 3, 1), dt.date(2000, 2, 29), "23.0"),  # ... counts from 1 March
        (dt.date(2023, 2, 28), dt.date(2000, 2, 29), "22.0"),
        (dt.date(2024, 3, 5), dt.date(2024, 3, 5), "0.0"),
    ],
)
def test_customer_age_is_whole_years_on_the_order_date(
    created: dt.date, birthday: dt.date, age: str
) -> None:
    """date_part('year', age(created, birthday)): whole years, field by field."""
    assert age_on(created, birthday) == Decimal(age)


@pytest.mark.parametrize(
    ("created", "birthday", "age"),
    [
        (dt.date(2024, 3, 5), dt.date(2024, 12, 31), "0.0"),  # less than a year ahead
        (dt.date(2024, 3, 5), dt.date(2025, 3, 5), "-1.0"),
        (dt.date(2024, 3, 5), dt.date(2025, 3, 6), "-1.0"),
        (dt.date(2024, 3, 6), dt.date(2026, 3, 5), "-1.0"),  # a day short of two years
        (dt.date(2000, 2, 29), dt.date(2024, 2, 28), "-23.0"),
    ],
)
def test_a_birthday_after_the_order_gives_minus_the_age_the_other_way_round(
    created: dt.date, birthday: dt.date, age: str
) -> None:
    """As PostgreSQL's age(): -(whole years from the order date to the birthday)."""
    assert age_on(created, birthday) == Decimal(age)


def test_customers_without_a_birthday_are_left_out_of_the_average_age() -> None:
    """A 33-year-old's order and an order of a customer without birthday: 33.0."""
    row = craftsman_row({"customer_id": 1}, {"customer_id": 2, "customer_birthday": None})
    assert row["avg_age_customer"] == Decimal("33.0")


def test_average_age_is_null_when_no_customer_has_a_birthday() -> None:
    """No birthdays at all: avg_age_customer is null."""
    assert craftsman_row({"customer_birthday": None})["avg_age_customer"] is None


@pytest.mark.parametrize(
    ("birth_years", "average"),
    [
        ([2004, 2003, 2003], "20.7"),  # ages 20, 21, 21
        ([2004, 2003], "20.5"),
        ([2025, 2026, 2026, 2026], "-1.8"),  # ages -1, -2, -2, -2: -1.75 away from zero
        ([2025] * 19 + [2026], "-1.1"),  # -1.05 -> -1.1
        ([1974] * 19 + [1973], "50.1"),  # 50.05 -> 50.1
    ],
)
def test_average_age_is_rounded_half_away_from_zero(
    birth_years: list[int], average: str
) -> None:
    """The mean of whole-year ages per order, rounded to one place like numeric round()."""
    row = craftsman_row(*(
        # born on the order's day and month: the age is 2024 - year, either sign
        {"customer_id": i, "customer_birthday": dt.date(year, 3, 5),
         "order_created_date": dt.date(2024, 3, 5)}
        for i, year in enumerate(birth_years)
    ))
    assert row["avg_age_customer"] == Decimal(average)


def test_every_order_counts_once_in_the_average_age() -> None:
    """Two orders of a 30-year-old and one of a 60-year-old: 40.0, not 45.0."""
    row = craftsman_row(
        {"customer_id": 1, "customer_birthday": dt.date(1994, 1, 1)},
        {"customer_id": 1, "customer_birthday": dt.date(1994, 1, 1)},
        {"customer_id": 2, "customer_birthday": dt.date(1964, 1, 1)},
    )
    assert row["avg_age_customer"] == Decimal("40.0")


# --- range checks ---------------------------------------------------------------------


def test_money_too_large_for_its_column_is_an_error_naming_the_row() -> None:
    """A month's sum of 10**13 does not fit numeric(15,2): mart, column, entity, period."""
    frame = orders({"customer_id": 7, "product_price": 10**13})
    with pytest.raises(CraftmartError) as error:
        marts.customer_report(frame)
    message = str(error.value)
    assert "customer_report_datamart" in message
    assert "customer_money" in message
    assert "customer_id 7" in message
    assert "2024-03" in message
    assert "\n" not in message


def test_an_average_price_too_large_is_an_error() -> None:
    """One order of 10**8 fits the money columns but not avg_price_order numeric(10,2)."""
    with pytest.raises(CraftmartError, match=r"craftsman_report_datamart\.avg_price_order"):
        marts.craftsman_report(orders({"craftsman_id": 3, "product_price": 10**8}))


def test_the_largest_values_that_fit_are_no_error() -> None:
    """An average price of 99,999,999.00 still fits numeric(10,2)."""
    row = customer_row({"product_price": 99_999_999})
    assert row["avg_price_order"] == Decimal("99999999.00")


@pytest.mark.parametrize(
    ("created", "birthday", "age"),
    [
        (LAST_DATE, FIRST_DATE, "1099.0"),  # the oldest customer rule 7 lets through
        (FIRST_DATE, LAST_DATE, "-1099.0"),  # born 1,099 years after the order
        (dt.date(2999, 3, 5), dt.date(2000, 1, 1), "999.0"),
    ],
)
def test_the_extreme_ages_of_valid_rows_fit_avg_age_customer(
    created: dt.date, birthday: dt.date, age: str
) -> None:
    """Dates from 1900 to 2999 make ages of up to ±1,099 years: numeric(5,1) holds them."""
    assert age_on(created, birthday) == Decimal(age)


def test_a_million_orders_at_the_maximum_price_less_one_fit_one_month() -> None:
    """999,999 orders at 10,000,000 in one customer's month: 9,999,990,000,000.00, the
    largest sum of whole orders numeric(15,2) holds (a million would be 10**13)."""
    frame = orders({"product_price": MAX_PRICE}).select(
        pl.all().repeat_by(999_999).explode()
    )
    row = customer_row_of(frame)
    assert row["customer_money"] == Decimal("9999990000000.00")
    assert row["avg_price_order"] == Decimal("10000000.00")
    assert row["count_order"] == 999_999


# --- properties -----------------------------------------------------------------------

ORDER_ROWS = st.lists(
    st.fixed_dictionaries({
        "customer_id": st.integers(1, 4),
        "craftsman_id": st.integers(1, 3),
        "order_created_date": st.dates(dt.date(2023, 11, 1), dt.date(2024, 2, 29)),
        "order_completion_date": st.none() | st.just(dt.date(2024, 3, 1)),
        "order_status": st.sampled_from(["created", "in progress", "delivery", "done"]),
        "product_price": st.integers(1, 10**6),
        "product_type": st.none() | st.sampled_from(["a", "B", "c"]),
        "customer_birthday": st.none() | st.dates(dt.date(1950, 1, 1), dt.date(2030, 1, 1)),
    }),
    min_size=1,
    max_size=30,
)


@settings(max_examples=50, deadline=None)
@given(rows=ORDER_ROWS, chosen=st.sets(st.integers(1, 4)))
def test_a_subset_of_customers_gets_exactly_their_rows_of_the_full_mart(
    rows: list[dict[str, Any]], chosen: set[int]
) -> None:
    """Refreshing some customers computes the same rows as the full mart has for them."""
    frame = orders(*({**r, "craftsman_email": f"m{r['craftsman_id']}@x"} for r in rows))
    full = marts.customer_report(frame)
    part = marts.customer_report(frame.filter(pl.col("customer_id").is_in(chosen)))
    assert_frame_equal(part, full.filter(pl.col("customer_id").is_in(chosen)))


@settings(max_examples=50, deadline=None)
@given(rows=ORDER_ROWS)
def test_every_order_is_counted_once_in_each_mart(rows: list[dict[str, Any]]) -> None:
    """Counts and money over all rows add up to the orders given, in both marts."""
    frame = orders(*({**r, "craftsman_email": f"m{r['craftsman_id']}@x"} for r in rows))
    total = sum(r["product_price"] for r in rows)
    customer = marts.customer_report(frame)
    craftsman = marts.craftsman_report(frame)
    assert customer["count_order"].sum() == craftsman["count_order"].sum() == len(rows)
    assert sum(customer["customer_money"].to_list()) == total
    assert sum(craftsman["craftsman_money"].to_list()) + sum(
        craftsman["platform_money"].to_list()) == total


#: Dates at and next to the edges of rule 7, and one in the middle.
EDGE_DATES = st.sampled_from([
    FIRST_DATE, dt.date(1900, 1, 31), dt.date(1900, 2, 28), dt.date(2000, 2, 29),
    dt.date(2999, 12, 1), dt.date(2999, 12, 30), LAST_DATE,
]) | st.dates(FIRST_DATE, LAST_DATE)

EXTREME_VALID_ORDERS = st.lists(
    st.fixed_dictionaries({
        "customer_id": st.integers(1, 2),
        "craftsman_id": st.integers(1, 2),
        "order_created_date": EDGE_DATES,
        "order_completion_date": st.none() | st.just(LAST_DATE),
        "order_status": st.sampled_from(["created", "in progress", "delivery", "done"]),
        "product_price": st.sampled_from([1, MAX_PRICE - 1, MAX_PRICE]) | st.integers(1, MAX_PRICE),
        "customer_birthday": st.none() | EDGE_DATES,
        # how many copies of the order: many orders in one month
        "copies": st.sampled_from([1, 2, 1_000, 50_000]),
    }),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(rows=EXTREME_VALID_ORDERS)
def test_no_valid_row_overflows_a_mart_column(rows: list[dict[str, Any]]) -> None:
    """Orders that rule 7 admits, at its extremes (first and last dates, the maximum
    price, tens of thousands of orders in one month), always fit every mart column:
    both reports compute, with exact money and every order counted once."""
    frame = orders(*(
        {k: v for k, v in r.items() if k != "copies"}
        | {"craftsman_email": f"m{r['craftsman_id']}@x"}
        for r in rows
    ))
    copies = pl.Series([r["copies"] for r in rows])
    frame = frame.select(pl.all().repeat_by(copies).explode())
    total = sum(r["product_price"] * r["copies"] for r in rows)
    customer = marts.customer_report(frame)
    craftsman = marts.craftsman_report(frame)
    assert customer["count_order"].sum() == craftsman["count_order"].sum() == frame.height
    assert sum(customer["customer_money"].to_list()) == total
    assert sum(craftsman["craftsman_money"].to_list()) + sum(
        craftsman["platform_money"].to_list()) == total
    ages = craftsman["avg_age_customer"].drop_nulls()
    assert ages.is_empty() or ages.abs().max() <= Decimal("1099.0")
