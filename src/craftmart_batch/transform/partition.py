"""Partitions of a run (pure): which partition an order or an entity falls in, how many
partitions a memory budget needs, and the dimension candidates that partitions leave.

A run's source rows are split by order key, so every row of one order (repeated keys
included) is in one partition, and rows without a key in partition 0: a run over every
row by ranges of each source's keys (``KeyRanges``), a run over changed rows by the
remainder of the key (``partition_of``). A run over every row pulls a source whose key
no index serves by ranges of its primary key instead (``Scan``), and its orders then
go to their key's partition to be written (``KeyRanges.partition_expr``).
Each partition reduces its valid rows to one candidate row per entity, its most recent
(``identity.RECENCY``), carrying the recency columns with it; candidates of several
partitions reduce again in the same way. Because ``RECENCY`` orders rows totally, the
most recent of the most recent rows is the most recent row: the dimensions come out
the same for any number of partitions (a property test holds that).

The marts group by entity instead: ``entity_group`` puts an entity's orders in one group.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from .identity import (
    CRAFTSMAN_ATTRS,
    CRAFTSMAN_KEY,
    CUSTOMER_ATTRS,
    CUSTOMER_KEY,
    ORDER_ATTRS,
    PRODUCT_ATTRS,
    PRODUCT_KEY,
    RECENCY,
    RecencyOrder,
    Warehouse,
    latest_per_key,
)
from .validate import ORDER_KEY, normalised_email

#: The three dimensions: their natural key and attributes.
DIMENSIONS = {
    "craftsmen": (CRAFTSMAN_KEY, CRAFTSMAN_ATTRS),
    "customers": (CUSTOMER_KEY, CUSTOMER_ATTRS),
    "products": (PRODUCT_KEY, PRODUCT_ATTRS),
}


def partition_of(key: pl.Expr, partitions: int) -> pl.Expr:
    """The partition (0 .. partitions-1) of a changed order key; a null key falls in 0:
    the remainder made non-negative. (A run over every row splits by ``KeyRanges``.)"""
    return (((key % partitions) + partitions) % partitions).fill_null(0)


@dataclass(frozen=True)
class Scan:
    """How a full pull reads a source whose order key no index serves: its partitions
    are ranges of ``column``, a unique, non-null integer column the order table indexes
    (its primary key), so that each is an index range scan and not a scan of the whole
    table. The rows of one order must still be validated together: the keys
    ``repeated`` in the source, and the rows without a key when the key column allows
    them (``key_nullable``), are read with partition 0, wherever they lie."""

    column: str
    cuts: tuple[int, ...]  # partitions - 1 ascending cut points of the column
    repeated: tuple[int, ...] = ()
    key_nullable: bool = False


@dataclass(frozen=True)
class KeyRanges:
    """Every row of the sources split into ``partitions`` by order key: each source's
    keys in consecutive ranges between its smallest and largest key (so each partition
    is an index range scan of the order table, not a scan of all of it). The first range
    is open below and takes the rows without a key, the last open above; rows of a
    source with no keys, and of sources no longer registered (in f_order, quarantine),
    fall in partition 0.

    A source in ``scans`` is pulled by ranges of another column (``Scan``); its rows
    then reach their key's partition after the pull (``partition_expr``)."""

    cuts: dict[str, tuple[int, ...]]  # per source: partitions - 1 ascending cut points
    partitions: int
    scans: dict[str, Scan] = field(default_factory=dict)

    @classmethod
    def between(cls, extents: dict[str, tuple[int | None, int | None]],
                partitions: int, scans: dict[str, Scan] | None = None) -> KeyRanges:
        """Equal-width ranges from each source's (smallest, largest) key."""
        cuts = {name: equal_cuts(low, high, partitions)
                for name, (low, high) in extents.items()
                if low is not None and high is not None}
        return cls(cuts, partitions, dict(scans or {}))

    def key_sql(self, source: str, key: str, partition: int) -> str:
        """A condition on one source's key expression ``key``: it falls in ``partition``."""
        if self.partitions == 1:
            return "true"
        if source not in self.cuts:
            return "true" if partition == 0 else "false"
        condition = range_conditions(key, self.cuts[source])[partition]
        return f"({condition} or {key} is null)" if partition == 0 else f"({condition})"

    def pull_sql(self, source: str, key: str, partition: int, column: str | None) -> str:
        """A condition on one source's order table: the rows ``partition`` pulls. ``key``
        is the order key's SQL; ``column`` the SQL of the source's scan column, if it has
        one (``scans``), else its rows are pulled by key (``key_sql``)."""
        scan = self.scans.get(source)
        if self.partitions == 1 or scan is None:
            return self.key_sql(source, key, partition)
        assert column is not None
        condition = range_conditions(column, scan.cuts)[partition]
        apart = [f"{key} is null"] if scan.key_nullable else []
        if scan.repeated:
            listed = ",".join(str(int(k)) for k in scan.repeated)
            apart.append(f"{key} = any('{{{listed}}}'::bigint[])")
        if not apart:
            return f"({condition})"
        if partition == 0:
            return f"({condition} or {' or '.join(apart)})"
        return f"({condition} and not ({' or '.join(apart)}))"

    def sql(self, name: str, key: str, partition: int) -> str:
        """A condition on a table's ``name`` (source name) and ``key`` (order key) columns."""
        if self.partitions == 1:
            return "true"
        ranges = [f"({name} = {_literal(source)} and {self.key_sql(source, key, partition)})"
                  for source in self.cuts]
        if partition == 0:
            listed = ", ".join(_literal(source) for source in self.cuts)
            ranges.append(f"{name} not in ({listed})" if listed else "true")
        return "(" + " or ".join(ranges) + ")"

    def partition_expr(self, name: str = "source_name", key: str = "source_order_id"
                       ) -> pl.Expr:
        """The partition of each row's order key, as ``sql`` puts it: where a row pulled
        by its source's scan column goes to be written."""
        if self.partitions == 1 or not self.cuts:
            return pl.lit(0, dtype=pl.Int64)
        # a source's key is in the range after every cut it reaches; else partition 0
        by_source = [
            pl.when((pl.col(name) == source) & pl.col(key).is_not_null()).then(
                pl.sum_horizontal([pl.col(key) >= cut for cut in cuts]).cast(pl.Int64))
            for source, cuts in self.cuts.items()
        ]
        return pl.coalesce(*by_source, pl.lit(0, dtype=pl.Int64))


def equal_cuts(low: int, high: int, partitions: int) -> tuple[int, ...]:
    """``partitions - 1`` cut points splitting ``low .. high`` into equal-width ranges."""
    width = high - low + 1
    return tuple(low + width * i // partitions for i in range(1, partitions))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def range_conditions(column: str, cuts: Sequence[str | int]) -> list[str]:
    """SQL conditions on ``column``, one per range between ascending ``cuts`` (the
    first open below, the last open above): every value but null falls in exactly one.
    How the dimensions' spilled candidates are resolved a range of keys at a time."""
    def literal(value: str | int) -> str:
        return _literal(value) if isinstance(value, str) else str(int(value))

    if not cuts:
        return ["true"]
    conditions = []
    for low, high in itertools.pairwise([None, *cuts, None]):
        bound = [f"{column} >= {literal(low)}"] if low is not None else []
        bound += [f"{column} < {literal(high)}"] if high is not None else []
        conditions.append(" and ".join(bound))
    return conditions


def entity_group_sql(column: str, group: int, groups: int) -> str:
    """A SQL condition: the entity id ``column`` falls in mart group ``group``."""
    return "true" if groups == 1 else f"mod({column}, {groups}) = {group}"


def normalised(valid: pl.DataFrame) -> pl.DataFrame:
    """Valid rows with their people's emails as identity compares them (SPEC §2)."""
    return valid.with_columns(
        normalised_email("craftsman_email").alias("craftsman_email"),
        normalised_email("customer_email").alias("customer_email"),
    )


def candidates(rows: pl.DataFrame) -> Warehouse:
    """Each entity's most recent row among ``rows`` (normalised valid rows, or candidates
    already), with ``RECENCY``: what a partition contributes to the dimensions. No
    orders (``orders`` is empty)."""
    order = RecencyOrder.of(rows)
    found = {
        name: latest_per_key(rows, order, key, (*attrs, *RECENCY))
        for name, (key, attrs) in DIMENSIONS.items()
    }
    return Warehouse(**found, orders=pl.DataFrame())


def empty_candidates() -> Warehouse:
    """Candidates of no partition yet (frames without columns: any candidates replace them)."""
    return Warehouse(
        **{name: pl.DataFrame() for name in DIMENSIONS}, orders=pl.DataFrame()
    )


def merge_candidates(*found: Warehouse) -> Warehouse:
    """The candidates of several sets of rows together, still one row per entity."""
    merged = {}
    for name, (key, attrs) in DIMENSIONS.items():
        frames = [f for f in (getattr(w, name) for w in found) if f.width]
        if not frames:
            merged[name] = pl.DataFrame()
            continue
        both = pl.concat([frames[0], *(f.cast(frames[0].schema) for f in frames[1:])])
        merged[name] = (both if len(frames) == 1 else
                        latest_per_key(both, RecencyOrder.of(both), key, (*attrs, *RECENCY)))
    return Warehouse(**merged, orders=pl.DataFrame())


def candidate_rows(found: Warehouse) -> int:
    return sum(getattr(found, name).height for name in DIMENSIONS)


@dataclass
class CandidatePool:
    """Candidates gathered partition by partition, reduced only when the unreduced ones
    outgrow the reduced ones: memory stays within about twice one row per entity, and
    each candidate is reduced a bounded number of times (not once per partition)."""

    reduced: Warehouse
    pending: list[Warehouse]
    pending_rows: int = 0
    #: below this many unreduced rows, reducing is not worth a pass
    threshold: int = 100_000

    @classmethod
    def empty(cls, threshold: int = 100_000) -> CandidatePool:
        return cls(empty_candidates(), [], threshold=threshold)

    def add(self, found: Warehouse) -> None:
        self.pending.append(found)
        self.pending_rows += candidate_rows(found)
        if self.pending_rows > max(candidate_rows(self.reduced), self.threshold):
            self.reduce()

    @property
    def rows(self) -> int:
        """The candidate rows held, reduced or not."""
        return candidate_rows(self.reduced) + self.pending_rows

    def reduce(self) -> Warehouse:
        if self.pending:
            self.reduced = merge_candidates(self.reduced, *self.pending)
            self.pending, self.pending_rows = [], 0
        return self.reduced


def dimension_rows(name: str, found: pl.DataFrame) -> pl.DataFrame:
    """Candidates of one dimension (``DIMENSIONS``), from any number of pools, as its
    target rows: the most recent per key, key and attributes, sorted by key."""
    key, attrs = DIMENSIONS[name]
    return latest_per_key(found, RecencyOrder.of(found), key, attrs)


def dimensions(found: Warehouse) -> Warehouse:
    """Candidates as the dimensions' target rows: key and attributes, sorted by key."""
    return Warehouse(
        **{
            name: getattr(found, name).select(*key, *attrs).sort(list(key), nulls_last=True)
            for name, (key, attrs) in DIMENSIONS.items()
        },
        orders=pl.DataFrame(),
    )


def order_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Normalised valid rows as facts by natural key."""
    return rows.select(*ORDER_KEY, *ORDER_ATTRS).cast({"order_status": pl.String})


#: A product's name and description, hashed (64 bits) for the run: what a staged order
#: carries instead of the product's texts (hundreds of bytes). Within one craftsman the
#: hash stands for the product; ``product_hash_clashes`` checks that it does.
PRODUCT_HASH = "product_hash"


def product_hash() -> pl.Expr:
    """The hash of ``product_name`` and ``product_description`` (nulls included): the
    same for the same texts within one process, which is all a run needs."""
    return pl.struct("product_name", "product_description").hash(seed=0x_C4AF7).alias(
        PRODUCT_HASH)


def staged_orders(rows: pl.DataFrame) -> pl.DataFrame:
    """Normalised valid rows as a partition stages them: by natural key, the product by
    its craftsman and ``product_hash``."""
    return rows.select(
        *ORDER_KEY, "craftsman_email", "customer_email", product_hash(),
        *(a for a in ORDER_ATTRS if a not in ("craftsman_email", "customer_email",
                                              "product_name", "product_description")),
    ).cast({"order_status": pl.String})


def product_hash_clashes(products: pl.DataFrame) -> int:
    """How many products share their craftsman and ``product_hash`` with another (0 in
    all but about one run in 10^15)."""
    hashed = products.select("craftsman_email", product_hash())
    return hashed.filter(pl.struct(hashed.columns).is_duplicated()).height


# The memory a run plans with. Measured on real-shaped rows (docs/benchmarks.md): the
# interpreter with Polars, pyarrow, connectorx and the ADBC driver loaded; the peak bytes
# per source row a partition holds while it pulls, validates and reduces (Arrow buffers,
# their Polars copy, and the valid rows); per dimension row kept across partitions; per
# order a mart group holds while it aggregates.
BASE_BYTES = 230 * 2**20
ROW_BYTES = 2_600
ENTITY_BYTES = 400
MART_ORDER_BYTES = 900
#: Below this, a partition spends more on its fixed costs (queries, staging) than it saves.
MIN_PARTITION_ROWS = 2_000
#: The fewest dimension candidates a budget leaves the pool before it spills them.
MIN_POOL_ROWS = 1_000
#: The share of a budget (past the smallest that works) the candidate pool may take.
POOL_SHARE = 3


class BudgetTooSmall(ValueError):
    """The memory budget cannot hold what one partition must hold."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


@dataclass(frozen=True)
class Sizing:
    """How many partitions a run takes, from what it must process and its budget."""

    partitions: int  # of the source rows (pull, validate, stage, write facts)
    mart_groups: int  # of the entities (mart aggregation)
    #: dimension candidates the pool holds before it spills them to the warehouse (and
    #: then the most a range of the dimensions' keys resolves at a time)
    pool_rows: int = 2**62

    @classmethod
    def plan(
        cls,
        *,
        rows: int,
        entities: int,
        largest_entity_orders: int,
        mart_orders: int,
        budget: int,
        requested: int = 0,
    ) -> Sizing:
        """Partitions that keep the peak under ``budget`` bytes, or ``requested`` ones
        when not 0 (the same number for the marts' entity groups, and the dimensions'
        candidates in as many pools).

        The candidate pool (one row per entity, up to twice between reductions) takes
        what it needs up to a third of the budget (past the smallest that works), and
        spills to the warehouse past that, so no part of the budget grows with the
        number of entities. Raises ``BudgetTooSmall`` when even one source row per
        partition, one entity per mart group and the smallest pool would not fit.
        """
        entity_bytes = 2 * ENTITY_BYTES  # the pool holds up to twice its rows
        smallest = (BASE_BYTES + min(entities, MIN_POOL_ROWS) * entity_bytes
                    + max(MIN_PARTITION_ROWS * ROW_BYTES,
                          largest_entity_orders * MART_ORDER_BYTES))
        if budget < smallest:
            raise BudgetTooSmall(smallest)
        if requested:
            return cls(requested, requested, max(1, math.ceil(entities / requested)))
        # the pool: the smallest, and a third of what the budget leaves past the smallest
        pool_rows = min(max(entities, 1),
                        MIN_POOL_ROWS + (budget - smallest) // POOL_SHARE // entity_bytes)
        room = budget - BASE_BYTES - pool_rows * entity_bytes
        partitions = max(1, math.ceil(rows * ROW_BYTES / room))
        groups = max(1, math.ceil(mart_orders * MART_ORDER_BYTES / room))
        return cls(partitions, groups, pool_rows)
