"""Reading column values from logically decoded lines (test_decoding's text format)."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from craftmart_batch.transform.decoded import line_prefix, sql_text_array, values

PREFIX = line_prefix("source1.craft_market_wide")


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_inserts_updates_deletes_give_each_tuple_and_a_truncate_is_unknown() -> None:
    lines = pl.Series([
        "BEGIN",
        f"{PREFIX}INSERT: id[bigint]:1 order_id[bigint]:10 name[text]:'Ann' price[integer]:5",
        f"{PREFIX}UPDATE: id[bigint]:2 order_id[bigint]:11 name[text]:null price[integer]:6",
        f"{PREFIX}UPDATE: old-key: id[bigint]:3 order_id[bigint]:12 name[text]:'x'"
        f" price[integer]:1 new-tuple: id[bigint]:3 order_id[bigint]:13 name[text]:'x'"
        " price[integer]:1",
        f"{PREFIX}DELETE: id[bigint]:4 order_id[bigint]:null name[text]:'y' price[integer]:2",
        f"{PREFIX}TRUNCATE: (no-flags)",
        "table source1.other: INSERT: order_id[bigint]:99",
        "COMMIT",
    ])
    found, unknown = values(lines, PREFIX, ["order_id"])
    assert found["order_id"].to_list() == ["10", "11", "12", "13", None]
    assert unknown == 1


def test_a_tuple_without_every_column_named_is_unknown() -> None:
    """A delete under a replica identity that does not hold the columns (or an update's
    old key that lacks one) names no row."""
    lines = pl.Series([
        f"{PREFIX}DELETE: id[bigint]:4",
        f"{PREFIX}UPDATE: old-key: id[bigint]:4 new-tuple: id[bigint]:5 craftsman_id[bigint]:7"
        " product_id[bigint]:8",
    ])
    found, unknown = values(lines, PREFIX, ["craftsman_id", "product_id"])
    assert found.rows() == [("7", "8")]
    assert unknown == 1


def test_quoted_names_array_types_and_toasted_values() -> None:
    lines = pl.Series([
        f'{PREFIX}INSERT: "odd ""key"""[integer]:3 tags[text[]]:\'{{a,b}}\' k[bigint]:1',
        f"{PREFIX}UPDATE: k[bigint]:2 note[text]:unchanged-toast-datum",
    ])
    assert values(lines, PREFIX, ['odd "key"'])[0].rows() == [("3",)]
    assert values(lines, PREFIX, ["k"])[0].rows() == [("1",), ("2",)]
    found, unknown = values(lines, PREFIX, ["k", "note"])
    assert found.is_empty() and unknown == 2


_texts = st.text(alphabet=st.sampled_from("ab' :[]\"-new-tuple:order_id[bigint]:7 "), max_size=30)


@given(rows=st.lists(st.tuples(st.one_of(st.none(), st.integers(-5, 10**12)), _texts, _texts),
                     max_size=6))
def test_any_text_around_the_key_is_read_past(
    rows: list[tuple[int | None, str, str]],
) -> None:
    """Text values holding quotes, brackets, colons and what looks like a column or a
    new tuple never make a key appear or go missing."""
    lines = pl.Series([
        f"{PREFIX}UPDATE: old-key: name[text]:{_quoted(a)} order_id[bigint]:"
        f"{'null' if key is None else key} new-tuple: note[text]:{_quoted(b)}"
        f" order_id[bigint]:{'null' if key is None else key + 1}"
        for key, a, b in rows
    ], dtype=pl.String)
    found, unknown = values(lines, PREFIX, ["order_id"])
    expected = []
    for key, _, _ in rows:
        for k in ((None, None) if key is None else (key, key + 1)):
            value = None if k is None else str(k)
            if value not in expected:
                expected.append(value)
    assert found["order_id"].to_list() == expected
    assert unknown == 0


def test_text_values_become_one_sql_array() -> None:
    frame = pl.DataFrame({"v": ["a", "it's", None]})
    assert frame.select(sql_text_array(pl.col("v"))).item() == (
        "array['a','it''s',null]::text[]")
