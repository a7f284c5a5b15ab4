"""Properties of validate + build_warehouse + diff_table over generated canonical frames.

The frames are small (0-40 rows) and dense on purpose: a few people whose emails vary
in case and padding, a few products, three dates (so recency ties are common), order
keys that collide, and a mix of valid and invalid rows, so that identity, ties and
duplicates happen often.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from craftmart_batch.extract.queries import CANONICAL_SCHEMA
from craftmart_batch.transform.diff import diff_table
from craftmart_batch.transform.identity import (
    CRAFTSMAN_ATTRS,
    CRAFTSMAN_KEY,
    CUSTOMER_ATTRS,
    CUSTOMER_KEY,
    ORDER_ATTRS,
    ORDER_KEY,
    PRODUCT_ATTRS,
    PRODUCT_KEY,
    Warehouse,
    build_warehouse,
)
from craftmart_batch.transform.validate import validate

RANKS = {"source1": 1, "source2": 2, "source3": 3, "external_source": 4}
CRAFTSMAN_EMAILS = ["ann@craft.example", "cid@craft.example", "eve@mail.example"]
CUSTOMER_EMAILS = ["bob@buyer.example", "dan@buyer.example", "eve@mail.example"]
BAD_EMAILS = [None, "", "   ", "ann@@craft.example", "bob buyer@example"]
STATUSES = ["created", "in progress", "delivery", "done"]
DAY0 = dt.date(2024, 1, 1)

#: (name, key, attrs) of the four warehouse tables
TABLES = {
    "craftsmen": (CRAFTSMAN_KEY, CRAFTSMAN_ATTRS),
    "customers": (CUSTOMER_KEY, CUSTOMER_ATTRS),
    "products": (PRODUCT_KEY, PRODUCT_ATTRS),
    "orders": (ORDER_KEY, ORDER_ATTRS),
}

# Sized so the whole file runs in under 30 s even on a busy two-core machine.
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- strategies -----------------------------------------------------------------------


@st.composite
def respelled(draw: st.DrawFn, text: str | None) -> str | None:
    """The same text with random letter case and 0-2 spaces on either side."""
    if text is None:
        return None
    flips = draw(st.integers(0, 2 ** len(text) - 1))  # bit i: upper-case character i
    body = "".join(c.upper() if flips >> i & 1 else c for i, c in enumerate(text))
    left, right = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    return " " * left + body + " " * right


@st.composite
def canonical_row(draw: st.DrawFn) -> dict[str, Any]:
    """One canonical row; about half are drawn clean (valid but for a duplicate key),
    the others from pools that also hold values breaking the rules."""
    dirty = draw(st.booleans())

    def pick(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
        return st.sampled_from(good + bad) if dirty else st.sampled_from(good)

    def email(pool: list[str]) -> st.SearchStrategy[str | None]:
        return pick(pool, BAD_EMAILS).flatmap(lambda e: respelled(e) if e in pool else st.just(e))

    source = draw(st.sampled_from(list(RANKS)))
    created = draw(pick([DAY0 + dt.timedelta(days=d) for d in range(3)], [None]))
    completion_offset = draw(pick([None, 0, 1, 4], [-1]))
    completion = (
        None
        if completion_offset is None
        else (created or DAY0) + dt.timedelta(days=completion_offset)
    )
    return {
        "source_name": source,
        "source_rank": RANKS[source],
        "source_order_id": draw(pick(list(range(12)), [None])),
        "order_created_date": created,
        "order_completion_date": completion,
        "order_status": draw(pick(STATUSES, ["shipped", None, "in  progress"]).flatmap(respelled)),
        "craftsman_name": draw(st.sampled_from(["Ann", "Cid", None])),
        "craftsman_address": draw(st.sampled_from(["1 Clay St", "9 Oak Rd", None])),
        "craftsman_birthday": draw(
            st.sampled_from([dt.date(1980, 1, 2), dt.date(1975, 6, 30), None])
        ),
        "craftsman_email": draw(email(CRAFTSMAN_EMAILS)),
        "product_name": draw(st.sampled_from(["Mug", "Bowl"])),
        "product_description": draw(st.sampled_from(["blue", "red", None])),
        "product_type": draw(st.sampled_from(["ceramics", "wood", None])),
        "product_price": draw(pick([1, 5, 100, 250, 10_000_000], [0, -1, None, 10_000_001])),
        "customer_name": draw(st.sampled_from(["Bob", "Dan", None])),
        "customer_address": draw(st.sampled_from(["2 Market Rd", "4 Elm St", None])),
        "customer_birthday": draw(
            st.sampled_from([dt.date(1990, 5, 6), dt.date(2000, 2, 29), None])
        ),
        "customer_email": draw(email(CUSTOMER_EMAILS)),
        "missing_reference": draw(pick([None], ["craft_market_masters_products"])),
        # a birthday the source held out of range arrives as null with its text here
        "out_of_range": draw(pick([None], ['{"customer_birthday": "infinity"}'])),
    }


def order_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["source_name"], r["source_order_id"])


# The size is drawn first (uniform over 0-40) because plain st.lists stays near a few
# rows, too few for people to meet across sources.
#: Any rows, order keys colliding within a source now and then.
rows_strategy = st.integers(0, 40).flatmap(
    lambda n: st.lists(canonical_row(), min_size=n, max_size=n)
)
#: Rows whose order keys are unique per source (no duplicate_order_key).
unique_rows_strategy = st.integers(0, 40).flatmap(
    lambda n: st.lists(canonical_row(), max_size=n, unique_by=order_key)
)


# --- helpers --------------------------------------------------------------------------


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=CANONICAL_SCHEMA)


def run(rows: list[dict[str, Any]]) -> tuple[pl.DataFrame, pl.DataFrame, Warehouse]:
    valid, quarantine = validate(frame(rows))
    return valid, quarantine, build_warehouse(valid)


def sorted_frame(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(df.columns, nulls_last=True)


def assert_same_rows(left: pl.DataFrame, right: pl.DataFrame) -> None:
    """Same rows, in any order."""
    assert_frame_equal(sorted_frame(left), sorted_frame(right))


def assert_same_warehouse(left: Warehouse, right: Warehouse) -> None:
    for table in TABLES:
        assert_same_rows(getattr(left, table), getattr(right, table))


def keys_of(df: pl.DataFrame, key: tuple[str, ...]) -> set[tuple[Any, ...]]:
    return set(df.select(key).iter_rows())


def canonical_from(w: Warehouse) -> pl.DataFrame:
    """Canonical rows that say exactly what the warehouse holds: one per order, each
    carrying the resolved attributes of its people and product and its own price."""
    products = w.products.select(*PRODUCT_KEY, "product_type")
    rows = (
        w.orders.join(w.craftsmen, on=CRAFTSMAN_KEY, how="left")
        .join(w.customers, on=CUSTOMER_KEY, how="left")
        .join(products, on=PRODUCT_KEY, how="left", nulls_equal=True)
        .with_columns(
            pl.col("source_name").replace_strict(RANKS, return_dtype=pl.Int32).alias("source_rank"),
            pl.lit(None, pl.String).alias("missing_reference"),
            pl.lit(None, pl.String).alias("out_of_range"),
        )
    )
    assert rows.height == w.orders.height
    return rows.select(pl.col(name).cast(dtype) for name, dtype in CANONICAL_SCHEMA.items())


# --- properties -------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(rows=rows_strategy, data=st.data())
def test_result_does_not_depend_on_row_order(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Shuffling the input rows changes neither valid rows, quarantine nor the warehouse."""
    shuffled = data.draw(st.permutations(rows))
    valid, quarantine, w = run(rows)
    valid2, quarantine2, w2 = run(shuffled)
    assert_same_rows(valid, valid2)
    assert_same_rows(quarantine, quarantine2)
    assert_same_warehouse(w, w2)


@PROPERTY_SETTINGS
@given(
    rows=rows_strategy,
    ranks=st.lists(st.integers(-10_000, 10_000), min_size=4, max_size=4, unique=True),
)
def test_only_the_relative_order_of_source_ranks_matters(
    rows: list[dict[str, Any]], ranks: list[int]
) -> None:
    """Renumbering the sources' ranks without reordering them gives the same warehouse."""
    renumbered = dict(zip(RANKS, sorted(ranks), strict=True))
    reranked = [{**r, "source_rank": renumbered[r["source_name"]]} for r in rows]
    _, quarantine, w = run(rows)
    _, quarantine2, w2 = run(reranked)
    assert_same_warehouse(w, w2)
    assert_same_rows(quarantine, quarantine2)


@PROPERTY_SETTINGS
@given(
    rows=rows_strategy,
    split=st.sampled_from(list(RANKS)),
    moved_keys=st.sets(st.integers(0, 11)),
    new_rank=st.one_of(st.none(), st.integers(-5, 10)),
)
def test_splitting_a_source_keeps_the_people_and_products(
    rows: list[dict[str, Any]], split: str, moved_keys: set[int], new_rank: int | None
) -> None:
    """Moving some order keys of a source to a new source keeps the set of people and
    products; with the new source at the same rank, their attributes are unchanged too.

    All rows of a key move together, so what is a duplicate stays a duplicate.
    """
    rank = RANKS[split] if new_rank is None else new_rank
    split_rows = [
        {**r, "source_name": "split_off", "source_rank": rank}
        if r["source_name"] == split and r["source_order_id"] in moved_keys
        else r
        for r in rows
    ]
    _, quarantine, w = run(rows)
    _, quarantine2, w2 = run(split_rows)

    assert quarantine2.height == quarantine.height
    for table in ("craftsmen", "customers", "products"):
        key, _ = TABLES[table]
        before, after = getattr(w, table), getattr(w2, table)
        assert after.height == before.height
        assert keys_of(after, key) == keys_of(before, key)
    merged_back = w2.orders.with_columns(pl.col("source_name").replace("split_off", split))
    assert_same_rows(merged_back, w.orders)
    if new_rank is None:
        assert_same_warehouse(
            Warehouse(w.craftsmen, w.customers, w.products, w.orders),
            Warehouse(w2.craftsmen, w2.customers, w2.products, merged_back),
        )


@PROPERTY_SETTINGS
@given(rows=unique_rows_strategy, data=st.data())
def test_email_case_and_padding_never_make_another_person(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Re-spelling every email (case, spaces around) gives the same people, products and orders.

    Order keys are unique here: among rows sharing a key, the survivor is chosen by raw
    content, raw emails included, so a re-spelling may legitimately pick another row.
    """
    respelled_rows = [
        {
            **r,
            "craftsman_email": data.draw(respelled(r["craftsman_email"])),
            "customer_email": data.draw(respelled(r["customer_email"])),
        }
        for r in rows
    ]
    _, quarantine, w = run(rows)
    _, quarantine2, w2 = run(respelled_rows)
    assert_same_warehouse(w, w2)
    assert_same_rows(
        quarantine.select("source_name", "source_order_id", "reasons"),
        quarantine2.select("source_name", "source_order_id", "reasons"),
    )
    for people, pool in ((w.craftsmen, CRAFTSMAN_EMAILS), (w.customers, CUSTOMER_EMAILS)):
        emails = people.columns[0]
        assert set(people[emails]) <= set(pool)
        assert people[emails].is_unique().all()


@settings(PROPERTY_SETTINGS, max_examples=15)
@given(rows=rows_strategy)
def test_feeding_the_warehouse_back_gives_the_same_warehouse(rows: list[dict[str, Any]]) -> None:
    """The warehouse's own orders, as canonical rows, are all valid and rebuild the same
    warehouse; and diffing the warehouse against itself writes nothing."""
    _, _, w = run(rows)
    again = canonical_from(w)
    valid, quarantine = validate(again)
    assert quarantine.is_empty()
    assert valid.height == w.orders.height
    assert_same_warehouse(build_warehouse(valid), w)

    for table, (key, attrs) in TABLES.items():
        diff = diff_table(getattr(w, table), getattr(w, table), key, attrs)
        assert diff.is_empty
        assert (diff.inserted, diff.updated) == (0, 0)


@PROPERTY_SETTINGS
@given(rows=rows_strategy)
def test_every_row_is_valid_or_quarantined_and_every_valid_order_is_one_fact(
    rows: list[dict[str, Any]],
) -> None:
    """Each input row lands in exactly one of valid and quarantine; each valid row is one
    order of the warehouse, and each (source, key) with a valid row has exactly one."""
    # tag each row in an attribute that no rule, identity or dedup relies on
    tagged = [{**r, "craftsman_address": f"row {i}"} for i, r in enumerate(rows)]
    valid, quarantine, w = run(tagged)

    valid_tags = valid["craftsman_address"].to_list()
    quarantined_tags = [
        raw["craftsman_address"] for raw in quarantine["raw"].str.json_decode().to_list()
    ]
    assert sorted(valid_tags + quarantined_tags) == sorted(r["craftsman_address"] for r in tagged)
    assert len(set(valid_tags)) == len(valid_tags)
    assert len(set(quarantined_tags)) == len(quarantined_tags)
    assert set(quarantine["source_name"]) | set(valid["source_name"]) <= set(RANKS)

    # every valid row, with its status normalised and nothing else changed
    by_tag = {r["craftsman_address"]: r for r in tagged}
    for v in valid.to_dicts():
        original = {
            k: x for k, x in by_tag[v["craftsman_address"]].items()
            if k not in ("missing_reference", "out_of_range")
        }
        assert v == {**original, "order_status": original["order_status"].strip(" ").lower()}

    assert w.orders.height == valid.height
    assert w.orders.select(ORDER_KEY).is_unique().all()
    assert keys_of(w.orders, ORDER_KEY) == keys_of(valid, ORDER_KEY)
    valid_keys = keys_of(valid, ORDER_KEY)
    input_keys_with_a_valid_row = {order_key(r) for r in tagged if order_key(r) in valid_keys}
    assert input_keys_with_a_valid_row == valid_keys


@PROPERTY_SETTINGS
@given(rows=rows_strategy)
def test_attributes_come_from_the_latest_valid_row(rows: list[dict[str, Any]]) -> None:
    """Each person's and product's attributes are those of its valid row with the largest
    (order_created_date, source_rank, source_order_id), computed here in plain Python."""
    valid, _, w = run(rows)
    valid_rows = valid.to_dicts()
    for r in valid_rows:
        for person in ("craftsman", "customer"):
            r[f"{person}_email"] = r[f"{person}_email"].strip(" ").lower()

    def recency(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["order_created_date"], r["source_rank"], r["source_order_id"])

    for table in ("craftsmen", "customers", "products"):
        key, attrs = TABLES[table]
        winners: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in valid_rows:
            k = tuple(r[c] for c in key)
            if k not in winners or recency(r) > recency(winners[k]):
                winners[k] = r
        expected = pl.DataFrame(
            [{c: r[c] for c in (*key, *attrs)} for r in winners.values()],
            schema={c: CANONICAL_SCHEMA[c] for c in (*key, *attrs)},
        )
        assert_same_rows(getattr(w, table), expected)


# --- diff_table ------------------------------------------------------------------------

diff_key = st.tuples(st.integers(0, 5), st.sampled_from(["a", "b", None]))
diff_attrs = st.tuples(st.sampled_from([1, 2, None]), st.sampled_from(["x", "y", None]))
diff_table_strategy = st.dictionaries(diff_key, diff_attrs, max_size=12)

DIFF_SCHEMA = {"k1": pl.Int64, "k2": pl.String, "a": pl.Int64, "b": pl.String}


def diff_frame(table: dict[tuple[Any, Any], tuple[Any, Any]], with_id: bool) -> pl.DataFrame:
    df = pl.DataFrame([(*k, *v) for k, v in table.items()], schema=DIFF_SCHEMA, orient="row")
    if with_id:  # the current side carries a surrogate id that the target does not have
        df = df.with_row_index("id", offset=100)
    return df


@settings(max_examples=200, deadline=None)
@given(current=diff_table_strategy, target=diff_table_strategy)
def test_diff_applied_to_current_gives_target(
    current: dict[tuple[Any, Any], tuple[Any, Any]],
    target: dict[tuple[Any, Any], tuple[Any, Any]],
) -> None:
    """Deleting ``deleted`` and upserting ``upserts`` turns current into target (null keys
    and attributes included), and only new or changed rows are upserted."""
    diff = diff_table(
        diff_frame(current, True), diff_frame(target, False), ["k1", "k2"], ["a", "b"]
    )

    applied = dict(current)
    for k1, k2 in diff.deleted.select("k1", "k2").iter_rows():
        del applied[(k1, k2)]
    for k1, k2, a, b in diff.upserts.select("k1", "k2", "a", "b").iter_rows():
        applied[(k1, k2)] = (a, b)
    assert applied == target

    assert {tuple(r[:2]) for r in diff.deleted.select("k1", "k2").iter_rows()} == set(
        current
    ) - set(target)
    assert "id" in diff.deleted.columns
    upserted = {(k1, k2): (a, b) for k1, k2, a, b in diff.upserts.iter_rows()}
    assert upserted == {k: v for k, v in target.items() if current.get(k, object()) != v}
    assert diff.inserted == len(set(target) - set(current))
    assert diff.updated == len(upserted) - diff.inserted
    assert diff.is_empty == (current == target)


@settings(PROPERTY_SETTINGS, max_examples=15)
@given(before=rows_strategy, after=rows_strategy)
def test_diff_of_two_warehouses_turns_one_into_the_other(
    before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> None:
    """For each warehouse table, one run's result plus the diff to another's is the other's."""
    _, _, current = run(before)
    _, _, target = run(after)
    for table, (key, attrs) in TABLES.items():
        cur, tgt = getattr(current, table), getattr(target, table)
        diff = diff_table(cur, tgt, key, attrs)
        applied = pl.concat(
            [
                cur.join(diff.deleted.select(key), on=key, how="anti", nulls_equal=True).join(
                    diff.upserts.select(key), on=key, how="anti", nulls_equal=True
                ),
                diff.upserts,
            ]
        )
        assert_same_rows(applied.select(*key, *attrs), tgt.select(*key, *attrs))
