"""Validity rules (SPEC §3): which rows are valid, and what quarantine says about the others."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import polars as pl
import pytest
from helpers import DEFAULT_ORDER

from craftmart_batch.config import CANONICAL_FIELDS
from craftmart_batch.extract.queries import CANONICAL_SCHEMA
from craftmart_batch.transform.validate import (
    DATE_FIELDS,
    DUPLICATE_RULE,
    FIRST_DATE,
    LAST_DATE,
    MAX_PRICE,
    RULE_NAMES,
    RULES,
    validate,
)

CREATED = dt.date(2024, 3, 10)

#: A valid canonical row of source1; tests override what they care about.
VALID_ROW: dict[str, Any] = {
    "source_name": "source1",
    "source_rank": 1,
    "source_order_id": 1,
    **DEFAULT_ORDER,
    "order_created_date": CREATED,
    "missing_reference": None,
    "out_of_range": None,
}

#: For each rule: overrides of VALID_ROW that break that rule and no other.
BREAKERS: dict[str, dict[str, Any]] = {
    "order_key_missing": {"source_order_id": None},
    "created_date_missing": {"order_created_date": None},
    "status_unknown": {"order_status": "shipped"},
    "completion_before_created": {"order_completion_date": CREATED - dt.timedelta(days=1)},
    "date_out_of_range": {"customer_birthday": None,
                          "out_of_range": '{"customer_birthday": "infinity"}'},
    "price_not_positive": {"product_price": 0},
    "price_out_of_range": {"product_price": 10_000_001},
    "craftsman_email_invalid": {"craftsman_email": "ann@@craft.example"},
    "customer_email_invalid": {"customer_email": "bob buyer@example"},
    "missing_reference": {"missing_reference": "craft_market_masters_products"},
}


def row(**overrides: Any) -> dict[str, Any]:
    unknown = set(overrides) - set(CANONICAL_SCHEMA)
    assert not unknown, f"not canonical columns: {unknown}"
    return {**VALID_ROW, **overrides}


def canonical(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=CANONICAL_SCHEMA)


def single_reasons(r: dict[str, Any]) -> list[str]:
    """The reasons of one row: [] when valid (and then it must not be in quarantine)."""
    valid, quarantine = validate(canonical(r))
    assert valid.height + quarantine.height == 1
    return [] if valid.height else list(quarantine["reasons"][0])


def test_breakers_cover_every_rule_but_duplicates() -> None:
    """Every row-level rule has a breaker here, so no rule goes untested."""
    assert list(BREAKERS) == list(RULES)
    assert (*RULES, DUPLICATE_RULE) == RULE_NAMES


def test_valid_row_is_valid_and_kept_as_read() -> None:
    """A row breaking no rule is valid, with every canonical column as read."""
    valid, quarantine = validate(canonical(VALID_ROW))
    assert quarantine.is_empty()
    expected = {k: v for k, v in VALID_ROW.items()
                if k not in ("missing_reference", "out_of_range")}
    assert valid.to_dicts() == [expected]


@pytest.mark.parametrize("rule", list(BREAKERS))
def test_each_rule_broken_alone_gives_exactly_that_reason(rule: str) -> None:
    """A row breaking one rule is quarantined with that rule as its only reason."""
    r = row(**BREAKERS[rule])
    valid, quarantine = validate(canonical(r))
    assert valid.is_empty()
    assert quarantine.select("source_name", "source_order_id", "reasons").to_dicts() == [
        {"source_name": "source1", "source_order_id": r["source_order_id"], "reasons": [rule]}
    ]


def test_several_rules_broken_give_all_reasons_in_rule_order() -> None:
    """Every combination of broken rules is reported in full, in RULE_NAMES order.

    The exceptions are by definition: a row without a created date cannot also have
    its completion before it, and a price cannot be both too small and too large (the
    later breaker's price wins).
    """
    rules = list(BREAKERS)
    combos = [combo for n in range(2, len(rules) + 1) for combo in itertools.combinations(rules, n)]
    rows = []
    for i, combo in enumerate(combos):
        overrides: dict[str, Any] = {"source_order_id": i, "product_name": f"combo {i}"}
        for rule in combo:
            overrides.update(BREAKERS[rule])
        rows.append(row(**overrides))
    valid, quarantine = validate(canonical(*rows))
    assert valid.is_empty()
    assert quarantine.height == len(combos)
    got = {
        json.loads(raw)["product_name"]: reasons
        for raw, reasons in zip(quarantine["raw"], quarantine["reasons"].to_list(), strict=True)
    }
    expected = {f"combo {i}": expected_reasons(combo) for i, combo in enumerate(combos)}
    assert got == expected


def expected_reasons(broken: tuple[str, ...]) -> list[str]:
    # without a created date there is nothing for the completion date to be before
    if "created_date_missing" in broken:
        broken = tuple(r for r in broken if r != "completion_before_created")
    if "price_out_of_range" in broken:
        broken = tuple(r for r in broken if r != "price_not_positive")
    return [r for r in RULE_NAMES if r in broken]


# --- status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "stored"),
    [
        ("created", "created"),
        ("in progress", "in progress"),
        ("delivery", "delivery"),
        ("done", "done"),
        ("Created", "created"),
        ("IN PROGRESS", "in progress"),
        ("In Progress", "in progress"),
        ("DeLiVeRy", "delivery"),
        ("  done", "done"),
        ("done   ", "done"),
        ("  In progress  ", "in progress"),
    ],
)
def test_status_in_any_case_and_padding_is_valid_and_stored_normalised(
    status: str, stored: str
) -> None:
    """Statuses are compared as lower(btrim(status)) and stored in that form."""
    valid, quarantine = validate(canonical(row(order_status=status)))
    assert quarantine.is_empty()
    assert valid["order_status"].to_list() == [stored]


@pytest.mark.parametrize(
    "status",
    [None, "", "   ", "shipped", "inprogress", "in  progress", "in_progress", "\tdone", "done\n"],
)
def test_unknown_or_missing_status_is_invalid(status: str | None) -> None:
    """A status outside the four (after lower/btrim, which trims spaces only) is status_unknown."""
    assert single_reasons(row(order_status=status)) == ["status_unknown"]


# --- emails -------------------------------------------------------------------------

INVALID_EMAILS = [
    pytest.param("ann@craft@example", id="two-at"),
    pytest.param("ann@@craft.example", id="double-at"),
    pytest.param("@@", id="only-ats"),
    pytest.param("ann craft@example", id="space-inside-local"),
    pytest.param("ann@craft example", id="space-inside-domain"),
    pytest.param("ann@craft\texample", id="tab-inside"),
    pytest.param("ann@craft.example\n", id="trailing-newline"),
    pytest.param("\tann@craft.example", id="leading-tab-not-trimmed"),
    pytest.param("ann.craft.example", id="no-at"),
    pytest.param("@craft.example", id="empty-local"),
    pytest.param("ann@", id="empty-domain"),
    pytest.param("", id="empty"),
    pytest.param("   ", id="spaces-only"),
    pytest.param(None, id="null"),
]


@pytest.mark.parametrize("person", ["craftsman", "customer"])
@pytest.mark.parametrize("email", INVALID_EMAILS)
def test_malformed_email_is_invalid_with_that_persons_reason(
    person: str, email: str | None
) -> None:
    """An email not matching ^[^@\\s]+@[^@\\s]+$ after btrim invalidates the row for that person."""
    r = row(**{f"{person}_email": email})
    assert single_reasons(r) == [f"{person}_email_invalid"]


@pytest.mark.parametrize("person", ["craftsman", "customer"])
@pytest.mark.parametrize(
    "email",
    ["ann@craft.example", "  ann@craft.example", "ann@craft.example  ", "  Ann@CRAFT.example "],
)
def test_email_padded_with_spaces_or_in_any_case_is_valid(person: str, email: str) -> None:
    """Spaces around an email are trimmed before the check; case does not matter."""
    valid, quarantine = validate(canonical(row(**{f"{person}_email": email})))
    assert quarantine.is_empty()
    assert valid[f"{person}_email"].to_list() == [email]


# --- dates and price ----------------------------------------------------------------


@pytest.mark.parametrize(
    "completion", [None, CREATED, CREATED + dt.timedelta(days=1), CREATED + dt.timedelta(days=400)]
)
def test_completion_on_or_after_created_or_missing_is_valid(completion: dt.date | None) -> None:
    """Completion on the created date, later, or not yet, keeps the row valid."""
    valid, quarantine = validate(canonical(row(order_completion_date=completion)))
    assert quarantine.is_empty()
    assert valid["order_completion_date"].to_list() == [completion]


def test_completion_one_day_before_created_is_invalid() -> None:
    """Completion before creation is completion_before_created."""
    r = row(order_completion_date=CREATED - dt.timedelta(days=1))
    assert single_reasons(r) == ["completion_before_created"]


def test_missing_created_date_with_completion_is_only_created_date_missing() -> None:
    """Without a created date, the completion date cannot be before it."""
    r = row(order_created_date=None, order_completion_date=CREATED)
    assert single_reasons(r) == ["created_date_missing"]


@pytest.mark.parametrize("price", [0, -1, -10_000, None])
def test_price_zero_negative_or_missing_is_invalid(price: int | None) -> None:
    """Only a positive price is valid."""
    assert single_reasons(row(product_price=price)) == ["price_not_positive"]


@pytest.mark.parametrize("price", [1, MAX_PRICE])
def test_a_price_from_one_to_the_maximum_is_valid(price: int) -> None:
    """The smallest positive price and the largest the warehouse holds are both valid."""
    valid, _ = validate(canonical(row(product_price=price)))
    assert valid["product_price"].to_list() == [price]


@pytest.mark.parametrize("price", [MAX_PRICE + 1, 2**62, 2**63 - 1])
def test_a_price_above_the_maximum_is_price_out_of_range_naming_the_field(price: int) -> None:
    """A price above 10,000,000 is quarantined as price_out_of_range, naming
    product_price, with the price as it was."""
    valid, quarantine = validate(canonical(row(product_price=price)))
    assert valid.is_empty()
    assert quarantine["reasons"].to_list() == [["price_out_of_range"]]
    assert quarantine["out_of_range"].to_list() == [["product_price"]]
    assert json.loads(quarantine["raw"][0])["product_price"] == price


@pytest.mark.parametrize("field", DATE_FIELDS)
@pytest.mark.parametrize("text", ["infinity", "-infinity", "5874897-12-31", "4714-11-24 BC",
                                  "1899-12-31", "3000-01-01"])
def test_a_date_read_out_of_range_is_date_out_of_range_with_its_source_text(
    field: str, text: str
) -> None:
    """A date the source held out of range (read as null, its text in out_of_range) is
    quarantined as date_out_of_range alone (not as a missing created date), naming the
    field, with the source's text in raw."""
    r = row(**{field: None, "out_of_range": json.dumps({field: text})})
    valid, quarantine = validate(canonical(r))
    assert valid.is_empty()
    assert quarantine["reasons"].to_list() == [["date_out_of_range"]]
    assert quarantine["out_of_range"].to_list() == [[field]]
    assert json.loads(quarantine["raw"][0])[field] == text


def test_every_date_out_of_range_is_named_and_in_range_dates_keep_their_iso_text() -> None:
    """Two dates out of range are both named, in canonical order; the raw JSON of an
    in-range date is its ISO text, as before rule 7."""
    r = row(order_completion_date=None, customer_birthday=None,
            out_of_range=json.dumps({"customer_birthday": "-infinity",
                                     "order_completion_date": "infinity"}))
    _, quarantine = validate(canonical(r))
    assert quarantine["out_of_range"].to_list() == [["order_completion_date",
                                                      "customer_birthday"]]
    raw = json.loads(quarantine["raw"][0])
    assert raw["order_created_date"] == CREATED.isoformat()
    assert (raw["order_completion_date"], raw["customer_birthday"]) == ("infinity", "-infinity")


@pytest.mark.parametrize("date", [FIRST_DATE, LAST_DATE])
def test_the_first_and_last_dates_the_warehouse_holds_are_valid(date: dt.date) -> None:
    """1900-01-01 and 2999-12-31, in any date field, keep a row valid."""
    r = row(order_created_date=date, order_completion_date=date, craftsman_birthday=date,
            customer_birthday=date)
    valid, quarantine = validate(canonical(r))
    assert quarantine.is_empty()
    assert valid["customer_birthday"].to_list() == [date]


@pytest.mark.parametrize("missing", ["craft_market_masters_products", "c,cu"])
def test_missing_reference_is_invalid(missing: str) -> None:
    """A row whose joined row was not found is quarantined as missing_reference."""
    assert single_reasons(row(missing_reference=missing)) == ["missing_reference"]


# --- duplicate order keys -------------------------------------------------------------


def _duplicates() -> list[dict[str, Any]]:
    return [
        row(source_order_id=7, product_price=price, customer_name=name)
        for price, name in [(100, "Bob"), (250, "Rob"), (100, "Bobby")]
    ]


def test_duplicate_order_keys_keep_one_and_quarantine_the_rest() -> None:
    """Three valid rows with one key in one source: one is valid, two are duplicate_order_key."""
    valid, quarantine = validate(canonical(*_duplicates()))
    assert valid.height == 1
    assert valid["source_order_id"].to_list() == [7]
    assert quarantine.select("source_order_id", "reasons").to_dicts() == [
        {"source_order_id": 7, "reasons": [DUPLICATE_RULE]},
        {"source_order_id": 7, "reasons": [DUPLICATE_RULE]},
    ]


def test_which_duplicate_is_kept_does_not_depend_on_row_order() -> None:
    """Every permutation of duplicate rows keeps the same row and quarantines the same raws."""
    outcomes = set()
    for perm in itertools.permutations(_duplicates()):
        valid, quarantine = validate(canonical(*perm))
        outcomes.add((tuple(valid.row(0)), tuple(sorted(quarantine["raw"].to_list()))))
    assert len(outcomes) == 1


def test_a_valid_duplicate_is_kept_over_an_invalid_one_in_any_order() -> None:
    """When one of two rows with a key is invalid, the valid one is kept whatever the order."""
    good = row(source_order_id=7, product_price=100)
    bad = row(source_order_id=7, product_price=-5)
    for rows in ([good, bad], [bad, good]):
        valid, quarantine = validate(canonical(*rows))
        assert valid["product_price"].to_list() == [100]
        assert quarantine["reasons"].to_list() == [["price_not_positive", DUPLICATE_RULE]]


def test_identical_duplicate_rows_keep_exactly_one() -> None:
    """Two byte-identical rows are one order: one valid, one duplicate."""
    valid, quarantine = validate(canonical(VALID_ROW, VALID_ROW))
    assert valid.height == 1
    assert quarantine["reasons"].to_list() == [[DUPLICATE_RULE]]


def test_same_order_key_in_two_sources_is_not_a_duplicate() -> None:
    """Order keys are per source: key 7 in source1 and in source2 are two valid orders."""
    rows = [
        row(source_order_id=7),
        row(source_name="source2", source_rank=2, source_order_id=7),
    ]
    valid, quarantine = validate(canonical(*rows))
    assert quarantine.is_empty()
    assert sorted(valid["source_name"].to_list()) == ["source1", "source2"]


def test_rows_without_order_key_are_not_duplicates_of_each_other() -> None:
    """Two rows with a null key each break order_key_missing only."""
    valid, quarantine = validate(canonical(row(source_order_id=None), row(source_order_id=None)))
    assert valid.is_empty()
    assert quarantine["reasons"].to_list() == [["order_key_missing"], ["order_key_missing"]]


# --- quarantine contents and counts -------------------------------------------------------


def test_quarantine_raw_holds_the_values_as_read() -> None:
    """raw is JSON of the source key and every canonical field, unnormalised."""
    r = row(
        source_order_id=42,
        order_status="  SHIPPED ",
        craftsman_email="  Ann@@Craft.example ",
        customer_name='Zoë "Q" O\'Neil',
        customer_birthday=None,
        order_completion_date=dt.date(2024, 2, 29),
        product_price=-3,
    )
    valid, quarantine = validate(canonical(r))
    assert valid.is_empty()
    raw = json.loads(quarantine["raw"][0])
    expected = {
        name: (value.isoformat() if isinstance(value, dt.date) else value)
        for name, value in r.items()
        if name in ("source_order_id", *CANONICAL_FIELDS)
    }
    assert raw == expected
    assert quarantine["reasons"].to_list() == [
        [
            "status_unknown",
            "completion_before_created",
            "price_not_positive",
            "craftsman_email_invalid",
        ]
    ]


def test_valid_plus_quarantined_equals_rows_read_per_source() -> None:
    """Per source, rows read = valid rows + quarantined rows (duplicates included)."""
    ranks = {"source1": 1, "source2": 2, "source3": 3, "external_source": 4}
    rows = []
    for i, (source, rank) in enumerate(itertools.islice(itertools.cycle(ranks.items()), 40)):
        breaker = list(BREAKERS.values())[i % 9] if i % 9 < 8 else {}
        overrides = {"source_name": source, "source_rank": rank, "source_order_id": i // 5}
        rows.append(row(**{**overrides, **breaker}))
    frame = canonical(*rows)
    valid, quarantine = validate(frame)
    read = frame.group_by("source_name").len().sort("source_name")
    kept = pl.concat([valid.select("source_name"), quarantine.select("source_name")])
    assert kept.group_by("source_name").len().sort("source_name").equals(read)
    assert valid.height > 0 and quarantine.height > 0
    assert DUPLICATE_RULE in quarantine["reasons"].explode().to_list()
