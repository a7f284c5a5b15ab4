"""Identity (SPEC §2): one row per person, product and order; attributes from the latest row."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pytest
from helpers import DEFAULT_ORDER

from craftmart_batch.extract.queries import CANONICAL_SCHEMA
from craftmart_batch.transform.identity import Warehouse, build_warehouse
from craftmart_batch.transform.validate import validate

RANKS = {"source1": 1, "source2": 2, "source3": 3, "external_source": 4}

VALID_ROW: dict[str, Any] = {
    "source_name": "source1",
    "source_rank": 1,
    "source_order_id": 1,
    **DEFAULT_ORDER,
    "order_created_date": dt.date(2024, 3, 10),
    "missing_reference": None,
    "out_of_range": None,
}


def row(source: str = "source1", order_id: int = 1, **overrides: Any) -> dict[str, Any]:
    unknown = set(overrides) - set(CANONICAL_SCHEMA)
    assert not unknown, f"not canonical columns: {unknown}"
    return {
        **VALID_ROW,
        "source_name": source,
        "source_rank": RANKS[source],
        "source_order_id": order_id,
        **overrides,
    }


def warehouse(*rows: dict[str, Any]) -> Warehouse:
    """validate + build_warehouse, as a run does; every given row must be valid."""
    valid, quarantine = validate(pl.DataFrame(list(rows), schema=CANONICAL_SCHEMA))
    assert quarantine.is_empty(), quarantine["reasons"].to_list()
    return build_warehouse(valid)


def people(w: Warehouse, person: str) -> list[dict[str, Any]]:
    return (w.customers if person == "customer" else w.craftsmen).to_dicts()


# --- one person, many spellings ----------------------------------------------------------


def test_one_customer_in_three_sources_with_varied_spelling_is_one_row() -> None:
    """Case and padding of an email never make a second customer; the email is stored normalised."""
    w = warehouse(
        row("source1", 1, customer_email="Bob@Buyer.Example"),
        row("source2", 1, customer_email="  bob@buyer.example "),
        row("external_source", 9, customer_email="BOB@BUYER.EXAMPLE   "),
    )
    assert w.customers["customer_email"].to_list() == ["bob@buyer.example"]
    assert w.orders["customer_email"].to_list() == ["bob@buyer.example"] * 3


def test_one_craftsman_spelled_differently_is_one_row() -> None:
    """The same normalisation identifies craftsmen; their products follow the normalised email."""
    w = warehouse(
        row("source1", 1, craftsman_email=" ANN@craft.example"),
        row("source3", 2, craftsman_email="ann@Craft.Example  "),
    )
    assert w.craftsmen["craftsman_email"].to_list() == ["ann@craft.example"]
    assert w.products["craftsman_email"].to_list() == ["ann@craft.example"]
    assert w.orders["craftsman_email"].to_list() == ["ann@craft.example"] * 2


def test_different_emails_are_different_customers() -> None:
    """Two emails differing in more than case and padding are two customers."""
    w = warehouse(row(order_id=1), row(order_id=2, customer_email="bob2@buyer.example"))
    assert w.customers["customer_email"].to_list() == ["bob2@buyer.example", "bob@buyer.example"]


# --- attribute resolution ----------------------------------------------------------------


@pytest.mark.parametrize("person", ["customer", "craftsman"])
def test_latest_created_date_wins_over_later_source_and_larger_key(person: str) -> None:
    """The row with the latest order_created_date gives the attributes, whatever source and key."""
    newer = {
        f"{person}_name": "New Name",
        f"{person}_address": "New Addr",
        f"{person}_birthday": dt.date(2001, 1, 1),
    }
    older = {
        f"{person}_name": "Old Name",
        f"{person}_address": "Old Addr",
        f"{person}_birthday": dt.date(1901, 1, 1),
    }
    w = warehouse(
        row("source1", 1, order_created_date=dt.date(2024, 3, 11), **newer),
        row("external_source", 999, order_created_date=dt.date(2024, 3, 10), **older),
    )
    [resolved] = people(w, person)
    assert {k: resolved[k] for k in newer} == newer


@pytest.mark.parametrize("person", ["customer", "craftsman"])
def test_same_date_later_source_wins_over_larger_key(person: str) -> None:
    """On the same created date, the later source (by rank) gives the attributes."""
    w = warehouse(
        row("source3", 1, **{f"{person}_name": "From source3"}),
        row("source2", 500, **{f"{person}_name": "From source2"}),
        row("source1", 900, **{f"{person}_name": "From source1"}),
    )
    assert [p[f"{person}_name"] for p in people(w, person)] == ["From source3"]


def test_source_rank_not_source_name_decides() -> None:
    """A source registered later wins by rank even if its name sorts first."""
    w = warehouse(
        row("source2", 1, customer_name="From source2"),
        {**row("source1", 1, customer_name="From aaa"), "source_name": "aaa", "source_rank": 5},
    )
    assert w.customers["customer_name"].to_list() == ["From aaa"]


@pytest.mark.parametrize("person", ["customer", "craftsman"])
def test_same_date_and_source_larger_order_key_wins(person: str) -> None:
    """On the same date and source, the larger source order key gives the attributes."""
    w = warehouse(
        row("source2", 10, **{f"{person}_name": "Key 10"}),
        row("source2", 9, **{f"{person}_name": "Key 9"}),
        row("source2", 2, **{f"{person}_name": "Key 2"}),
    )
    assert [p[f"{person}_name"] for p in people(w, person)] == ["Key 10"]


@pytest.mark.parametrize("person", ["customer", "craftsman"])
def test_null_name_and_birthday_of_the_winner_are_taken(person: str) -> None:
    """Missing name and birthday are fine, and the winner's nulls override older values."""
    w = warehouse(
        row("source1", 1, order_created_date=dt.date(2024, 1, 1)),
        row(
            "source1",
            2,
            order_created_date=dt.date(2024, 2, 1),
            **{f"{person}_name": None, f"{person}_birthday": None, f"{person}_address": None},
        ),
    )
    [resolved] = people(w, person)
    assert resolved == {
        f"{person}_email": VALID_ROW[f"{person}_email"],
        f"{person}_name": None,
        f"{person}_address": None,
        f"{person}_birthday": None,
    }


def test_winner_values_are_taken_whole_not_mixed_per_column() -> None:
    """All attributes come from one row: an older row's non-null value does not fill a gap."""
    w = warehouse(
        row("source3", 1, order_created_date=dt.date(2024, 1, 1), customer_address="Old Addr"),
        row(
            "source1",
            2,
            order_created_date=dt.date(2024, 1, 2),
            customer_address=None,
            customer_name="N",
        ),
    )
    assert w.customers.select("customer_name", "customer_address").to_dicts() == [
        {"customer_name": "N", "customer_address": None}
    ]


def test_invalid_rows_do_not_take_part_in_resolution() -> None:
    """A newer but invalid row neither creates entities nor changes attributes."""
    rows = [
        row("source1", 1, order_created_date=dt.date(2024, 1, 1), customer_name="Valid"),
        row(
            "source1",
            2,
            order_created_date=dt.date(2024, 6, 1),
            customer_name="Invalid",
            craftsman_email="new@craft.example",
            product_price=0,
        ),
    ]
    valid, quarantine = validate(pl.DataFrame(rows, schema=CANONICAL_SCHEMA))
    w = build_warehouse(valid)
    assert quarantine.height == 1
    assert w.customers["customer_name"].to_list() == ["Valid"]
    assert w.craftsmen["craftsman_email"].to_list() == ["ann@craft.example"]
    assert w.orders["source_order_id"].to_list() == [1]


# --- products ------------------------------------------------------------------------


def test_products_are_keyed_by_craftsman_name_and_description() -> None:
    """Craftsman, name and description identify a product; the spelling of the email does not."""
    w = warehouse(
        row(order_id=1),
        row(order_id=2, craftsman_email="ANN@craft.example "),
        row(order_id=3, product_description="A red mug"),
        row(order_id=4, product_name="Bowl"),
        row(order_id=5, craftsman_email="cid@craft.example"),
    )
    assert w.products.select(
        "craftsman_email", "product_name", "product_description"
    ).to_dicts() == [
        {
            "craftsman_email": "ann@craft.example",
            "product_name": "Bowl",
            "product_description": "A blue mug",
        },
        {
            "craftsman_email": "ann@craft.example",
            "product_name": "Mug",
            "product_description": "A blue mug",
        },
        {
            "craftsman_email": "ann@craft.example",
            "product_name": "Mug",
            "product_description": "A red mug",
        },
        {
            "craftsman_email": "cid@craft.example",
            "product_name": "Mug",
            "product_description": "A blue mug",
        },
    ]


def test_product_type_and_price_come_from_the_latest_order() -> None:
    """A product's type and price are those of its latest order; each order keeps its own price."""
    w = warehouse(
        row(
            "source1",
            1,
            order_created_date=dt.date(2024, 1, 1),
            product_type="pottery",
            product_price=80,
        ),
        row(
            "source3",
            2,
            order_created_date=dt.date(2024, 2, 1),
            product_type="ceramics",
            product_price=120,
        ),
        row(
            "external_source",
            3,
            order_created_date=dt.date(2024, 1, 15),
            product_type="x",
            product_price=5,
        ),
    )
    assert w.products.select("product_type", "product_price").to_dicts() == [
        {"product_type": "ceramics", "product_price": 120}
    ]
    assert w.orders.sort("source_name", "source_order_id").select(
        "source_order_id", "product_price"
    ).to_dicts() == [
        {"source_order_id": 3, "product_price": 5},
        {"source_order_id": 1, "product_price": 80},
        {"source_order_id": 2, "product_price": 120},
    ]


def test_product_with_null_description_is_one_product() -> None:
    """Null descriptions are equal for identity: two orders of it make one product."""
    w = warehouse(
        row(order_id=1, product_description=None),
        row(order_id=2, product_description=None),
    )
    assert w.products.select("product_name", "product_description").to_dicts() == [
        {"product_name": "Mug", "product_description": None}
    ]


# --- orders --------------------------------------------------------------------------


def test_orders_are_one_per_source_and_key() -> None:
    """The same key in two sources is two orders; each keeps its own values, status normalised."""
    w = warehouse(
        row("source1", 7, order_status=" Done ", order_completion_date=dt.date(2024, 3, 12)),
        row("source2", 7, order_status="IN PROGRESS"),
        row("source2", 8),
    )
    assert w.orders.sort("source_name", "source_order_id").select(
        "source_name", "source_order_id", "order_status", "order_completion_date"
    ).to_dicts() == [
        {
            "source_name": "source1",
            "source_order_id": 7,
            "order_status": "done",
            "order_completion_date": dt.date(2024, 3, 12),
        },
        {
            "source_name": "source2",
            "source_order_id": 7,
            "order_status": "in progress",
            "order_completion_date": None,
        },
        {
            "source_name": "source2",
            "source_order_id": 8,
            "order_status": "created",
            "order_completion_date": None,
        },
    ]
    assert w.customers.height == 1 and w.craftsmen.height == 1 and w.products.height == 1


def test_empty_input_gives_an_empty_warehouse() -> None:
    """No valid rows: every table is empty, with its columns."""
    w = warehouse()
    assert [t.height for t in (w.craftsmen, w.customers, w.products, w.orders)] == [0, 0, 0, 0]
    assert w.customers.columns == [
        "customer_email",
        "customer_name",
        "customer_address",
        "customer_birthday",
    ]
