"""The stages of a run over partitions of its work.

``plan`` decides what the run reads (every source row, or the changed ones) and in how
many partitions of the order keys. ``compute_partition`` then pulls one partition,
validates it and reduces it to its valid orders and its dimension candidates (one row
per entity): it reads the sources only, so it runs wherever the engine puts it (in this
process, or as a Ray task). ``apply_partition`` writes what it found in the run's
transaction: quarantine rows and hashes, its valid orders staged in a temporary table
(of their key's partition: a full pull may read a source by ranges of its primary key),
and, past the pool's share of the memory budget, the candidates pooled so far (spilled
to temporary tables). A full pull's quarantine rows are staged, and written once
every partition is (``write_quarantine``). Then ``resolve_dimensions`` reduces
the candidates (with, for changed rows, the latest unchanged row of every entity they
touch) to the dimensions' target rows and writes what differs: spilled candidates a
range of their keys at a time. ``write_partition`` then diffs each partition's staged
orders, with their entities' ids, against f_order and writes them; ``finish`` deletes
the entities left without orders. On a full pull no step holds more than one
partition of rows, or one pool (or range) of dimension rows.
"""
from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from . import citus
from ._database import Database, quote_ident, quote_literal
from ._sizes import format_size
from ._sql import Connection, append_temporary, execute, fetch_frame, fetch_value, stage
from .config import Settings, Source
from .errors import CraftmartError
from .extract import hashes as row_hashes
from .extract import read
from .load import dwh, quarantine, runs
from .transform import partition as parts
from .transform.changes import SourceDelta, rows_per_source
from .transform.diff import TableDiff, diff_dimensions, diff_table
from .transform.identity import Warehouse
from .transform.validate import ORDER_KEY, validate

logger = logging.getLogger(__name__)

#: Past this share of all source rows changed, pulling the changed rows by key and
#: resolving them against the DWH is no cheaper than pulling everything: the run does.
FULL_PULL_SHARE = 0.4

EVERYTHING = "everything"
CHANGES = "changes"


@dataclass(frozen=True)
class Plan:
    """What a run reads, and in how many partitions."""

    mode: str  # EVERYTHING or CHANGES
    reason: str | None  # why everything (row_hashes.FIRST_RUN, ...); None for changes
    delta: SourceDelta | None  # the changed keys (CHANGES)
    sizing: parts.Sizing
    first_load: bool  # f_order was empty
    ranges: parts.KeyRanges | None = None  # EVERYTHING: the partitions of every key

    @property
    def partitions(self) -> int:
        return self.sizing.partitions

    @property
    def is_empty(self) -> bool:
        return self.delta is not None and self.delta.is_empty

    def pull_keys(self, partition: int) -> pl.DataFrame:
        """CHANGES: the keys of ``partition`` to pull (a null key: the source's keyless rows)."""
        assert self.delta is not None
        return self._in(self.delta.pull_keys(), partition)

    def changed_keys(self, partition: int) -> pl.DataFrame:
        """CHANGES: the changed keys of ``partition``."""
        assert self.delta is not None
        return self._in(self.delta.changed, partition)

    def _in(self, keys: pl.DataFrame, partition: int) -> pl.DataFrame:
        return keys.filter(
            parts.partition_of(pl.col("source_order_id"), self.partitions) == partition
        )

    def key_condition(self, alias: str, partition: int) -> str:
        """EVERYTHING: a SQL condition on the ``source_name`` and ``source_order_id``
        columns of the table ``alias``: the row falls in ``partition``."""
        assert self.ranges is not None
        return self.ranges.sql(f"{alias}.source_name", f"{alias}.source_order_id", partition)


def plan(
    conn: Connection, db: Database, settings: Settings, *, reason: str | None,
    delta: SourceDelta | None,
) -> Plan:
    """Size the run: ``delta`` when the changed rows are pulled, else everything is."""
    estimate = citus.estimated_rows(conn)
    stats = fetch_frame(conn, f"""
        select
            (select count(*) from (select 1 from dwh.f_order limit 1) as any_order) as orders,
            {estimate("dwh.f_order")} as estimated_orders,
            {estimate("dwh.d_customer")} + {estimate("dwh.d_craftsman")}
            + {estimate("dwh.d_product")} as estimated_entities
    """).row(0, named=True)
    first_load = stats["orders"] == 0
    dwh_orders = int(stats["estimated_orders"])
    if delta is not None:
        # sources read by logical decoding were not counted: the warehouse's orders
        rows_now = sum(delta.rows.values())
        rows_now = max(rows_now, dwh_orders) if delta.uncounted else rows_now
        if delta.changed.height > FULL_PULL_SHARE * rows_now:
            delta, reason = None, row_hashes.MANY_CHANGES
    if delta is None:
        rows = _source_rows(db, settings) if reason != row_hashes.MANY_CHANGES else 0
        rows = rows or dwh_orders
        # a first load knows no entities yet: about one per six orders (the generator
        # has one per seven)
        entities = max(int(stats["estimated_entities"]), rows // 6)
        mart_orders = max(rows, dwh_orders)
    else:
        rows = delta.changed.height + 3 * delta.changed.height  # and the latest unchanged
        entities = min(3 * delta.changed.height, int(stats["estimated_entities"]) or rows)
        mart_orders = min(dwh_orders, 50 * delta.changed.height)
    largest = _largest_entity_orders(conn)
    try:
        sizing = parts.Sizing.plan(
            rows=rows, entities=entities, largest_entity_orders=largest,
            mart_orders=mart_orders, budget=settings.memory_budget,
            requested=settings.partitions,
        )
    except parts.BudgetTooSmall as exc:
        raise CraftmartError(
            f"memory budget {format_size(settings.memory_budget)} is too small for this"
            f" run: the smallest that works is {format_size(exc.needed)}"
            " (--memory-budget or run.memory_budget)"
        ) from None
    if delta is not None:
        return Plan(CHANGES, reason, delta, sizing, first_load)
    ranges = (_pull_ranges(db, settings, sizing.partitions) if sizing.partitions > 1
              else parts.KeyRanges({}, 1))
    return Plan(EVERYTHING, reason, None, sizing, first_load, ranges)


def _order_table(source: Source) -> str:
    return f"{quote_ident(source.schema)}.{quote_ident(source.table)}"


#: Past this many keys repeated in a source, its full pull is partitioned by key, not by
#: its scan column: the repeated keys' rows are all read with partition 0.
MOST_REPEATED_KEYS = 10_000


def _pull_ranges(db: Database, settings: Settings, partitions: int) -> parts.KeyRanges:
    """The partitions of a full pull: ranges of each source's order keys, from its
    smallest to its largest key; a source whose key no index serves is pulled by ranges
    of its scan column instead (``parts.Scan``), when its order table has one."""
    layout = read.per_source(db, settings.sources, _index_query, {
        "source_name": pl.String(), "key_indexed": pl.Boolean(),
        "scan_column": pl.String(), "key_nullable": pl.Boolean()})
    scanned = {name: (column, nullable) for name, indexed, column, nullable
               in layout.iter_rows() if not indexed and column is not None}

    def extent(source: Source) -> str:
        key = quote_ident(source.key)
        if source.name not in scanned:  # two index lookups, or one scan
            return (f"select {quote_literal(source.name)}::text as source_name,"
                    f" min({key})::bigint as low, max({key})::bigint as high,"
                    " null::bigint as scan_low, null::bigint as scan_high,"
                    " 0::bigint as repeated_keys, null::text as repeated"
                    f" from {_order_table(source)}")
        # one scan of the table, for the keys and the repeated ones among them
        column = quote_ident(scanned[source.name][0])
        table = _order_table(source)
        return (f"select {quote_literal(source.name)}::text as source_name,"
                f" min(k)::bigint as low, max(k)::bigint as high,"
                f" (select min({column}) from {table})::bigint as scan_low,"
                f" (select max({column}) from {table})::bigint as scan_high,"
                f" count(*) filter (where n > 1)::bigint as repeated_keys,"
                f" string_agg(k::text, ',') filter (where n > 1) as repeated"
                f" from (select {key} as k, count(*) as n from {table}"
                f" where {key} is not null group by {key}) as keys")

    found = read.per_source(db, settings.sources, extent, {
        "source_name": pl.String(), "low": pl.Int64(), "high": pl.Int64(),
        "scan_low": pl.Int64(), "scan_high": pl.Int64(), "repeated_keys": pl.Int64(),
        "repeated": pl.String()})
    extents, scans = {}, {}
    for row in found.iter_rows(named=True):
        name = row["source_name"]
        extents[name] = (row["low"], row["high"])
        if (name not in scanned or row["scan_low"] is None
                or row["repeated_keys"] > MOST_REPEATED_KEYS):
            continue
        repeated = tuple(int(k) for k in row["repeated"].split(",")) if row["repeated"] else ()
        scans[name] = parts.Scan(
            scanned[name][0],
            parts.equal_cuts(row["scan_low"], row["scan_high"], partitions),
            repeated, key_nullable=scanned[name][1])
    return parts.KeyRanges.between(extents, partitions, scans)


def _index_query(source: Source) -> str:
    """Whether a btree index leads with the source's order key, and else the column a
    full pull can range over instead: a unique, non-null integer column with an index
    of its own (the primary key first); whether the key column allows nulls."""
    table = f"{quote_literal(_order_table(source))}::regclass"
    return f"""
        select {quote_literal(source.name)}::text as source_name,
            exists (
                select from pg_index as i
                inner join pg_class as c on c.oid = i.indexrelid
                inner join pg_am as am on am.oid = c.relam and am.amname = 'btree'
                where i.indrelid = {table} and i.indkey[0] = k.attnum
                    and i.indpred is null and i.indisvalid
            ) as key_indexed,
            (
                select a.attname::text from pg_index as i
                inner join pg_attribute as a
                    on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
                where i.indrelid = {table} and i.indisunique and i.indnkeyatts = 1
                    and i.indpred is null and i.indexprs is null and i.indisvalid
                    and a.attnotnull
                    and a.atttypid in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                order by i.indisprimary desc, a.attnum
                limit 1
            ) as scan_column,
            not k.attnotnull as key_nullable
        from pg_attribute as k
        where k.attrelid = {table} and k.attname = {quote_literal(source.key)}
    """


def _source_rows(db: Database, settings: Settings) -> int:
    """The rows of every source's order table, as the planner estimates them (an exact
    count costs a scan), counted when the table was never analysed."""
    def rows(source: Source) -> str:
        table = _order_table(source)
        return (f"select {quote_literal(source.name)}::text as source_name,"
                f" case when reltuples >= 0 then reltuples::bigint"
                f" else (select count(*) from {table}) end as rows"
                f" from pg_class where oid = {quote_literal(table)}::regclass")

    found = read.per_source(db, settings.sources, rows,
                            {"source_name": pl.String(), "rows": pl.Int64()})
    return int(found["rows"].sum())


def _largest_entity_orders(conn: Connection) -> int:
    """About how many orders the busiest customer or craftsman has (planner statistics;
    0 before the first analyze)."""
    if citus.is_distributed(conn):
        return citus.largest_entity_orders(conn)
    value = fetch_value(conn, """
        select max(s.most_common_freqs[1] * greatest(c.reltuples, 0))::bigint
        from pg_stats as s
        inner join pg_class as c on c.relname = s.tablename
        inner join pg_namespace as n on n.oid = c.relnamespace and n.nspname = s.schemaname
        where s.schemaname = 'dwh' and s.tablename = 'f_order'
            and s.attname in ('customer_id', 'craftsman_id')
    """)
    return int(value or 0)


@dataclass
class Collected:
    """What the staged partitions hand on: dimension candidates and counts."""

    candidates: parts.CandidatePool = field(default_factory=parts.CandidatePool.empty)
    pulled: dict[str, int] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine: dict[str, int] = field(default_factory=lambda: {"left": 0, "arrived": 0})
    staged_orders: int = 0
    #: ranges of their keys the dimensions were resolved in (the most of the three)
    dimension_ranges: int = 1
    #: candidate rows spilled to the warehouse per dimension (``spill``), and the
    #: schema each dimension's were spilled with
    spilled: dict[str, int] = field(default_factory=dict)
    spill_schemas: dict[str, pl.Schema] = field(default_factory=dict)

    def spill(self, conn: Connection) -> None:
        """Move the pool's candidates, reduced, to the run's temporary tables
        (``run_candidates_*``) and empty the pool: what the dimensions resolve in
        ranges of their keys (``resolve_dimensions``)."""
        found = self.candidates.reduce()
        for name in parts.DIMENSIONS:
            frame = getattr(found, name)
            if frame.is_empty():
                continue
            schema = self.spill_schemas.setdefault(name, frame.schema)
            append_temporary(conn, _candidates_table(name), frame.cast(dict(schema)))
            self.spilled[name] = self.spilled.get(name, 0) + frame.height
        self.candidates = parts.CandidatePool.empty()


def _add(counts: dict[str, int], more: dict[str, int]) -> None:
    for name, n in more.items():
        counts[name] = counts.get(name, 0) + n


def _staged_orders_table(partition: int) -> str:
    return f"run_orders_{partition}"


def _candidates_table(name: str) -> str:
    return f"run_candidates_{name}"


Step = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True)
class PartitionWork:
    """One partition of a run, as the function that computes it needs it: what to read
    (and from where), nothing of the warehouse. It travels to other processes (Ray
    tasks), so it holds only plain values."""

    db: Database  # the warehouse: the database of the sources without one
    sources: tuple[Source, ...]
    partition: int
    partitions: int
    ranges: parts.KeyRanges | None  # EVERYTHING: every row of this range of keys
    keys: pl.DataFrame | None  # CHANGES: these keys (a null key: a source's keyless rows)


@dataclass
class PartitionResult:
    """What one partition's pull, validation and reduction hand to the coordinator,
    which writes it in the run's transaction."""

    partition: int
    hashes: pl.DataFrame  # every pulled row's key and hash
    read: dict[str, int]  # rows pulled, per source
    loaded: dict[str, int]  # valid rows, per source
    quarantined: dict[str, int]  # invalid rows, per source
    quarantine: pl.DataFrame
    candidates: Warehouse  # one row per entity: its most recent valid row here
    orders: pl.DataFrame  # the valid orders, staged for write_partition
    seconds: dict[str, float] = field(default_factory=dict)  # pull, validate
    peak_rss_mb: int = 0  # of the process that computed it


def partition_work(
    db: Database, settings: Settings, run_plan: Plan, partition: int
) -> PartitionWork:
    keys = None if run_plan.mode == EVERYTHING else run_plan.pull_keys(partition)
    return PartitionWork(db, settings.sources, partition, run_plan.partitions,
                         run_plan.ranges if run_plan.mode == EVERYTHING else None, keys)


def compute_partition(work: PartitionWork) -> PartitionResult:
    """Pull one partition from its sources, validate it and reduce it to orders and
    dimension candidates. Pure with respect to the warehouse: it reads the sources
    only, writes nothing, and gives the same result wherever it runs."""
    seconds = {}
    started = time.perf_counter()
    if work.ranges is not None:
        pulled = read.pull_sources(work.db, work.sources,
                                   partition=(work.ranges, work.partition))
    elif work.keys is not None and not work.keys.is_empty():
        pulled = read.pull_sources(work.db, work.sources, work.keys)
    else:
        pulled = read.pull_sources(work.db, [])
    seconds["pull"] = time.perf_counter() - started
    started = time.perf_counter()
    valid, quarantine = validate(pulled.drop("row_hash"))
    hashes = pulled.select(*ORDER_KEY, "row_hash")
    read_now = rows_per_source(pulled)
    del pulled
    rows = parts.normalised(valid)
    result = PartitionResult(
        partition=work.partition, hashes=hashes, read=read_now,
        loaded=rows_per_source(valid), quarantined=rows_per_source(quarantine),
        quarantine=quarantine, candidates=parts.candidates(rows),
        orders=parts.staged_orders(rows),
    )
    del valid, rows
    seconds["validate"] = time.perf_counter() - started
    result.seconds = seconds
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return result


def apply_partition(
    conn: Connection, run_plan: Plan, result: PartitionResult, found: Collected
) -> None:
    """Write one computed partition in the run's transaction: its hashes and quarantine
    rows; stage its valid orders; keep its dimension candidates in ``found``. A full
    pull stages its quarantine rows, written once every partition is in
    (``write_quarantine``), and each valid order with the partition of its key."""
    partition = result.partition
    _add(found.pulled, result.read)
    found.candidates.add(result.candidates)
    if run_plan.mode == EVERYTHING:
        _add(found.read, result.read)
        _add(found.loaded, result.loaded)
        _add(found.quarantined, result.quarantined)
        row_hashes.append(conn, result.hashes)
        append_temporary(conn, _QUARANTINE_TABLE, quarantine.staged_rows(result.quarantine))
        if found.candidates.rows > run_plan.sizing.pool_rows:
            found.spill(conn)
        _route_orders(conn, run_plan, result)
    else:
        row_hashes.store_changes(conn, run_plan.changed_keys(partition), result.hashes)
        scope = run_plan.pull_keys(partition)
        if not scope.is_empty():
            _add(found.quarantine, quarantine.write_quarantine(conn, result.quarantine, scope))
        stage(conn, _staged_orders_table(partition), result.orders,
              analyze=_STAGED_ORDERS_JOINED_ON)
    found.staged_orders += result.orders.height


#: The run's temporary table of a full pull's quarantine rows, and the columns of the
#: staged orders the writes join the dimensions on.
_QUARANTINE_TABLE = "run_quarantine"
_STAGED_ORDERS_JOINED_ON = ("craftsman_email", "customer_email")


def _route_orders(conn: Connection, run_plan: Plan, result: PartitionResult) -> None:
    """A full pull's valid orders appended to the staged orders of their keys' partitions
    (a partition pulled by its sources' scan columns holds orders of several)."""
    assert run_plan.ranges is not None
    to = "__partition"
    routed = result.orders.with_columns(run_plan.ranges.partition_expr().alias(to))
    by_partition = routed.partition_by(to, as_dict=True, include_key=False)
    # each partition's table exists once its pull is staged, even with no order of its own
    by_partition.setdefault((result.partition,), result.orders.clear())
    for (index, ), orders in by_partition.items():
        append_temporary(conn, _staged_orders_table(int(index)), orders)


def write_quarantine(conn: Connection, found: Collected) -> None:
    """A full pull: ``craftmart.quarantine`` made to hold the invalid rows its partitions
    staged, and only them."""
    _add(found.quarantine, quarantine.write_staged(conn, f"pg_temp.{_QUARANTINE_TABLE}"))


@dataclass
class Dimensions:
    """The dimensions as written, in one piece or range by range: what changed, the ids
    to delete once no order points to them, and the entities whose change reaches the
    marts through their orders (``dwh.mart_touches``)."""

    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {
        table: {"inserted": 0, "updated": 0, "deleted": 0} for table in dwh.ENTITY_ID})
    deleted: dict[str, list[pl.DataFrame]] = field(default_factory=lambda: {
        table: [] for table in dwh.ENTITY_ID})
    touched: dict[str, list[pl.DataFrame]] = field(default_factory=lambda: {
        table: [] for table in dwh.MART_FEEDS})

    def add(self, table: str, current: pl.DataFrame, diff: TableDiff,
            ids: pl.DataFrame) -> None:
        """One dimension's (or one range of it) diff, as written; ``ids`` are its
        entities' ids after the write."""
        counts = self.counts[table]
        counts["inserted"] += diff.inserted
        counts["updated"] += diff.updated
        counts["deleted"] += diff.deleted.height
        if not diff.deleted.is_empty():
            self.deleted[table].append(diff.deleted.select(dwh.ENTITY_ID[table]))
        if table in self.touched:
            touched = dwh.mart_touches(table, current, diff, ids)
            if not touched.is_empty():
                self.touched[table].append(touched)

    def finish(self, conn: Connection) -> None:
        """Delete the entities no order points to any more; log the mart touches."""
        def ids(frames: list[pl.DataFrame], column: str) -> pl.DataFrame:
            return pl.concat(frames) if frames else pl.DataFrame(schema={column: pl.Int64})

        dwh.finish_dimensions(
            conn, {table: ids(frames, dwh.ENTITY_ID[table])
                   for table, frames in self.deleted.items()},
            retyped=ids(self.touched["d_product"], "product_id"),
            reborn=ids(self.touched["d_customer"], "customer_id"))


def resolve_dimensions(
    conn: Connection, db: Database, settings: Settings, run_plan: Plan, found: Collected,
    step: Step,
) -> Dimensions:
    """Reduce the candidates to the dimensions' target rows; write what differs; stage
    every product's id for the orders (``run_product_ids``). Candidates spilled to the
    warehouse are resolved in ranges of their keys (``_resolve_in_ranges``)."""
    if found.spilled:
        return _resolve_in_ranges(conn, found, run_plan.sizing.pool_rows, step)
    with step("dedup"):
        named = found.candidates.reduce()
        if run_plan.mode == EVERYTHING:
            current = dwh.read_dimensions(conn)
            target = parts.dimensions(named)
        else:
            current, target = _touched(conn, db, settings, run_plan, found)
    with step("diff"):
        diff = diff_dimensions(current, target)
    with step("write"):
        ids = dwh.write_dimensions(conn, current, diff)
        dims = Dimensions()
        for table, now, changes, written in (
            ("d_craftsman", current.craftsmen, diff.craftsmen, ids.craftsmen),
            ("d_customer", current.customers, diff.customers, ids.customers),
            ("d_product", current.products, diff.products, ids.products),
        ):
            dims.add(table, now, changes, written)
        _stage_product_ids(conn, ids.products)
        _analyze_product_ids(conn)
    return dims


#: Each person dimension: its table's entity and its candidates' name.
_PEOPLE = (("craftsman", "craftsmen"), ("customer", "customers"))


def _resolve_in_ranges(
    conn: Connection, found: Collected, pool_rows: int, step: Step
) -> Dimensions:
    """The dimensions from the candidates spilled to the warehouse, a range of keys at
    a time, each range read, reduced, diffed and written before the next: people by
    ranges of their email, products by ranges of their craftsman's id. Ranges go up
    the key in the order the writes give new ids in (the server's collation), so the
    ids come out as if everything were written at once. A range holds about as many
    candidate rows as the pool did (cut at the server's percentiles)."""
    found.spill(conn)
    dims = Dimensions()
    for person, name in _PEOPLE:
        email = f"{person}_email"
        table = f"pg_temp.{_candidates_table(name)}"
        with step("dedup"):
            # no index on the email (a btree entry holds at most a third of a page, and
            # an email's length is the source's): each range scans the table
            cuts = _cuts(conn, table, email, _ranges(found, name, pool_rows))
            found.dimension_ranges = max(found.dimension_ranges, len(cuts) + 1)
        for where in parts.range_conditions(email, cuts):
            with step("dedup"):
                current = dwh.read_people(conn, person, where)
                target = _target(conn, found, name, f"select * from {table} where {where}",
                                 current)
            with step("diff"):
                key, attrs = parts.DIMENSIONS[name]
                diff = diff_table(current, target, key, attrs)
            with step("write"):
                written = dwh.write_people(conn, person, current, diff)
                dims.add(f"d_{person}", current, diff, written)
                if person == "craftsman":  # every craftsman's id, for the products
                    append_temporary(conn, "run_craftsman_ids", written)
            del target, current, diff, written
    craftsmen = "pg_temp.run_craftsman_ids"
    with step("dedup"):
        execute(conn, f"create index on {craftsmen} (craftsman_id)")
        execute(conn, f"analyze {craftsmen}")
        products = "pg_temp.run_candidates_products_of"
        execute(conn, f"""
            create temporary table run_candidates_products_of as
            select p.*, c.craftsman_id
            from pg_temp.{_candidates_table("products")} as p
            inner join {craftsmen} as c on c.craftsman_email = p.craftsman_email
        """)
        execute(conn, f"create index on {products} (craftsman_id)")
        execute(conn, f"analyze {products} (craftsman_id)")
        cuts = _cuts(conn, products, "craftsman_id", _ranges(found, "products", pool_rows))
        found.dimension_ranges = max(found.dimension_ranges, len(cuts) + 1)
    for where in parts.range_conditions("craftsman_id", cuts):
        with step("dedup"):
            owners = fetch_frame(conn, f"select craftsman_id, craftsman_email"
                                       f" from {craftsmen} where {where}")
            current = dwh.read_products(conn, where, owners)
            target = _target(conn, found, "products",
                             f"select * from {products} where {where}", current)
        with step("diff"):
            key, attrs = parts.DIMENSIONS["products"]
            diff = diff_table(current, target, key, attrs)
        with step("write"):
            written = dwh.write_products(conn, current, diff, owners)
            dims.add("d_product", current, diff, written)
            _stage_product_ids(conn, dwh.without_deleted(written, diff, key))
        del target, current, diff, written, owners
    with step("write"):
        _analyze_product_ids(conn)
    return dims


def _ranges(found: Collected, name: str, pool_rows: int) -> int:
    """How many ranges of its keys a dimension's spilled candidates resolve in: no more
    candidate rows in one than the pool held."""
    return max(1, -(-found.spilled.get(name, 0) // pool_rows))


def _cuts(conn: Connection, table: str, column: str, ranges: int) -> list[Any]:
    """``ranges - 1`` values of ``column`` that cut ``table``'s rows into about equal
    ranges, in the server's order (its collation, for text)."""
    if ranges <= 1:
        return []
    fractions = ", ".join(f"{i / ranges!r}" for i in range(1, ranges))
    cuts = fetch_frame(conn, f"""
        select unnest(percentile_disc(array[{fractions}]::float8[])
                      within group (order by {column})) as cut
        from {table}
    """)["cut"].to_list()
    return [cut for cut in cuts if cut is not None]


def _target(
    conn: Connection, found: Collected, name: str, query: str, current: pl.DataFrame
) -> pl.DataFrame:
    """One range of a dimension's spilled candidates (``query``), reduced to its target
    rows; ``current`` is the range's current rows (the columns of a range without
    candidates)."""
    key, attrs = parts.DIMENSIONS[name]
    rows = fetch_frame(conn, query)
    schema = found.spill_schemas.get(name)
    if schema is None or rows.is_empty():
        return current.select(*key, *attrs).clear()
    return parts.dimension_rows(name, rows.select(schema.names()).cast(schema))


def _touched(
    conn: Connection, db: Database, settings: Settings, run_plan: Plan, found: Collected
) -> tuple[Warehouse, Warehouse]:
    """CHANGES: the current rows of the entities the changed rows touch, and their
    target rows: the candidates and the latest unchanged row of each."""
    assert run_plan.delta is not None
    keys = stage(conn, "run_changed_keys", run_plan.delta.changed.select(ORDER_KEY))
    execute(conn, f"create index on {keys} (source_name, source_order_id)")
    named = found.candidates.reduce()
    scope = dwh.touched_dimensions(conn, keys, parts.dimensions(named),
                                   {s.name: s.rank for s in settings.sources})
    if not scope.latest_unchanged.is_empty():
        others = read.pull_sources(db, settings.sources, scope.latest_unchanged)
        _add(found.pulled, rows_per_source(others))
        # Unchanged rows are valid; one that changed since the keys were compared is
        # left, whatever it now holds, to the next run, which sees its new hash.
        unchanged = parts.normalised(validate(others.drop("row_hash"))[0])
        del others
        named = parts.merge_candidates(named, parts.candidates(unchanged))
    return scope.current, scope.restrict(parts.dimensions(named))


def _stage_product_ids(conn: Connection, products: pl.DataFrame) -> None:
    """Products the staged orders may name, by craftsman and ``product_hash``, with
    their ids, added to ``run_product_ids``: what ``write_partition`` joins the staged
    orders to. (A craftsman's products are all in one call.)"""
    if parts.product_hash_clashes(products):
        raise CraftmartError(
            "two products of one craftsman share a 64-bit hash of their name and"
            " description; report this, with the craftsman's products, as a bug")
    append_temporary(conn, "run_product_ids",
                     products.select("craftsman_email", parts.product_hash(), "product_id"))


def _analyze_product_ids(conn: Connection) -> None:
    # the table exists, with its columns, even when the run has no product
    _stage_product_ids(conn, pl.DataFrame(schema={
        "craftsman_email": pl.String, "product_name": pl.String,
        "product_description": pl.String, "product_id": pl.Int64}))
    execute(conn, f"analyze pg_temp.run_product_ids (craftsman_email, {parts.PRODUCT_HASH})")


def write_partition(conn: Connection, run_plan: Plan, partition: int) -> dict[str, int]:
    """Diff one partition's staged orders, with their entities' ids (joined in the
    server, where the dimensions were just written), against f_order and write the
    difference; return what was inserted, updated and deleted. Into an empty f_order
    (a first load) every staged order is new: it is inserted as it is resolved."""
    table = f"pg_temp.{_staged_orders_table(partition)}"
    if run_plan.mode == EVERYTHING:  # appended to by every partition's pull
        execute(conn, f"analyze {table} ({', '.join(_STAGED_ORDERS_JOINED_ON)})")
    if run_plan.first_load:
        inserted = dwh.insert_orders(conn, table)
        execute(conn, f"drop table {table}")
        return {"inserted": inserted, "updated": 0, "deleted": 0}
    target = dwh.resolve_ids(conn, table)
    if run_plan.mode == EVERYTHING:
        current = dwh.read_orders(conn, run_plan.key_condition("f", partition))
    else:
        keys = stage(conn, "run_partition_keys", run_plan.changed_keys(partition))
        current = dwh.read_orders(
            conn, f"(f.source_name, f.source_order_id) in (select * from {keys})")
    if not current.is_empty():
        target = target.cast({c: current.schema[c] for c in target.columns})
    diff = diff_table(current, target, ORDER_KEY, dwh.ORDER_ID_ATTRS)
    del current, target
    dwh.write_orders(conn, diff)
    execute(conn, f"drop table {table}")
    return {"inserted": diff.inserted, "updated": diff.updated, "deleted": diff.deleted.height}


def finish(
    conn: Connection, settings: Settings, run_plan: Plan, dims: Dimensions
) -> None:
    """Delete the entities left without orders; log what dimension changes reach; keep
    what the stored hashes were computed by; refresh the planner's statistics."""
    dims.finish(conn)
    if run_plan.mode == EVERYTHING:
        row_hashes.store_state(conn, settings.sources)
        # Statistics for what was just written, in this transaction: without them the
        # next statements (and the next run, if it comes before autovacuum does) plan
        # for the tables as they were, e.g. empty before a first load.
        execute(conn, citus.analyze(conn, "dwh.d_craftsman", "dwh.d_customer", "dwh.d_product",
                                    "dwh.f_order", "craftmart.source_rows"))


def dwh_counts(dims: Dimensions, orders: dict[str, int]) -> dict[str, dict[str, int]]:
    return {**dims.counts, "f_order": orders}


def source_counts(
    conn: Connection, settings: Settings, run_plan: Plan, found: Collected
) -> dict[str, dict[str, int]]:
    if run_plan.mode == EVERYTHING:
        return runs.by_source(settings, found.read, found.loaded, found.quarantined)
    assert run_plan.delta is not None
    return runs.stored_counts(conn, settings, run_plan.delta)
