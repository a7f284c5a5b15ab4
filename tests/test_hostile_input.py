"""Hostile source data through the real sources: every row is either quarantined with the
rules it broke or loaded exactly as it was (normalised where the contract says so), rows
read = rows in f_order + rows in quarantine per source, and no run fails, except a
value too large for its mart column, which stops the run in one line naming it
(SPEC §3, docs/reliability.md). Source shape changes are refused before anything is
written, naming the object (SPEC §7; the basic ones are in ``test_dwh_load.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import (
    CRAFTSMAN,
    CUSTOMER,
    ORDER_TABLES,
    add_order,
    create_sources,
    mart,
    query,
    rows_per_source,
    run,
    sql,
    warehouse_state,
)
from oracle import expected_craftsman_mart, expected_customer_mart
from polars.testing import assert_frame_equal

from craftmart_batch._database import Database, connection
from craftmart_batch.errors import CraftmartError

D = dt.date

BIGINT_MAX = 2**63 - 1
BIGINT_MIN = -(2**63)


def _long_text(seed: int, length: int = 10_000) -> str:
    """``length`` characters that do not compress (so no index can hold them inline)."""
    alphabet = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                "äöüßéèêñçøåłžščřğışœæ€ЖЩЯжщяΣΩσωשלוםمرحبا中文字𠀀🧶")
    rng = random.Random(seed)
    return "".join(rng.choices(alphabet, k=length))


#: Text from every Unicode plane that PostgreSQL's UTF-8 can hold: right-to-left scripts
#: and an RLO override, combining marks, a ZWJ emoji sequence, CJK Extension B (plane 2),
#: plane 3, a tag character (plane 14), private use (planes 15 and 16), a BOM, controls.
UNICODE = ("שלום עולם مرحبا \u202eevil\u202c e\u0301 👩\u200d👩\u200d👧 🧶🪡 𠀀𠮷 \U00030000"
           " \U000e0041 \U000f0000 \U0010fffd \ufeff \x01\x7f tab\there")

#: Text that looks like SQL or JSON, with quotes, backslashes and a newline.
SQLISH = "Robert'); drop table dwh.f_order; -- \"quoted\" \\back\\slash {\"a\": \"\\u0000\"}\n2nd"


@dataclass
class Case:
    """One hostile source row: where it goes in and what must come out."""

    name: str
    source: str
    fields: dict[str, Any]
    #: the rules it breaks, in rule order; None: it loads
    reasons: list[str] | None = None
    #: field -> stored value where it differs from the value put in
    stored: dict[str, Any] = field(default_factory=dict)


def _cases() -> list[Case]:
    sources = ("source1", "source2", "source3", "external_source")
    cases = [
        # NULL in every nullable source column (SPEC §1 DDL)
        Case("nulls-source1", "source1", {"customer_name": None, "customer_address": None,
                                         "customer_birthday": None,
                                         "order_completion_date": None}),
        Case("nulls-source2", "source2", {"customer_name": None, "customer_birthday": None,
                                         "order_completion_date": None}),
        Case("nulls-source3", "source3", {"customer_name": None, "customer_address": None,
                                         "customer_birthday": None}),
        Case("nulls-external", "external_source", {"customer_name": None,
                                                   "customer_address": None,
                                                   "customer_birthday": None}),
        *(Case(f"created-null-{s}", s, {"order_created_date": None},
               ["created_date_missing"]) for s in sources),
        # empty strings: text may be empty, a status or an email may not
        Case("empty-texts", "source1", {"craftsman_name": "", "craftsman_address": "",
                                        "product_name": "", "product_description": "",
                                        "product_type": "", "customer_name": "",
                                        "customer_address": ""}),
        Case("empty-status", "source3", {"order_status": ""}, ["status_unknown"]),
        Case("empty-customer-email", "source2", {"customer_email": ""},
             ["customer_email_invalid"]),
        Case("empty-craftsman-email", "external_source", {"craftsman_email": ""},
             ["craftsman_email_invalid"]),
        # whitespace and '@' in emails
        Case("spaces-email", "source1", {"customer_email": "    "}, ["customer_email_invalid"]),
        Case("tab-email", "source3", {"craftsman_email": "\t"}, ["craftsman_email_invalid"]),
        Case("nbsp-padded-email", "source2", {"customer_email": "nb@sp.example\u00a0"},
             ["customer_email_invalid"]),
        Case("inner-space-email", "external_source", {"customer_email": "in ner@x.example"},
             ["customer_email_invalid"]),
        Case("two-at-email", "source1", {"customer_email": "a@b@c.example"},
             ["customer_email_invalid"]),
        Case("only-ats-email", "source2", {"craftsman_email": "@@"},
             ["craftsman_email_invalid"]),
        Case("no-local-part", "source3", {"customer_email": "@x.example"},
             ["customer_email_invalid"]),
        Case("no-domain", "external_source", {"craftsman_email": "k@"},
             ["craftsman_email_invalid"]),
        Case("padded-upper-email", "source1", {"customer_email": "  Pad.Case@Buyer.Example  "},
             stored={"customer_email": "pad.case@buyer.example"}),
        # 10,000-character values, in indexed identity columns too
        Case("long-names", "source1", {"customer_name": _long_text(1),
                                       "craftsman_name": _long_text(2),
                                       "customer_address": _long_text(3)}),
        Case("long-product", "source3", {"product_name": _long_text(4),
                                         "product_description": _long_text(5),
                                         "product_type": _long_text(6)}),
        Case("long-emails", "external_source",
             {"customer_email": _long_text(7).replace(" ", "") + "@long.example",
              "craftsman_email": "K" + _long_text(8) + "@Long.Example"}),
        # every Unicode plane, right-to-left text, emoji; SQL- and JSON-looking text
        Case("unicode-everywhere", "source2", {"craftsman_name": UNICODE,
                                               "craftsman_address": UNICODE[::-1],
                                               "product_name": UNICODE,
                                               "product_description": SQLISH,
                                               "product_type": "陶器 🏺",
                                               "customer_name": SQLISH,
                                               "customer_address": UNICODE}),
        Case("unicode-email", "source3", {"customer_email": "Ünïcödé.Ωμέγα@Exämple.Example",
                                          "craftsman_email": "שלום@דוגמה.example"},
             stored={"customer_email": "ünïcödé.ωμέγα@exämple.example"}),
        Case("sqlish-quarantined", "source1", {"order_status": "lost",
                                               "customer_name": SQLISH}, ["status_unknown"]),
        # dates at the ends of the calendar (without a customer birthday: an age of
        # thousands of years does not fit avg_age_customer, see the test further down)
        Case("year-1", "source1", {"order_created_date": D(1, 1, 1),
                                   "order_completion_date": D(1, 1, 31),
                                   "craftsman_birthday": D(1, 1, 1),
                                   "customer_birthday": None}),
        Case("year-9999", "source2", {"order_created_date": D(9999, 12, 31),
                                      "order_completion_date": D(9999, 12, 31),
                                      "craftsman_birthday": D(9999, 12, 31),
                                      "customer_birthday": None}),
        Case("year-1-to-9999", "source3", {"order_created_date": D(1, 1, 1),
                                           "order_completion_date": D(9999, 12, 31),
                                           "customer_birthday": None}),
        Case("placeholder-birthday", "external_source", {"customer_birthday": D(1900, 1, 1)}),
        Case("completion-before-creation", "source1",
             {"order_created_date": D(2024, 3, 2), "order_completion_date": D(2024, 3, 1)},
             ["completion_before_created"]),
        Case("completion-a-day-before-year-1", "source2",
             {"order_created_date": D(1, 1, 2), "order_completion_date": D(1, 1, 1)},
             ["completion_before_created"]),
        # prices
        Case("price-zero", "source1", {"product_price": 0}, ["price_not_positive"]),
        Case("price-negative", "source2", {"product_price": -1}, ["price_not_positive"]),
        Case("price-bigint-min", "source3", {"product_price": BIGINT_MIN},
             ["price_not_positive"]),
        Case("price-one", "external_source", {"product_price": 1}),
        Case("price-largest-that-fits", "source1", {"product_price": 99_999_999}),
        # statuses in other cases and with padding
        Case("status-upper", "source1", {"order_status": "DONE"}, stored={"order_status": "done"}),
        Case("status-padded", "source2", {"order_status": "  In Progress  "},
             stored={"order_status": "in progress"}),
        Case("status-mixed", "source3", {"order_status": "DeLiVeRy "},
             stored={"order_status": "delivery"}),
        Case("status-tab", "external_source", {"order_status": "\tdone"}, ["status_unknown"]),
        Case("status-newline", "source1", {"order_status": "done\n"}, ["status_unknown"]),
        Case("status-underscore", "source2", {"order_status": "in_progress"},
             ["status_unknown"]),
        Case("status-double-space", "source3", {"order_status": "in  progress"},
             ["status_unknown"]),
        # many rules at once, all listed
        Case("everything-wrong", "external_source",
             {"order_created_date": D(2024, 5, 5), "order_completion_date": D(2024, 5, 4),
              "order_status": "??", "product_price": -100, "customer_email": "x",
              "craftsman_email": "y"},
             ["status_unknown", "completion_before_created", "price_not_positive",
              "craftsman_email_invalid", "customer_email_invalid"]),
    ]
    for i, case in enumerate(cases):
        # everyone distinct, so each loaded row's attributes are its own
        case.fields.setdefault("customer_email", f"c{i}@buyer.example")
        case.fields.setdefault("craftsman_email", f"k{i}@craft.example")
    return cases


def _stored_value(name: str, value: Any) -> Any:
    if name.endswith("_email"):
        return value.strip(" ").lower()
    if name == "order_status":
        return value.strip(" ").lower()
    return value


_ORDER_AS_STORED = """
    select
        f.order_created_date, f.order_completion_date, f.order_status, f.product_price,
        cr.craftsman_name, cr.craftsman_address, cr.craftsman_birthday, cr.craftsman_email,
        p.product_name, p.product_description, p.product_type,
        cu.customer_name, cu.customer_address, cu.customer_birthday, cu.customer_email
    from dwh.f_order as f
    inner join dwh.d_craftsman as cr on cr.craftsman_id = f.craftsman_id
    inner join dwh.d_customer as cu on cu.customer_id = f.customer_id
    inner join dwh.d_product as p on p.product_id = f.product_id
    where f.source_name = $1 and f.source_order_id = $2
"""


def quarantine_of(db: Database) -> dict[tuple[str, int], tuple[list[str], dict[str, Any]]]:
    frame = query(db, "select source_name, source_order_id, reasons, raw::text as raw"
                      " from craftmart.quarantine")
    return {(r["source_name"], r["source_order_id"]): (r["reasons"], json.loads(r["raw"]))
            for r in frame.iter_rows(named=True)}


_NUMERIC = {
    "customer_money": pl.Decimal(15, 2), "craftsman_money": pl.Decimal(15, 2),
    "platform_money": pl.Decimal(15, 2), "avg_price_order": pl.Decimal(10, 2),
    "avg_age_customer": pl.Decimal(4, 1), "median_time_order_completed": pl.Decimal(10, 1),
}


def assert_marts_equal_oracle_and_full(db: Database) -> None:
    """Both marts equal the independent SQL oracle over the DWH and `run --full`."""
    with connection(db) as conn:
        oracle = {CUSTOMER: expected_customer_mart(conn), CRAFTSMAN: expected_craftsman_mart(conn)}
    actual = {name: mart(db, name) for name in oracle}
    for name, expected in oracle.items():
        as_decimals = actual[name].with_columns(
            pl.col(c).cast(t) for c, t in _NUMERIC.items() if c in actual[name].columns)
        entity = "customer_id" if name == CUSTOMER else "craftsman_id"
        assert_frame_equal(as_decimals, expected.sort(entity, "report_period"),
                           check_dtypes=False)
    run(db, full=True)
    for name, frame in actual.items():
        assert_frame_equal(mart(db, name), frame)


# --------------------------------------------------------------------------- the catalogue


def _insert_duplicates_and_dangling(db: Database) -> dict[str, tuple[str, int, list[str] | None]]:
    """Rows that cannot be made with ``add_order``: the same order key twice in one source
    (``overriding system value``), and references to rows that do not exist."""
    s1_columns = ("craftsman_name, craftsman_address, craftsman_birthday, craftsman_email,"
                  " product_name, product_description, product_type, product_price,"
                  " order_created_date, order_completion_date, order_status, customer_name,"
                  " customer_address, customer_birthday, customer_email")
    twin = add_order(db, "source1", customer_email="twin@buyer.example",
                     craftsman_email="twin@craft.example")
    sql(db, f"insert into source1.craft_market_wide (order_id, {s1_columns})"
            f" overriding system value select order_id, {s1_columns}"
            " from source1.craft_market_wide where order_id = $1", (twin,))
    bad_twin = add_order(db, "source1", customer_email="badtwin@buyer.example",
                         craftsman_email="badtwin@craft.example")
    lost_status = s1_columns.replace("order_status", "'lost'")
    sql(db, f"insert into source1.craft_market_wide (order_id, {s1_columns})"
            f" overriding system value select order_id, {lost_status}"
            " from source1.craft_market_wide where order_id = $1", (bad_twin,))
    ext_columns = ("craftsman_name, craftsman_address, craftsman_birthday, craftsman_email,"
                   " product_name, product_description, product_type, product_price,"
                   " order_created_date, order_completion_date, order_status, customer_id")
    ext_twin = add_order(db, "external_source", customer_email="exttwin@buyer.example",
                         craftsman_email="exttwin@craft.example")
    sql(db, f"insert into external_source.craft_products_orders (order_id, {ext_columns})"
            f" overriding system value select order_id, {ext_columns}"
            " from external_source.craft_products_orders where order_id = $1", (ext_twin,))

    no_product = add_order(db, "source2", _missing_product=True,
                           customer_email="noproduct@buyer.example")
    sql(db, "alter table source3.craft_market_orders"
            " drop constraint craft_market_orders_craftsmans_fk")
    no_craftsman = add_order(db, "source3", customer_email="nocraftsman@buyer.example",
                             craftsman_email="gone@craft.example")
    sql(db, "update source3.craft_market_orders set craftsman_id = -7 where order_id = $1",
        (no_craftsman,))
    sql(db, "alter table external_source.craft_products_orders"
            " drop constraint external_craft_products_orders_fk")
    no_customer = add_order(db, "external_source", customer_email="gone@buyer.example",
                            craftsman_email="nocustomer@craft.example")
    sql(db, "update external_source.craft_products_orders set customer_id = -9"
            " where order_id = $1", (no_customer,))
    return {
        "twin": ("source1", twin, ["duplicate_order_key"]),
        "bad-twin": ("source1", bad_twin, ["status_unknown", "duplicate_order_key"]),
        "external-twin": ("external_source", ext_twin, ["duplicate_order_key"]),
        "no-product": ("source2", no_product, None),
        "no-craftsman": ("source3", no_craftsman, None),
        "no-customer": ("external_source", no_customer, None),
    }


def test_a_catalogue_of_hostile_rows_is_quarantined_with_its_reasons_or_loaded_exactly(
    db: Database,
) -> None:
    """Each hostile row is quarantined with exactly the rules it broke and its raw values,
    or loaded with every value as it was in the source (emails and statuses normalised);
    a duplicated order key loads once; a dangling reference is missing_reference; rows
    read = loaded + quarantined per source; a second run writes nothing; the marts equal
    the SQL oracle and `run --full`."""
    create_sources(db)
    cases = _cases()
    keys = {case.name: add_order(db, case.source, **case.fields) for case in cases}
    special = _insert_duplicates_and_dangling(db)

    report = run(db)

    found = quarantine_of(db)
    for case in cases:
        key = (case.source, keys[case.name])
        if case.reasons is not None:
            assert key in found, case.name
            reasons, raw = found[key]
            assert reasons == case.reasons, case.name
            for name, value in case.fields.items():
                expected = value.isoformat() if isinstance(value, dt.date) else value
                assert raw[name] == expected, (case.name, name)
            continue
        assert key not in found, (case.name, found.get(key))
        stored = query(db, _ORDER_AS_STORED, key)
        assert stored.height == 1, case.name
        row = stored.row(0, named=True)
        for name, value in case.fields.items():
            expected = case.stored.get(name, _stored_value(name, value))
            assert row[name] == expected, (case.name, name, str(row[name])[:80])

    # the same order key twice: the first valid row loads, the other is quarantined
    for name, (source, key, reasons) in special.items():
        quarantined = [found[k][0] for k in found if k == (source, key)]
        loaded = query(db, "select count(*) from dwh.f_order where source_name = $1"
                           " and source_order_id = $2", (source, key)).item()
        if reasons is not None and "duplicate_order_key" in reasons:
            assert loaded == 1 and quarantined == [reasons], name
        else:  # a dangling reference: the joined row's fields read as null
            assert loaded == 0, name
            assert "missing_reference" in quarantined[0], name
    assert query(db, "select count(*) from dwh.d_customer where customer_email in"
                     " ('noproduct@buyer.example', 'nocraftsman@buyer.example')").item() == 0

    counts = rows_per_source(db)
    for source, count in counts.items():
        assert count["read"] == count["loaded"] + count["quarantined"], source
    assert report.sources == counts

    again = run(db)
    assert again.quarantine == {"left": 0, "arrived": 0}
    assert all(v == 0 for table in again.dwh.values() for v in table.values()), again.dwh
    assert [again.marts[m]["entities"] for m in (CUSTOMER, CRAFTSMAN)] == [0, 0]
    assert_marts_equal_oracle_and_full(db)


def test_one_person_spelled_in_other_cases_and_padding_across_sources_is_one_row(
    db: Database,
) -> None:
    """Non-ASCII emails differing only in case and space padding, in three sources, are
    one customer with the lower-cased, trimmed email."""
    create_sources(db)
    add_order(db, "source1", customer_email="ÉLODIE.Ωμέγα@Exemple.FR",
              order_created_date=D(2024, 1, 1))
    add_order(db, "source3", customer_email="  élodie.ωμέγα@exemple.fr",
              order_created_date=D(2024, 1, 2))
    add_order(db, "external_source", customer_email="ÉLODIE.ΩΜΈΓΑ@EXEMPLE.FR ",
              order_created_date=D(2024, 1, 3))
    run(db)
    assert query(db, "select customer_email from dwh.d_customer").rows() == [
        ("élodie.ωμέγα@exemple.fr",)]
    assert query(db, "select count_order from marts.customer_report_datamart").rows() == [(3,)]


# --------------------------------------------------------------------------- too large for a mart


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "craftmart_batch.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


#: Valid source rows whose mart values cannot fit their numeric columns, with the value
#: and column the error must name. The order is created in January 2024 unless it says.
TOO_LARGE = {
    "price-bigint-max": ({"product_price": BIGINT_MAX},
                         f"{CUSTOMER}.customer_money = {BIGINT_MAX}.00"),
    "price-1e8": ({"product_price": 100_000_000},
                  f"{CUSTOMER}.avg_price_order = 100000000.00"),
    "birthday-year-1": ({"customer_birthday": D(1, 1, 1)},
                        f"{CRAFTSMAN}.avg_age_customer = 2023.0"),
    "birthday-year-9999": ({"customer_birthday": D(9999, 12, 31)},
                           f"{CRAFTSMAN}.avg_age_customer = -7975.0"),
    "order-in-year-24": ({"order_created_date": D(24, 1, 5)},
                         f"{CRAFTSMAN}.avg_age_customer = -1966.0"),
}


def test_a_value_too_large_for_its_mart_column_stops_the_run_in_one_line(
    db: Database, tmp_path: Path
) -> None:
    """A valid order whose mart value cannot fit the column's numeric type (a price of
    10^8 or more; a birthday, or a mistyped order year, that makes an age of 1000 years
    or more) is never truncated, wrapped or dropped: the run stops before writing
    anything, exit 2, one line naming the mart, column, value, entity (with its email)
    and month. Fixed in the source, the next run loads it."""
    create_sources(db)
    add_order(db, "source1", customer_email="fine@buyer.example")
    run(db)
    for case, (fields, named) in TOO_LARGE.items():
        before = warehouse_state(db)
        key = add_order(db, "source3", **{"customer_email": f"{case}@buyer.example",
                                          "craftsman_email": f"{case}@craft.example",
                                          "order_created_date": D(2024, 1, 5), **fields})
        created = fields.get("order_created_date", D(2024, 1, 5))
        expected = (f"marts.{named} does not fit numeric(", f", report_period "
                    f"{created.year:04d}-{created.month:02d} (", f"{case}@")
        if case == "price-bigint-max":  # the command line: exit 2 and one line
            result = cli("run", "--dsn", db.libpq_uri(), "--json", cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            assert result.stdout == ""
            lines = result.stderr.splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith("craftmart-batch: error: ")
            message = lines[0]
        else:
            with pytest.raises(CraftmartError) as error:
                run(db)
            message = str(error.value)
            assert "\n" not in message
        assert all(part in message for part in expected), (case, message)
        assert warehouse_state(db) == before, case

        if "product_price" in fields:
            sql(db, "update source3.craft_market_orders set product_price = 5"
                    " where order_id = $1", (key,))
        else:
            sql(db, "update source3.craft_market_customers set customer_birthday = null"
                    " where customer_email = $1", (f"{case}@buyer.example",))
        assert run(db).sources["source3"]["quarantined"] == 0
    assert query(db, "select count(*) from dwh.f_order where source_name = 'source3'"
                 ).item() == len(TOO_LARGE)
    assert_marts_equal_oracle_and_full(db)


# --------------------------------------------------------------------------- shape changes

#: Shape changes of the default sources (statements split on ';'), and what the one
#: error line must name.
SHAPE_CHANGES = {
    "renamed-table": (
        "alter table source1.craft_market_wide rename to craft_market_wide_v2",
        "table source1.craft_market_wide does not exist"),
    "renamed-joined-table": (
        "alter table source2.craft_market_masters_products rename to masters_products",
        "table source2.craft_market_masters_products does not exist"),
    "renamed-schema": (
        "alter schema source3 rename to source3_archive",
        "schema source3 does not exist"),
    "renamed-column": (
        "alter table external_source.customers rename column customer_email to email",
        "column external_source.customers.customer_email (customer_email) does not exist"),
    "dropped-join-column": (
        "alter table source2.craft_market_orders_customers drop column product_id",
        "column source2.craft_market_orders_customers.product_id (join product) does not exist"),
    "date-as-text": (
        "alter table source3.craft_market_orders alter column order_created_date type text",
        "column source3.craft_market_orders.order_created_date (order_created_date) has type"
        " text, expected date"),
    "key-as-numeric": (
        "alter table source1.craft_market_wide alter column order_id drop identity;"
        " alter table source1.craft_market_wide alter column order_id type numeric",
        "column source1.craft_market_wide.order_id (order key) has type numeric,"
        " expected integer"),
    "price-as-numeric": (
        "alter table external_source.craft_products_orders"
        " alter column product_price type numeric(12, 2)",
        "column external_source.craft_products_orders.product_price (product_price) has type"
        " numeric, expected integer"),
    "email-as-integer": (
        "alter table source2.craft_market_masters_products"
        " alter column craftsman_email type integer using 0",
        "column source2.craft_market_masters_products.craftsman_email (craftsman_email) has"
        " type integer, expected text"),
}


def _recreate_sources(db: Database, *, with_orders: bool = False) -> None:
    sql(db, "drop schema if exists source1, source2, source3, source3_archive,"
            " external_source cascade")
    create_sources(db)
    if with_orders:
        for source in ORDER_TABLES:
            add_order(db, source, customer_email=f"{source}@buyer.example")


def test_a_source_shape_change_is_refused_before_anything_is_written(db: Database) -> None:
    """A renamed table, schema or column, a dropped join column or a changed type: the
    run is refused with one line naming the object (and the type it expected) before
    anything is written; with the shape back, it loads. (The command line's exit 2 for
    these is held by test_dwh_load.py.)"""
    _recreate_sources(db, with_orders=True)
    run(db)
    before = warehouse_state(db)
    runs = query(db, "select count(*) from craftmart.runs").item()
    for case, (change, named) in SHAPE_CHANGES.items():
        _recreate_sources(db)  # empty: the run must stop before it reads a row
        for statement in change.split(";"):
            sql(db, statement)
        with pytest.raises(CraftmartError) as error:
            run(db)
        message = str(error.value)
        assert message.startswith("source "), (case, message)
        assert named in message, (case, message)
        assert "\n" not in message
        assert warehouse_state(db) == before, case
        assert query(db, "select count(*) from craftmart.runs").item() == runs, case
    _recreate_sources(db, with_orders=True)
    report = run(db)
    assert report.sources["source1"] == {"read": 1, "loaded": 1, "quarantined": 0}
