"""Hostile source data through the real sources: every row is either quarantined with the
rules it broke or loaded exactly as it was (normalised where the contract says so), rows
read = rows in f_order + rows in quarantine per source, and no source value stops a run
(SPEC §3 rule 7, docs/reliability.md): dates no reader can decode, infinite dates and
prices too large for the marts are quarantined with their source text. Source shape
changes are refused before anything is written, naming the object (SPEC §7; the basic
ones are in ``test_dwh_load.py``).
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
    SqlDate,
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
from craftmart_batch.transform.validate import DATE_FIELDS, FIRST_DATE, LAST_DATE, MAX_PRICE

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
    #: the fields named as out of range (rule 7), in canonical order
    out_of_range: list[str] = field(default_factory=list)


SOURCES = ("source1", "source2", "source3", "external_source")

#: Dates a source can hold that the warehouse cannot (rule 7), as PostgreSQL prints them:
#: infinite ones, the smallest and largest PostgreSQL allows, BC dates, and the years
#: just outside 1900-2999.
DATES_OUT_OF_RANGE = ("infinity", "-infinity", "4714-11-24 BC", "0001-12-31 BC",
                      "0001-01-01", "1899-12-31", "3000-01-01", "5874897-12-31")


def _rule_7_cases() -> list[Case]:
    """Every date field of every source out of range, and at both ends of the range;
    prices at and past the maximum, in every source."""
    cases = []
    for source in SOURCES:
        for name in DATE_FIELDS:
            for text in DATES_OUT_OF_RANGE:
                cases.append(Case(f"{name}-{text}-{source}", source, {name: SqlDate(text)},
                                  ["date_out_of_range"], out_of_range=[name]))
            for edge in (FIRST_DATE, LAST_DATE):
                # an order date at an edge: the other one too, so neither is before it
                both = ("order_created_date", "order_completion_date")
                fields = dict.fromkeys(both if name in both else (name,), edge)
                cases.append(Case(f"{name}-{edge}-{source}", source, fields))
        cases += [
            Case(f"price-zero-{source}", source, {"product_price": 0}, ["price_not_positive"]),
            Case(f"price-maximum-{source}", source, {"product_price": MAX_PRICE}),
            *(Case(f"price-{price}-{source}", source, {"product_price": price},
                   ["price_out_of_range"], out_of_range=["product_price"])
              for price in (MAX_PRICE + 1, 1_000_000_000, BIGINT_MAX)),
        ]
    return cases


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
        Case("200kb-description", "source2", {"product_description": _long_text(9, 200_000)}),
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
        Case("placeholder-birthday", "external_source", {"customer_birthday": D(1900, 1, 1)}),
        Case("completion-before-creation", "source1",
             {"order_created_date": D(2024, 3, 2), "order_completion_date": D(2024, 3, 1)},
             ["completion_before_created"]),
        # dates out of range are not compared: rule 7 alone, naming both
        Case("completion-a-day-before-year-1", "source2",
             {"order_created_date": D(1, 1, 2), "order_completion_date": D(1, 1, 1)},
             ["date_out_of_range"], out_of_range=["order_created_date", "order_completion_date"]),
        Case("infinite-and-before", "source3",
             {"order_created_date": SqlDate("infinity"), "order_completion_date": D(2024, 1, 1),
              "product_price": MAX_PRICE + 1, "customer_email": "x"},
             ["date_out_of_range", "price_out_of_range", "customer_email_invalid"],
             out_of_range=["order_created_date", "product_price"]),
        # prices
        Case("price-zero", "source1", {"product_price": 0}, ["price_not_positive"]),
        Case("price-negative", "source2", {"product_price": -1}, ["price_not_positive"]),
        Case("price-bigint-min", "source3", {"product_price": BIGINT_MIN},
             ["price_not_positive"]),
        Case("price-one", "external_source", {"product_price": 1}),
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
        *_rule_7_cases(),
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


def quarantine_of(
    db: Database,
) -> dict[tuple[str, int], tuple[list[str], dict[str, Any], list[str]]]:
    """(source, key) -> (reasons, raw values, fields out of range) of each quarantined row."""
    frame = query(db, "select source_name, source_order_id, reasons, raw::text as raw,"
                      " out_of_range from craftmart.quarantine")
    return {(r["source_name"], r["source_order_id"]):
            (r["reasons"], json.loads(r["raw"]), r["out_of_range"])
            for r in frame.iter_rows(named=True)}


_NUMERIC = {
    "customer_money": pl.Decimal(15, 2), "craftsman_money": pl.Decimal(15, 2),
    "platform_money": pl.Decimal(15, 2), "avg_price_order": pl.Decimal(10, 2),
    "avg_age_customer": pl.Decimal(5, 1), "median_time_order_completed": pl.Decimal(10, 1),
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
            reasons, raw, out_of_range = found[key]
            assert reasons == case.reasons, case.name
            assert out_of_range == case.out_of_range, case.name
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


# --------------------------------------------------------------------------- once fatal values


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "craftmart_batch.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


#: Valid-looking rows that real databases hold and that once stopped every run (a value
#: connectorx could not decode, or one too large for a mart column): the field and the
#: value as the source holds it, the rule, and the raw text quarantine shows.
ONCE_FATAL = {
    "created-year-5874897": ("order_created_date", SqlDate("5874897-12-31"),
                             "date_out_of_range", "5874897-12-31"),
    "created-year-1": ("order_created_date", SqlDate("0001-01-01"), "date_out_of_range",
                       "0001-01-01"),
    "birthday-minus-infinity": ("customer_birthday", SqlDate("-infinity"),
                                "date_out_of_range", "-infinity"),
    "birthday-infinity": ("customer_birthday", SqlDate("infinity"), "date_out_of_range",
                          "infinity"),
    "created-infinity": ("order_created_date", SqlDate("infinity"), "date_out_of_range",
                         "infinity"),
    "price-bigint-max": ("product_price", BIGINT_MAX, "price_out_of_range", BIGINT_MAX),
    "price-1e9": ("product_price", 1_000_000_000, "price_out_of_range", 1_000_000_000),
}


def test_values_that_once_stopped_every_run_are_quarantined_and_the_run_goes_on(
    db: Database, tmp_path: Path
) -> None:
    """Each value that used to stop every run with exit 2 now quarantines its row: the
    command exits 0, every other row loads, `quarantine` shows the rule, the field and
    the raw value as the source has it, and rows read = loaded + quarantined. Fixed in
    the source, each row loads on the next run; the marts equal the oracle and --full."""
    create_sources(db)
    fine = add_order(db, "source3", customer_email="fine@buyer.example")
    keys = {
        case: add_order(db, "source3", **{"customer_email": f"{case}@buyer.example",
                                          "craftsman_email": f"{case}@craft.example",
                                          name: value})
        for case, (name, value, _, _) in ONCE_FATAL.items()
    }
    dsn = ("--dsn", db.libpq_uri())
    result = cli("run", *dsn, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sources"]["source3"] == {"read": 1 + len(ONCE_FATAL), "loaded": 1,
                                            "quarantined": len(ONCE_FATAL)}
    assert query(db, "select source_order_id from dwh.f_order").to_series().to_list() == [fine]

    listed = json.loads(cli("quarantine", *dsn, "--json", "--limit", "0", cwd=tmp_path).stdout)
    by_key = {row["source_order_id"]: row for row in listed}
    for case, (name, _, rule, raw) in ONCE_FATAL.items():
        row = by_key[keys[case]]
        assert set(row) == {"source_name", "source_order_id", "reasons", "out_of_range",
                            "raw", "first_seen"}, case
        assert (row["reasons"], row["out_of_range"], row["raw"][name]) == (
            [rule], [name], raw), case
    table = cli("quarantine", *dsn, "--rule", "date_out_of_range", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    for text in ("customer_birthday=-infinity", "order_created_date=5874897-12-31",
                 "order_created_date=0001-01-01"):
        assert text in table.stdout, table.stdout

    # fixed in the source: every row loads on the next run and leaves quarantine
    for case, (name, _, _, _) in ONCE_FATAL.items():
        table_of = {"customer_birthday": "source3.craft_market_customers"}.get(
            name, "source3.craft_market_orders")
        fixed = {"product_price": "5", "customer_birthday": "'1990-05-06'"}.get(
            name, "'2024-02-01'")
        where = ("customer_email = $1" if name == "customer_birthday" else "order_id = $1")
        sql(db, f"update {table_of} set {name} = {fixed} where {where}",
            (f"{case}@buyer.example",) if name == "customer_birthday" else (keys[case],))
    after = run(db)
    assert after.sources["source3"] == {"read": 1 + len(ONCE_FATAL),
                                        "loaded": 1 + len(ONCE_FATAL), "quarantined": 0}
    assert query(db, "select count(*) from craftmart.quarantine").item() == 0
    assert_marts_equal_oracle_and_full(db)


def test_a_bad_value_in_a_joined_row_quarantines_every_order_that_joins_to_it(
    db: Database,
) -> None:
    """A source2 product priced past the maximum, a source3 customer born at -infinity
    and an external_source customer born in 5874897: each quarantines both orders that
    join to it (and nothing else); fixed, both load; broken again, both leave the DWH
    and the marts. The marts equal the oracle and --full at every step."""
    create_sources(db)
    add_order(db, "source1", customer_email="bystander@buyer.example")
    first = {
        "source2": add_order(db, "source2", customer_email="s2@buyer.example",
                             craftsman_email="s2@craft.example"),
        "source3": add_order(db, "source3", customer_email="s3@buyer.example",
                             craftsman_email="s3@craft.example"),
        "external_source": add_order(db, "external_source", customer_email="ext@buyer.example",
                                     craftsman_email="ext@craft.example"),
    }
    # a second order joined to the same product / customer row
    sql(db, "insert into source2.craft_market_orders_customers (craftsman_id, product_id,"
            " order_created_date, order_status, customer_address, customer_email)"
            " select craftsman_id, product_id, date '2024-02-02', 'done', 'x',"
            " 'other2@buyer.example' from source2.craft_market_orders_customers"
            " where order_id = $1", (first["source2"],))
    sql(db, "insert into source3.craft_market_orders (craftsman_id, customer_id,"
            " order_created_date, order_status, product_name, product_description,"
            " product_type, product_price) select craftsman_id, customer_id,"
            " date '2024-02-02', 'done', 'Bowl', 'A bowl', 'ceramics', 7"
            " from source3.craft_market_orders where order_id = $1", (first["source3"],))
    sql(db, "insert into external_source.craft_products_orders (craftsman_name,"
            " craftsman_address, craftsman_birthday, craftsman_email, product_name,"
            " product_description, product_type, product_price, order_created_date,"
            " order_status, customer_id) select craftsman_name, craftsman_address,"
            " craftsman_birthday, craftsman_email, 'Bowl', 'A bowl', 'ceramics', 7,"
            " date '2024-02-02', 'done', customer_id from external_source.craft_products_orders"
            " where order_id = $1", (first["external_source"],))
    breakers = {
        "source2": ("update source2.craft_market_masters_products set product_price = $1"
                    " where craftsman_email = 's2@craft.example'", MAX_PRICE + 1, 100),
        "source3": ("update source3.craft_market_customers set customer_birthday = $1::date"
                    " where customer_email = 's3@buyer.example'", "-infinity", "1990-05-06"),
        "external_source": ("update external_source.customers set customer_birthday = $1::date"
                            " where customer_email = 'ext@buyer.example'", "5874897-12-31",
                            "1990-05-06"),
    }
    run(db)
    assert query(db, "select count(*) from dwh.f_order").item() == 7

    def quarantined_orders() -> dict[str, int]:
        counted = query(db, "select source_name, count(*) as n from craftmart.quarantine"
                            " group by source_name")
        return dict(counted.iter_rows())

    for statement, bad, _ in breakers.values():
        sql(db, statement, (bad,))
    broken = run(db)
    assert quarantined_orders() == {"source2": 2, "source3": 2, "external_source": 2}
    assert query(db, "select count(*) from dwh.f_order").item() == 1
    assert broken.sources["source1"] == {"read": 1, "loaded": 1, "quarantined": 0}
    assert query(db, "select count(*) from dwh.d_customer where customer_email in"
                     " ('s3@buyer.example', 'ext@buyer.example')").item() == 0
    assert_marts_equal_oracle_and_full(db)

    for statement, _, good in breakers.values():
        sql(db, statement, (good,))
    run(db)
    assert quarantined_orders() == {}
    assert query(db, "select count(*) from dwh.f_order").item() == 7
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
