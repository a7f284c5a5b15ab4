"""Mart refresh: (entity, month) rows changed since the watermark -> their orders -> their
mart rows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from .. import citus, logic
from .._sql import Connection, append, execute, fetch_frame, fetch_value, stage
from ..transform import marts
from ..transform.partition import entity_group_sql
from .dwh import RUN_TS, bulk_load, period_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mart:
    """One mart of the registry: its table and its entity; its watermark table and what
    touches an entity are derived from them."""

    name: str
    entity_id: str
    compute: Callable[[pl.DataFrame], pl.DataFrame]

    @property
    def table(self) -> str:
        return f"marts.{self.name}"

    @property
    def load_dates(self) -> str:
        return f"marts.load_dates_{self.name}"

    @property
    def columns(self) -> list[str]:
        return list(marts.MART_COLUMNS[self.name])

    @property
    def touched_since(self) -> str:
        """A union of selects of the (entity id, report_period) rows changed after the
        watermark (``$1``).

        A change to an order (its ``load_dttm``) touches the row of its month. The change
        log holds the months that orders left (deleted, moved to another entity or month)
        and those whose product type or customer birthday changed (see
        ``dwh.finish_dimensions``). A change to the entity's own attributes (its
        dimension's ``load_dttm``), or a log row without a month, touches every row of
        the entity: the months it has orders in, and the months the mart holds for it.
        """
        entity, person = self.entity_id, self.entity_id.removesuffix("_id")
        month = period_of("order_created_date")
        whole = f"""
            select {entity} from dwh.d_{person} where load_dttm > $1::timestamptz
            union
            select {entity} from craftmart.order_change_log
            where changed_at > $1::timestamptz and report_period is null"""
        return f"""
        select {entity}, {month} from dwh.f_order where load_dttm > $1::timestamptz
        union
        select {entity}, report_period from craftmart.order_change_log
        where changed_at > $1::timestamptz and report_period is not null
        union
        select {entity}, {month} from dwh.f_order where {entity} in ({whole})
        union
        select {entity}, report_period from {self.table} where {entity} in ({whole})
    """


CUSTOMER_MART = Mart("customer_report_datamart", "customer_id", marts.customer_report)
CRAFTSMAN_MART = Mart("craftsman_report_datamart", "craftsman_id", marts.craftsman_report)

MARTS = (CUSTOMER_MART, CRAFTSMAN_MART)

@dataclass(frozen=True)
class Scope:
    """The mart rows one group of a refresh recomputes, as SQL conditions: every row of
    the group's entities (``touched`` None), or the group's touched (entity id,
    report_period) rows, staged in ``touched``; ``distributed``: the warehouse is on
    Citus (``citus.is_distributed``, asked once per refresh)."""

    mart: Mart
    group: int
    groups: int
    touched: str | None
    distributed: bool

    def entities(self, entity: str) -> str:
        """The entity ids (column ``entity``) with a row in scope."""
        condition = entity_group_sql(entity, self.group, self.groups)
        if self.touched is not None:
            condition += f" and {entity} in (select entity_id from {self.touched})"
        return condition

    def rows(self, entity: str, period: str) -> str:
        """The mart rows in scope, by their entity id and report_period expressions."""
        condition = self.entities(entity)
        if self.touched is not None:
            condition += (f" and ({entity}, {period}) in"
                          f" (select entity_id, report_period from {self.touched})")
        return condition

    def orders(self) -> tuple[str, str]:
        """What to select orders (``f``) in scope from, and on what condition.

        On PostgreSQL each touched row's orders are one range of the index on (entity,
        order_created_date): only the touched months are read. Citus reads a temporary
        table only in an uncorrelated subquery: there the touched entities' orders are
        read, and those of other months filtered out.
        """
        entity = f"f.{self.mart.entity_id}"
        if self.touched is None or self.distributed:
            return "dwh.f_order as f", self.rows(entity, period_of("f.order_created_date"))
        return (
            f"""{self.touched} as t
            inner join dwh.f_order as f on f.{self.mart.entity_id} = t.entity_id
                and f.order_created_date >= t.month_start
                and f.order_created_date < t.month_end""",
            entity_group_sql("t.entity_id", self.group, self.groups),
        )


def _orders_of(conn: Connection, mart: Mart, scope: Scope) -> pl.DataFrame:
    """The orders of the mart rows in ``scope`` with what ``mart`` reads of them: each
    order's values and product type, the other person's attribute the mart reads per
    order (for customers the craftsman's email, which breaks ties for top craftsman; for
    craftsmen the customer's birthday), and the entity's own attributes read once per
    entity rather than carried on every order. Attributes the mart does not read are
    null."""
    person = mart.entity_id.removesuffix("_id")
    per_order = ["f.customer_id", "f.craftsman_id", "f.order_created_date",
                 "f.order_completion_date", "f.order_status", "f.product_price",
                 "p.product_type"]
    joins = ["inner join dwh.d_product as p on p.product_id = f.product_id"]
    if person == "craftsman":
        per_order.append("cu.customer_birthday")
        joins.append("inner join dwh.d_customer as cu on cu.customer_id = f.customer_id")
    else:
        per_order.append("cr.craftsman_email")
        joins.append("inner join dwh.d_craftsman as cr on cr.craftsman_id = f.craftsman_id")
    orders_from, condition = scope.orders()
    orders = fetch_frame(
        conn,
        f"select {', '.join(per_order)} from {orders_from} {' '.join(joins)}"
        f" where {condition}",
    )
    own = [f"{person}_{a}" for a in ("id", "name", "address", "birthday", "email")]
    attributes = fetch_frame(
        conn,
        f"select {', '.join(own)} from dwh.d_{person} where {scope.entities(f'{person}_id')}",
    )
    unread = [c for c in marts.ORDERS_SCHEMA if c not in orders.columns and c not in own]
    return orders.join(attributes, on=mart.entity_id, how="inner").with_columns(
        pl.lit(None, marts.ORDERS_SCHEMA[name]).alias(name) for name in unread
    )


def watermark(conn: Connection, mart: Mart) -> Any:
    """The stored watermark of a mart (None before its first refresh)."""
    return fetch_value(conn, f"select max(load_dttm)::text from {mart.load_dates}")


def stored_definition(conn: Connection, mart: Mart) -> str | None:
    """The fingerprint of the definition that computed the mart's rows (None before its
    first refresh, or for a mart refreshed before fingerprints were kept)."""
    value = fetch_value(
        conn,
        "select definition_fingerprint from craftmart.mart_state where mart_name = $1",
        (mart.name,),
    )
    return None if value is None else str(value)


#: Why a mart is refreshed in full (``MartRefresh.full_reason``).
FIRST_REFRESH = "first_refresh"  # no watermark yet
FULL_RUN = "full_run"  # run --full
DEFINITION_CHANGED = "definition_changed"  # logic.mart_fingerprint differs from the stored one


@dataclass(frozen=True)
class MartRefresh:
    mart: str
    full: bool
    entities: int
    orders: int
    rows_inserted: int
    rows_updated: int
    rows_deleted: int
    #: why every entity was refreshed: FIRST_REFRESH, FULL_RUN, DEFINITION_CHANGED;
    #: None for an incremental refresh
    full_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def refresh(conn: Connection, mart: Mart, *, full: bool, groups: int = 1) -> MartRefresh:
    """Bring one mart up to the DWH inside the caller's transaction.

    Incremental: only the rows (entity, report_period) touched after the stored
    watermark are re-aggregated, and only those that differ are written. First refresh,
    ``--full``, or a mart whose definition (``logic.mart_fingerprint``) is not the one
    that computed its rows: every entity, by the very same function. Either way the
    entities are aggregated in ``groups`` groups by id (``partition.entity_group_sql``):
    one group's orders are held at a time. An empty mart (its first build) is appended
    to, its keys built after the last group. Then the watermark advances to the run's
    timestamp, and the definition is kept.
    """
    definition = logic.mart_fingerprint(mart)
    since = None if full else watermark(conn, mart)
    if full:
        full_reason: str | None = FULL_RUN
    elif since is None:
        full_reason = FIRST_REFRESH
    elif stored_definition(conn, mart) != definition:
        full_reason, full, since = DEFINITION_CHANGED, True, None
    else:
        full_reason = None
    entity = mart.entity_id
    touched = None
    if since is not None:
        touched = stage(conn, f"touched_{mart.name}", fetch_frame(
            conn,
            f"""
            select entity_id, report_period, month_start,
                (month_start + interval '1 month')::date as month_end
            from (
                select entity_id, report_period, to_date(report_period, 'YYYY-MM') as month_start
                from ({mart.touched_since}) as t(entity_id, report_period)
            ) as t
            """,
            (since,),
        ), analyze=("entity_id", "report_period"))
        if fetch_value(conn, f"select not exists (select from {touched})"):
            _advance(conn, mart, definition)
            return MartRefresh(mart.name, False, 0, 0, 0, 0, 0)
    first_build = touched is None and bool(
        fetch_value(conn, f"select not exists (select 1 from {mart.table})"))
    entities = orders_read = inserted = updated = deleted = 0
    distributed = citus.is_distributed(conn)
    # an empty mart is written by plain appends, its keys built once after them
    with bulk_load(conn, "marts", mart.name, enabled=first_build):
        for group in range(groups):
            scope = Scope(mart, group, groups, touched, distributed)
            orders = _orders_of(conn, mart, scope)
            entities += orders[entity].n_unique()
            orders_read += orders.height
            rows = mart.compute(orders)
            del orders
            counts = _write_rows(conn, mart, rows, scope, first_build=first_build)
            inserted, updated, deleted = (inserted + counts[0], updated + counts[1],
                                          deleted + counts[2])
    if first_build:
        execute(conn, f"analyze {mart.table}")  # plans of the next refresh need them
    _advance(conn, mart, definition)
    return MartRefresh(mart.name, since is None, entities, orders_read, inserted, updated,
                       deleted, full_reason)


def _write_rows(
    conn: Connection, mart: Mart, rows: pl.DataFrame, scope: Scope, *, first_build: bool,
) -> tuple[int, int, int]:
    """Upsert rows that differ; delete rows in ``scope`` that the new rows no longer
    have."""
    columns = mart.columns
    key = [mart.entity_id, "report_period"]
    if first_build:
        # First build: nothing to compare with or delete, so a plain bulk insert.
        append(conn, "marts", mart.name, rows.select(columns))
        return rows.height, 0, 0
    staged = stage(conn, f"stage_{mart.name}", rows.select(columns), analyze=key)
    non_key = [c for c in columns if c not in key]
    counts = fetch_frame(
        conn,
        f"""
        with upserted as (
            insert into {mart.table} as m ({", ".join(columns)})
            select {", ".join(columns)} from {staged}
            on conflict ({", ".join(key)}) do update set
                {", ".join(f"{c} = excluded.{c}" for c in non_key)}
            where ({", ".join(f"m.{c}" for c in non_key)})
                is distinct from ({", ".join(f"excluded.{c}" for c in non_key)})
            returning (xmax = 0) as inserted
        )
        select
            count(*) filter (where inserted) as inserted,
            count(*) filter (where not inserted) as updated
        from upserted
        """,
    )
    entity = mart.entity_id
    if scope.distributed:
        # Citus reads a temporary table only in an uncorrelated subquery, and NOT IN of
        # one is a subplan run for every row once it outgrows work_mem: the stale rows
        # are an outer join's misses, deleted by IN (a join)
        stale = f"""and (m.{entity}, m.report_period) in (
                select d.{entity}, d.report_period
                from {mart.table} as d
                left join (select {entity}, report_period from {staged}) as s
                    on s.{entity} = d.{entity} and s.report_period = d.report_period
                where s.{entity} is null and {scope.rows(f"d.{entity}", "d.report_period")}
            )"""
    else:
        stale = f"""and not exists (
                select from {staged} as s
                where s.{entity} = m.{entity} and s.report_period = m.report_period
            )"""
    deleted = fetch_frame(
        conn,
        f"""
        with stale_rows as (
            delete from {mart.table} as m
            where {scope.rows(f"m.{entity}", "m.report_period")}
            {stale}
            returning 1
        )
        select count(*) as n from stale_rows
        """,
    ).item()
    return int(counts["inserted"][0]), int(counts["updated"][0]), int(deleted)


def _advance(conn: Connection, mart: Mart, definition: str) -> None:
    """Move the watermark to the run's timestamp; keep the definition the rows now follow."""
    execute(conn, f"insert into {mart.load_dates} (load_dttm) values ({RUN_TS})")
    execute(
        conn,
        """
        insert into craftmart.mart_state (mart_name, definition_fingerprint) values ($1, $2)
        on conflict (mart_name) do update
            set definition_fingerprint = excluded.definition_fingerprint
        """,
        (mart.name, definition),
    )


def prune_change_log(conn: Connection) -> None:
    """Forget change-log rows that every mart's watermark has passed."""
    watermarks = ", ".join(f"(select max(load_dttm) from {m.load_dates})" for m in MARTS)
    execute(conn, f"delete from craftmart.order_change_log where changed_at <= least({watermarks})")
