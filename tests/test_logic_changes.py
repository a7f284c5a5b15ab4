"""Stored results follow the logic that made them: after a change to a validity rule or a
mart definition, a plain run gives what a full rebuild gives, without ``--full``.

The fingerprints themselves (``craftmart_batch.logic``) are checked as pure functions;
the runs around them on a real server, against the SQL oracle and a fresh load.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable

import polars as pl
import pytest
from helpers import CRAFTSMAN, CUSTOMER, MARTS, add_order, create_sources, mart, query, run, sql
from test_incremental import assert_incremental_is_full, assert_marts_match_rebuild

from craftmart_batch import logic
from craftmart_batch._database import Database
from craftmart_batch.extract import hashes
from craftmart_batch.load import refresh
from craftmart_batch.transform import identity, marts, validate

D = dt.date

#: A tighter price rule, as a release might ship it: a price above 500 now breaks it too.
TIGHTER_PRICE_RULE = ~(
    (pl.col("product_price") > 0) & (pl.col("product_price") <= 500)
).fill_null(False)

# ----------------------------------------------------------------- fingerprints (pure)


def test_the_rules_fingerprint_follows_the_live_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = logic.rules_fingerprint()
    assert logic.rules_fingerprint() == shipped
    with monkeypatch.context() as m:
        m.setitem(validate.RULES, "price_not_positive", TIGHTER_PRICE_RULE)
        assert logic.rules_fingerprint() != shipped
    with monkeypatch.context() as m:
        m.setattr(validate, "STATUSES", (*validate.STATUSES, "cancelled"))
        assert logic.rules_fingerprint() != shipped
    with monkeypatch.context() as m:
        m.setattr(identity, "RECENCY", tuple(reversed(identity.RECENCY)))
        assert logic.rules_fingerprint() != shipped
    with monkeypatch.context() as m:
        m.setattr(logic, "RULES_REVISION", logic.RULES_REVISION + 1)
        assert logic.rules_fingerprint() != shipped
    assert logic.rules_fingerprint() == shipped


def test_a_rule_list_too_long_to_print_still_counts_in_full() -> None:
    """``str()`` of a Polars expression elides the middle of a long list."""
    one = pl.col("x").is_in([f"s{i}" for i in range(100)])
    other = pl.col("x").is_in([f"s{i}" for i in range(100) if i != 50])
    assert str(one) == str(other)
    assert logic.stable_text({"r": one}) != logic.stable_text({"r": other})


def test_each_mart_has_its_own_definition_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    customer, craftsman = (logic.mart_fingerprint(m) for m in refresh.MARTS)
    assert customer != craftsman
    changed = dataclasses.replace(refresh.CUSTOMER_MART, compute=_customer_report_older)
    assert logic.mart_fingerprint(changed) != customer
    with monkeypatch.context() as m:
        m.setitem(marts.MART_SCHEMAS, marts.CUSTOMER_MART, pl.Schema({"customer_id": pl.Int64}))
        assert logic.mart_fingerprint(refresh.CUSTOMER_MART) != customer
    with monkeypatch.context() as m:
        m.setattr(logic, "MARTS_REVISION", logic.MARTS_REVISION + 1)
        assert logic.mart_fingerprint(refresh.CRAFTSMAN_MART) != craftsman
    assert [logic.mart_fingerprint(m) for m in refresh.MARTS] == [customer, craftsman]


def test_code_text_ignores_comments_formatting_and_docstrings() -> None:
    source = 'def f(x):\n    """Twice x."""\n    return x * 2\n'
    same = 'def f(x):  # doubles\n\n    """Two times x."""\n    return (x *\n            2)\n'
    other = 'def f(x):\n    """Twice x."""\n    return x * 3\n'
    assert logic.normalised_code(source) == logic.normalised_code(same)
    assert logic.normalised_code(source) != logic.normalised_code(other)


def test_fingerprints_are_the_same_in_every_process() -> None:
    """No address, set order or hash seed gets in: another process, another seed, the
    same fingerprints."""
    script = ("from craftmart_batch import logic; from craftmart_batch.load import refresh;"
              " print(logic.rules_fingerprint(),"
              " *(logic.mart_fingerprint(m) for m in refresh.MARTS))")
    printed = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.split()
        for seed in ("1", "2")
    ]
    expected = [logic.rules_fingerprint(), *(logic.mart_fingerprint(m) for m in refresh.MARTS)]
    assert printed == [expected, expected]


# ----------------------------------------------------------------- runs


def _orders(db: Database) -> int:
    """Six source1 orders of 100..105 (customers c0..c5), and one of 900 from source2
    (customer rich@): the one a tighter price rule rejects. Returns its key."""
    for i in range(6):
        add_order(db, "source1", customer_email=f"c{i}@buyer.example",
                  order_created_date=D(2024, 1, 1 + i), product_price=100 + i)
    return add_order(db, "source2", customer_email="rich@buyer.example",
                     order_created_date=D(2024, 2, 1), product_price=900)


def _in_dwh(db: Database, key: int) -> bool:
    return bool(query(db, "select count(*) from dwh.f_order where source_name = 'source2'"
                          " and source_order_id = $1", (key,)).item())


def _quarantined(db: Database) -> list[tuple[str, int, list[str]]]:
    return query(db, "select source_name, source_order_id, reasons from craftmart.quarantine"
                     " order by 1, 2").rows()


def _customers_in_mart(db: Database) -> set[str]:
    return set(mart(db, CUSTOMER)["customer_email"])


def test_a_changed_validity_rule_revalidates_unchanged_rows(
    db: Database, make_db: Callable[[], Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No source row changes, but a release tightens the price rule: the next plain run
    validates every row again, so the expensive order moves to quarantine and leaves
    f_order and both marts. When the rule is relaxed again, it comes back."""
    create_sources(db)
    expensive = _orders(db)
    assert run(db).pull_reason == hashes.FIRST_RUN
    assert run(db).pull == "changes"
    assert _in_dwh(db, expensive) and "rich@buyer.example" in _customers_in_mart(db)

    with monkeypatch.context() as m:
        m.setitem(validate.RULES, "price_not_positive", TIGHTER_PRICE_RULE)
        report = run(db)

        assert (report.pull, report.pull_reason) == ("everything", hashes.RULES_CHANGED)
        assert report.pulled == {"source1": 6, "source2": 1}
        assert report.dwh["f_order"] == {"inserted": 0, "updated": 0, "deleted": 1}
        assert report.sources["source2"] == {"read": 1, "loaded": 0, "quarantined": 1}
        assert not _in_dwh(db, expensive)
        assert _quarantined(db) == [("source2", expensive, ["price_not_positive"])]
        assert "rich@buyer.example" not in _customers_in_mart(db)
        # incremental mart refreshes: the change log took the order's people along
        assert not any(report.marts[name]["full"] for name in MARTS)
        # the mart oracle, a fresh load, run --full (the validity oracle knows only the
        # shipped rules)
        assert_incremental_is_full(db, make_db, shipped_rules=False)

        # the rules are now those the stored hashes were processed by
        again = run(db)
        assert (again.pull, again.pull_reason, again.pulled) == ("changes", None, {})

    report = run(db)  # the rule as shipped: the order is valid again

    assert (report.pull, report.pull_reason) == ("everything", hashes.RULES_CHANGED)
    assert report.dwh["f_order"] == {"inserted": 1, "updated": 0, "deleted": 0}
    assert _in_dwh(db, expensive) and _quarantined(db) == []
    assert "rich@buyer.example" in _customers_in_mart(db)
    assert_marts_match_rebuild(db)


def _customer_report_older(orders: pl.DataFrame) -> pl.DataFrame:
    """An older customer mart definition: platform money left at zero."""
    return marts.customer_report(orders).with_columns(
        pl.lit(0).cast(marts.MONEY).alias("platform_money")
    )


def test_a_changed_mart_definition_rebuilds_that_mart_in_full(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows computed by an older definition of the customer mart are all recomputed by
    the first plain run of the new one, though no source row changed; the craftsman
    mart, whose definition stayed, is refreshed incrementally."""
    create_sources(db)
    _orders(db)
    with monkeypatch.context() as m:
        older = dataclasses.replace(refresh.CUSTOMER_MART, compute=_customer_report_older)
        m.setattr(refresh, "MARTS", (older, refresh.CRAFTSMAN_MART))
        first = run(db)
        assert {n: first.marts[n]["full_reason"] for n in MARTS} == {
            CUSTOMER: refresh.FIRST_REFRESH, CRAFTSMAN: refresh.FIRST_REFRESH}
        assert set(mart(db, CUSTOMER)["platform_money"]) == {"0.00"}
        same = run(db)  # the same definition: nothing to do
        assert same.marts[CUSTOMER]["full"] is False
        assert same.marts[CUSTOMER]["entities"] == 0
    customers = int(query(db, "select count(*) from dwh.d_customer").item())

    report = run(db)

    assert (report.pull, report.pulled) == ("changes", {})
    assert report.dwh["f_order"] == {"inserted": 0, "updated": 0, "deleted": 0}
    rebuilt = report.marts[CUSTOMER]
    assert (rebuilt["full"], rebuilt["full_reason"]) == (True, refresh.DEFINITION_CHANGED)
    assert rebuilt["entities"] == customers
    assert (rebuilt["rows_inserted"], rebuilt["rows_updated"], rebuilt["rows_deleted"]) == (
        0, customers, 0)
    assert report.marts[CRAFTSMAN]["full"] is False
    assert report.marts[CRAFTSMAN]["full_reason"] is None
    assert "0.00" not in set(mart(db, CUSTOMER)["platform_money"])
    assert_marts_match_rebuild(db)
    assert not any(run(db).marts[name]["full"] for name in MARTS)


def test_a_warehouse_from_before_the_fingerprints_is_brought_up_to_date_once(
    db: Database,
) -> None:
    """State kept before the rules and mart definitions were fingerprinted says nothing
    about what made it: the next run pulls everything and rebuilds both marts, once."""
    create_sources(db)
    _orders(db)
    run(db)
    sql(db, "update craftmart.source_rows_state set rules_fingerprint = null")
    sql(db, "delete from craftmart.mart_state")

    report = run(db)

    assert (report.pull, report.pull_reason) == ("everything", hashes.RULES_CHANGED)
    assert {n: report.marts[n]["full_reason"] for n in MARTS} == {
        n: refresh.DEFINITION_CHANGED for n in MARTS}
    assert all(report.marts[n]["rows_updated"] == 0 for n in MARTS)
    assert_marts_match_rebuild(db)
    after = run(db)
    assert after.pull_reason is None
    assert not any(after.marts[name]["full"] for name in MARTS)
