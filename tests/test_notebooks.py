"""Every notebook in notebooks/ runs top to bottom against a real warehouse, and the marts
check fails loudly when a mart disagrees with the DWH."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import generated_warehouse, query, sql

from craftmart_batch._database import Database

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ORDERS = 3000


@pytest.fixture(scope="module")
def marketplace(pg_server: Database) -> Iterator[Database]:
    """A warehouse built by `pipeline.run` from a few thousand generated orders."""
    with generated_warehouse(pg_server, "notebooks", ORDERS, seed=5) as db:
        yield db


def run_notebook(path: Path, db: Database) -> Any:
    """Execute every cell in a fresh kernel started in the notebook's folder, the
    database given only through $CRAFTMART_DSN, as an analyst's Jupyter would."""
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "CRAFTMART_CONFIG"}
    env["CRAFTMART_DSN"] = db.libpq_uri()
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=env)
    return nb


@pytest.fixture(scope="module")
def executed(marketplace: Database) -> dict[str, Any]:
    """Every notebook, executed once against the marketplace, by file name."""
    return {path.name: run_notebook(path, marketplace) for path in NOTEBOOKS}


def outputs(nb: Any) -> list[dict[str, Any]]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == ["marts_check.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_runs_top_to_bottom_without_an_error(
    path: Path, executed: dict[str, Any]
) -> None:
    """No cell raises, and every code cell ran, in order."""
    nb = executed[path.name]
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code_cells] == list(range(1, len(code_cells) + 1))
    assert [o for o in outputs(nb) if o.output_type == "error"] == []


def test_marts_check_reconciles_every_row_and_month_and_draws_four_charts(
    executed: dict[str, Any], marketplace: Database
) -> None:
    """The reconciliation prints what it matched — every mart row and month, the DWH's
    order count and money — and the notebook draws its four charts as PNG."""
    nb = executed["marts_check.ipynb"]
    printed = "".join(o.get("text", "") for o in outputs(nb) if o.output_type == "stream")
    dwh = query(marketplace, "select count(*) as n, sum(product_price)::text as money,"
                             " count(distinct to_char(order_created_date, 'YYYY-MM')) as months"
                             " from dwh.f_order").row(0, named=True)
    rows = {name: query(marketplace, f"select count(*) as n from marts.{name}")["n"][0]
            for name in ("customer_report_datamart", "craftsman_report_datamart")}
    assert (f"{rows['customer_report_datamart']} customer rows and "
            f"{rows['craftsman_report_datamart']} craftsman rows match the DWH") in printed
    assert (f"{dwh['months']} months reconciled: {dwh['n']} orders, "
            f"money {dwh['money']}.00, platform money ") in printed
    assert f"/{marketplace.dbname}\n" in printed  # the database $CRAFTMART_DSN named
    charts = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert len(charts) == 4


def test_marts_check_fails_when_a_mart_row_disagrees_with_the_dwh(
    marketplace: Database,
) -> None:
    """One cent off in one customer's month: the notebook stops with an AssertionError."""
    sql(marketplace, "update marts.customer_report_datamart set customer_money ="
                     " customer_money + 0.01 where id = (select min(id)"
                     " from marts.customer_report_datamart)")
    try:
        with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
            run_notebook(ROOT / "notebooks" / "marts_check.ipynb", marketplace)
    finally:
        sql(marketplace, "update marts.customer_report_datamart set customer_money ="
                         " customer_money - 0.01 where id = (select min(id)"
                         " from marts.customer_report_datamart)")
    assert failure.value.ename == "AssertionError"
    assert "customer_money_cents" in failure.value.evalue
