"""Which source rows changed since the last run: row hashes pulled, compared, kept.

Every source query also yields a hash of each canonical row (``extract.ROW_HASH``). A
run pulls only the keys and hashes of every source, compares them with the hashes the
last run kept in ``craftmart.source_rows``, and pulls in full only the rows that are
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
from dataclasses import dataclass
from typing import Any

import polars as pl

from . import __version__, extract, logic
from ._database import Database
from ._sql import append, execute, fetch_frame, stage
from .config import Source
from .transform import identity

logger = logging.getLogger(__name__)

ORDER_KEY = list(identity.ORDER_KEY)


_NO_HASHES = pl.DataFrame(schema=extract.HASH_SCHEMA)


def fingerprint(sources: Sequence[Source]) -> str:
    """What the stored hashes depend on besides the data and the rules
    (``logic.rules_fingerprint``): code version and source queries."""
    text = "\n".join([__version__, *(extract.pull_query(s, fields=False) for s in sources)])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SourceDelta:
    """The source rows a run must pull and process, by key.

    ``changed`` holds the keys (``source_name, source_order_id``) that are new, whose
    hash changed, that are gone, or that repeat in their source; ``keyless`` the sources
    that have rows without a key; ``hashes`` the hashes of the keys that are new or
    changed and appear once; ``rows`` how many rows each source has.
    """

    changed: pl.DataFrame
    keyless: tuple[str, ...]
    hashes: pl.DataFrame
    rows: dict[str, int]

    @property
    def is_empty(self) -> bool:
        return self.changed.is_empty() and not self.keyless

    def pull_keys(self) -> pl.DataFrame:
        """The keys to pull in full: the changed ones, and every source with keyless rows."""
        keyless = pl.DataFrame({"source_name": list(self.keyless)},
                               schema={"source_name": pl.String})
        return pl.concat([
            self.changed,
            keyless.with_columns(pl.lit(None, pl.Int64).alias("source_order_id")),
        ])


#: A row whose key is set and appears once in its source: the rows with a hash to keep.
_KEYED_ONCE = pl.col("source_order_id").is_not_null() & (pl.len().over(ORDER_KEY) == 1)


def compare(current: pl.DataFrame, stored: pl.DataFrame) -> SourceDelta:
    """``current`` hashes (as pulled) against ``stored`` ones (as the last run kept them).

    Both are ``source_name, source_order_id, row_hash``; ``stored`` has unique keys.
    """
    has_key = pl.col("source_order_id").is_not_null()
    flagged = current.with_columns(_KEYED_ONCE.alias("__once"))
    regular = flagged.filter(pl.col("__once")).drop("__once")
    repeated = flagged.filter(has_key & ~pl.col("__once")).select(ORDER_KEY).unique()
    new_or_changed = regular.join(stored, on=[*ORDER_KEY, "row_hash"], how="anti")
    gone_or_repeated = stored.join(regular, on=ORDER_KEY, how="anti").select(ORDER_KEY)
    changed = pl.concat([new_or_changed.select(ORDER_KEY), gone_or_repeated, repeated]).unique()
    return SourceDelta(
        changed=changed.sort(ORDER_KEY),
        keyless=tuple(sorted(set(current.filter(~has_key)["source_name"].to_list()))),
        hashes=new_or_changed,
        rows=extract.rows_per_source(current),
    )


#: Why a run pulls every source row rather than the changed ones (``RunReport.pull_reason``).
FIRST_RUN = "first_run"  # no stored hashes yet
FULL_RUN = "full_run"  # run --full
VERSION_OR_QUERIES_CHANGED = "version_or_queries_changed"  # package version, source mapping
RULES_CHANGED = "rules_changed"  # validity or identity (logic.rules_fingerprint)
MANY_CHANGES = "many_changes"  # past pipeline.FULL_PULL_SHARE of the rows changed


def full_pull_reason(conn: Any, sources: Sequence[Source]) -> str | None:
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


def detect(conn: Any, db: Database, sources: Sequence[Source]) -> SourceDelta:
    """Pull keys and hashes and compare them with the stored ones (which must apply:
    ``hashes_apply``)."""
    current = extract.pull_hashes(db, sources)
    stored = fetch_frame(
        conn, "select source_name, source_order_id, row_hash from craftmart.source_rows"
    ).cast(extract.HASH_SCHEMA)  # type: ignore[arg-type]
    return compare(current, stored)


def store_all(conn: Any, sources: Sequence[Source], current: pl.DataFrame) -> None:
    """Keep the hashes of a full pull, replacing every stored one, and what they were
    computed by."""
    execute(conn, "truncate craftmart.source_rows")
    append(conn, "craftmart", "source_rows", current.filter(_KEYED_ONCE))
    execute(conn, "truncate craftmart.source_rows_state")
    execute(conn, "insert into craftmart.source_rows_state (fingerprint, rules_fingerprint)"
                  " values ($1, $2)", (fingerprint(sources), logic.rules_fingerprint()))


def store_changes(conn: Any, changed: pl.DataFrame, pulled: pl.DataFrame) -> None:
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
    hashes = compare(pulled, _NO_HASHES).hashes
    if not hashes.is_empty():
        staged = stage(conn, "stage_source_rows_hashes", hashes)
        execute(
            conn,
            f"""
            insert into craftmart.source_rows (source_name, source_order_id, row_hash)
            select source_name, source_order_id, row_hash from {staged}
            """,
        )
