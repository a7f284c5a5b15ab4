"""Properties of the partitions (transform/partition.py) over generated canonical frames:
validating and reducing rows partition by partition, in any number of partitions and
whichever partition comes first, gives the dimensions and facts of one partition; every
key falls in exactly one partition; a budget is met or refused with what it needs."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_identity_properties import frame, rows_strategy, sorted_frame

from craftmart_batch._sizes import format_size, parse_size
from craftmart_batch.transform import partition as parts
from craftmart_batch.transform.identity import build_warehouse
from craftmart_batch.transform.validate import validate

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def in_partitions(
    rows: pl.DataFrame, partitions: int, order: list[int], threshold: int
) -> parts.Warehouse:
    """Validate, normalise and reduce each partition (in ``order``), pooling the
    candidates as a run does (reduced past ``threshold`` unreduced rows)."""
    pool = parts.CandidatePool.empty(threshold)
    facts = []
    with_partition = rows.with_columns(
        parts.partition_of(pl.col("source_order_id"), partitions).alias("__p"))
    for p in order:
        valid, _ = validate(with_partition.filter(pl.col("__p") == p).drop("__p"))
        normalised = parts.normalised(valid)
        pool.add(parts.candidates(normalised))
        facts.append(parts.order_rows(normalised))
    dims = parts.dimensions(pool.reduce())
    return parts.Warehouse(dims.craftsmen, dims.customers, dims.products, pl.concat(facts))


@PROPERTY
@given(rows=rows_strategy, partitions=st.sampled_from([1, 2, 3, 7]),
       threshold=st.sampled_from([0, 5, 100_000]), data=st.data())
def test_partitions_in_any_order_give_the_warehouse_of_one(
    rows: list[dict[str, object]], partitions: int, threshold: int, data: st.DataObject
) -> None:
    canonical = frame(rows)
    order = data.draw(st.permutations(list(range(partitions))))
    split = in_partitions(canonical, partitions, order, threshold)
    whole = build_warehouse(validate(canonical)[0])
    for name in ("craftsmen", "customers", "products"):
        assert_frame_equal(getattr(split, name), getattr(whole, name), check_dtypes=False)
    assert_frame_equal(sorted_frame(split.orders),
                       sorted_frame(whole.orders.cast({"order_status": pl.String})))


@given(keys=st.lists(st.one_of(st.none(), st.integers(-2**62, 2**62)), max_size=50),
       partitions=st.integers(1, 9))
def test_every_changed_key_falls_in_exactly_one_partition(
    keys: list[int | None], partitions: int
) -> None:
    found = pl.DataFrame({"k": keys}, schema={"k": pl.Int64}).select(
        parts.partition_of(pl.col("k"), partitions).alias("p"))["p"].to_list()
    assert all(0 <= p < partitions for p in found)
    assert [p for k, p in zip(keys, found, strict=True) if k is None] == [0] * keys.count(None)


def test_key_ranges_cover_each_source_from_its_smallest_to_its_largest_key() -> None:
    ranges = parts.KeyRanges.between({"s1": (1, 100), "s2": (1000, 1003), "empty": (None, None)},
                                     4)
    assert ranges.cuts == {"s1": (26, 51, 76), "s2": (1001, 1002, 1003)}
    assert ranges.key_sql("s1", "k", 0) == "(k < 26 or k is null)"
    assert ranges.key_sql("s1", "k", 2) == "(k >= 51 and k < 76)"
    assert ranges.key_sql("s1", "k", 3) == "(k >= 76)"
    assert (ranges.key_sql("empty", "k", 0), ranges.key_sql("empty", "k", 1)) == ("true", "false")
    # a source no longer registered (rows left in f_order or quarantine) falls in 0
    assert "name not in ('s1', 's2')" in ranges.sql("name", "k", 0)
    assert "not in" not in ranges.sql("name", "k", 1)
    assert parts.KeyRanges.between({"s1": (1, 100)}, 1).sql("name", "k", 0) == "true"


def test_a_source_with_a_scan_column_is_pulled_by_its_ranges_its_repeated_keys_in_0() -> None:
    scans = {"s1": parts.Scan("id", (10, 20), repeated=(7, 42), key_nullable=True),
             "s2": parts.Scan("id", (5, 9))}
    ranges = parts.KeyRanges.between({"s1": (1, 30), "s2": (1, 30), "s3": (1, 30)}, 3, scans)
    apart = "k is null or k = any('{7,42}'::bigint[])"
    assert ranges.pull_sql("s1", "k", 0, "id") == f"(id < 10 or {apart})"
    assert ranges.pull_sql("s1", "k", 1, "id") == f"(id >= 10 and id < 20 and not ({apart}))"
    assert ranges.pull_sql("s2", "k", 2, "id") == "(id >= 9)"  # no repeats, no nulls
    assert ranges.pull_sql("s3", "k", 1, None) == ranges.key_sql("s3", "k", 1)  # by key
    one = parts.KeyRanges.between({"s1": (1, 30)}, 1, scans)
    assert one.pull_sql("s1", "k", 0, "id") == "true"


def test_key_ranges_between_cuts_cover_every_key_once() -> None:
    assert parts.range_conditions("email", []) == ["true"]
    assert parts.range_conditions("email", ["b@x", "o'k@x"]) == [
        "email < 'b@x'", "email >= 'b@x' and email < 'o''k@x'", "email >= 'o''k@x'"]
    assert parts.range_conditions("craftsman_id", [10, 10, 20]) == [
        "craftsman_id < 10", "craftsman_id >= 10 and craftsman_id < 10",  # empty: a repeat
        "craftsman_id >= 10 and craftsman_id < 20", "craftsman_id >= 20"]


def test_a_budget_sizes_the_partitions_and_refuses_what_cannot_fit() -> None:
    base = dict(rows=1_000_000, entities=150_000, largest_entity_orders=200,
                mart_orders=1_000_000)
    roomy = parts.Sizing.plan(**base, budget=64 * 2**30)
    assert roomy == parts.Sizing(1, 1, pool_rows=150_000)  # the whole pool: no spill
    tight = parts.Sizing.plan(**base, budget=700 * 2**20)
    room = 700 * 2**20 - parts.BASE_BYTES - 2 * 150_000 * parts.ENTITY_BYTES
    assert tight.pool_rows == 150_000
    assert tight.partitions == -(-1_000_000 * parts.ROW_BYTES // room) > 1
    assert parts.Sizing.plan(**base, budget=700 * 2**20, requested=3) == parts.Sizing(
        3, 3, pool_rows=50_000)
    smallest = (parts.BASE_BYTES + 2 * parts.MIN_POOL_ROWS * parts.ENTITY_BYTES
                + parts.MIN_PARTITION_ROWS * parts.ROW_BYTES)
    with pytest.raises(parts.BudgetTooSmall) as refused:
        parts.Sizing.plan(**base, budget=smallest - 1)
    assert refused.value.needed == smallest
    assert parts.Sizing.plan(**base, budget=smallest).partitions >= 1
    # the busiest entity's orders must fit one mart group
    with pytest.raises(parts.BudgetTooSmall):
        parts.Sizing.plan(**{**base, "largest_entity_orders": 10**7}, budget=smallest)


def test_entities_past_a_third_of_the_budget_spill_and_never_raise_the_smallest_budget(
) -> None:
    """The pool takes at most a third of the budget (past the base), whatever the number
    of people and products: more of them spill sooner, and the budget that works stays."""
    base = dict(rows=30_000_000, largest_entity_orders=200, mart_orders=30_000_000)
    budget = 2 * 2**30
    smallest = (parts.BASE_BYTES + 2 * parts.MIN_POOL_ROWS * parts.ENTITY_BYTES
                + parts.MIN_PARTITION_ROWS * parts.ROW_BYTES)
    few = parts.Sizing.plan(**base, entities=100_000, budget=budget)
    many = parts.Sizing.plan(**base, entities=100_000_000, budget=budget)
    assert few.pool_rows == 100_000
    assert many.pool_rows == parts.MIN_POOL_ROWS + (budget - smallest) // parts.POOL_SHARE // (
        2 * parts.ENTITY_BYTES)
    assert 700_000 < many.pool_rows < 1_000_000
    room = budget - parts.BASE_BYTES - many.pool_rows * 2 * parts.ENTITY_BYTES
    assert many.partitions == -(-30_000_000 * parts.ROW_BYTES // room) < 100
    assert parts.Sizing.plan(**base, entities=100_000_000, budget=smallest).pool_rows == (
        parts.MIN_POOL_ROWS)


@pytest.mark.parametrize(("text", "size"), [
    ("700MB", 700 * 2**20), ("1.5GB", 3 * 2**29), ("2 GiB", 2 * 2**30), ("512m", 512 * 2**20),
    ("1048576", 2**20), ("64kb", 64 * 2**10),
])
def test_sizes_read_as_people_write_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "0MB", "-1GB", "1.5XB", "nan", "inf GB"])
def test_what_is_not_a_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_sizes_print_rounded_up() -> None:
    assert [format_size(n) for n in (700 * 2**20, 700 * 2**20 + 1, 3 * 2**29)] == [
        "700MB", "701MB", "1.5GB"]
