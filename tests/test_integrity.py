"""Whole-warehouse invariants after generated data and rounds of realistic changes."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from helpers import query, rows_per_source
from oracle import expected_craftsman_mart, expected_customer_mart
from polars.testing import assert_frame_equal

from craftmart_batch import pipeline, synthetic
from craftmart_batch._database import Database, connect
from craftmart_batch.config import load_settings
from craftmart_batch.transform.marts import MART_COLUMNS


def _run(db: Database, *, full: bool = False) -> pipeline.RunReport:
    return pipeline.run(load_settings(None, dsn=db.libpq_uri()), db, full=full)


def _mart(conn: Any, name: str) -> pl.DataFrame:
    """The stored mart, numerics as Decimal of the column's type, in key order."""
    columns = MART_COLUMNS[name]
    entity = columns[0]
    cur = conn.cursor()
    cur.execute(
        f"select {', '.join(f'{c}::text' if _is_numeric(c) else c for c in columns)}"
        f" from marts.{name} order by {entity}, report_period"
    )
    frame = pl.from_arrow(cur.fetch_arrow_table())
    cur.close()
    assert isinstance(frame, pl.DataFrame)
    return frame


def _is_numeric(column: str) -> bool:
    return column.endswith(("_money", "avg_price_order", "avg_age_customer",
                            "median_time_order_completed"))


def assert_warehouse_invariants(db: Database) -> None:
    """No orphans either way, counts conserve per source, marts equal the SQL oracle."""
    # dimension rows without orders as set differences: Citus refuses a correlated
    # subquery over a reference table (d_craftsman, d_product)
    orphans = query(
        db,
        """
        select
            (select count(*) from dwh.f_order as f
             left join dwh.d_customer as c using (customer_id)
             left join dwh.d_craftsman as m using (craftsman_id)
             left join dwh.d_product as p using (product_id)
             where c.customer_id is null or m.craftsman_id is null or p.product_id is null
                or p.craftsman_id <> f.craftsman_id) as orphan_orders,
            (select count(*) from (select customer_id from dwh.d_customer
                                   except select customer_id from dwh.f_order) as c)
                as customers_without_orders,
            (select count(*) from (select craftsman_id from dwh.d_craftsman
                                   except select craftsman_id from dwh.f_order) as m)
                as craftsmen_without_orders,
            (select count(*) from (select product_id from dwh.d_product
                                   except select product_id from dwh.f_order) as p)
                as products_without_orders
        """,
    ).row(0, named=True)
    assert orphans == {
        "orphan_orders": 0,
        "customers_without_orders": 0,
        "craftsmen_without_orders": 0,
        "products_without_orders": 0,
    }
    for source, counts in rows_per_source(db).items():
        assert counts["read"] == counts["loaded"] + counts["quarantined"], (source, counts)
    conn = connect(db)
    try:
        for name, expected in (
            ("customer_report_datamart", expected_customer_mart(conn)),
            ("craftsman_report_datamart", expected_craftsman_mart(conn)),
        ):
            stored = _mart(conn, name)
            assert_frame_equal(
                stored,
                expected.select(MART_COLUMNS[name]).cast(
                    {c: pl.String for c in MART_COLUMNS[name] if _is_numeric(c)}
                ),
                check_dtypes=False,
            )
    finally:
        conn.close()


@pytest.mark.slow
def test_rounds_of_generated_changes_keep_every_invariant(db: Database) -> None:
    """Generated sources, then three rounds of realistic changes, each followed by a run:
    after every run there are no orphans, counts conserve, and both marts equal the
    SQL oracle over the DWH; a final --full run changes no mart row."""
    conn = connect(db)
    synthetic.generate(conn, 3_000, seed=11)
    conn.commit()
    conn.close()
    first = _run(db)
    assert first.marts["customer_report_datamart"]["full"] is True
    assert_warehouse_invariants(db)
    for round_ in range(3):
        conn = connect(db)
        summary = synthetic.apply_changes(conn, 120, seed=100 + round_)
        conn.commit()
        conn.close()
        assert summary.total == 120
        report = _run(db)
        mart = report.marts["customer_report_datamart"]
        assert mart["full"] is False
        # work follows the change: far fewer customers than the warehouse holds
        customers = query(db, "select count(*) as n from dwh.d_customer")["n"][0]
        assert 0 < mart["entities"] < customers
        assert_warehouse_invariants(db)
    full = _run(db, full=True)
    for name in ("customer_report_datamart", "craftsman_report_datamart"):
        assert full.marts[name]["rows_inserted"] == 0
        assert full.marts[name]["rows_updated"] == 0
        assert full.marts[name]["rows_deleted"] == 0
