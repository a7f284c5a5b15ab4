"""The warehouse on a Citus cluster: detection, checks, and the distributed layout.

On a database with the ``citus`` extension (or with ``database.citus = "on"``) the
tables the migrations create are laid out over the cluster right after them, in the
run's transaction (``distribute``):

- ``dwh.d_customer``, ``dwh.f_order`` and ``marts.customer_report_datamart`` are
  distributed by ``customer_id`` and co-located: the customer mart reads a customer's
  orders with the customer's attributes, and the craftsman mart reads every order with
  its customer's birthday, both joined on ``customer_id`` inside each shard.
- ``marts.craftsman_report_datamart`` is distributed by ``craftsman_id``.
- ``dwh.d_craftsman`` and ``dwh.d_product`` are reference tables (a copy on every
  node): ``f_order`` joins them on ``craftsman_id`` and ``product_id``, which are not
  its distribution column, and the run resolves staged orders to their ids by email
  and product. They are small beside the orders (about one craftsman per 150 orders,
  one product per 35).
- ``craftmart.*`` and the marts' load dates stay plain tables on the coordinator: one
  row per run or per source key, read and written by the coordinator alone.

A unique constraint on a distributed table must hold its distribution column, so
``f_order``'s and the marts' primary keys gain it, ``f_order``'s natural key is unique
per customer (the load keeps it unique overall: it writes orders by natural key), and
``d_customer``'s email is indexed but no longer unique in the database (the load writes
one row per email; ``write_dimensions`` looks people up by id, not by email).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl

from ._database import (
    Database,
    close_quietly,
    connect,
    connection,
    first_line,
    quote_ident,
    quote_literal,
)
from ._sql import Connection, database_error, execute, fetch_frame, fetch_value
from .errors import CraftmartError

if TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger(__name__)

#: The oldest Citus the layout is tested with (identity columns of distributed tables,
#: create_distributed_table in the transaction that created the table, SET LOCAL
#: propagation); older releases may work but are refused rather than half-tried.
MIN_VERSION = (13, 0)

#: ``database.citus``: "auto" lays the warehouse out over the cluster when the citus
#: extension is in the database; "on" requires it; "off" keeps plain tables even there.
MODES = ("auto", "on", "off")

#: Distributed tables: (table, distribution column, co-located with).
DISTRIBUTED = (
    ("dwh.d_customer", "customer_id", "none"),
    ("dwh.f_order", "customer_id", "dwh.d_customer"),
    ("marts.customer_report_datamart", "customer_id", "dwh.d_customer"),
    ("marts.craftsman_report_datamart", "craftsman_id", "none"),
)
REFERENCE = ("dwh.d_craftsman", "dwh.d_product")

#: What the distributed tables' keys become (a unique key must hold the distribution
#: column), applied to the plain tables just before they are distributed.
_KEYS = (
    "drop index dwh.d_customer_email_uq",
    "create index d_customer_email_ix on dwh.d_customer (md5(customer_email))",
    "comment on index dwh.d_customer_email_ix is 'People by normalised email (on its md5);"
    " unique by the load: on Citus a unique index must hold customer_id.'",
    "alter table dwh.f_order drop constraint f_order_pk",
    "alter table dwh.f_order add constraint f_order_pk primary key (customer_id, order_id)",
    "alter table dwh.f_order drop constraint f_order_source_uq",
    "alter table dwh.f_order add constraint f_order_source_uq"
    " unique (customer_id, source_name, source_order_id)",
    "create index f_order_source_ix on dwh.f_order (source_name, source_order_id)",
    "alter table marts.customer_report_datamart drop constraint customer_report_datamart_pk",
    "alter table marts.customer_report_datamart add constraint customer_report_datamart_pk"
    " primary key (customer_id, id)",
    "alter table marts.craftsman_report_datamart drop constraint craftsman_report_datamart_pk",
    "alter table marts.craftsman_report_datamart add constraint craftsman_report_datamart_pk"
    " primary key (craftsman_id, id)",
)


def installed_version(conn: Connection) -> str | None:
    """The citus extension's version in this database, None without it."""
    value = fetch_value(conn, "select extversion from pg_extension where extname = 'citus'")
    return None if value is None else str(value)


def is_distributed(conn: Connection) -> bool:
    """Whether the warehouse is laid out over a Citus cluster (``dwh.f_order`` is a
    distributed table)."""
    # two queries: a relation a query names must exist, however its logic short-circuits
    if not fetch_value(conn, "select to_regclass('pg_catalog.pg_dist_partition') is not null"):
        return False
    return _in_cluster(conn, "dwh.f_order")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("-")[0].split(".") if part.isdigit())


def check(conn: Connection, mode: str) -> bool:
    """Before the run's lock: whether the warehouse is (or is to be) on Citus; refuse,
    with one line, a Citus too old, or a worker that does not answer."""
    version = installed_version(conn)
    if mode == "off" or (version is None and mode == "auto"):
        return False
    if version is None:
        raise CraftmartError(
            "database.citus is \"on\" but the citus extension is not installed in the"
            " warehouse's database (create extension citus, on every node)")
    if _version_tuple(version) < MIN_VERSION:
        raise CraftmartError(
            f"Citus {version} is too old: the distributed warehouse needs Citus"
            f" {'.'.join(map(str, MIN_VERSION))} or later")
    workers = fetch_frame(conn, """
        select nodename, nodeport, isactive from pg_catalog.pg_dist_node
        where noderole = 'primary' and groupid <> 0 order by nodename, nodeport
    """)
    if workers.is_empty() and not fetch_value(
            conn, "select exists (select from pg_catalog.pg_dist_node where shouldhaveshards)"):
        raise CraftmartError("the Citus cluster has no node to hold shards"
                             " (citus_add_node a worker)")
    inactive = [f"{h}:{p}" for h, p, active in workers.iter_rows() if not active]
    if inactive:
        raise CraftmartError(f"Citus worker {', '.join(inactive)} is inactive")
    answers = fetch_frame(conn, "select nodename, nodeport, success, result"
                                " from run_command_on_workers('select 1')")
    down = [(h, p, r) for h, p, ok, r in answers.iter_rows() if not ok]
    if down:
        host, port, result = down[0]
        raise CraftmartError(f"Citus worker {host}:{port} does not answer: {result}")
    return True


def prepare_transaction(conn: Connection) -> None:
    """The run's transaction on Citus goes over one connection per node. A run writes
    the reference tables and f_order's shards, then reads them joined; a shard written
    over one connection and a reference placement over another could not be read by one
    task ("cannot perform query with placements that were modified over multiple
    connections"). The price: the shards of a node are written one after another."""
    execute(conn, "set local citus.multi_shard_modify_mode to 'sequential'")


def set_local(conn: Connection, name: str, value: str) -> None:
    """SET LOCAL a setting in the coordinator's transaction and in every worker's part of
    it (Citus propagates SET LOCAL, not set_config)."""
    execute(conn, "set local citus.propagate_set_commands to 'local'")
    execute(conn, f"set local {quote_ident(name.split('.')[0])}.{quote_ident(name.split('.')[1])}"
                  f" to {quote_literal(value)}")


def analyze(conn: Connection, *tables: str) -> str:
    """ANALYZE of ``tables``; on Citus of the coordinator's plain tables only. The
    coordinator holds a copy of the reference tables and reads and writes it in the
    run's own session (local execution); ANALYZE of a distributed or reference table
    would then need connections of its own to the nodes, which Citus refuses in that
    transaction ("a local execution has accessed a placement in the transaction").
    The shards are analysed by their nodes' autovacuum after the commit."""
    if is_distributed(conn):
        tables = tuple(t for t in tables if not _in_cluster(conn, t))
    return f"analyze {', '.join(tables)}" if tables else "select 1"


def estimated_rows(conn: Connection) -> Callable[[str], str]:
    """A SQL expression of a table's row count as the planner estimates it: its own
    statistics on plain PostgreSQL, the sum of its shards' on Citus (a distributed
    table's statistics on the coordinator stay empty)."""
    if not is_distributed(conn):
        return lambda table: (f"greatest((select reltuples from pg_class"
                              f" where oid = {quote_literal(table)}::regclass), 0)")
    return lambda table: (
        "(select coalesce(sum(greatest(result::float8, 0)), 0) from run_command_on_shards("
        f"{quote_literal(table)}, $$select reltuples from pg_class"
        " where oid = '%s'::regclass$$) where success)")


def largest_entity_orders(conn: Connection) -> int:
    """About how many orders the busiest customer or craftsman has, from the shards'
    statistics (the coordinator has none of a distributed table). ``f_order`` is
    distributed by customer: a customer's orders are on one shard, so the busiest
    customer is the largest of the shards' busiest; a craftsman's orders are spread
    over every shard, so the shards' busiest craftsmen are added up (an upper bound)."""
    def busiest(column: str) -> str:
        return ("run_command_on_shards('dwh.f_order', $$select coalesce(max("
                "s.most_common_freqs[1] * greatest(c.reltuples, 0)), 0)::bigint"
                " from pg_stats as s inner join pg_class as c on c.oid = '%s'::regclass"
                " inner join pg_namespace as n on n.oid = c.relnamespace"
                " where s.schemaname = n.nspname and s.tablename = c.relname"
                f" and s.attname = '{column}'$$)")

    value = fetch_value(conn, f"""
        select greatest(
            (select max(nullif(result, '')::bigint) from {busiest("customer_id")}
             where success),
            (select sum(nullif(result, '')::bigint) from {busiest("craftsman_id")}
             where success))
    """)
    return int(value or 0)


def analyze_cluster_tables(conn: Connection) -> list[str]:
    """After a run's commit on Citus: ANALYZE the distributed and reference tables (their
    shards, on the workers) in a transaction of its own, which the run could not do in
    its own (``analyze``); the next run's plans and estimates need them. The run is
    committed: a failure here is a warning (autovacuum analyses the shards later)."""
    try:
        execute(conn, "analyze " + ", ".join(
            [*REFERENCE, *(table for table, _, _ in DISTRIBUTED)]))
        conn.commit()
    except Exception as exc:
        logger.info("analyze after the commit failed", exc_info=True)
        try:
            conn.rollback()
        except Exception:
            logger.debug("rollback failed", exc_info=True)
        return [f"statistics of the distributed tables not refreshed: {first_line(str(exc))}"]
    return []


def _in_cluster(conn: Connection, table: str) -> bool:
    return bool(fetch_value(conn, "select exists (select from pg_catalog.pg_dist_partition"
                                  " where logicalrelid = to_regclass($1))", (table,)))


def distribute(conn: Connection) -> list[str]:
    """Lay the warehouse's tables out over the cluster, inside the caller's transaction
    (which holds the run's lock); return what was distributed. Idempotent: a warehouse
    already laid out is not touched. Rows already in the tables (a warehouse built on
    plain PostgreSQL, ``craftmart-batch distribute``) move to the shards."""
    if is_distributed(conn):
        return []
    for statement in _KEYS:
        execute(conn, statement)
    done = []
    for table in REFERENCE:
        had_rows = _has_rows(conn, table)
        execute(conn, "select create_reference_table($1)", (table,))
        _drop_local_copy(conn, table, had_rows)
        done.append(f"{table} (reference)")
    for table, column, colocate_with in DISTRIBUTED:
        had_rows = _has_rows(conn, table)
        execute(conn, "select create_distributed_table($1, $2, colocate_with => $3)",
                (table, column, colocate_with))
        _drop_local_copy(conn, table, had_rows)
        done.append(f"{table} (by {column})")
    logger.info("warehouse laid out over the Citus cluster: %s", ", ".join(done))
    return done


def _has_rows(conn: Connection, table: str) -> bool:
    return bool(fetch_value(conn, f"select exists (select 1 from {table})"))


def _drop_local_copy(conn: Connection, table: str, had_rows: bool) -> None:
    """Rows a table held before it was distributed are copied to its shards and stay in
    the coordinator's table too, unread: drop them there."""
    if had_rows:
        execute(conn, "select truncate_local_data_after_distributing_table($1)", (table,))


def move(settings: Settings, db: Database) -> list[str]:
    """``craftmart-batch distribute``: bring a warehouse up to date with the migrations
    and lay it out over the Citus cluster its database is on, in one transaction under
    the run's lock; its rows move to the shards. Return what was distributed (nothing
    for a warehouse already laid out)."""
    from . import pipeline, schema
    from .load.runs import is_driver_error

    conn = connect(db)
    try:
        check(conn, "on")
        prepare_transaction(conn)
        pipeline.acquire_lock(conn, wait=settings.wait_for_lock)
        schema.migrate(conn)
        done = distribute(conn)
        conn.commit()
        return done
    except CraftmartError:
        raise
    except Exception as exc:
        if is_driver_error(exc):
            raise database_error(exc, "distributing the warehouse") from None
        raise
    finally:
        close_quietly(conn)


def nodes(server: Database) -> tuple[tuple[str, int], ...] | None:
    """The Citus nodes behind ``server`` as (host, port), coordinator first, from
    ``pg_dist_node`` of ``server``'s database; None without the citus extension there."""
    with connection(server, autocommit=True) as conn:
        if installed_version(conn) is None:
            return None
        found = fetch_frame(conn, "select groupid, nodename, nodeport from pg_dist_node"
                                  " where noderole = 'primary' order by groupid, nodeport")
    own = found.filter(pl.col("groupid") == 0)
    workers = found.filter(pl.col("groupid") != 0)
    coordinator = ((str(own["nodename"][0]), int(own["nodeport"][0])) if not own.is_empty()
                   else (server.params.get("host", "127.0.0.1"),
                         int(server.params.get("port", 5432))))
    return (coordinator, *((str(h), int(p)) for h, p in
                           workers.select("nodename", "nodeport").iter_rows()))


def _on_node(server: Database, node: tuple[str, int], dbname: str) -> Database:
    return Database({**server.params, "host": node[0], "port": str(node[1]), "dbname": dbname})


def create_database(server: Database, name: str) -> Database:
    """A new empty database ``name`` beside ``server``'s; when ``server`` is a Citus
    coordinator's database, on every node, with the extension in each and the workers
    registered with the coordinator (a warehouse ready for ``distribute``). For tests and
    benchmarks; a cluster's own databases are its operators' business."""
    with connection(server, autocommit=True) as conn:
        execute(conn, f"create database {quote_ident(name)}")
    db = server.with_dbname(name)
    cluster = nodes(server)
    if cluster is None:
        return db
    coordinator, *workers = cluster
    try:
        for worker in workers:
            with connection(_on_node(server, worker, "postgres"), autocommit=True) as conn:
                execute(conn, f"create database {quote_ident(name)}")
            with connection(_on_node(server, worker, name), autocommit=True) as conn:
                execute(conn, "create extension citus")
        with connection(db, autocommit=True) as conn:
            execute(conn, "create extension citus")
            execute(conn, "select citus_set_coordinator_host($1, $2::int)", coordinator)
            for worker in workers:
                execute(conn, "select citus_add_node($1, $2::int)", worker)
    except BaseException:
        drop_database(server, name, cluster)
        raise
    return db


def drop_database(server: Database, name: str,
                  cluster: tuple[tuple[str, int], ...] | None = None) -> None:
    """Drop ``name`` (``create_database``), its replication slots first, on ``server``
    and on the workers of ``cluster`` (``nodes(server)``)."""
    with connection(server, autocommit=True) as conn:
        # a database with a replication slot (change capture) cannot be dropped
        execute(conn, "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                      " where database = $1", (name,))
        # with (force): connections left open must not keep the database
        execute(conn, f"drop database if exists {quote_ident(name)} with (force)")
    for worker in (cluster or ())[1:]:
        with connection(_on_node(server, worker, "postgres"), autocommit=True) as conn:
            execute(conn, f"drop database if exists {quote_ident(name)} with (force)")
