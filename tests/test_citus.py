"""The warehouse on a Citus cluster (CRAFTMART_TEST_DSN at a coordinator; skipped
elsewhere): the layout a first run makes, moving a plain warehouse there, refusals."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    CRAFTSMAN,
    CUSTOMER,
    add_order,
    citus_nodes,
    create_sources,
    mart,
    query,
    run,
    sql,
    warehouse_state,
)

from craftmart_batch import citus
from craftmart_batch._database import Database, connect
from craftmart_batch.errors import CraftmartError

D = dt.date


@pytest.fixture
def cluster_db(pg_server: Database, make_db: Callable[[], Database]) -> Database:
    if citus_nodes(pg_server) is None:
        pytest.skip("needs CRAFTMART_TEST_DSN at a Citus coordinator")
    db = make_db()
    create_sources(db)
    return db


def _layout(db: Database) -> dict[str, tuple[str, str | None, int]]:
    rows = query(db, """
        select logicalrelid::regclass::text as t, partmethod::text as m,
            column_to_column_name(logicalrelid, partkey) as c, colocationid as g
        from pg_dist_partition
    """)
    return {t: (m, c, g) for t, m, c, g in rows.iter_rows()}


def test_a_first_run_lays_the_warehouse_out_over_the_cluster(cluster_db: Database) -> None:
    add_order(cluster_db, "source1")
    report = run(cluster_db)
    assert any(m.startswith("citus: ") for m in report.migrations)
    layout = _layout(cluster_db)
    assert layout["dwh.d_craftsman"][0] == layout["dwh.d_product"][0] == "n"  # reference
    by_customer = [layout[t] for t in ("dwh.d_customer", "dwh.f_order",
                                       "marts.customer_report_datamart")]
    assert {(m, c) for m, c, _ in by_customer} == {("h", "customer_id")}
    assert len({g for _, _, g in by_customer}) == 1  # co-located
    assert layout["marts.craftsman_report_datamart"][:2] == ("h", "craftsman_id")
    # craftmart's bookkeeping stays on the coordinator
    assert not any(t.startswith("craftmart.") for t in layout)
    assert query(cluster_db, "select count(*) as n from dwh.f_order")["n"][0] == 1


def test_an_order_moving_to_another_customer_keeps_its_id_and_both_marts_follow(
    cluster_db: Database,
) -> None:
    key = add_order(cluster_db, "source1", customer_email="ann@x.example",
                    order_created_date=D(2024, 1, 5))
    add_order(cluster_db, "source1", customer_email="bob@x.example",
              order_created_date=D(2024, 1, 6))
    run(cluster_db)
    before = query(cluster_db, "select order_id from dwh.f_order where source_order_id = $1",
                   (key,))["order_id"][0]
    sql(cluster_db, "update source1.craft_market_wide set customer_email = 'bob@x.example'"
                    " where order_id = $1", (key,))
    run(cluster_db)
    moved = query(cluster_db, "select f.order_id, c.customer_email from dwh.f_order as f"
                              " join dwh.d_customer as c using (customer_id)"
                              " where f.source_order_id = $1", (key,))
    assert moved.rows() == [(before, "bob@x.example")]
    incremental = {name: mart(cluster_db, name) for name in (CUSTOMER, CRAFTSMAN)}
    run(cluster_db, full=True)
    for name in (CUSTOMER, CRAFTSMAN):
        assert mart(cluster_db, name).equals(incremental[name])
    assert mart(cluster_db, CUSTOMER)["count_order"].to_list() == [2]


def test_distribute_moves_a_plain_warehouse_onto_the_cluster(
    cluster_db: Database, tmp_path: Path,
) -> None:
    off = tmp_path / "plain.toml"
    off.write_text('[database]\ncitus = "off"\n')
    for n in range(3):
        add_order(cluster_db, "source1", customer_email=f"c{n}@x.example")
    run(cluster_db, config=off)
    assert _layout(cluster_db) == {}
    before = warehouse_state(cluster_db)
    done = cli("distribute", "--dsn", cluster_db.libpq_uri(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(_layout(cluster_db)) == 6
    assert warehouse_state(cluster_db) == before  # every row moved, none changed
    again = cli("distribute", "--dsn", cluster_db.libpq_uri(), cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    add_order(cluster_db, "source1", customer_email="c9@x.example")
    report = run(cluster_db)
    assert report.dwh["f_order"]["inserted"] == 1


def test_a_worker_that_does_not_answer_is_one_line_and_nothing_written(
    cluster_db: Database, tmp_path: Path,
) -> None:
    add_order(cluster_db, "source1")
    run(cluster_db)
    add_order(cluster_db, "source1", customer_email="new@x.example")
    before = warehouse_state(cluster_db)
    # this database's metadata only: the second worker now lives on a port nobody serves
    sql(cluster_db, "update pg_dist_node set nodeport = 1 where nodeport = ("
                    "select max(nodeport) from pg_dist_node where groupid <> 0)")
    failed = cli("run", "--dsn", cluster_db.libpq_uri(), cwd=tmp_path)
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert "does not answer" in lines[-1]
    assert len([line for line in lines if "error" in line]) == 1
    sql(cluster_db, "update pg_dist_node set nodeport = ("
                    "select max(nodeport) + 1 from pg_dist_node where groupid <> 0)"
                    " where nodeport = 1")
    assert warehouse_state(cluster_db) == before


def test_a_citus_too_old_is_refused_before_anything_is_written(
    cluster_db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_order(cluster_db, "source1")
    monkeypatch.setattr(citus, "MIN_VERSION", (99, 0))
    with pytest.raises(CraftmartError, match="too old"):
        run(cluster_db)
    assert query(cluster_db, "select to_regclass('dwh.f_order') as t")["t"][0] is None


def test_citus_on_without_the_extension_is_refused(
    pg_server: Database, make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    if citus_nodes(pg_server) is not None:
        pytest.skip("needs a server without the citus extension")
    db = make_db()
    create_sources(db)
    on = tmp_path / "on.toml"
    on.write_text('[database]\ncitus = "on"\n')
    with pytest.raises(CraftmartError, match="citus extension is not installed"):
        run(db, config=on)


def test_the_busiest_entity_is_estimated_from_the_shards_statistics(
    cluster_db: Database,
) -> None:
    """The memory plan needs the busiest customer's or craftsman's order count; the
    coordinator holds no statistics of a distributed table, its shards do."""
    add_order(cluster_db, "source1", customer_email="busy@x.example",
              craftsman_email="maker@x.example")
    wide = ("craftsman_name, craftsman_address, craftsman_birthday, craftsman_email,"
            " product_name, product_description, product_type, product_price,"
            " order_created_date, order_completion_date, order_status, customer_name,"
            " customer_address, customer_birthday")
    # 59 more orders of the busy customer with the same craftsman; 40 other customers
    # with one order each from another craftsman
    sql(cluster_db, f"""
        insert into source1.craft_market_wide ({wide}, customer_email)
        select {wide}, customer_email from source1.craft_market_wide,
            generate_series(1, 59)
    """)
    sql(cluster_db, f"""
        insert into source1.craft_market_wide ({wide}, customer_email)
        select {wide.replace("craftsman_email", "'other@x.example'")},
            'c' || g || '@x.example'
        from generate_series(1, 40) as g,
            (select * from source1.craft_market_wide limit 1) as w
    """)
    run(cluster_db)  # analyses the shards after its commit
    conn = connect(cluster_db)
    try:
        busiest = citus.largest_entity_orders(conn)
    finally:
        conn.close()
    # the busy customer's 60 on one shard; the craftsmen summed over the shards: at
    # most every order
    assert 60 <= busiest <= 100, busiest


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "craftmart_batch.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)
