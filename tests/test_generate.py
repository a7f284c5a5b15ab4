"""The synthetic marketplace: source contents, planted invalid rows, changes, row shapes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import query, settings_for
from oracle import SOURCE_ROWS_SQL

from craftmart_batch import pipeline
from craftmart_batch import synthetic as gen
from craftmart_batch._database import Database, connect, connection, quote_ident
from craftmart_batch._sql import fetch_frame, fetch_value
from craftmart_batch.errors import CraftmartError

ORDERS = 4000
SEED = 20240601

Shared = tuple[Any, gen.GenerateSummary]  # a connection to a generated database, its summary

# Every source row (tests/oracle.py) with the validity rules of SPEC §3 as flags, named
# as the generator plants them; written independently of the generator so it checks
# what the generator claims.
CANONICAL = f"""
with canonical as ({SOURCE_ROWS_SQL})
select *,
       created is null as created_date_null,
       lower(btrim(status)) not in ('created', 'in progress', 'delivery', 'done')
           as status_unknown,
       coalesce(completion < created, false) as completion_before_created,
       coalesce(price <= 0, false) as price_not_positive,
       not (coalesce(btrim(craftsman_email) ~ '^[^@\\s]+@[^@\\s]+$', true)
            and btrim(customer_email) ~ '^[^@\\s]+@[^@\\s]+$') as email_malformed,
       not joined as product_missing,
       not (coalesce(created between '1900-01-01' and '2999-12-31', true)
            and coalesce(completion between '1900-01-01' and '2999-12-31', true)
            and coalesce(craftsman_birthday between '1900-01-01' and '2999-12-31', true)
            and coalesce(customer_birthday between '1900-01-01' and '2999-12-31', true))
           as date_out_of_range,
       coalesce(price > 10000000, false) as price_out_of_range
from canonical
"""

#: SPEC §3 rule 7, as the generator plants it and as the pipeline names it.
RULE_7 = ("date_out_of_range", "price_out_of_range")
BIGINT_MAX = 9223372036854775807

ALL_EMAILS = """
select 'source1' as source, customer_email as email, 'customer' as role
from source1.craft_market_wide
union all select 'source2', customer_email, 'customer' from source2.craft_market_orders_customers
union all select 'source3', customer_email, 'customer' from source3.craft_market_customers
union all select 'external_source', customer_email, 'customer' from external_source.customers
union all select 'source1', craftsman_email, 'craftsman' from source1.craft_market_wide
union all select 'source2', craftsman_email, 'craftsman'
from source2.craft_market_masters_products
union all select 'source3', craftsman_email, 'craftsman' from source3.craft_market_craftsmans
union all select 'external_source', craftsman_email, 'craftsman'
from external_source.craft_products_orders
"""


ALL_ADDRESSES = """
select 'source1' as source, customer_address as address from source1.craft_market_wide
union all select 'source1', craftsman_address from source1.craft_market_wide
union all select 'source2', customer_address from source2.craft_market_orders_customers
union all select 'source2', craftsman_address from source2.craft_market_masters_products
union all select 'source3', customer_address from source3.craft_market_customers
union all select 'source3', craftsman_address from source3.craft_market_craftsmans
union all select 'external_source', customer_address from external_source.customers
union all select 'external_source', craftsman_address
from external_source.craft_products_orders
"""

# One description per product as each source writes it.
ALL_DESCRIPTIONS = """
select distinct product_description as d from source1.craft_market_wide
union select product_description from source2.craft_market_masters_products
union select product_description from source3.craft_market_orders
union select product_description from external_source.craft_products_orders
"""

# A full street address: a house number, a postcode (five or six digits, or a UK one)
# and a country at the end.
HOUSE_NUMBER = r"(^|[ ,])\d{1,4}(,|$| )"
POSTCODE = r"(\b\d{5,6}\b)|(\b[A-Z]{1,2}\d{1,2}[A-Z]? \d[A-Z]{2}\b)"
COUNTRY = r", (Russia|Belarus|Kazakhstan|Germany|France|United Kingdom|United States)$"
NARROW_ADDRESS = r"^[A-Z][A-Za-z ]+, [A-Za-z]+ st\. \d+(, apt\. \d+)?$"


def canonical(conn: Any) -> pl.DataFrame:
    frame = fetch_frame(conn, CANONICAL)
    return frame.with_columns(valid=~pl.any_horizontal(gen.RULES))


def contents_digest(conn: Any) -> dict[str, str]:
    """An md5 per source table over all its rows in key order."""
    digests = {}
    for table, identity in gen.TABLES.items():
        digests[table] = fetch_value(
            conn,
            f"select md5(coalesce(string_agg(t::text, E'\\n' order by t.{identity[0]}), '')) "
            f"from {table} as t",
        )
    return digests


@pytest.fixture
def conn(db: Database) -> Iterator[Any]:
    connection = connect(db)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def generated(conn: Any) -> gen.GenerateSummary:
    return gen.generate(conn, ORDERS, SEED)


@pytest.fixture(scope="module")
def shared(pg_server: Database) -> Iterator[Shared]:
    """One generated database for the tests that only read it (creating one is slow)."""
    name = f"cm_test_generate_shared_{uuid.uuid4().hex[:10]}"
    _admin(pg_server, f"create database {quote_ident(name)}")
    try:
        reader = connect(pg_server.with_dbname(name))
        try:
            yield reader, gen.generate(reader, ORDERS, SEED)
        finally:
            reader.close()
    finally:
        _admin(pg_server, f"drop database if exists {quote_ident(name)} with (force)")


def _admin(server: Database, statement: str) -> None:
    with connection(server, autocommit=True) as admin:
        cur = admin.cursor()
        cur.execute(statement)
        cur.close()


def test_create_sources_builds_the_contract_tables_and_can_run_twice(conn: Any) -> None:
    """create_sources makes the eight source tables; a second run changes nothing."""
    gen.create_sources(conn)
    gen.create_sources(conn)
    tables = fetch_frame(conn, """
        select table_schema || '.' || table_name as t from information_schema.tables
        where table_schema in ('source1', 'source2', 'source3', 'external_source')
        order by 1""")["t"].to_list()
    assert tables == sorted(gen.TABLES)
    identity = fetch_value(conn, """
        select count(*) from information_schema.columns
        where table_schema in ('source1', 'source2', 'source3', 'external_source')
          and is_identity = 'YES' and identity_generation = 'ALWAYS'""")
    assert identity == sum(len(c) for c in gen.TABLES.values())


def test_orders_are_split_over_the_four_sources(shared: Shared) -> None:
    """Orders per source add up to the number asked for, about 30/25/25/20 %."""
    conn, generated = shared
    assert generated.orders_per_source == {
        "source1": 1200, "source2": 1000, "source3": 1000, "external_source": 800}
    counts = canonical(conn).group_by("source").len()
    assert dict(counts.iter_rows()) == generated.orders_per_source
    for table, rows in generated.rows.items():
        assert fetch_value(conn, f"select count(*) from {table}") == rows


def test_about_two_percent_of_rows_break_each_rule_as_reported(shared: Shared) -> None:
    """Every rule of SPEC §3 is broken by some rows; each planted row breaks one rule."""
    conn, generated = shared
    rows = canonical(conn)
    broken = {rule: int(rows[rule].sum()) for rule in gen.RULES}
    assert broken == generated.invalid
    assert all(count > 0 for count in broken.values())
    invalid = rows.filter(~pl.col("valid"))
    assert invalid.height == generated.invalid_total  # one rule per planted row
    assert 0.015 <= invalid.height / ORDERS <= 0.025
    product_missing = invalid.filter("product_missing")["source"].unique().to_list()
    assert product_missing == ["source2"]


def test_values_out_of_the_warehouse_range_are_planted_in_every_shape(shared: Shared) -> None:
    """Rule 7: completion dates a millennium on (year 3000+), created dates before 1900
    without a completion date, prices just over 10,000,000 and the largest bigint; in
    every source, each row breaking that one rule."""
    conn, generated = shared
    rows = canonical(conn)
    dates = rows.filter("date_out_of_range")
    assert dates.height == generated.invalid["date_out_of_range"] > 0
    late = dates.filter(pl.col("completion").dt.year() >= 3000)
    early = dates.filter(pl.col("created").dt.year() < 1900)
    assert late.height > 0 and early.height > 0
    assert late.height + early.height == dates.height
    assert early["completion"].null_count() == early.height
    assert (late["created"].dt.year() < 3000).all()
    prices = rows.filter("price_out_of_range")
    assert prices.height == generated.invalid["price_out_of_range"] > 0
    assert (prices["price"] == BIGINT_MAX).any()
    assert ((prices["price"] > 10_000_000) & (prices["price"] < BIGINT_MAX)).any()
    for rule in RULE_7:
        flagged = rows.filter(rule)
        assert set(flagged["source"]) == set(gen.SOURCES), rule
        others = [r for r in gen.RULES if r != rule]
        assert not flagged.select(pl.any_horizontal(others)).to_series().any(), rule


def test_malformed_emails_come_in_every_shape(shared: Shared) -> None:
    """No @, two @, a space inside, empty: all planted, for customers and craftsmen."""
    conn = shared[0]
    emails = fetch_frame(conn, ALL_EMAILS).with_columns(
        trimmed=pl.col("email").str.strip_chars(" "))
    bad = emails.filter(~pl.col("trimmed").str.contains(r"^[^@\s]+@[^@\s]+$"))
    shapes = bad.select(
        no_at=(pl.col("trimmed").str.count_matches("@") == 0) & (pl.col("trimmed") != ""),
        two_at=pl.col("trimmed").str.count_matches("@") >= 2,
        space=pl.col("trimmed").str.contains(" "),
        empty=pl.col("trimmed") == "",
    ).sum().row(0, named=True)
    assert all(count > 0 for count in shapes.values()), shapes
    assert set(bad["role"]) == {"customer", "craftsman"}


def test_customers_buy_in_several_sources_under_differently_spelled_emails(shared: Shared) -> None:
    """The same normalised email shows up in 2+ sources, spelled differently."""
    conn = shared[0]
    emails = fetch_frame(conn, ALL_EMAILS).with_columns(
        key=pl.col("email").str.strip_chars(" ").str.to_lowercase())
    for role in ("customer", "craftsman"):
        people = emails.filter(pl.col("role") == role).group_by("key").agg(
            sources=pl.col("source").n_unique(), spellings=pl.col("email").n_unique())
        shared = people.filter((pl.col("sources") >= 2) & (pl.col("spellings") >= 2))
        assert shared.height >= 5, role
    raw = emails["email"]
    assert (raw.str.starts_with(" ") | raw.str.ends_with(" ")).sum() > 0
    assert (raw.str.contains("[A-Z]") & raw.str.contains("@")).sum() > 0


def test_customers_have_gaps_and_several_orders_a_month_with_ties(shared: Shared) -> None:
    """Some customers lack a name or birthday; some customer-months tie on category and
    on craftsman, and some customer-months have several orders."""
    conn = shared[0]
    gaps = fetch_frame(conn, """
        select count(*) filter (where customer_name is null) as no_name,
               count(*) filter (where customer_birthday is null) as no_birthday,
               count(*) filter (where customer_address is null) as no_address
        from source3.craft_market_customers""").row(0, named=True)
    assert all(v > 0 for v in gaps.values()), gaps
    valid = canonical(conn).filter("valid").with_columns(
        customer=pl.col("customer_email").str.strip_chars(" ").str.to_lowercase(),
        craftsman=pl.col("craftsman_email").str.strip_chars(" ").str.to_lowercase(),
        month=pl.col("created").dt.strftime("%Y-%m"))
    per_month = valid.group_by("customer", "month").len()
    assert per_month.filter(pl.col("len") >= 3).height > 0

    def ties(column: str) -> int:
        counts = valid.group_by("customer", "month", column).len()
        top = counts.group_by("customer", "month").agg(
            best=pl.col("len").max(),
            at_best=(pl.col("len") == pl.col("len").max()).sum(),
            orders=pl.col("len").sum())
        return top.filter((pl.col("at_best") >= 2) & (pl.col("orders") >= 2)).height

    assert ties("product_type") > 0
    assert ties("craftsman") > 0


def test_statuses_dates_and_descriptions_look_real(shared: Shared) -> None:
    """All four statuses in several spellings, 48 months, done orders completed days to
    weeks later, descriptions with quotes, apostrophes and newlines."""
    conn = shared[0]
    valid = canonical(conn).filter("valid")
    spelled = valid["status"]
    assert set(spelled.str.strip_chars(" ").str.to_lowercase()) == set(gen.STATUSES)
    assert (spelled != spelled.str.strip_chars(" ").str.to_lowercase()).sum() > 0
    months = valid["created"].dt.strftime("%Y-%m")
    assert months.min() == "2021-01" and months.max() == "2024-12"
    assert months.n_unique() == 48
    norm = spelled.str.strip_chars(" ").str.to_lowercase()
    done = valid.filter(norm == "done")
    lag = (done["completion"] - done["created"]).dt.total_days().drop_nulls()
    assert done["completion"].null_count() / done.height < 0.1
    assert lag.min() >= 0 and 3 <= lag.median() <= 14 and lag.max() >= 21  # type: ignore[operator]
    not_done = valid.filter(norm != "done")
    assert not_done["completion"].null_count() / not_done.height > 0.8
    descriptions = fetch_frame(
        conn, "select product_description as d from source3.craft_market_orders")["d"]
    for mark in ('"', "'", "\n"):
        assert descriptions.str.contains(mark, literal=True).sum() > 0


def test_source2_products_are_one_per_craftsman_row(shared: Shared) -> None:
    """Orders reference (craftsman_id, product_id) of a masters row, except planted ones."""
    conn, generated = shared
    misses = fetch_value(conn, """
        select count(*) from source2.craft_market_orders_customers as o
        where not exists (
            select from source2.craft_market_masters_products as m
            where m.craftsman_id = o.craftsman_id and m.product_id = o.product_id)""")
    assert misses == generated.invalid["product_missing"] > 0
    # a craftsman (by email) sells several products, each on a row of its own
    products = fetch_value(conn, """
        select max(n) from (select count(*) as n from source2.craft_market_masters_products
                            group by lower(btrim(craftsman_email))) as per_craftsman""")
    assert products >= 2


def test_same_seed_gives_identical_sources_and_another_seed_does_not(
    make_db: Any,
) -> None:
    """Two databases generated with the same (orders, seed) hold byte-identical rows."""
    digests = []
    for seed in (SEED, SEED, SEED + 1):
        connection = connect(make_db())
        try:
            gen.generate(connection, 1500, seed)
            digests.append(contents_digest(connection))
        finally:
            connection.close()
    assert digests[0] == digests[1]
    assert all(digests[0][t] != digests[2][t] for t in gen.TABLES)


def test_identity_sequences_continue_after_the_generated_ids(
    conn: Any, generated: gen.GenerateSummary
) -> None:
    """A plain insert after generating takes the next id instead of colliding."""
    cur = conn.cursor()
    cur.execute("""
        insert into source3.craft_market_customers (customer_email)
        values ('new.customer@example.org') returning customer_id""")
    (new_id,) = cur.fetchone()
    cur.close()
    assert new_id == generated.rows["source3.craft_market_customers"] + 1
    conn.rollback()


def test_generate_refuses_filled_sources_unless_asked_to_replace(
    conn: Any, generated: gen.GenerateSummary
) -> None:
    """A second generate fails with one line; replace=True starts from empty tables."""
    before = contents_digest(conn)
    with pytest.raises(CraftmartError, match=r"already hold \d+ rows"):
        gen.generate(conn, 100, SEED)
    assert contents_digest(conn) == before
    gen.apply_changes(conn, 50, 1)
    again = gen.generate(conn, ORDERS, SEED, replace=True)
    assert again.rows == generated.rows
    assert contents_digest(conn) == before


def test_progress_reports_every_source_up_to_done(conn: Any) -> None:
    """progress(stage, fraction) is called per source, fractions rising to 1."""
    calls: list[tuple[str, float]] = []
    gen.generate(conn, 2000, SEED, progress=lambda stage, done: calls.append((stage, done)))
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for source in gen.SOURCES:
        assert sum(stage.startswith(source) for stage, _ in calls) >= 2


def test_apply_changes_changes_the_expected_rows(conn: Any, generated: gen.GenerateSummary) -> None:
    """Row and invalid-row counts move exactly as the summary says; parents stay."""
    before = canonical(conn)
    parents = ("source2.craft_market_masters_products", "source3.craft_market_customers",
               "source3.craft_market_craftsmans", "external_source.customers")
    parent_rows = {t: fetch_value(conn, f"select count(*) from {t}") for t in parents}
    last_day = before["created"].max()
    top_key = {s: before.filter(pl.col("source") == s)["row_key"].max() for s in gen.SOURCES}

    summary = gen.apply_changes(conn, 400, 7)

    assert summary.total == 400
    assert all(count > 0 for count in summary.applied.values()), summary.applied
    after = canonical(conn)
    assert after.height == before.height + summary.rows_inserted - summary.rows_deleted
    assert summary.rows_deleted == (summary.applied["order_deletions"]
                                    + summary.applied["invalid_order_deletions"])
    assert summary.rows_inserted == (summary.applied["new_orders_recent"]
                                     + summary.applied["new_orders_late"])
    for source, delta in summary.orders_delta.items():
        assert (after.filter(pl.col("source") == source).height
                - before.filter(pl.col("source") == source).height) == delta
    invalid_change = (summary.applied["rows_made_invalid"] - summary.applied["rows_made_valid"]
                      - summary.applied["invalid_order_deletions"])
    assert (~after["valid"]).sum() - (~before["valid"]).sum() == invalid_change
    assert {t: fetch_value(conn, f"select count(*) from {t}") for t in parents} == parent_rows
    new = after.join(pl.DataFrame(
        {"source": list(top_key), "top": list(top_key.values())}), on="source").filter(
        pl.col("row_key") > pl.col("top"))
    assert new.height == summary.rows_inserted and new["valid"].all()
    late = new.filter(pl.col("created") < last_day - timedelta(days=90)).height
    assert late == summary.applied["new_orders_late"]


def _quarantine_matches_sources(conn: Any, db: Database) -> pl.DataFrame:
    """After a pipeline run: the quarantine holds exactly the rows the sources' rules
    make invalid, and a row out of the warehouse's range (rule 7) exactly that reason and
    field. Returns the sources' canonical rows."""
    rows = canonical(conn)
    conn.commit()
    quarantine = query(db, """
        select source_name as source, source_order_id as order_key, reasons, out_of_range
        from craftmart.quarantine""")
    key = ["source", "order_key"]
    invalid = rows.filter(~pl.col("valid")).select(*key, *RULE_7)
    assert invalid.height == quarantine.height
    both = invalid.join(quarantine, on=key, how="inner")
    assert both.height == invalid.height  # the same rows
    for rule in RULE_7:
        assert both.filter(pl.col("reasons").list.contains(rule))[rule].all(), rule
        flagged = both.filter(rule)
        assert flagged.height > 0, rule
        assert all(r == [rule] for r in flagged["reasons"].to_list()), rule
    fields = both.filter("date_out_of_range")["out_of_range"].to_list()
    assert all(f in (["order_created_date"], ["order_completion_date"]) for f in fields)
    fields = both.filter("price_out_of_range")["out_of_range"].to_list()
    assert all(f == ["product_price"] for f in fields)
    return rows


def test_values_out_of_range_are_quarantined_and_changes_spoil_and_fix_them(
    make_db: Any,
) -> None:
    """A real run quarantines the planted rule-7 rows as date_out_of_range /
    price_out_of_range; changes turn valid rows into such rows and fix others, and the
    next run quarantines exactly the rows the sources then break rules with."""
    db = make_db()
    conn = connect(db)
    try:
        generated = gen.generate(conn, 2000, SEED, shape="narrow")
        pipeline.run(settings_for(db), db)
        before = _quarantine_matches_sources(conn, db)
        assert {r: int(before[r].sum()) for r in RULE_7} == {
            r: generated.invalid[r] for r in RULE_7}

        summary = gen.apply_changes(conn, 1000, 5, shape="narrow")
        pipeline.run(settings_for(db), db)
        after = _quarantine_matches_sources(conn, db)
    finally:
        conn.close()
    assert summary.applied["rows_made_invalid"] > 0 and summary.applied["rows_made_valid"] > 0
    key = ["source", "row_key"]
    kept = before.select(*key, *RULE_7, was_valid="valid").join(
        after.select(*key, *RULE_7, "valid"), on=key, suffix="_now")
    for rule in RULE_7:
        spoiled = kept.filter(pl.col("was_valid") & pl.col(f"{rule}_now"))
        fixed = kept.filter(pl.col(rule) & pl.col("valid"))
        assert spoiled.height > 0 and fixed.height > 0, rule


def test_apply_changes_moves_statuses_forward_and_changes_addresses(
    conn: Any, generated: gen.GenerateSummary
) -> None:
    """Orders leave 'created'; done orders gain completion dates; addresses change."""
    status_sql = """select lower(btrim(order_status)) as s, count(*) as n,
                           count(order_completion_date) as completed
                    from source3.craft_market_orders group by 1"""
    before = dict(fetch_frame(conn, status_sql).select("s", "n").iter_rows())
    addresses = fetch_frame(conn, "select customer_id, customer_address "
                                  "from external_source.customers order by 1")
    gen.apply_changes(conn, 1000, 3)
    after = dict(fetch_frame(conn, status_sql).select("s", "n").iter_rows())
    assert after["done"] > before["done"]
    changed = addresses.join(fetch_frame(
        conn, "select customer_id, customer_address as now from external_source.customers"),
        on="customer_id").filter(pl.col("customer_address").ne_missing(pl.col("now")))
    assert changed.height > 0


def test_changes_put_back_the_texts_of_the_rows_they_rewrite(
    conn: Any, generated: gen.GenerateSummary
) -> None:
    """Changes are worked out without the order rows' long texts, which the rows they
    write take back: a rewritten order keeps its product's and craftsman's texts, an order
    moved to another customer takes that customer's, a customer who moves house has the
    new address on every order, and a new order has the texts of the order it copies."""
    texts = ("product_name, product_description, craftsman_name, craftsman_address,"
             " customer_name, customer_address")
    sql = f"select id, customer_id, product_id, {texts} from source1.craft_market_wide"
    before = fetch_frame(conn, sql)
    summary = gen.apply_changes(conn, 1000, 3)
    after = fetch_frame(conn, sql)
    assert summary.applied["customer_moves"] > 0 and summary.applied["product_changes"] > 0
    product = ["product_id", "product_name", "product_description", "craftsman_name",
               "craftsman_address"]
    customer = ["customer_id", "customer_name"]

    kept = before.join(after, on="id", suffix="_now")
    assert kept.height >= before.height - summary.rows_deleted
    for c in product[1:]:
        assert kept.filter(pl.col(c).ne_missing(pl.col(f"{c}_now"))).is_empty(), c
    stayed = kept.filter(pl.col("customer_id") == pl.col("customer_id_now"))
    assert stayed.filter(pl.col("customer_name").ne_missing(pl.col("customer_name_now"))
                         ).is_empty()
    moved = kept.filter(pl.col("customer_id") != pl.col("customer_id_now")).select(
        pl.col("customer_id_now").alias("customer_id"),
        pl.col("customer_name_now").alias("customer_name"))
    assert moved.height > 0
    assert moved.join(before.select(customer), on=customer, how="anti",
                      nulls_equal=True).is_empty()

    rehoused = stayed.filter(
        pl.col("customer_address").ne_missing(pl.col("customer_address_now")))
    assert rehoused.height > 0
    # on the orders there before (a new order copies its template's row as it was)
    addresses = after.filter(pl.col("id") <= before["id"].max()).join(
        rehoused.select("customer_id").unique(), on="customer_id")
    assert addresses.group_by("customer_id").agg(pl.col("customer_address").n_unique())[
        "customer_address"].max() == 1
    assert addresses.join(before.select("customer_id", "customer_address"),
                          on=["customer_id", "customer_address"]).is_empty()

    new = after.filter(pl.col("id") > before["id"].max())
    assert new.height > 0
    assert new.join(before.select(product), on=product, how="anti",
                    nulls_equal=True).is_empty()
    assert new.join(before.select(customer), on=customer, how="anti",
                    nulls_equal=True).is_empty()


def test_apply_changes_is_deterministic_for_a_seed(make_db: Any) -> None:
    """The same sources and seed give the same changed sources."""
    digests = []
    for _ in range(2):
        connection = connect(make_db())
        try:
            gen.generate(connection, 1500, SEED)
            gen.apply_changes(connection, 300, 11)
            gen.apply_changes(connection, 300, 12)
            digests.append(contents_digest(connection))
        finally:
            connection.close()
    assert digests[0] == digests[1]


def test_apply_changes_needs_orders(conn: Any) -> None:
    """Changing empty sources fails with one line instead of doing nothing silently."""
    with pytest.raises(CraftmartError, match="no orders"):
        gen.apply_changes(conn, 10, 1)


def test_small_and_empty_runs_still_work(conn: Any) -> None:
    """Zero orders leaves empty sources; a handful of orders still covers every source."""
    assert gen.generate(conn, 0, SEED).rows == dict.fromkeys(gen.TABLES, 0)
    summary = gen.generate(conn, 7, SEED, replace=True)
    assert sum(summary.orders_per_source.values()) == 7
    assert canonical(conn).height == 7


def test_real_rows_have_descriptions_of_300_to_600_characters(shared: Shared) -> None:
    """Descriptions spread over 300-600 characters, one per product, in varied words."""
    conn, generated = shared
    assert generated.shape == "real"
    descriptions = fetch_frame(conn, ALL_DESCRIPTIONS)["d"]
    lengths = descriptions.str.len_chars()
    assert lengths.min() >= 300 and lengths.max() <= 600  # type: ignore[operator]
    assert lengths.quantile(0.1) < 380 and lengths.quantile(0.9) > 500  # type: ignore[operator]
    products = fetch_value(conn, """
        select count(distinct product_id) from source2.craft_market_masters_products""")
    assert descriptions.len() >= products  # no two products share a description
    words = descriptions.str.extract_all(r"[A-Za-z']+").explode().str.to_lowercase()
    assert words.n_unique() >= 200


def test_real_rows_have_full_street_addresses(shared: Shared) -> None:
    """Every address has a house number, a postcode and a country; some have a flat."""
    conn = shared[0]
    addresses = fetch_frame(conn, ALL_ADDRESSES)["address"].drop_nulls()
    assert addresses.len() > 0
    for pattern in (HOUSE_NUMBER, POSTCODE, COUNTRY):
        assert addresses.str.contains(pattern).all(), pattern
    flats = addresses.str.contains(r"(apt\.|Apt|Flat) \d+")
    assert 0.2 < flats.mean() < 0.9  # type: ignore[operator]
    assert addresses.str.len_chars().mean() >= 50  # type: ignore[operator]
    assert addresses.str.extract(COUNTRY, 1).n_unique() >= 5


def test_narrow_rows_differ_from_real_ones_only_in_their_texts(
    conn: Any, shared: Shared
) -> None:
    """shape="narrow" keeps short texts; orders, people, rules and ids are those of the
    real shape for the same (orders, seed)."""
    summary = gen.generate(conn, ORDERS, SEED, shape="narrow")
    assert summary.shape == "narrow" and "narrow rows" in str(summary)
    real_conn, real = shared
    assert (summary.rows, summary.invalid) == (real.rows, real.invalid)
    key = ["source", "row_key"]
    assert canonical(conn).sort(key).equals(canonical(real_conn).sort(key))
    descriptions = fetch_frame(conn, ALL_DESCRIPTIONS)["d"].str.len_chars()
    assert descriptions.max() < 150  # type: ignore[operator]
    addresses = fetch_frame(conn, ALL_ADDRESSES)["address"].drop_nulls()
    assert addresses.str.contains(NARROW_ADDRESS).all()


def test_changes_write_addresses_of_the_sources_shape(make_db: Any) -> None:
    """Customers who move get a full address in real shape, a short one in narrow."""
    moved = {}
    for shape in gen.SHAPES:
        connection = connect(make_db())
        try:
            gen.generate(connection, 1500, SEED, shape=shape)
            sql = "select customer_id, customer_address from source3.craft_market_customers"
            before = fetch_frame(connection, sql)
            gen.apply_changes(connection, 400, 5, shape=shape)
            after = fetch_frame(connection, sql).rename({"customer_address": "now"})
            moved[shape] = before.join(after, on="customer_id").filter(
                pl.col("customer_address").ne_missing(pl.col("now")))["now"].drop_nulls()
        finally:
            connection.close()
    assert moved["real"].len() > 0 and moved["narrow"].len() > 0
    assert moved["real"].str.contains(POSTCODE).all()
    assert moved["real"].str.contains(COUNTRY).all()
    assert moved["narrow"].str.contains(NARROW_ADDRESS).all()
    with pytest.raises(ValueError, match="unknown row shape"):
        gen.apply_changes(connect(make_db()), 1, 1, shape="wide")  # type: ignore[arg-type]


def test_generate_command_takes_a_shape(make_db: Any, tmp_path: Path) -> None:
    """`generate --shape narrow` writes short texts; an unknown shape is one line, exit 2."""
    db = make_db()
    narrow = _cli("generate", "--dsn", db.libpq_uri(), "--orders", "200", "--shape", "narrow",
                  cwd=tmp_path)
    assert narrow.returncode == 0, narrow.stderr
    assert "narrow rows" in narrow.stdout
    with connection(db) as conn:
        lengths = fetch_frame(conn, ALL_DESCRIPTIONS)["d"].str.len_chars()
    assert lengths.max() < 150  # type: ignore[operator]
    wide = _cli("generate", "--dsn", db.libpq_uri(), "--changes", "5", "--shape", "wide",
                cwd=tmp_path)
    assert wide.returncode == 2
    assert wide.stderr.strip().splitlines() == [
        "craftmart-batch: error: --shape: unknown row shape 'wide'; choose one of real, narrow"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CRAFTMART_DSN", "CRAFTMART_CONFIG")}
    return subprocess.run([sys.executable, "-m", "craftmart_batch.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False, env=env)
