"""Which source rows changed since the last run: row hashes pulled and kept (I/O).

Every source query also yields a hash of each canonical row (``queries.ROW_HASH``). A
run compares, in the server, every source row's key and hash with the hashes the last
run kept in ``craftmart.source_rows``, and pulls in full only the rows that are
new, changed or gone (and, later, the other rows of the people they touch). Rows
without a key, and keys that appear more than once in a source, have no stable hash of
their own: they are pulled on every run.

A change of the package version or of a source's query (its mapping in config.toml)
changes the fingerprint, and so does a change of the rules that decide validity and
identity (``logic.rules_fingerprint``): the next run pulls everything, validates every
row again and starts afresh.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import polars as pl

from .. import __version__, logic
from .._database import Database, quote_literal
from .._sql import Connection, DroppedIndexes, drop_indexes, execute, fetch_frame, stage
from .._sql import append as append_frame
from ..config import Source
from ..transform.changes import (
    HASH_SCHEMA,
    KEYED_ONCE,
    NO_HASHES,
    SourceDelta,
    compare,
    merge_deltas,
)
from ..transform.validate import ORDER_KEY
from . import read
from .queries import ONE_ROW_PER_KEY_SCHEMA, one_row_per_key_query, pull_query

logger = logging.getLogger(__name__)


def fingerprint(sources: Sequence[Source]) -> str:
    """What the stored hashes depend on besides the data and the rules
    (``logic.rules_fingerprint``): code version and source queries."""
    text = "\n".join([__version__, *(pull_query(s, fields=False) for s in sources)])
    return hashlib.sha256(text.encode()).hexdigest()


#: Why a run pulls every source row rather than the changed ones (``RunReport.pull_reason``).
FIRST_RUN = "first_run"  # no stored hashes yet
FULL_RUN = "full_run"  # run --full
VERSION_OR_QUERIES_CHANGED = "version_or_queries_changed"  # package version, source mapping
RULES_CHANGED = "rules_changed"  # validity or identity (logic.rules_fingerprint)
MANY_CHANGES = "many_changes"  # past stages.FULL_PULL_SHARE of the rows changed


def full_pull_reason(conn: Connection, sources: Sequence[Source]) -> str | None:
    """Why the stored hashes do not apply, so that a run must pull everything; None when
    they were computed for these sources by this version under these rules."""
    stored = fetch_frame(
        conn, "select fingerprint, rules_fingerprint from craftmart.source_rows_state"
    )
    if stored.is_empty():
        return FIRST_RUN
    if stored["fingerprint"][0] != fingerprint(sources):
        return VERSION_OR_QUERIES_CHANGED
    # null before the rules were fingerprinted: what processed the rows is unknown
    if stored["rules_fingerprint"][0] != logic.rules_fingerprint():
        return RULES_CHANGED
    return None


def detect(conn: Connection, db: Database, sources: Sequence[Source]) -> SourceDelta:
    """Compare every source row's hash with the stored one (the stored hashes must
    apply: ``full_pull_reason`` is None).

    For the sources in the warehouse's own database the comparison runs in the server:
    only the changed keys, and a count per source, cross the wire, whatever the size of
    the warehouse. One query per source, run in parallel by connectorx like the pulls;
    they read ``craftmart.source_rows`` as committed, which only a run holding the
    warehouse lock changes, and this run has not yet. A source on a server of its own
    sends every key and hash, which are compared here (``transform.changes.compare``,
    the same answer: a test holds the two equal): keys that are new, changed, gone or
    repeated in their source are changed; keyless rows mark their source.
    """
    local = [s for s in sources if s.shares_warehouse]
    remote = [s for s in sources if not s.shares_warehouse]
    deltas = [_compared_in_server(db, local)] if local else []
    if remote:
        current = read.per_source(db, remote, lambda s: pull_query(s, fields=False), HASH_SCHEMA)
        stored = fetch_frame(
            conn, "select source_name, source_order_id, row_hash from craftmart.source_rows"
                  " where source_name = any($1)", ([s.name for s in remote],),
        ).cast(HASH_SCHEMA)  # type: ignore[arg-type]
        deltas.append(compare(current, stored))
    return merge_deltas(deltas)


def read_every_run(conn: Connection, sources: Sequence[Source]) -> tuple[pl.DataFrame, list[str]]:
    """The keys that repeated in their source at the last run, and the sources that had
    rows without a key: neither has a stored hash to tell a change by, so every run
    pulls them (a key seen repeated now is found by the comparison; one repeated then
    and gone now only here). The quarantine holds them: every copy of a repeated key but
    one (as ``duplicate_order_key``), and every keyless row."""
    found = fetch_frame(conn, """
        select distinct source_name::text as source_name, source_order_id
        from craftmart.quarantine
        where source_name = any($1)
            and (source_order_id is null or 'duplicate_order_key' = any(reasons))
    """, ([s.name for s in sources],))
    keyless = sorted(set(found.filter(pl.col("source_order_id").is_null())["source_name"]
                         .to_list()))
    keys = found.filter(pl.col("source_order_id").is_not_null())
    return keys.select("source_name", pl.col("source_order_id").cast(pl.Int64)), keyless


def one_row_per_key(db: Database, sources: Sequence[Source]) -> set[str]:
    """The names of the ``sources`` whose catalog rules out a key given twice or a row
    without a key (``queries.one_row_per_key_query``): their comparison need not group
    rows by key."""
    layout = read.per_source(db, sources, one_row_per_key_query, ONE_ROW_PER_KEY_SCHEMA)
    return set(layout.filter("one_row_per_key")["source_name"].to_list())


def _compared_in_server(db: Database, sources: Sequence[Source]) -> SourceDelta:
    once = one_row_per_key(db, sources)
    found = read.read_queries(
        db, [compare_query(s, one_row_per_key=s.name in once) for s in sources], _COMPARED,
        sources)
    changed = found.filter(pl.col("kind") == "changed")
    counts = found.filter(pl.col("kind") == "rows")
    keyless = found.filter((pl.col("kind") == "keyless") & (pl.col("value") > 0))
    return SourceDelta(
        changed=changed.select(ORDER_KEY).sort(ORDER_KEY),
        keyless=tuple(sorted(keyless["source_name"].to_list())),
        hashes=changed.filter(pl.col("value").is_not_null())
        .select(*ORDER_KEY, pl.col("value").alias("row_hash")),
        # as compare counts them: sources with rows only
        rows={s: int(n) for s, n in counts.select("source_name", "value").iter_rows() if n},
    )


_COMPARED: dict[str, pl.DataType] = {
    "kind": pl.String(),
    "source_name": pl.String(),
    "source_order_id": pl.Int64(),
    "value": pl.Int64(),
}


def compare_query(source: Source, *, one_row_per_key: bool = False) -> str:
    """One source's keys compared with its stored hashes, in the server: a row per
    changed key (``kind`` 'changed', with the hash to keep when the key is there once),
    the source's row count ('rows') and its rows without a key ('keyless').

    ``one_row_per_key``: the catalog guarantees that the source query gives each key
    once and every row a key (``queries.one_row_per_key_query``), so its rows are not
    grouped by key to count their copies (13-19% of the comparison's time for source2
    and source3 at 30M orders, docs/benchmarks.md)."""
    name = quote_literal(source.name)
    if one_row_per_key:
        current_keys = f"""
    current_keys as materialized (
        select source_order_id, 1::bigint as copies, row_hash
        from (
            {pull_query(source, fields=False)}
        ) as current_rows
    ),"""
    else:
        # current_rows is materialised so that each row is hashed once, before grouping:
        # left to the planner, the whole wide row is sorted by key and hashed afterwards.
        current_keys = f"""
    current_rows as materialized (
        {pull_query(source, fields=False)}
    ),

    current_keys as materialized (
        select source_order_id, count(*) as copies, min(row_hash) as row_hash
        from current_rows
        group by source_order_id
    ),"""
    return f"""
    with
    {current_keys}

    stored_keys as (
        select source_order_id, row_hash
        from craftmart.source_rows
        where source_name = {name}
    ),

    changed_keys as (
        select
            coalesce(current_keys.source_order_id, stored_keys.source_order_id)
                as source_order_id,
            case when current_keys.copies = 1 then current_keys.row_hash end as row_hash
        from current_keys
        full join stored_keys on stored_keys.source_order_id = current_keys.source_order_id
        where coalesce(current_keys.source_order_id, stored_keys.source_order_id) is not null
            and (
                current_keys.copies is null
                or stored_keys.row_hash is null
                or current_keys.copies > 1
                or current_keys.row_hash <> stored_keys.row_hash
            )
    )

    select 'changed' as kind, {name} as source_name, source_order_id, row_hash as value
    from changed_keys
    union all
    select 'rows' as kind, {name} as source_name, null as source_order_id,
        sum(copies)::bigint as value
    from current_keys
    union all
    select 'keyless' as kind, {name} as source_name, null as source_order_id,
        copies as value
    from current_keys
    where source_order_id is null
    """


def reset(conn: Connection) -> DroppedIndexes:
    """Forget every stored hash: a run that pulls everything keeps them afresh
    (``append``, then ``store_state``). Their key is dropped meanwhile: ``build`` what
    this returns once they are all in."""
    execute(conn, "truncate craftmart.source_rows")
    return drop_indexes(conn, "craftmart", "source_rows")


def append(conn: Connection, pulled: pl.DataFrame) -> None:
    """Keep the hashes of pulled rows (after ``reset``): those whose key appears once."""
    hashes = pulled.select(*ORDER_KEY, "row_hash").filter(KEYED_ONCE)
    if not hashes.is_empty():
        append_frame(conn, "craftmart", "source_rows", hashes)


def store_state(conn: Connection, sources: Sequence[Source]) -> None:
    """Record what the stored hashes were computed by (after a full pull)."""
    execute(conn, "truncate craftmart.source_rows_state")
    execute(conn, "insert into craftmart.source_rows_state (fingerprint, rules_fingerprint)"
                  " values ($1, $2)", (fingerprint(sources), logic.rules_fingerprint()))


def store_changes(conn: Connection, changed: pl.DataFrame, pulled: pl.DataFrame) -> None:
    """Replace the stored hashes of the ``changed`` keys with those of the rows ``pulled``
    for them (rows as processed: a row that changed again since the keys were compared
    keeps a hash that differs, and is processed again by the next run)."""
    if changed.is_empty():
        return
    staged = stage(conn, "stage_source_rows_changed", changed.select(ORDER_KEY))
    execute(
        conn,
        f"""
        delete from craftmart.source_rows as r
        using {staged} as staged
        where r.source_name = staged.source_name
            and r.source_order_id = staged.source_order_id
        """,
    )
    pulled = pulled.select(*ORDER_KEY, "row_hash").join(changed, on=ORDER_KEY, how="semi")
    hashes = compare(pulled, NO_HASHES).hashes
    if not hashes.is_empty():
        staged = stage(conn, "stage_source_rows_hashes", hashes)
        execute(
            conn,
            f"""
            insert into craftmart.source_rows (source_name, source_order_id, row_hash)
            select source_name, source_order_id, row_hash from {staged}
            """,
        )
