"""Pulls that follow the change: row hashes compared, only changed rows pulled in full.

The comparison itself (``transform.changes.compare``) is a pure function, checked by
properties; a run makes the same comparison in the server (``extract.hashes.detect``),
held equal to it; the runs around it are checked on a real server against a full rebuild.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import polars as pl
from helpers import add_order, create_sources, query, run, sql, warehouse_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dwh_load import add_source4_sale, create_source4
from test_incremental import assert_incremental_is_full, set_field

from craftmart_batch import schema, stages
from craftmart_batch._database import Database, connection
from craftmart_batch._sql import Connection, append, execute, fetch_frame
from craftmart_batch.config import Source, load_settings
from craftmart_batch.extract import hashes, queries
from craftmart_batch.transform import changes

D = dt.date
HASHES = {"source_name": pl.String, "source_order_id": pl.Int64, "row_hash": pl.Int64}

# ----------------------------------------------------------------- compare (pure)

_rows = st.lists(
    st.tuples(st.sampled_from(["s1", "s2"]), st.one_of(st.none(), st.integers(1, 6)),
              st.integers(0, 2)),
    max_size=14,
)


def _frame(rows: list[tuple[str, int | None, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=HASHES, orient="row")


@settings(max_examples=300, deadline=None)
@given(current=_rows, stored=_rows)
def test_compare_flags_exactly_the_keys_whose_rows_may_differ(
    current: list[tuple[str, int | None, int]], stored: list[tuple[str, int | None, int]]
) -> None:
    """A key is changed iff it is not one row with the stored hash; keyless rows mark
    their source; only keys seen once get a hash to keep."""
    # what a previous run can have stored: one hash per key
    kept = {(s, k): h for s, k, h in stored if k is not None}
    stored_frame = _frame([(s, k, h) for (s, k), h in kept.items()])

    result = changes.compare(_frame(current), stored_frame)

    seen = Counter((s, k) for s, k, _ in current if k is not None)
    hash_of = {(s, k): h for s, k, h in current if k is not None}
    expected = {key for key, n in seen.items() if n > 1 or kept.get(key) != hash_of[key]}
    expected |= {key for key in kept if key not in seen}
    assert set(result.changed.rows()) == expected
    assert set(result.keyless) == {s for s, k, _ in current if k is None}
    assert set(result.hashes.rows()) == {
        (s, k, hash_of[(s, k)]) for (s, k), n in seen.items()
        if n == 1 and kept.get((s, k)) != hash_of[(s, k)]
    }
    assert result.rows == dict(Counter(s for s, _, _ in current))
    assert result.is_empty == (not expected and not result.keyless)


def test_compare_of_unchanged_rows_is_empty() -> None:
    hashes = _frame([("s1", 1, 10), ("s1", 2, 20), ("s2", 1, 30)])
    result = changes.compare(hashes, hashes)
    assert result.is_empty
    assert result.rows == {"s1": 2, "s2": 1}


# ----------------------------------------------------------------- runs


def _orders(db: Database, n: int) -> list[int]:
    """n source1 orders: customers c0..c(n-1), all of one craftsman."""
    return [
        add_order(db, "source1", customer_email=f"c{i}@buyer.example",
                  order_created_date=D(2024, 1, 1 + i), product_price=100 + i)
        for i in range(n)
    ]


def test_a_run_pulls_only_the_changed_row_and_the_latest_rows_it_needs(
    db: Database, make_db: Callable[[], Database]
) -> None:
    create_sources(db)
    keys = _orders(db, 12)
    first = run(db)
    assert (first.pull, first.pull_reason) == ("everything", hashes.FIRST_RUN)
    assert first.pulled == {"source1": 12}

    set_field(db, "source1", keys[3], "product_price", 555)
    report = run(db)

    # the changed row, then the latest unchanged row of its customer (none: c3 has one
    # order), of its craftsman and of its product (the same row: order 11)
    assert (report.pull, report.pull_reason) == ("changes", None)
    assert report.pulled == {"source1": 2}
    assert report.dwh["f_order"] == {"inserted": 0, "updated": 1, "deleted": 0}
    assert report.sources["source1"] == {"read": 12, "loaded": 12, "quarantined": 0}
    assert query(db, "select product_price from dwh.f_order where source_order_id = $1",
                 (keys[3],)).item() == 555
    assert_incremental_is_full(db, make_db)


def test_a_run_without_source_changes_pulls_no_row_in_full(db: Database) -> None:
    create_sources(db)
    _orders(db, 3)
    run(db)
    before = warehouse_state(db)

    report = run(db)

    assert (report.pull, report.pulled) == ("changes", {})
    assert report.sources["source1"] == {"read": 3, "loaded": 3, "quarantined": 0}
    assert _data(warehouse_state(db)) == _data(before)


def _data(state: dict[str, str]) -> dict[str, str]:
    """DWH, quarantine and mart rows: what a run may not change without a source change
    (load dates advance with every run)."""
    return {table: rows for table, rows in state.items() if ".load_dates_" not in table}


def test_a_deleted_winning_row_hands_the_attributes_to_the_next_latest(
    db: Database, make_db: Callable[[], Database]
) -> None:
    """The customer's newest order carries her current name; deleting it must bring back
    the name on her next-newest order, which did not change."""
    create_sources(db)
    _orders(db, 4)  # other customers' orders: one deletion stays a small change
    add_order(db, "source1", customer_name="Old Name", order_created_date=D(2024, 1, 1))
    middle = add_order(db, "source2", customer_name="Middle Name",
                       order_created_date=D(2024, 2, 1))
    newest = add_order(db, "source3", customer_name="New Name",
                       order_created_date=D(2024, 3, 1))
    run(db)
    name = "select customer_name from dwh.d_customer where customer_email = 'bob@buyer.example'"
    assert query(db, name).item() == "New Name"

    sql(db, "delete from source3.craft_market_orders where order_id = $1", (newest,))
    report = run(db)

    assert report.pull == "changes"
    assert query(db, name).item() == "Middle Name"
    assert middle in query(db, "select source_order_id from dwh.f_order")["source_order_id"]
    assert_incremental_is_full(db, make_db)


def test_a_changed_mapping_pulls_everything_again(db: Database, tmp_path: Path) -> None:
    create_sources(db)
    _orders(db, 2)
    config = create_source4(db, tmp_path)
    run(db)
    report = run(db, config=config)  # a source was registered
    assert (report.pull, report.pull_reason) == ("everything", hashes.VERSION_OR_QUERIES_CHANGED)
    assert run(db, config=config).pull == "changes"


def test_many_changes_pull_everything(db: Database) -> None:
    create_sources(db)
    keys = _orders(db, 4)
    run(db)
    for key in keys[:2]:
        set_field(db, "source1", key, "product_price", 999)

    report = run(db)

    # half the rows changed: past FULL_PULL_SHARE
    assert (report.pull, report.pull_reason) == ("everything", hashes.MANY_CHANGES)
    assert stages.FULL_PULL_SHARE < 0.5
    assert query(db, "select count(*) from dwh.f_order where product_price = 999").item() == 2


def _keyless_and_repeated(db: Database, tmp_path: Path) -> Path:
    """A fifth source whose key may be null or repeat: Dee's sales 1 (its key to be made
    null), and 2 twice; the config that registers it."""
    create_sources(db)
    config = create_source4(db, tmp_path)
    sql(db, "alter table source4.shop_orders drop constraint shop_orders_pkey")
    sql(db, "alter table source4.shop_orders alter column sale_no drop not null")
    add_source4_sale(db, 1, 1, "dee@shop.example", "Dee", D(2024, 4, 1), "done", 80)
    add_source4_sale(db, 2, 1, "dee@shop.example", "Dee", D(2024, 4, 2), "done", 90)
    add_source4_sale(db, 2, 1, "dee@shop.example", "Dee", D(2024, 4, 3), "done", 95)
    return config


def test_rows_without_a_key_or_with_a_repeated_key_are_pulled_every_run(
    db: Database, tmp_path: Path
) -> None:
    """They have no hash of their own; each run reads them again, and they stay in
    quarantine once, however many runs see them."""
    config = _keyless_and_repeated(db, tmp_path)
    sql(db, "update source4.shop_orders set sale_no = null where amount = 80")
    run(db, config=config)
    quarantined = query(db, "select source_order_id, reasons from craftmart.quarantine"
                            " order by 1 nulls first").rows()
    assert quarantined == [(None, ["order_key_missing"]), (2, ["duplicate_order_key"])]

    for _ in range(2):
        report = run(db, config=config)
        assert report.pull == "changes"
        assert report.pulled == {"source4": 3}
        assert report.quarantine == {"left": 0, "arrived": 0}
        assert report.sources["source4"] == {"read": 3, "loaded": 1, "quarantined": 2}
    assert query(db, "select count(*) from craftmart.quarantine").item() == 2
    before = warehouse_state(db)
    full = run(db, config=config, full=True)
    assert (full.pull, full.pull_reason) == ("everything", hashes.FULL_RUN)
    assert full.dwh == report.dwh
    assert _data(warehouse_state(db)) == _data(before)


def test_a_repeated_key_or_keyless_rows_gone_from_their_source_leave_the_warehouse(
    db: Database, tmp_path: Path
) -> None:
    """Neither has a stored hash, so the comparison alone cannot see it go: the run
    finds them in the quarantine and pulls them again, finding nothing."""
    config = _keyless_and_repeated(db, tmp_path)
    # the same customer, named otherwise on an older order: the repeated key's copy
    # that loads holds her latest name until it goes
    add_source4_sale(db, 3, 2, "dee@shop.example", "Dee B", D(2024, 3, 30), "done", 70)
    for sale in range(10, 20):  # others' orders: the change stays below a full pull
        add_source4_sale(db, sale, 3, "eve@shop.example", "Eve", D(2024, 3, 1), "done", 50)
    sql(db, "update source4.shop_orders set sale_no = null where amount = 80")
    run(db, config=config)
    assert query(db, "select source_order_id from dwh.f_order where source_name = 'source4'"
                     " and source_order_id < 10 order by 1").to_series().to_list() == [2, 3]
    assert query(db, "select customer_name from dwh.d_customer"
                     " where customer_email = 'dee@shop.example'").item() == "Dee"

    sql(db, "delete from source4.shop_orders where sale_no = 2 or sale_no is null")
    report = run(db, config=config)
    assert report.pull == "changes"
    assert report.quarantine == {"left": 2, "arrived": 0}
    assert report.sources["source4"] == {"read": 11, "loaded": 11, "quarantined": 0}
    assert query(db, "select source_order_id from dwh.f_order where source_name = 'source4'"
                     " and source_order_id < 10").to_series().to_list() == [3]
    assert query(db, "select count(*) from craftmart.quarantine").item() == 0
    assert query(db, "select customer_name from dwh.d_customer"
                     " where customer_email = 'dee@shop.example'").item() == "Dee B"
    before = warehouse_state(db)
    full = run(db, config=config, full=True)
    assert full.dwh["f_order"] == {"inserted": 0, "updated": 0, "deleted": 0}
    assert _data(warehouse_state(db)) == _data(before)


# ----------------------------------------------------------------- compare in the server

_S9_CONFIG = """
[sources.s9]
schema = "s9"
table = "orders"
key = "order_id"
"""

def _allowed_by(constraint: str, rows: list[tuple[int | None, int]]
                ) -> list[tuple[int | None, int]]:
    """The rows a key constraint lets in: each key once; null keys only under "unique"."""
    allowed, seen = [], set()
    for key, token in rows:
        if key is None and constraint == "unique":
            allowed.append((key, token))
        elif key is not None and key not in seen:
            seen.add(key)
            allowed.append((key, token))
    return allowed


def _s9(db: Database, tmp_path: Path, config: str = "") -> Source:
    """The source s9 (``_S9_CONFIG`` and ``config``): an empty table ``s9.orders`` of
    source1's columns, without constraints, in a migrated warehouse."""
    create_sources(db)
    path = tmp_path / "config.toml"
    path.write_text(_S9_CONFIG + config, encoding="utf-8")
    with connection(db) as conn:
        schema.migrate(conn)
        execute(conn, "drop schema if exists s9 cascade")
        execute(conn, "create schema s9")
        execute(conn, "create table s9.orders as"
                      " select * from source1.craft_market_wide with no data")
        conn.commit()
    return load_settings(path, dsn=db.libpq_uri()).source("s9")


def _hashes(conn: Connection, query: str) -> pl.DataFrame:
    return fetch_frame(conn, query).cast(changes.HASH_SCHEMA)  # type: ignore[arg-type]


def _one_row_per_key(conn: Connection, source: Source) -> bool:
    return bool(fetch_frame(conn, queries.one_row_per_key_query(source))["one_row_per_key"]
                .item())


def _keep_hashes(conn: Connection, stored: pl.DataFrame) -> None:
    """``craftmart.source_rows`` made to hold ``stored``, committed."""
    execute(conn, "delete from craftmart.source_rows")
    append(conn, "craftmart", "source_rows", stored)
    conn.commit()


def _compared(conn: Connection, db: Database, source: Source
              ) -> tuple[changes.SourceDelta, changes.SourceDelta]:
    """``compare`` over every pulled key and hash, and the comparison a run makes."""
    pulled = _hashes(conn, queries.pull_query(source, fields=False))
    stored = _hashes(conn, "select * from craftmart.source_rows")
    conn.commit()
    return changes.compare(pulled, stored), hashes.detect(conn, db, [source])


_current_rows = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(1, 6)), st.integers(0, 2)), max_size=12
)
_stored_as = st.dictionaries(st.integers(1, 8), st.sampled_from(["same", "other"]), max_size=8)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(current=_current_rows, stored_as=_stored_as,
       key=st.sampled_from(["no constraint", "primary key", "unique"]))
def test_the_comparison_in_the_server_equals_compare_of_every_hash(
    db: Database, tmp_path: Path,
    current: list[tuple[int | None, int]], stored_as: dict[int, str], key: str,
) -> None:
    """For any source rows (keys missing, repeated, new, changed, gone) and any stored
    hashes, the changed keys, keyless sources, hashes to keep and row counts found in the
    server are exactly those of ``compare`` over every key and hash pulled: whether the
    order key is a primary key (rows not grouped by key), unique but nullable, or free."""
    if key != "no constraint":
        current = _allowed_by(key, current)
    source = _s9(db, tmp_path)
    with connection(db) as conn:
        if key != "no constraint":
            execute(conn, f"alter table s9.orders add {key} (order_id)")
        for order_id, token in current:
            execute(conn, "insert into s9.orders (order_id, product_name, product_price)"
                          " values ($1, $2, $3)", (order_id, f"item {token}", token))
        assert _one_row_per_key(conn, source) == (key == "primary key")
        pulled = _hashes(conn, queries.pull_query(source, fields=False))
        hash_of = dict(pulled.filter(pl.col("source_order_id").is_not_null())
                       .select("source_order_id", "row_hash").iter_rows())
        stored = changes.NO_HASHES.vstack(pl.DataFrame(
            [("s9", k, hash_of[k] if how == "same" and k in hash_of else -1)
             for k, how in stored_as.items()],
            schema=changes.HASH_SCHEMA, orient="row"))
        _keep_hashes(conn, stored)
    expected = changes.compare(pulled, stored)
    with connection(db) as conn:
        in_server = hashes.detect(conn, db, [source])
        # the same source read as one on a server of its own: keys and hashes come over
        from_elsewhere = hashes.detect(conn, db, [replace(source, dsn=db.libpq_uri())])
    for found in (in_server, from_elsewhere):
        assert found.changed.rows() == expected.changed.rows()
        assert found.keyless == expected.keyless
        assert sorted(found.hashes.rows()) == sorted(expected.hashes.rows())
        assert found.rows == expected.rows == ({"s9": len(current)} if current else {})


def test_a_join_that_can_match_twice_keeps_the_comparison_counting_copies(
    db: Database, tmp_path: Path
) -> None:
    """A primary key on the order table is not enough to skip counting each key's rows:
    a joined table without a unique key on its join columns can give an order twice.
    Such a key is changed (repeated), as ``compare`` says; once the joined table's key is
    unique, the rows are compared without grouping and the same answer comes out."""
    source = _s9(db, tmp_path, """
[[sources.s9.join]]
name = "maker"
table = "makers"
on = { craftsman_id = "craftsman_id" }

[sources.s9.columns]
craftsman_name = "maker.craftsman_name"
""")
    with connection(db) as conn:
        execute(conn, "alter table s9.orders add primary key (order_id)")
        execute(conn, "create table s9.makers (craftsman_id bigint, craftsman_name text)")
        execute(conn, "insert into s9.orders (order_id, craftsman_id, product_price)"
                      " values (1, 5, 10), (2, 6, 20)")
        execute(conn, "insert into s9.makers values (5, 'Ann'), (6, 'Bo')")
        # the last run saw each order once, as it is now
        _keep_hashes(conn, _hashes(conn, queries.pull_query(source, fields=False)))
        execute(conn, "insert into s9.makers values (5, 'Ann')")  # order 1 now twice
        assert not _one_row_per_key(conn, source)
        expected, found = _compared(conn, db, source)
        assert expected.changed.rows() == [("s9", 1)]
        assert found.changed.rows() == expected.changed.rows()
        assert found.hashes.is_empty() and expected.hashes.is_empty()
        assert found.rows == expected.rows == {"s9": 3}

        execute(conn, "delete from s9.makers where craftsman_id = 5")
        execute(conn, "insert into s9.makers values (5, 'Ann Lee')")
        execute(conn, "alter table s9.makers add primary key (craftsman_id)")
        assert _one_row_per_key(conn, source)
        expected, found = _compared(conn, db, source)
        assert expected.changed.rows() == [("s9", 1)]
        assert found.changed.rows() == expected.changed.rows()
        assert sorted(found.hashes.rows()) == sorted(expected.hashes.rows())
        assert expected.hashes.height == 1
        assert found.rows == expected.rows == {"s9": 2}


def test_a_table_with_inheritance_children_keeps_the_comparison_counting_copies(
    db: Database, tmp_path: Path
) -> None:
    """A primary key of a table that has inheritance children does not cover their
    rows: the source query (which reads the children too) can give a key twice, so the
    comparison still counts copies, and finds the key repeated as ``compare`` does."""
    source = _s9(db, tmp_path)
    with connection(db) as conn:
        execute(conn, "alter table s9.orders add primary key (order_id)")
        execute(conn, "create table s9.orders_2024 () inherits (s9.orders)")
        execute(conn, "insert into s9.orders (order_id, product_price) values (1, 10), (2, 20)")
        execute(conn, "insert into s9.orders_2024 (order_id, product_price) values (2, 20)")
        # the last run saw each key once, before the child repeated key 2
        _keep_hashes(conn, _hashes(conn, queries.pull_query(source, fields=False))
                     .unique("source_order_id", keep="first"))
        assert not _one_row_per_key(conn, source)
        expected, found = _compared(conn, db, source)
    assert expected.changed.rows() == [("s9", 2)]
    assert found.changed.rows() == expected.changed.rows()
    assert found.rows == expected.rows == {"s9": 3}
