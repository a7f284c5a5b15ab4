"""Which source rows changed: current row hashes against the stored ones (pure Polars)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import polars as pl

from .validate import ORDER_KEY

logger = logging.getLogger(__name__)

#: The key-and-hash frames: source rows as pulled, and as the last run kept them.
HASH_SCHEMA: dict[str, pl.DataType] = {
    "source_name": pl.String(),
    "source_order_id": pl.Int64(),
    "row_hash": pl.Int64(),
}
NO_HASHES = pl.DataFrame(schema=HASH_SCHEMA)


def rows_per_source(frame: pl.DataFrame) -> dict[str, int]:
    """How many rows of ``frame`` each ``source_name`` has."""
    counted = frame.group_by("source_name").len()
    return dict(zip(counted["source_name"].to_list(), counted["len"].to_list(), strict=True))


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
    #: sources whose rows were not counted (their changes came from logical decoding)
    uncounted: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return self.changed.is_empty() and not self.keyless

    def including(self, keys: pl.DataFrame, keyless: Sequence[str]) -> SourceDelta:
        """This delta with more changed ``keys`` (``source_name, source_order_id``) and
        more ``keyless`` sources."""
        if keys.is_empty() and set(keyless) <= set(self.keyless):
            return self
        return replace(
            self,
            changed=pl.concat([self.changed, keys.select(self.changed.columns)
                               .cast(self.changed.schema)]).unique().sort(ORDER_KEY),
            keyless=tuple(sorted({*self.keyless, *keyless})),
        )

    def pull_keys(self) -> pl.DataFrame:
        """The keys to pull in full: the changed ones, and every source with keyless rows."""
        keyless = pl.DataFrame({"source_name": list(self.keyless)},
                               schema={"source_name": pl.String})
        return pl.concat([
            self.changed,
            keyless.with_columns(pl.lit(None, pl.Int64).alias("source_order_id")),
        ])


def merge_deltas(deltas: list[SourceDelta]) -> SourceDelta:
    """The deltas of disjoint sets of sources, as one."""
    if len(deltas) == 1:
        return deltas[0]
    return SourceDelta(
        changed=pl.concat([d.changed for d in deltas]).sort(ORDER_KEY),
        keyless=tuple(sorted(name for d in deltas for name in d.keyless)),
        hashes=pl.concat([d.hashes for d in deltas]),
        rows={name: n for d in deltas for name, n in d.rows.items()},
        uncounted=tuple(name for d in deltas for name in d.uncounted),
    )


#: A row whose key is set and appears once in its source: the rows with a hash to keep.
KEYED_ONCE = pl.col("source_order_id").is_not_null() & (pl.len().over(ORDER_KEY) == 1)


def compare(current: pl.DataFrame, stored: pl.DataFrame) -> SourceDelta:
    """``current`` hashes (as pulled) against ``stored`` ones (as the last run kept them).

    Both are ``source_name, source_order_id, row_hash``; ``stored`` has unique keys.
    """
    has_key = pl.col("source_order_id").is_not_null()
    flagged = current.with_columns(KEYED_ONCE.alias("__once"))
    regular = flagged.filter(pl.col("__once")).drop("__once")
    repeated = flagged.filter(has_key & ~pl.col("__once")).select(ORDER_KEY).unique()
    new_or_changed = regular.join(stored, on=[*ORDER_KEY, "row_hash"], how="anti")
    gone_or_repeated = stored.join(regular, on=ORDER_KEY, how="anti").select(ORDER_KEY)
    changed = pl.concat([new_or_changed.select(ORDER_KEY), gone_or_repeated, repeated]).unique()
    return SourceDelta(
        changed=changed.sort(ORDER_KEY),
        keyless=tuple(sorted(set(current.filter(~has_key)["source_name"].to_list()))),
        hashes=new_or_changed,
        rows=rows_per_source(current),
    )
