"""The DWH load on a real PostgreSQL: identity, validity, quarantine, diffs and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import (
    ORDER_TABLES,
    add_order,
    citus_nodes,
    create_sources,
    mart,
    query,
    rows_per_source,
    run,
    sql,
)
from test_incremental import _duplicate
from test_reliability import generate_orders

from craftmart_batch import citus, schema
from craftmart_batch._database import Database, connection
from craftmart_batch.load import dwh

D = dt.date

#: Every table a run may write rows of, with its row id.
WRITTEN_TABLES = {
    "dwh.d_craftsman": "craftsman_id",
    "dwh.d_customer": "customer_id",
    "dwh.d_product": "product_id",
    "dwh.f_order": "order_id",
    "marts.customer_report_datamart": "id",
    "marts.craftsman_report_datamart": "id",
    "craftmart.quarantine": "quarantine_id",
}


# --- helpers ------------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``craftmart-batch ARGS`` in a fresh process, from ``cwd`` (so no stray config.toml)."""
    return subprocess.run(
        [sys.executable, "-m", "craftmart_batch.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def row_versions(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every written row's id, ``xmin`` (changes whenever the row is written) and load_dttm."""
    versions = {}
    for table, key in WRITTEN_TABLES.items():
        load_dttm = "load_dttm::text" if table.startswith("dwh.") else "null::text"
        versions[table] = query(
            db,
            f"select {key} as id, xmin::text as xmin, {load_dttm} as load_dttm"
            f" from {table} order by {key}",
        ).rows()
    return versions


def customers(db: Database) -> dict[str, dict[str, Any]]:
    """d_customer by email."""
    frame = query(db, "select * from dwh.d_customer")
    return {row["customer_email"]: row for row in frame.iter_rows(named=True)}


def quarantined(db: Database) -> dict[tuple[str, int], tuple[list[str], dict[str, Any]]]:
    """craftmart.quarantine by (source, key): reasons and raw values."""
    frame = query(
        db, "select source_name, source_order_id, reasons, raw::text as raw"
        " from craftmart.quarantine",
    )
    return {
        (row["source_name"], row["source_order_id"]): (row["reasons"], json.loads(row["raw"]))
        for row in frame.iter_rows(named=True)
    }


def f_order_keys(db: Database, source: str) -> list[int]:
    return query(
        db,
        "select source_order_id from dwh.f_order where source_name = $1"
        " order by source_order_id",
        (source,),
    )["source_order_id"].to_list()


def restart_order_key(db: Database, table: str, value: int) -> None:
    """Make the next order inserted into ``table`` get order key ``value``."""
    sql(db, f"alter table {table} alter column order_id restart with {int(value)}")


# --- identity (SPEC §2) -------------------------------------------------------------------


def test_one_customer_in_three_sources_is_one_row_with_the_latest_attributes(db: Database) -> None:
    """The same email in any case and padding in three sources is one d_customer row,
    stored normalised, whose attributes come from the latest order."""
    create_sources(db)
    add_order(db, "source1", customer_email="  Bob@Buyer.Example ", customer_name="Bob One",
              customer_address="1 Old St", order_created_date=D(2024, 1, 5))
    add_order(db, "source2", customer_email="BOB@BUYER.EXAMPLE", customer_name="Robert Two",
              customer_address="2 New St", customer_birthday=D(1991, 7, 8),
              order_created_date=D(2024, 3, 1))
    add_order(db, "source3", customer_email="bob@buyer.example   ", customer_name="Bobby Three",
              customer_address="3 Mid St", order_created_date=D(2024, 2, 1))

    run(db)

    rows = query(db, "select * from dwh.d_customer")
    assert rows.height == 1
    bob = rows.row(0, named=True)
    assert bob["customer_email"] == "bob@buyer.example"
    assert (bob["customer_name"], bob["customer_address"], bob["customer_birthday"]) == (
        "Robert Two", "2 New St", D(1991, 7, 8)
    )
    orders = query(db, "select source_name, customer_id from dwh.f_order order by source_name")
    assert orders.rows() == [(s, bob["customer_id"]) for s in ("source1", "source2", "source3")]
    report = mart(db, "customer_report_datamart")
    assert report["report_period"].to_list() == ["2024-01", "2024-02", "2024-03"]
    assert set(report["customer_id"]) == {bob["customer_id"]}
    assert set(report["customer_name"]) == {"Robert Two"}


def test_a_tie_on_created_date_goes_to_the_later_source(db: Database) -> None:
    """Two sources with orders of the same date disagree: the later source's values win,
    even when the earlier source's order key is larger; each order keeps its own price."""
    create_sources(db)
    restart_order_key(db, "source1.craft_market_wide", 100)
    add_order(db, "source1", customer_name="From Source1", customer_address="1 One St",
              craftsman_name="Ann From Source1", product_type="glass", product_price=200)
    add_order(db, "source3", customer_name="From Source3", customer_address="3 Three St",
              craftsman_name="Ann From Source3", product_type="ceramics", product_price=150)

    run(db)

    assert query(db, "select customer_name, customer_address from dwh.d_customer").rows() == [
        ("From Source3", "3 Three St")
    ]
    assert query(db, "select craftsman_name from dwh.d_craftsman").rows() == [
        ("Ann From Source3",)
    ]
    assert query(db, "select product_type, product_price from dwh.d_product").rows() == [
        ("ceramics", 150)
    ]
    assert query(
        db, "select source_name, source_order_id, product_price from dwh.f_order"
        " order by source_name",
    ).rows() == [("source1", 100, 200), ("source3", 1, 150)]


def test_a_tie_within_one_source_goes_to_the_larger_order_key(db: Database) -> None:
    """Two orders of one source on the same date disagree: the larger order key wins,
    whichever row was inserted first."""
    create_sources(db)
    table = "source1.craft_market_wide"
    restart_order_key(db, table, 50)
    add_order(db, "source1", customer_name="Key Fifty", product_type="glass")
    restart_order_key(db, table, 10)
    add_order(db, "source1", customer_name="Key Ten", product_type="ceramics")

    run(db)

    assert f_order_keys(db, "source1") == [10, 50]
    assert query(db, "select customer_name from dwh.d_customer").rows() == [("Key Fifty",)]
    assert query(db, "select product_type from dwh.d_product").rows() == [("glass",)]


def test_customers_without_name_or_birthday_load_with_nulls(db: Database) -> None:
    """NULL customer name, address and birthday are valid: the rows load with nulls,
    a second run sees them unchanged, and the craftsman's average customer age is null."""
    create_sources(db)
    add_order(db, "source1", customer_email="anon@buyer.example", customer_name=None,
              customer_address=None, customer_birthday=None)
    add_order(db, "external_source", customer_email="ghost@buyer.example", customer_name=None,
              customer_birthday=None)

    first = run(db)
    second = run(db)

    assert first.sources["source1"] == {"read": 1, "loaded": 1, "quarantined": 0}
    assert first.sources["external_source"] == {"read": 1, "loaded": 1, "quarantined": 0}
    people = customers(db)
    assert {e: (p["customer_name"], p["customer_birthday"]) for e, p in people.items()} == {
        "anon@buyer.example": (None, None),
        "ghost@buyer.example": (None, None),
    }
    assert people["anon@buyer.example"]["customer_address"] is None
    assert second.dwh["d_customer"] == {"inserted": 0, "updated": 0, "deleted": 0}
    craftsman_report = mart(db, "craftsman_report_datamart")
    assert craftsman_report["count_order"].to_list() == [2]
    assert craftsman_report["avg_age_customer"].to_list() == [None]


# --- validity and quarantine (SPEC §3) ----------------------------------------------------


def test_a_source2_order_whose_product_is_missing_is_quarantined(db: Database) -> None:
    """A source2 order pointing to no product is quarantined as missing_reference, with
    the missing product's fields null, and rows read = loaded + quarantined."""
    create_sources(db)
    good = add_order(db, "source2")
    orphan = add_order(db, "source2", _missing_product=True, customer_email="orphan@x.example")

    report = run(db)

    assert f_order_keys(db, "source2") == [good]
    reasons, raw = quarantined(db)[("source2", orphan)]
    assert "missing_reference" in reasons
    assert raw["product_name"] is None and raw["product_price"] is None
    assert raw["customer_email"] == "orphan@x.example"
    assert "orphan@x.example" not in customers(db)
    assert report.sources["source2"] == {"read": 2, "loaded": 1, "quarantined": 1}
    assert rows_per_source(db)["source2"] == {"read": 2, "loaded": 1, "quarantined": 1}


def test_every_validity_rule_quarantines_with_its_reasons_and_raw_values(db: Database) -> None:
    """Each rule, broken through a real source, lands in craftmart.quarantine with every
    rule the row broke and its raw values; valid rows load with a normalised status;
    per source, rows read = rows in f_order + rows in quarantine."""
    create_sources(db)
    valid = {
        "source1": add_order(db, "source1", order_status="  DONE ",
                             order_completion_date=D(2024, 1, 9)),
        "source2": add_order(db, "source2", order_status="In Progress"),
        "source3": add_order(db, "source3", order_status="delivery"),
        "external_source": add_order(db, "external_source",
                                     order_completion_date=D(2024, 1, 5)),
    }
    expected = {
        ("source1", add_order(db, "source1", order_created_date=None,
                             order_completion_date=D(2024, 1, 1))):
            (["created_date_missing"], "order_created_date", None),
        ("source2", add_order(db, "source2", order_status="shipped")):
            (["status_unknown"], "order_status", "shipped"),
        ("source3", add_order(db, "source3", order_created_date=D(2024, 1, 5),
                             order_completion_date=D(2024, 1, 4))):
            (["completion_before_created"], "order_completion_date", "2024-01-04"),
        ("external_source", add_order(db, "external_source", product_price=0)):
            (["price_not_positive"], "product_price", 0),
        ("source1", add_order(db, "source1", customer_email="bob.buyer.example")):
            (["customer_email_invalid"], "customer_email", "bob.buyer.example"),
        ("source2", add_order(db, "source2", craftsman_email="ann@craft@example")):
            (["craftsman_email_invalid"], "craftsman_email", "ann@craft@example"),
        ("source3", add_order(db, "source3", customer_email=" bob buyer@x.example ")):
            (["customer_email_invalid"], "customer_email", " bob buyer@x.example "),
        ("external_source", add_order(db, "external_source", craftsman_email="")):
            (["craftsman_email_invalid"], "craftsman_email", ""),
        ("source1", add_order(db, "source1", order_status="lost", product_price=-5,
                             customer_email="nobody")):
            (["status_unknown", "price_not_positive", "customer_email_invalid"],
             "order_status", "lost"),
    }

    report = run(db)

    found = quarantined(db)
    assert set(found) == set(expected)
    for key, (reasons, field, raw_value) in expected.items():
        assert found[key][0] == reasons, key
        assert found[key][1][field] == raw_value, key
        assert found[key][1]["source_order_id"] == key[1]
    statuses = query(db, "select source_name, order_status from dwh.f_order order by 1").rows()
    assert statuses == [("external_source", "created"), ("source1", "done"),
                        ("source2", "in progress"), ("source3", "delivery")]
    assert {s: f_order_keys(db, s) for s in valid} == {s: [k] for s, k in valid.items()}
    counts = rows_per_source(db)
    assert counts == {
        "source1": {"read": 4, "loaded": 1, "quarantined": 3},
        "source2": {"read": 3, "loaded": 1, "quarantined": 2},
        "source3": {"read": 3, "loaded": 1, "quarantined": 2},
        "external_source": {"read": 3, "loaded": 1, "quarantined": 2},
    }
    assert report.sources == counts


def test_a_row_fixed_in_its_source_loads_and_leaves_quarantine(db: Database) -> None:
    """A quarantined row corrected in its source loads on the next run and leaves
    craftmart.quarantine; the marts then count it."""
    create_sources(db)
    key = add_order(db, "source1", order_status="shipped")
    run(db)
    assert list(quarantined(db)) == [("source1", key)]
    assert mart(db, "customer_report_datamart").is_empty()

    sql(db, "update source1.craft_market_wide set order_status = 'Done' where order_id = $1",
        (key,))
    report = run(db)

    assert quarantined(db) == {}
    assert report.quarantine == {"left": 1, "arrived": 0}
    assert query(db, "select source_order_id, order_status from dwh.f_order").rows() == [
        (key, "done")
    ]
    customer_report = mart(db, "customer_report_datamart")
    assert customer_report.select("count_order", "count_order_done").rows() == [(1, 1)]


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_a_row_repeated_verbatim_is_quarantined_once_per_copy(db: Database, full: bool) -> None:
    """Rows read = loaded + quarantined, however many identical copies of a row a source
    holds: one row of the order loads, and every other copy is a quarantine row of its
    own, on the run that meets them and on every run after (identical rows are matched
    as a multiset, not as a set)."""
    create_sources(db)
    key = add_order(db, "source1", order_status="in progress")
    run(db)
    _duplicate(db, key, "order_status", "in progress")  # verbatim
    run(db, full=full)
    assert query(db, "select count(*) from craftmart.quarantine").item() == 1
    _duplicate(db, key, "order_status", "in progress")  # a third copy, identical
    _duplicate(db, key, "order_status", "delivery")  # and a fourth that differs
    report = run(db, full=full)
    rows = query(db, "select reasons, raw::jsonb->>'order_status' as status"
                     " from craftmart.quarantine order by 2")
    # the loaded row is the first in content order: 'delivery' < 'in progress'
    assert query(db, "select order_status from dwh.f_order").item() == "delivery"
    assert rows.rows() == [(["duplicate_order_key"], "in progress")] * 3
    assert report.quarantine == {"left": 0, "arrived": 2}
    assert report.sources["source1"] == {"read": 4, "loaded": 1, "quarantined": 3}
    assert run(db).quarantine == {"left": 0, "arrived": 0}
    assert query(db, "select count(*) from craftmart.quarantine").item() == 3


def test_a_row_turning_invalid_leaves_f_order_and_the_marts(db: Database) -> None:
    """A loaded order whose source row becomes invalid leaves f_order, its only customer
    leaves d_customer, and both marts drop it."""
    create_sources(db)
    doomed = add_order(db, "source3", customer_email="doomed@x.example", product_price=300)
    add_order(db, "source1", customer_email="stays@x.example", product_price=100)
    run(db)
    assert mart(db, "craftsman_report_datamart")["count_order"].to_list() == [2]

    sql(db, "update source3.craft_market_orders set product_price = 0 where order_id = $1",
        (doomed,))
    run(db)

    assert f_order_keys(db, "source3") == []
    assert quarantined(db)[("source3", doomed)][0] == ["price_not_positive"]
    assert set(customers(db)) == {"stays@x.example"}
    assert mart(db, "customer_report_datamart")["customer_email"].to_list() == [
        "stays@x.example"
    ]
    craftsman_report = mart(db, "craftsman_report_datamart")
    assert craftsman_report.select("count_order", "craftsman_money", "platform_money").rows() == [
        (1, "90.00", "10.00")
    ]


# --- change tracking (SPEC §4) ------------------------------------------------------------


def test_a_deleted_order_leaves_f_order_and_returns_when_reinserted(db: Database) -> None:
    """An order deleted from its source leaves f_order (and its only customer leaves the
    DWH and the marts); re-inserted with the same key, it is back as before."""
    create_sources(db)
    gone = add_order(db, "source1", customer_email="gone@x.example",
                     order_created_date=D(2024, 1, 10))
    kept = add_order(db, "source1", customer_email="kept@x.example",
                     order_created_date=D(2024, 2, 10))
    run(db)
    before = mart(db, "customer_report_datamart").drop("customer_id").sort("customer_email")

    sql(db, "create table public.saved_order as"
        " select * from source1.craft_market_wide where order_id = $1", (gone,))
    sql(db, "delete from source1.craft_market_wide where order_id = $1", (gone,))
    report = run(db)

    assert report.dwh["f_order"]["deleted"] == 1
    assert f_order_keys(db, "source1") == [kept]
    assert set(customers(db)) == {"kept@x.example"}
    assert mart(db, "customer_report_datamart")["customer_email"].to_list() == ["kept@x.example"]

    sql(db, "insert into source1.craft_market_wide overriding system value"
        " select * from public.saved_order")
    run(db)

    assert f_order_keys(db, "source1") == [gone, kept]
    assert set(customers(db)) == {"gone@x.example", "kept@x.example"}
    after = mart(db, "customer_report_datamart").drop("customer_id").sort("customer_email")
    assert after.equals(before)


def test_an_order_moving_to_another_customer_points_at_the_new_one(db: Database) -> None:
    """A source row whose customer email changes makes its f_order row point at the new
    customer; the old customer leaves d_customer only when no other order is theirs."""
    create_sources(db)
    only = add_order(db, "source1", customer_email="only@x.example")
    shared = add_order(db, "source1", customer_email="shared@x.example")
    other = add_order(db, "source1", customer_email="shared@x.example",
                      order_created_date=D(2024, 2, 1))
    run(db)
    shared_id = customers(db)["shared@x.example"]["customer_id"]

    sql(db, "update source1.craft_market_wide set customer_email = ' New@X.example'"
        " where order_id = $1", (only,))
    sql(db, "update source1.craft_market_wide set customer_email = 'new@x.example'"
        " where order_id = $1", (shared,))
    run(db)

    people = customers(db)
    assert set(people) == {"new@x.example", "shared@x.example"}
    assert people["shared@x.example"]["customer_id"] == shared_id
    new_id = people["new@x.example"]["customer_id"]
    owners = query(db, "select source_order_id, customer_id from dwh.f_order order by 1").rows()
    assert owners == [(only, new_id), (shared, new_id), (other, shared_id)]
    customer_report = mart(db, "customer_report_datamart")
    assert customer_report.select("customer_email", "report_period", "count_order").rows() == [
        ("shared@x.example", "2024-02", 1),
        ("new@x.example", "2024-01", 2),
    ]


def test_a_rerun_without_source_changes_writes_no_row(db: Database) -> None:
    """A second run over unchanged sources rewrites no DWH, mart or quarantine row:
    every row keeps its xmin and load_dttm, and the report counts no change."""
    create_sources(db)
    add_order(db, "source1", customer_email=" Bob@Buyer.example", order_status=" Done ",
              order_completion_date=D(2024, 1, 8))
    add_order(db, "source2", customer_email="BOB@buyer.example", customer_name=None,
              order_created_date=D(2024, 2, 3))
    add_order(db, "source3", craftsman_email="cara@weave.example", product_name="Scarf",
              product_description="Wool", product_type="textiles")
    add_order(db, "external_source", customer_birthday=None, customer_email="eve@x.example")
    add_order(db, "source2", _missing_product=True)
    add_order(db, "source1", order_status="shipped")
    run(db)
    before = row_versions(db)
    assert all(before[t] for t in WRITTEN_TABLES)

    report = run(db)

    assert row_versions(db) == before
    assert all(counts == {"inserted": 0, "updated": 0, "deleted": 0}
               for counts in report.dwh.values())
    assert report.quarantine == {"left": 0, "arrived": 0}
    for refreshed in report.marts.values():
        assert (refreshed["rows_inserted"], refreshed["rows_updated"],
                refreshed["rows_deleted"]) == (0, 0, 0)


#: The tables whose indexes a bulk write drops and builds again after it.
BULK_TABLES = ("dwh.f_order", "craftmart.source_rows", "marts.customer_report_datamart",
               "marts.craftsman_report_datamart")


def indexes(db: Database) -> dict[str, tuple[str, str | None, bool, int]]:
    """Each index of ``BULK_TABLES`` by name: its definition, the constraint it backs,
    whether it is valid, and its oid (a new one once it is dropped and built again)."""
    frame = query(db, f"""
        select c.relname::text as name, pg_get_indexdef(i.indexrelid) as definition,
            (select pg_get_constraintdef(k.oid) from pg_constraint as k
             where k.conindid = i.indexrelid) as constraint_definition,
            i.indisvalid and i.indisready as valid, c.oid::bigint as oid
        from pg_index as i inner join pg_class as c on c.oid = i.indexrelid
        where i.indrelid in ({", ".join(f"'{t}'::regclass" for t in BULK_TABLES)})
    """)
    return {name: tuple(rest) for name, *rest in frame.iter_rows()}


def rebuilt(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> set[str]:
    """The indexes built again between ``before`` and ``after``: the same name and
    definition, valid, a new oid."""
    assert {n: d[:3] for n, d in after.items()} == {n: d[:3] for n, d in before.items()}
    assert all(valid for _, _, valid, _ in after.values())
    return {name for name in after if after[name][3] != before[name][3]}


def test_a_bulk_first_load_builds_every_index_after_its_writes_as_declared(
    make_db: Callable[[], Database], pg_server: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first load of many orders builds f_order's indexes, its primary and unique keys
    included (on Citus: the others only), after its inserts; every full pull builds the
    stored hashes' key after appending them, and every first build of a mart its keys
    after its appends. They come back as declared, valid, and the warehouse, hashes and
    marts are those of a load that writes index entries row by row."""
    bulk, plain = make_db(), make_db()
    on_citus = citus_nodes(pg_server) is not None
    for db in (bulk, plain):
        generate_orders(db, 400, seed=11)
        with connection(db) as conn:  # the warehouse as the run finds it
            schema.migrate(conn)
            if on_citus:
                citus.prepare_transaction(conn)
                citus.distribute(conn)
            conn.commit()
    declared_bulk, declared_plain = indexes(bulk), indexes(plain)
    assert {"f_order_pk", "f_order_source_uq", "f_order_customer_ix",
            "source_rows_pk"} <= set(declared_plain)

    monkeypatch.setattr(dwh, "BULK_LOAD_ROWS", 1)
    report = run(bulk)
    monkeypatch.setattr(dwh, "BULK_LOAD_ROWS", 10**9)
    run(plain)

    loaded = indexes(bulk)
    mart_keys = {f"{m}_report_datamart_{k}" for m in ("customer", "craftsman")
                 for k in ("pk", "uq")}
    kept_on_citus = {"f_order_pk", "f_order_source_uq", *mart_keys} if on_citus else set()
    assert rebuilt(declared_bulk, loaded) == set(loaded) - kept_on_citus
    assert rebuilt(declared_plain, indexes(plain)) == (
        {"source_rows_pk", *mart_keys} - kept_on_citus)

    def content(db: Database) -> tuple[pl.DataFrame, ...]:
        # by natural key: order_id follows the order the server inserts in, and a mart
        # row's id the order its rows are appended in
        return (query(db, "select * from dwh.f_order order by source_name, source_order_id")
                .drop("order_id", "load_dttm"),
                query(db, "select * from craftmart.source_rows"
                          " order by source_name, source_order_id"),
                *(query(db, f"select * from marts.{m} order by {e}, report_period").drop("id")
                  for m, e in (("customer_report_datamart", "customer_id"),
                               ("craftsman_report_datamart", "craftsman_id"))))

    orders, hashes, *marts = content(bulk)
    assert orders.height == report.dwh["f_order"]["inserted"] > 0 and hashes.height > 0
    assert all(m.height > 0 for m in marts)
    assert all(a.equals(b) for a, b in zip(content(plain), content(bulk), strict=True))

    # a --full run: the hashes' key is built again; f_order's indexes and those of the
    # marts, which it upserts, are left alone
    run(bulk, full=True)
    assert rebuilt(loaded, indexes(bulk)) == {"source_rows_pk"}
    assert content(bulk)[1].equals(hashes)


def test_surrogate_keys_stay_when_attributes_change(db: Database) -> None:
    """An address change keeps every surrogate key; only the changed customer's
    load_dttm advances, and its mart row shows the new address."""
    create_sources(db)
    key = add_order(db, "source2", customer_email="mover@x.example", customer_address="Old Rd")
    add_order(db, "source1", customer_email="stayer@x.example")
    run(db)
    before = row_versions(db)
    people_before = customers(db)

    sql(db, "update source2.craft_market_orders_customers set customer_address = 'New Rd'"
        " where order_id = $1", (key,))
    run(db)

    after = row_versions(db)
    people_after = customers(db)
    for table in ("dwh.d_craftsman", "dwh.d_product", "dwh.f_order"):
        assert after[table] == before[table], table
    assert [r[0] for r in after["dwh.d_customer"]] == [r[0] for r in before["dwh.d_customer"]]
    mover_before, mover_after = people_before["mover@x.example"], people_after["mover@x.example"]
    assert mover_after["customer_id"] == mover_before["customer_id"]
    assert mover_after["customer_address"] == "New Rd"
    assert mover_after["load_dttm"] > mover_before["load_dttm"]
    assert people_after["stayer@x.example"] == people_before["stayer@x.example"]
    customer_report = mart(db, "customer_report_datamart")
    assert customer_report.filter(customer_email="mover@x.example")[
        "customer_address"].to_list() == ["New Rd"]


# --- a source that cannot be read (SPEC §7) -----------------------------------------------


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ("drop table external_source.customers cascade", "external_source.customers"),
        ("alter table source3.craft_market_customers drop column customer_birthday",
         "source3.craft_market_customers.customer_birthday"),
        ("alter table source1.craft_market_wide alter column product_price type text",
         "source1.craft_market_wide.product_price"),
    ],
    ids=["missing-table", "dropped-column", "incompatible-type"],
)
def test_a_broken_source_stops_the_run_with_one_line_and_writes_nothing(
    db: Database, tmp_path: Path, breakage: str, named: str
) -> None:
    """A missing source table, a dropped column or a column of an incompatible type:
    `run` exits 2 with one stderr line naming it, and no row is written."""
    create_sources(db)
    for source in ORDER_TABLES:
        add_order(db, source)
    run(db)
    before = row_versions(db)
    runs_before = query(db, "select count(*) as n from craftmart.runs")["n"][0]
    sql(db, breakage)
    add_order(db, "source2")  # a change the refused run must not load

    result = cli("run", "--dsn", db.libpq_uri(), cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("craftmart-batch: error:")
    assert named in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert row_versions(db) == before
    assert query(db, "select count(*) as n from craftmart.runs")["n"][0] == runs_before


# --- a fifth source, registered in config.toml only (SPEC §1) ----------------------------

SOURCE4_DDL = """
create schema source4;
create table source4.shop_people (
    person_no  bigint primary key,
    full_name  text,
    home       text,
    born       date,
    mail       text not null
);
create table source4.shop_orders (
    sale_no     integer primary key,
    buyer_no    bigint not null references source4.shop_people (person_no),
    placed_on   date,
    finished_on timestamp,
    state       varchar(20) not null,
    maker       text not null,
    maker_home  text not null,
    maker_born  date not null,
    maker_mail  text not null,
    item        text not null,
    item_text   text not null,
    category    text not null,
    amount      integer not null
);
"""

SOURCE4_CONFIG = """
[sources.source4]
schema = "source4"
table = "shop_orders"
key = "sale_no"

[[sources.source4.join]]
name = "buyer"
table = "shop_people"
on = { buyer_no = "person_no" }

[sources.source4.columns]
order_created_date = "placed_on"
order_completion_date = "finished_on"
order_status = "state"
craftsman_name = "maker"
craftsman_address = "maker_home"
craftsman_birthday = "maker_born"
craftsman_email = "maker_mail"
product_name = "item"
product_description = "item_text"
product_type = "category"
product_price = "amount"
customer_name = "buyer.full_name"
customer_address = "buyer.home"
customer_birthday = "buyer.born"
customer_email = "buyer.mail"
"""


def create_source4(db: Database, config_dir: Path) -> Path:
    """A fifth source of its own shape, and the config.toml that registers it."""
    for statement in SOURCE4_DDL.split(";"):
        if statement.strip():
            sql(db, statement)
    config = config_dir / "config.toml"
    config.write_text(SOURCE4_CONFIG, encoding="utf-8")
    return config


def add_source4_sale(
    db: Database, sale_no: int, person_no: int, mail: str, name: str, placed_on: dt.date,
    state: str, amount: int, finished_on: dt.datetime | None = None,
) -> None:
    sql(db, "insert into source4.shop_people values ($1, $2, 'Shop Lane', $3, $4)"
        " on conflict do nothing", (person_no, name, D(1990, 5, 6), mail))
    sql(
        db,
        "insert into source4.shop_orders values ($1, $2, $3, $4, $5, 'Cara Weaver',"
        " '9 Loom St', $6, 'cara@weave.example', 'Scarf', 'Wool scarf', 'textiles', $7)",
        (sale_no, person_no, placed_on, finished_on, state, D(1985, 3, 4), amount),
    )


def test_a_fifth_source_registered_in_config_loads_into_dwh_and_marts(
    db: Database, tmp_path: Path
) -> None:
    """A source4 of its own shape, registered only in ./config.toml, loads through the
    CLI into f_order and both marts, its customer merged with source1's by email."""
    create_sources(db)
    create_source4(db, tmp_path)
    add_order(db, "source1", customer_email="bob@buyer.example", customer_name="Bob Buyer",
              order_created_date=D(2024, 3, 2), product_price=100)
    add_source4_sale(db, 7, 1, " BOB@Buyer.Example", "Robert Buyer", D(2024, 3, 10), "Done",
                     250, finished_on=dt.datetime(2024, 3, 12, 10, 30))
    add_source4_sale(db, 8, 2, "dee@shop.example", "Dee Shopper", D(2024, 4, 1), "delivery", 80)

    result = cli("run", "--dsn", db.libpq_uri(), "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sources"]["source4"] == {
        "read": 2, "loaded": 2, "quarantined": 0
    }
    assert query(
        db, "select source_order_id, order_status, product_price from dwh.f_order"
        " where source_name = 'source4' order by 1",
    ).rows() == [(7, "done", 250), (8, "delivery", 80)]
    people = customers(db)
    assert set(people) == {"bob@buyer.example", "dee@shop.example"}
    assert people["bob@buyer.example"]["customer_name"] == "Robert Buyer"
    customer_report = mart(db, "customer_report_datamart").filter(
        customer_email="bob@buyer.example"
    )
    assert customer_report.select(
        "report_period", "count_order", "customer_money", "platform_money",
        "median_time_order_completed", "top_product_category", "count_order_done",
    ).rows() == [("2024-03", 2, "350.00", "35.00", "2.0", "ceramics", 1)]
    craftsman_report = mart(db, "craftsman_report_datamart").filter(
        craftsman_email="cara@weave.example"
    )
    assert craftsman_report.select(
        "report_period", "count_order", "craftsman_money", "top_product_category"
    ).rows() == [("2024-03", 1, "225.00", "textiles"), ("2024-04", 1, "72.00", "textiles")]


def test_a_registered_source_quarantines_dates_out_of_range_of_any_column_type(
    db: Database, tmp_path: Path
) -> None:
    """Rule 7 holds for a source registered in config.toml too, whatever the column
    type: a `timestamp` completion of infinity, a `date` of 5874897-12-31 and a buyer
    born at -infinity are quarantined with their source text, and the run goes on."""
    create_sources(db)
    create_source4(db, tmp_path)
    add_source4_sale(db, 1, 1, "fine@shop.example", "Fine", D(2024, 3, 10), "done", 90)
    add_source4_sale(db, 2, 2, "ts@shop.example", "Ts", D(2024, 3, 10), "done", 90)
    add_source4_sale(db, 3, 3, "far@shop.example", "Far", D(2024, 3, 10), "done", 90)
    add_source4_sale(db, 4, 4, "born@shop.example", "Born", D(2024, 3, 10), "done", 90)
    sql(db, "update source4.shop_orders set finished_on = 'infinity' where sale_no = 2")
    sql(db, "update source4.shop_orders set placed_on = '5874897-12-31' where sale_no = 3")
    sql(db, "update source4.shop_people set born = '-infinity' where person_no = 4")

    result = cli("run", "--dsn", db.libpq_uri(), "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sources"]["source4"] == {
        "read": 4, "loaded": 1, "quarantined": 3
    }
    quarantined = query(
        db, "select source_order_id, reasons, out_of_range, raw ->> out_of_range[1] as text"
        " from craftmart.quarantine where source_name = 'source4' order by 1",
    ).rows()
    assert quarantined == [
        (2, ["date_out_of_range"], ["order_completion_date"], "infinity"),
        (3, ["date_out_of_range"], ["order_created_date"], "5874897-12-31"),
        (4, ["date_out_of_range"], ["customer_birthday"], "-infinity"),
    ]


def test_a_registered_source_ranks_after_the_default_sources_in_ties(
    db: Database, tmp_path: Path
) -> None:
    """On an attribute tie between source1 and a newly registered source4, source4 wins."""
    create_sources(db)
    config = create_source4(db, tmp_path)
    restart_order_key(db, "source1.craft_market_wide", 100)
    add_order(db, "external_source", customer_email="bob@buyer.example",
              customer_name="From External", order_created_date=D(2024, 3, 10))
    add_source4_sale(db, 1, 1, "bob@buyer.example", "From Source4", D(2024, 3, 10), "created", 90)

    run(db, config=config)

    assert customers(db)["bob@buyer.example"]["customer_name"] == "From Source4"


# --- the command line (SPEC §7) -----------------------------------------------------------


def test_an_unreachable_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """`run --dsn host=/nonexistent` exits 2 with exactly one stderr line, no traceback."""
    result = cli("run", "--dsn", "host=/nonexistent", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("craftmart-batch: error: cannot connect to /nonexistent")


@pytest.mark.parametrize(
    ("config_text", "named"),
    [
        ("[run\nwait_for_lock = true\n", "malformed TOML"),
        ("[run]\nwait_for_lok = true\n", "'wait_for_lok'"),
        ('[run]\nwait_for_lock = "yes"\n', "run.wait_for_lock must be a boolean"),
        ("[sources.source1]\nschema = 1\n", "sources.source1.schema must be a string"),
    ],
    ids=["bad-toml", "unknown-key", "wrong-type", "wrong-type-in-source"],
)
def test_a_malformed_config_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, config_text: str, named: str
) -> None:
    """A ./config.toml that is not TOML, has an unknown key or a value of the wrong type
    stops `run` with exit 2 and one stderr line naming the file and the key."""
    (tmp_path / "config.toml").write_text(config_text, encoding="utf-8")

    result = cli("run", "--dsn", "host=/nonexistent", cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "config.toml" in lines[0]
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_quarantine_command_lists_the_rows_of_a_source_and_rule(
    db: Database, tmp_path: Path
) -> None:
    """`quarantine --source source1 --rule status_unknown --json` lists exactly the
    source1 rows that broke status_unknown, with all their reasons and raw values."""
    create_sources(db)
    shipped = add_order(db, "source1", order_status="shipped")
    add_order(db, "source1")
    lost = add_order(db, "source1", order_status="Lost", product_price=0)
    add_order(db, "source1", order_created_date=None)
    add_order(db, "source2", order_status="shipped")
    run(db)

    result = cli("quarantine", "--dsn", db.libpq_uri(), "--source", "source1",
                 "--rule", "status_unknown", "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(r["source_name"], r["source_order_id"], r["reasons"]) for r in listed] == [
        ("source1", shipped, ["status_unknown"]),
        ("source1", lost, ["status_unknown", "price_not_positive"]),
    ]
    assert [r["raw"]["order_status"] for r in listed] == ["shipped", "Lost"]
    assert listed[1]["raw"]["product_price"] == 0
