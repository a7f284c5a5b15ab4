"""The run in partitions (SPEC §6): any number of partitions, or a memory budget that
chooses them, gives the warehouse, quarantine and marts of one partition, row for row
by natural key, on first loads, incremental runs, `--full` and the "too many changes"
fallback; a budget too small to work is refused with the smallest one that works."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import add_order, create_sources, query, run, settings_for, sql, warehouse_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_incremental import (
    SOURCE_TABLES,
    STEPS,
    _apply,
    _by_natural_key,
    _duplicate,
    assert_incremental_is_full,
    assert_marts_match_rebuild,
    assert_orders_match_validity_oracle,
    assert_tables_equal,
    copy_sources,
    new_orders,
)
from test_reliability import change_sources, generate_orders, tagged

from craftmart_batch import schema, stages
from craftmart_batch._database import Database, connection
from craftmart_batch._sql import execute, fetch_frame, stage
from craftmart_batch.extract import hashes as row_hashes
from craftmart_batch.extract.queries import pull_query
from craftmart_batch.load.runs import RunReport
from craftmart_batch.transform import partition as parts
from craftmart_batch.transform.validate import ORDER_KEY

#: Quarantine by what it says about a row (its id and first sighting depend on history).
QUARANTINE = ("select source_name, source_order_id, reasons, raw::text as raw,"
              " out_of_range from craftmart.quarantine")


#: The surrogate ids of people and products: the same for any N (written in key order
#: once every partition is staged). Only f_order.order_id follows the partitions.
IDS = {
    "craftsman ids": "select craftsman_id, craftsman_email from dwh.d_craftsman",
    "customer ids": "select customer_id, customer_email from dwh.d_customer",
    "product ids": "select product_id, craftsman_id, product_name, product_description"
                   " from dwh.d_product",
}


def everything(db: Database) -> dict[str, pl.DataFrame]:
    """DWH, marts and quarantine by natural key, and the people's and products' ids,
    sorted: what must not depend on N."""
    frames = _by_natural_key(db)
    for name, select in {"quarantine": QUARANTINE, **IDS}.items():
        frame = query(db, select)
        frames[name] = frame.sort(frame.columns, nulls_last=True)
    return frames


def assert_same(db: Database, reference: Database, when: str) -> None:
    assert_tables_equal(everything(db), everything(reference), f"one partition ({when})")


def sync_sources(source: Database, target: Database) -> None:
    """Make ``target``'s sources hold exactly ``source``'s rows, ids included."""
    sql(target, f"truncate {', '.join(SOURCE_TABLES)}")
    copy_sources(source, target)


def twins(make_db: Callable[[], Database], source: Database, count: int) -> list[Database]:
    """``count`` new databases holding copies of ``source``'s sources."""
    copies = []
    for _ in range(count):
        copy = make_db()
        copy_sources(source, copy)
        copies.append(copy)
    return copies


#: How each twin runs: a fixed number of partitions, or the smallest budget that works.
LAYOUTS: dict[str, dict[str, Any]] = {
    "2 partitions": {"partitions": 2},
    "3 partitions": {"partitions": 3},
    "7 partitions": {"partitions": 7},
}


def smallest_budget(db: Database) -> int:
    """The smallest memory budget a run on ``db`` accepts, as its refusal names it."""
    before = warehouse_state(db)
    with pytest.raises(Exception, match="the smallest that works is") as refused:
        run(db, memory_budget="1MB")
    assert warehouse_state(db) == before
    found = re.fullmatch(r".*the smallest that works is (\d+)MB .*", str(refused.value))
    assert found is not None
    return int(found.group(1))


@pytest.mark.slow
def test_any_partition_count_or_a_tiny_budget_gives_the_warehouse_of_one_partition(
    make_db: Callable[[], Database],
) -> None:
    """Generated sources (every kind of invalid row planted) loaded, then changed in
    rounds, the last one large enough to fall back to pulling everything, then
    `--full`: after every run each layout equals one partition, row for row."""
    reference = make_db()
    generate_orders(reference, 12_000, seed=11)
    layouts = dict(LAYOUTS)
    copies = twins(make_db, reference, len(layouts) + 1)
    # a few MB over the smallest budget (which grows a little with the warehouse)
    layouts["tiny budget"] = {"memory_budget": f"{smallest_budget(copies[-1]) + 8}MB"}
    databases = dict(zip(layouts, copies, strict=True))

    def run_all(when: str, **options: Any) -> None:
        expected = run(reference, partitions=1, **options)
        assert expected.partitions == 1
        for layout, db in databases.items():
            report = run(db, **layouts[layout], **options)
            wanted = layouts[layout].get("partitions")
            if wanted:
                assert report.partitions == wanted, (layout, when)
            if wanted and expected.pull == "everything":
                # N pools of about 1/N of the entities each: the candidates spill, and
                # the dimensions resolve in ranges of their keys
                assert report.spilled_candidates > 0, (layout, when)
                assert report.dimension_ranges > 1, (layout, when)
            elif expected.pull == "everything":  # the tiny budget splits every full pull
                assert report.partitions > 1, (layout, when)
            assert report.pull == expected.pull, layout
            assert report.dwh == expected.dwh, (layout, when)
            assert report.sources == expected.sources, (layout, when)
            assert report.quarantine == expected.quarantine, (layout, when)
            assert_same(db, reference, f"{layout}, {when}")

    run_all("first load")
    for round_, changes in enumerate((40, 600, 7_000), start=1):
        for db in (reference, *databases.values()):
            change_sources(db, changes, seed=100 + round_)
        run_all(f"after {changes} changes")
    run_all("run --full", full=True)
    assert_orders_match_validity_oracle(reference)
    assert_marts_match_rebuild(reference)


@pytest.mark.slow
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=st.lists(new_orders(), min_size=2, max_size=8),
       steps=st.lists(st.tuples(STEPS, st.sampled_from((1, 2, 3, 7))), min_size=3, max_size=6))
def test_any_sequence_of_changes_in_any_partitions_equals_one_partition(
    make_db: Callable[[], Database],
    initial: list[tuple[str, dict[str, Any]]],
    steps: list[tuple[tuple[Any, ...], int]],
) -> None:
    """Random inserts, deletes, updates and rows turning invalid or valid, each run in a
    random number of partitions: the warehouse equals the same sources run in one
    partition, the SQL oracle and a full rebuild."""
    db, reference = make_db(), make_db()
    create_sources(db)
    orders = [(source, add_order(db, source, **fields)) for source, fields in initial]
    copy_sources(db, reference)
    run(db, partitions=7)
    run(reference, partitions=1)
    assert_same(db, reference, "first load in 7 partitions")
    for step, partitions in steps:
        _apply(db, orders, step)
        sync_sources(db, reference)
        full = step[0] == "full run"
        run(db, full=full, partitions=partitions)
        run(reference, full=full, partitions=1)
        assert_same(db, reference, f"{step} in {partitions} partitions")
    assert_incremental_is_full(db, make_db)


def test_the_run_reports_its_partitions_and_history_shows_them(db: Database) -> None:
    generate_orders(db, 3000, seed=3)
    report: RunReport = run(db, partitions=4)
    assert (report.partitions, report.mart_groups) == (4, 4)
    assert report.as_dict()["partitions"] == 4
    stored = query(db, "select (stats->>'partitions')::int as n from craftmart.runs")
    assert stored["n"].to_list() == [4]
    history = subprocess.run(
        [sys.executable, "-m", "craftmart_batch.cli", "history", "--dsn", tagged(db).libpq_uri()],
        capture_output=True, text=True, check=True,
    ).stdout
    assert re.search(r"\| parts \|", history), history
    assert re.search(r"\| everything +\| 4 +\| 3000 +\|", history), history


def test_a_budget_too_small_is_one_line_naming_the_smallest_that_works(
    db: Database, tmp_path: Path
) -> None:
    generate_orders(db, 3000, seed=3)
    run(db)
    change_sources(db, 100, seed=4)
    before = warehouse_state(db)
    refused = subprocess.run(
        [sys.executable, "-m", "craftmart_batch.cli", "run", "--dsn", tagged(db).libpq_uri(),
         "--memory-budget", "100MB"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("craftmart-batch:")]
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    found = re.fullmatch(
        r"craftmart-batch: error: memory budget 100MB is too small for this run: the smallest"
        r" that works is (\d+)MB \(--memory-budget or run.memory_budget\)", lines[0])
    assert found, lines[0]
    assert warehouse_state(db) == before
    smallest = f"{found.group(1)}MB"
    assert run(db, memory_budget=smallest).pull == "changes"


@pytest.mark.parametrize("budget", ["lots", "0MB", "-5GB", "12XB"])
def test_a_budget_that_is_not_a_size_is_refused(db: Database, budget: str) -> None:
    with pytest.raises(Exception, match=r"run.memory_budget: not a size"):
        run(db, memory_budget=budget)


def test_partitions_cannot_be_negative(db: Database) -> None:
    with pytest.raises(Exception, match=r"run.partitions must be 0 \(automatic\) or more"):
        run(db, partitions=-1)


def test_config_sets_partitions_and_budget(db: Database, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[run]\npartitions = 3\nmemory_budget = "1.5GB"\n')
    generate_orders(db, 1000, seed=2)
    report = run(db, config=config)
    assert (report.partitions, report.memory_budget_mb) == (3, 1536)


def test_a_full_pull_ranges_over_the_primary_key_where_no_index_serves_the_order_key(
    db: Database,
) -> None:
    """source1 and external_source key their orders by `order_id`, which nothing
    indexes: a full pull's partitions are ranges of their primary key `id` (index range
    scans, not one scan of the table each), and the rows of a key repeated far apart in
    `id` are all read with partition 0, so that they are still validated together."""
    generate_orders(db, 3000, seed=3)
    repeated = query(db, "select order_id from source1.craft_market_wide"
                         " order by id limit 1")["order_id"].item()
    _duplicate(db, repeated, "order_status", "done")  # a copy, at the largest id
    settings_ = settings_for(db, partitions=4)
    with connection(db) as conn:
        schema.migrate(conn)
        plan = stages.plan(conn, db, settings_, reason=row_hashes.FULL_RUN, delta=None)
    assert plan.ranges is not None
    assert {name: scan.column for name, scan in plan.ranges.scans.items()} == {
        "source1": "id", "external_source": "id"}
    assert plan.ranges.scans["source1"].repeated == (repeated,)
    assert plan.ranges.scans["external_source"].repeated == ()

    sources = {s.name: s for s in settings_.sources}
    for partition in range(4):
        statement = pull_query(sources["source1"], partition=(plan.ranges, partition))
        copies = query(db, statement).filter(pl.col("source_order_id") == repeated).height
        assert copies == (2 if partition == 0 else 0), partition
        text = plan_of(db, statement)
        if partition > 0:  # partition 0 scans for the repeated key's rows
            assert "Seq Scan on craft_market_wide" not in text, text
    every = pl.concat([
        query(db, pull_query(source, partition=(plan.ranges, p)))
        for source in settings_.sources for p in range(4)])
    assert every.height == 3001
    assert every.select(ORDER_KEY).is_duplicated().sum() == 2  # the repeated key, once


def plan_of(db: Database, statement: str) -> str:
    """The server's plan of a query, as EXPLAIN prints it."""
    with connection(db) as conn:
        execute(conn, "create function pg_temp.plan_of(statement text) returns setof text"
                      " language plpgsql as $$ begin return query execute 'explain ' ||"
                      " statement; end $$")
        found = fetch_frame(conn, "select pg_temp.plan_of($1) as line", (statement,))
    return "\n".join(found["line"].to_list())


def test_a_staged_order_goes_to_the_partition_its_key_falls_in(db: Database) -> None:
    """A full pull's rows read by their source's scan column reach the partition of
    their key in memory (``partition_expr``) as the SQL of f_order's partitions puts
    it (``sql``), for every key: nulls, cut points, sources without keys or no longer
    registered."""
    ranges = parts.KeyRanges.between(
        {"s1": (1, 100), "s2": (1000, 1003), "empty": (None, None)}, 4)
    keys = pl.DataFrame({
        "source_name": ["s1"] * 107 + ["s2"] * 8 + ["empty", "gone", "gone"],
        "source_order_id": [*range(-3, 103), None, *range(998, 1005), None, 5, None, 7],
    }, schema={"source_name": pl.String, "source_order_id": pl.Int64})
    in_memory = keys.with_columns(ranges.partition_expr().alias("p"))
    with connection(db) as conn:
        staged = stage(conn, "keys", keys)
        in_sql = pl.concat([
            fetch_frame(conn, f"select source_name, source_order_id, {p}::bigint as p"
                              f" from {staged} as k where"
                              f" {ranges.sql('k.source_name', 'k.source_order_id', p)}")
            for p in range(4)])
    assert in_sql.height == keys.height  # each key in exactly one partition
    assert_frame_equal(in_sql.sort(in_sql.columns, nulls_last=True),
                       in_memory.sort(in_sql.columns, nulls_last=True))
    assert set(in_memory["p"]) == {0, 1, 2, 3}
