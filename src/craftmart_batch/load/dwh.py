"""ADBC: the current DWH (or the part a change reaches) read in, the diff written back,
set-based."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import polars as pl

from .. import citus
from .._database import quote_literal
from .._sql import (
    Connection,
    drop_indexes,
    execute,
    fetch_frame,
    fetch_value,
    stage,
)
from ..transform.diff import Scope, TableDiff, WarehouseDiff
from ..transform.identity import (
    CRAFTSMAN_KEY,
    CUSTOMER_KEY,
    PRODUCT_KEY,
    SurrogateIds,
    Warehouse,
)

logger = logging.getLogger(__name__)

#: A first load of at least this many orders builds f_order's indexes after the inserts
#: instead of row by row (``bulk_load``).
BULK_LOAD_ROWS = 100_000

#: The run's timestamp, set once per transaction: every row it writes carries it.
RUN_TS = "current_setting('craftmart.run_ts')::timestamptz"


def period_of(date: str) -> str:
    """SQL: the mart month (``report_period``, YYYY-MM) of a date expression."""
    return f"to_char({date}, 'YYYY-MM')"


#: The DWH columns the diff compares, per table.
_COLUMNS = {
    "d_craftsman": "craftsman_id, craftsman_email, craftsman_name, craftsman_address,"
                   " craftsman_birthday",
    "d_customer": "customer_id, customer_email, customer_name, customer_address,"
                  " customer_birthday",
    "d_product": "product_id, craftsman_id, product_name, product_description, product_type,"
                 " product_price",
    "f_order": "order_id, source_name, source_order_id, product_id, craftsman_id, customer_id,"
               " order_created_date, order_completion_date, order_status, product_price",
}


def read_dimensions(conn: Connection, scope: str | None = None) -> Warehouse:
    """The DWH's dimensions as they are now, by natural key, with surrogate ids (read in
    the run's transaction); with ``scope``, only the people and products in the
    ``pg_temp.scope_d_*`` tables (``touched_dimensions``). No orders."""
    craftsmen, customers, products = (
        fetch_frame(conn, f"select {_COLUMNS[table]} from "
                    + (f"dwh.{table}" if scope is None else f"pg_temp.scope_{table}"))
        for table in ("d_craftsman", "d_customer", "d_product")
    )
    products = products.join(craftsmen.select("craftsman_id", "craftsman_email"),
                             on="craftsman_id", how="left")
    return Warehouse(craftsmen, customers, products, pl.DataFrame())


def read_people(conn: Connection, person: str, where: str) -> pl.DataFrame:
    """The DWH's craftsmen or customers (``person``) as they are now, with their ids,
    where ``where`` holds (a condition on the table's columns)."""
    return fetch_frame(conn, f"select {_COLUMNS[f'd_{person}']} from dwh.d_{person}"
                             f" where {where}")


def read_products(conn: Connection, where: str, craftsmen: pl.DataFrame) -> pl.DataFrame:
    """The DWH's products where ``where`` holds, by natural key: ``craftsmen`` (id and
    email) has the craftsman of each."""
    products = fetch_frame(conn, f"select {_COLUMNS['d_product']} from dwh.d_product"
                                 f" where {where}")
    return products.join(craftsmen.select("craftsman_id", "craftsman_email"),
                         on="craftsman_id", how="left")


#: f_order as the order diff compares it: by natural key, with the ids it points to.
ORDER_ID_ATTRS = ("product_id", "craftsman_id", "customer_id", "order_created_date",
                  "order_completion_date", "order_status", "product_price")


def read_orders(conn: Connection, where: str) -> pl.DataFrame:
    """The f_order rows ``where`` selects (a condition on ``f``), with their ids."""
    return fetch_frame(
        conn,
        f"select order_id, source_name, source_order_id, {', '.join(ORDER_ID_ATTRS)}"
        f" from dwh.f_order as f where {where}",
    )


_RESOLVED = """
    select
        o.source_name, o.source_order_id, rp.product_id, c.craftsman_id, cu.customer_id,
        o.order_created_date, o.order_completion_date, o.order_status, o.product_price
    from {staged} as o
    left join dwh.d_craftsman as c on c.craftsman_email = o.craftsman_email
    left join dwh.d_customer as cu on cu.customer_email = o.customer_email
    left join pg_temp.run_product_ids as rp
        on rp.craftsman_email = o.craftsman_email and rp.product_hash = o.product_hash
"""


def resolve_ids(conn: Connection, staged: str) -> pl.DataFrame:
    """Staged orders (``partition.staged_orders``) with the ids of the entities they name,
    as f_order holds them. Once ``write_dimensions`` has run, the dimensions (and
    ``pg_temp.run_product_ids``) hold every entity a valid order names; a missing one
    would leave a null id, which f_order refuses."""
    return fetch_frame(conn, _RESOLVED.format(staged=staged))


def insert_orders(conn: Connection, staged: str) -> int:
    """Insert staged orders, their ids resolved in the server, into f_order (whose keys
    they must not hold yet); return how many."""
    columns = ", ".join(_ORDER_COLUMNS)
    return int(fetch_value(conn, f"""
        with inserted as (
            insert into dwh.f_order ({columns}, load_dttm)
            select {columns}, {RUN_TS} from ({_RESOLVED.format(staged=staged)}) as resolved
            returning 1
        )
        select count(*) from inserted
    """))


def touched_dimensions(
    conn: Connection, keys: str, named: Warehouse, ranks: dict[str, int]
) -> Scope:
    """What the changed orders (the table ``keys`` of ``source_name, source_order_id``,
    with an index on them) reach in the DWH, in the ``pg_temp.scope_d_*`` tables: the
    people and products they named before (per ``f_order``) and the ones they name now
    (``named``: their candidates). See ``Scope``. ``ranks`` is every source's rank
    (``RECENCY``)."""
    for person in ("craftsman", "customer"):
        email = f"{person}_email"
        staged = stage(conn, f"scope_named_{person}s",
                       getattr(named, f"{person}s" if person == "customer" else "craftsmen")
                       .select(email).unique())
        _create_scope_table(conn, f"d_{person}", f"""
            select {_COLUMNS[f"d_{person}"]} from dwh.d_{person}
            where {person}_id in (
                select f.{person}_id from dwh.f_order as f
                inner join {keys} as k
                    on k.source_name = f.source_name and k.source_order_id = f.source_order_id
            )
            union
            select {_COLUMNS[f"d_{person}"]} from dwh.d_{person}
            where md5({email}) in (select md5({email}) from {staged})
        """)
    staged = stage(conn, "scope_named_products", named.products.select(PRODUCT_KEY))
    _create_scope_table(conn, "d_product", f"""
        select {_COLUMNS["d_product"]} from dwh.d_product
        where product_id in (
            select f.product_id from dwh.f_order as f
            inner join {keys} as k
                on k.source_name = f.source_name and k.source_order_id = f.source_order_id
        )
        union
        select {", ".join("p." + c for c in _COLUMNS["d_product"].split(", "))}
        from dwh.d_product as p
        inner join pg_temp.scope_d_craftsman as c on c.craftsman_id = p.craftsman_id
        inner join {staged} as n
            on n.craftsman_email = c.craftsman_email
            and n.product_name is not distinct from p.product_name
            and n.product_description is not distinct from p.product_description
    """)
    current = read_dimensions(conn, scope="touched")
    return Scope(
        current=current,
        craftsmen=pl.concat([current.craftsmen.select(CRAFTSMAN_KEY),
                             named.craftsmen.select(CRAFTSMAN_KEY)]).unique(),
        customers=pl.concat([current.customers.select(CUSTOMER_KEY),
                             named.customers.select(CUSTOMER_KEY)]).unique(),
        products=pl.concat([current.products.select(PRODUCT_KEY),
                            named.products.select(PRODUCT_KEY)]).unique(),
        latest_unchanged=_latest_unchanged(conn, keys, ranks),
    )


def _create_scope_table(conn: Connection, table: str, query: str) -> None:
    execute(conn, f"drop table if exists pg_temp.scope_{table}")
    execute(conn, f"create temporary table scope_{table} as {query}")
    execute(conn, f"analyze pg_temp.scope_{table}")


#: The dimensions and their ids, as ``_latest_unchanged`` walks them.
_ENTITY_IDS = (("d_craftsman", "craftsman_id"), ("d_customer", "customer_id"),
               ("d_product", "product_id"))


def _keys_of_latest(conn: Connection, rank_rows: str, latest: list[str]) -> pl.DataFrame:
    """The order keys the ``latest`` selects (one per dimension) name, together; they
    read the sources' ranks as ``ranks``."""
    return fetch_frame(
        conn,
        f"with ranks (source_name, source_rank) as (values {rank_rows})\n"
        + "\nunion\n".join(latest),
    ).cast({"source_name": pl.String, "source_order_id": pl.Int64})


def _latest_unchanged(conn: Connection, keys: str, ranks: dict[str, int]) -> pl.DataFrame:
    """For every touched entity (the ``pg_temp.scope_d_*`` tables), the key of its most
    recent order (by ``RECENCY``) among those not in ``keys``: a walk down the entity's
    ``(id, order_created_date)`` index that stops at the first unchanged order."""
    rank_rows = ", ".join(f"({quote_literal(name)}, {int(rank)})" for name, rank in ranks.items())
    if citus.is_distributed(conn):
        return _latest_unchanged_distributed(conn, keys, rank_rows)
    latest = [
        f"""
        select latest.source_name, latest.source_order_id
        from pg_temp.scope_{table} as s
        cross join lateral (
            select f.source_name, f.source_order_id
            from dwh.f_order as f
            inner join ranks as r on r.source_name = f.source_name
            where f.{entity_id} = s.{entity_id}
                and not exists (
                    select from {keys} as k
                    where k.source_name = f.source_name
                        and k.source_order_id = f.source_order_id
                )
            order by f.order_created_date desc, r.source_rank desc, f.source_order_id desc
            limit 1
        ) as latest
        """
        for table, entity_id in _ENTITY_IDS
    ]
    return _keys_of_latest(conn, rank_rows, latest)


def _latest_unchanged_distributed(conn: Connection, keys: str, rank_rows: str) -> pl.DataFrame:
    """``_latest_unchanged`` on Citus, which cannot correlate a temporary table with a
    distributed one (a lateral join): the touched entities' unchanged orders (an outer
    join's misses: NOT IN of a subquery is a subplan per row once it outgrows work_mem)
    ranked by recency, per entity, the first of each kept. Distributed by customer_id, the
    customers' ranking runs in their shards; the craftsmen's and products' is finished
    on the coordinator."""
    latest = [
        f"""
        select source_name, source_order_id from (
            select
                f.source_name, f.source_order_id,
                row_number() over (
                    partition by f.{entity_id}
                    order by f.order_created_date desc, r.source_rank desc,
                        f.source_order_id desc
                ) as recency
            from dwh.f_order as f
            inner join ranks as r on r.source_name = f.source_name
            left join (select source_name, source_order_id from {keys}) as k
                on k.source_name = f.source_name and k.source_order_id = f.source_order_id
            where f.{entity_id} in (select {entity_id} from pg_temp.scope_{table})
                and k.source_name is null
        ) as ranked
        where recency = 1
        """
        for table, entity_id in _ENTITY_IDS
    ]
    return _keys_of_latest(conn, rank_rows, latest)


def write_dimensions(conn: Connection, current: Warehouse, diff: WarehouseDiff) -> SurrogateIds:
    """Write new and changed people and products (``current`` is the whole of the
    dimensions or a ``Scope``'s part of them); return the id of every entity the
    target has, by natural key. Entities the target no longer has are deleted later
    (``finish_dimensions``), once no order points to them."""
    craftsman_ids = write_people(conn, "craftsman", current.craftsmen, diff.craftsmen)
    customer_ids = write_people(conn, "customer", current.customers, diff.customers)
    product_ids = write_products(conn, current.products, diff.products, craftsman_ids)
    return SurrogateIds(
        without_deleted(craftsman_ids, diff.craftsmen, CRAFTSMAN_KEY),
        without_deleted(customer_ids, diff.customers, CUSTOMER_KEY),
        without_deleted(product_ids, diff.products, PRODUCT_KEY),
    )


def without_deleted(ids: pl.DataFrame, diff: TableDiff, key: tuple[str, ...]) -> pl.DataFrame:
    """The ids of the entities the target still has."""
    return ids.join(diff.deleted, on=list(key), how="anti", nulls_equal=True)


_ORDER_COLUMNS = ["source_name", "source_order_id", *ORDER_ID_ATTRS]

_LOG_COLUMNS = "changed_at, customer_id, craftsman_id, report_period"

#: An updated order (``f``, its new values ``staged``) that leaves mart rows: another
#: customer, craftsman or month.
_MOVED = (
    "f.customer_id <> staged.customer_id or f.craftsman_id <> staged.craftsman_id"
    f" or {period_of('f.order_created_date')} <> {period_of('staged.order_created_date')}"
)


def _assigned_from_staged(columns: Iterable[str]) -> str:
    """An UPDATE's ``column = staged.column`` for each of ``columns``, and the run's
    load_dttm."""
    return ", ".join([*(f"{c} = staged.{c}" for c in columns), f"load_dttm = {RUN_TS}"])


def write_orders(conn: Connection, diff: TableDiff) -> None:
    """Apply one partition's order diff (by natural key, with the ids orders point to).

    Orders that are deleted, or that move to another customer, craftsman or month,
    leave their former owners and month in ``craftmart.order_change_log`` so the marts
    revisit those rows.
    """
    if not diff.deleted.is_empty():
        staged = stage(conn, "stage_f_order_deleted", diff.deleted.select("order_id"))
        execute(
            conn,
            f"""
            with deleted_orders as (
                delete from dwh.f_order as f
                using {staged} as staged
                where f.order_id = staged.order_id
                returning f.customer_id, f.craftsman_id, f.order_created_date
            )
            insert into craftmart.order_change_log ({_LOG_COLUMNS})
            select {RUN_TS}, customer_id, craftsman_id, {period_of("order_created_date")}
            from deleted_orders
            """,
        )
    if not diff.updates.is_empty() and citus.is_distributed(conn):
        _update_distributed_orders(conn, diff.updates)
    elif not diff.updates.is_empty():
        staged = stage(conn, "stage_f_order_updates", diff.updates.select(_ORDER_COLUMNS))
        execute(
            conn,
            f"""
            with orders_moved_away as (
                insert into craftmart.order_change_log ({_LOG_COLUMNS})
                select {RUN_TS}, f.customer_id, f.craftsman_id,
                    {period_of("f.order_created_date")}
                from dwh.f_order as f
                inner join {staged} as staged
                    on staged.source_name = f.source_name
                    and staged.source_order_id = f.source_order_id
                where {_MOVED}
            )

            update dwh.f_order as f set {_assigned_from_staged(ORDER_ID_ATTRS)}
            from {staged} as staged
            where f.source_name = staged.source_name
                and f.source_order_id = staged.source_order_id
            """,
        )
    if not diff.inserts.is_empty():
        staged = stage(conn, "stage_f_order_inserts", diff.inserts.select(_ORDER_COLUMNS))
        execute(conn, f"""
            insert into dwh.f_order ({", ".join(_ORDER_COLUMNS)}, load_dttm)
            select {", ".join(_ORDER_COLUMNS)}, {RUN_TS}
            from {staged}
        """)


def _update_distributed_orders(conn: Connection, updates: pl.DataFrame) -> None:
    """``write_orders``' updates on Citus, where f_order is distributed by customer_id and
    a distribution column cannot be updated: the former owners of orders that move are
    logged, orders that move to another customer are deleted and inserted again under
    the new one (same order_id), and the others updated in place."""
    staged = stage(conn, "stage_f_order_updates", updates.select(_ORDER_COLUMNS),
                   analyze=("source_name", "source_order_id"))
    same_order = ("staged.source_name = f.source_name"
                  " and staged.source_order_id = f.source_order_id")
    execute(
        conn,
        f"""
        insert into craftmart.order_change_log ({_LOG_COLUMNS})
        select {RUN_TS}, f.customer_id, f.craftsman_id, {period_of("f.order_created_date")}
        from dwh.f_order as f
        inner join {staged} as staged on {same_order}
        where {_MOVED}
        """,
    )
    moved = fetch_frame(
        conn,
        f"""
        delete from dwh.f_order as f
        using {staged} as staged
        where {same_order} and f.customer_id <> staged.customer_id
        returning f.order_id, f.source_name, f.source_order_id
        """,
    )
    if not moved.is_empty():
        kept = stage(conn, "stage_f_order_moved", moved)
        columns = ", ".join(_ORDER_COLUMNS)
        execute(
            conn,
            f"""
            insert into dwh.f_order (order_id, {columns}, load_dttm)
            overriding system value
            select m.order_id, {", ".join(f"staged.{c}" for c in _ORDER_COLUMNS)}, {RUN_TS}
            from {staged} as staged
            inner join {kept} as m
                on m.source_name = staged.source_name
                and m.source_order_id = staged.source_order_id
            """,
        )
    execute(
        conn,
        f"""
        update dwh.f_order as f set
            {_assigned_from_staged(a for a in ORDER_ID_ATTRS if a != "customer_id")}
        from {staged} as staged
        where {same_order} and f.customer_id = staged.customer_id
            and f.load_dttm is distinct from {RUN_TS}
        """,
    )


def finish_dimensions(
    conn: Connection, deleted: dict[str, pl.DataFrame], retyped: pl.DataFrame,
    reborn: pl.DataFrame,
) -> None:
    """After the orders: delete the entities the target no longer has (``deleted``: the
    ids per table; no order points to them any more), and log the owners of orders
    that a dimension change reaches (``mart_touches``)."""
    for table in ("d_product", "d_customer", "d_craftsman"):
        _delete_by_id(conn, table, ENTITY_ID[table], deleted[table])
    if not retyped.is_empty():
        staged = stage(conn, "stage_retyped_products", retyped.select("product_id"))
        _log_orders_of(conn, f"f.product_id in (select product_id from {staged})")
    if not reborn.is_empty():
        staged = stage(conn, "stage_birthday_changes", reborn.select("customer_id"))
        _log_orders_of(conn, f"f.customer_id in (select customer_id from {staged})")


#: The surrogate id column of each dimension.
ENTITY_ID = {"d_craftsman": "craftsman_id", "d_customer": "customer_id",
             "d_product": "product_id"}


@contextmanager
def bulk_load(conn: Connection, schema: str, table: str, *, enabled: bool) -> Iterator[None]:
    """Bulk writes into a table (a first load of many orders into f_order, a mart's
    first build): its indexes, its primary and unique keys included, are built after
    the writes instead of an entry per row (at a million orders f_order's insert took
    10.7 s with its two keys; 3.3 s without them, and 3.7 s to build them). On Citus the
    unique ones stay: each is one per shard."""
    if not enabled:
        yield
        return
    dropped = drop_indexes(conn, schema, table, unique=not citus.is_distributed(conn))
    yield
    dropped.build(conn)


def _changed(
    updates: pl.DataFrame, current: pl.DataFrame, key: list[str], attr: str
) -> pl.DataFrame:
    """The updated rows whose ``attr`` differs from its current value."""
    return updates.join(
        current.select(*key, pl.col(attr).alias("__before")), on=key, how="inner",
        nulls_equal=True,
    ).filter(pl.col(attr).ne_missing(pl.col("__before")))


#: The dimensions with an attribute that reaches the marts through their orders
#: (``mart_touches``): their natural key and that attribute.
MART_FEEDS = {"d_product": (PRODUCT_KEY, "product_type"),
              "d_customer": (CUSTOMER_KEY, "customer_birthday")}


def mart_touches(
    table: str, current: pl.DataFrame, diff: TableDiff, ids: pl.DataFrame
) -> pl.DataFrame:
    """The ids of the entities of ``table`` whose change reaches the marts through
    their orders: products whose type changed, customers whose birthday did.

    A product's type feeds both marts' top category, and a customer's birthday the
    craftsman mart's average age, for every order of that product or customer. The
    orders themselves are unchanged, so their load_dttm cannot say so: the change log
    does (``finish_dimensions``). (Other dimension changes — a product's current price,
    an address — either feed no mart or only the row of their own entity, which its
    load_dttm covers.)
    """
    key, attr = MART_FEEDS[table]
    changed = _changed(diff.updates, current, list(key), attr)
    return changed.join(ids, on=list(key), nulls_equal=True).select(ENTITY_ID[table])


def _log_orders_of(conn: Connection, condition: str) -> None:
    execute(
        conn,
        f"""
        insert into craftmart.order_change_log ({_LOG_COLUMNS})
        select distinct {RUN_TS}, f.customer_id, f.craftsman_id,
            {period_of("f.order_created_date")}
        from dwh.f_order as f
        where {condition}
        """,
    )


def write_people(
    conn: Connection, entity: str, current: pl.DataFrame, table_diff: TableDiff,
) -> pl.DataFrame:
    """Write new and changed people; return every person's (id, email) after the write.

    Customers distributed by their id (Citus): no unique index on the email can
    arbitrate an upsert, so changed people are updated by the ids they have, new ones
    inserted."""
    id_col, email = f"{entity}_id", f"{entity}_email"
    ids = current.select(id_col, email)
    if table_diff.upserts.is_empty():
        return ids
    attrs = [f"{entity}_name", f"{entity}_address", f"{entity}_birthday"]
    if entity == "customer" and citus.is_distributed(conn):
        written = _update_then_insert_person(conn, entity, ids, table_diff, attrs)
        return pl.concat([ids.join(written, on=email, how="anti"), written.cast(ids.schema)])
    staged = stage(conn, f"stage_d_{entity}", table_diff.upserts)
    written = fetch_frame(
        conn,
        f"""
        insert into dwh.d_{entity} ({", ".join(attrs)}, {email}, load_dttm)
        select {", ".join(attrs)}, {email}, {RUN_TS}
        from {staged}
        order by {email}  -- new ids in key order, however the run was partitioned
        on conflict (md5({email})) do update set
            {", ".join(f"{a} = excluded.{a}" for a in attrs)},
            load_dttm = excluded.load_dttm
        returning {id_col}, {email}
        """,
    )
    return pl.concat([ids.join(written, on=email, how="anti"), written.cast(ids.schema)])


def _update_then_insert_person(
    conn: Connection, entity: str, ids: pl.DataFrame, table_diff: TableDiff, attrs: list[str]
) -> pl.DataFrame:
    """``write_people`` on a table distributed by its id: the changed people by id (one
    multi-shard UPDATE ... FROM), then the new ones (INSERT ... SELECT, ids from the
    identity, in key order); return their (id, email)."""
    id_col, email = f"{entity}_id", f"{entity}_email"
    written = []
    if not table_diff.updates.is_empty():
        staged = stage(conn, f"stage_d_{entity}_updates",
                       table_diff.updates.join(ids, on=email, how="inner"), analyze=[id_col])
        written.append(fetch_frame(
            conn,
            f"""
            update dwh.d_{entity} as d set
                {", ".join(f"{a} = staged.{a}" for a in attrs)},
                load_dttm = {RUN_TS}
            from {staged} as staged
            where d.{id_col} = staged.{id_col}
            returning d.{id_col}, d.{email}
            """,
        ))
    if not table_diff.inserts.is_empty():
        staged = stage(conn, f"stage_d_{entity}_inserts", table_diff.inserts)
        written.append(fetch_frame(
            conn,
            f"""
            insert into dwh.d_{entity} ({", ".join(attrs)}, {email}, load_dttm)
            select {", ".join(attrs)}, {email}, {RUN_TS}
            from {staged}
            order by {email}  -- new ids in key order, however the run was partitioned
            returning {id_col}, {email}
            """,
        ))
    return pl.concat([w.cast(ids.schema) for w in written]) if written else ids.clear()


def write_products(
    conn: Connection, current: pl.DataFrame, table_diff: TableDiff, craftsman_ids: pl.DataFrame
) -> pl.DataFrame:
    """Write new and changed products; return every product's id by natural key."""
    ids = current.select("product_id", *PRODUCT_KEY)
    if table_diff.upserts.is_empty():
        return ids
    staged = stage(
        conn,
        "stage_d_product",
        table_diff.upserts.join(craftsman_ids, on="craftsman_email", how="left"),
    )
    written = fetch_frame(
        conn,
        f"""
        insert into dwh.d_product as p (
            craftsman_id, product_name, product_description, product_type,
            product_price, load_dttm
        )
        select
            craftsman_id, product_name, product_description, product_type,
            product_price, {RUN_TS}
        from {staged}
        order by craftsman_id, product_name, product_description  -- as for people
        on conflict (craftsman_id, md5(product_name), md5(product_description)) do update set
            product_type = excluded.product_type,
            product_price = excluded.product_price,
            load_dttm = excluded.load_dttm
        returning product_id, craftsman_id, product_name, product_description
        """,
    ).join(craftsman_ids, on="craftsman_id", how="left").select(ids.columns)
    key = list(PRODUCT_KEY)
    return pl.concat([
        ids.join(written, on=key, how="anti", nulls_equal=True),
        written.cast(ids.schema),
    ])


def _delete_by_id(conn: Connection, table: str, id_column: str, deleted: pl.DataFrame) -> None:
    if deleted.is_empty():
        return
    staged = stage(conn, f"stage_{table}_deleted", deleted.select(id_column))
    # a subquery, not USING: Citus joins a reference table to a temporary one only so
    execute(
        conn,
        f"delete from dwh.{table} as t"
        f" where t.{id_column} in (select {id_column} from {staged})",
    )


