"""connectorx: source queries run in parallel into canonical Polars frames."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import polars as pl

from .._database import Database, first_line, redact
from ..config import Source
from ..errors import CraftmartError
from ..transform.partition import KeyRanges
from .queries import CANONICAL_SCHEMA, pull_query

logger = logging.getLogger(__name__)


def pull_sources(
    db: Database, sources: Sequence[Source], keys: pl.DataFrame | None = None,
    partition: tuple[KeyRanges, int] | None = None,
) -> pl.DataFrame:
    """Read sources with connectorx (one query per source, in parallel) into one canonical
    frame, with each row's hash in ``row_hash``.

    ``keys`` (``source_name, source_order_id``) limits the pull to those orders of the
    sources it names (a null key: the source's rows without a key); without it every row
    is read, or with ``partition`` (ranges, index) every row of that partition of the keys.
    """
    if keys is None:
        queries = [pull_query(s, partition=partition) for s in sources]
    else:
        wanted = keys.group_by("source_name").agg("source_order_id")
        by_source = dict(zip(wanted["source_name"], wanted["source_order_id"], strict=True))
        queries = [pull_query(s, keys=by_source[s.name]) for s in sources if s.name in by_source]
    return read_queries(db, queries, {**CANONICAL_SCHEMA, "row_hash": pl.Int64()})


def read_queries(
    db: Database, queries: list[str], schema: dict[str, pl.DataType]
) -> pl.DataFrame:
    """Run queries with connectorx, in parallel, into one frame of ``schema``."""
    # connectorx's Rust logger prints its pool's retries to stderr; the error itself comes
    # back as the exception below, so the logger stays off unless RUST_LOG asks for it.
    # (It reads RUST_LOG once, when the module is first imported.)
    os.environ.setdefault("RUST_LOG", "off")
    import connectorx as cx

    if not queries:
        return pl.DataFrame(schema=schema)
    try:
        table = cx.read_sql(db.connectorx_uri(), queries if len(queries) > 1 else queries[0],
                            return_type="arrow")
    except Exception as exc:  # connectorx raises bare RuntimeErrors carrying the URI
        raise CraftmartError(f"reading sources failed: {first_line(redact(str(exc)))}") from None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if frame.is_empty():  # an empty result's column types are not to be relied on
        return pl.DataFrame(schema=schema)
    return frame.select(pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items())
