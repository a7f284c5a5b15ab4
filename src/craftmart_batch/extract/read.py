"""connectorx: source queries run in parallel into canonical Polars frames."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import polars as pl

from .._database import Database, first_line, redact
from ..config import Source
from ..errors import CraftmartError
from ..transform.partition import KeyRanges
from . import servers
from .queries import CANONICAL_SCHEMA, pull_query

logger = logging.getLogger(__name__)


def pull_sources(
    db: Database, sources: Sequence[Source], keys: pl.DataFrame | None = None,
    partition: tuple[KeyRanges, int] | None = None,
) -> pl.DataFrame:
    """Read sources with connectorx (one query per source, in parallel; the sources of
    each database together) into one canonical frame, with each row's hash in
    ``row_hash``. ``db`` is the warehouse: the database of the sources without one.

    ``keys`` (``source_name, source_order_id``) limits the pull to those orders of the
    sources it names (a null key: the source's rows without a key); without it every row
    is read, or with ``partition`` (ranges, index) every row of that partition of the keys.
    """
    schema = {**CANONICAL_SCHEMA, "row_hash": pl.Int64()}
    if keys is None:
        queries = {s.name: pull_query(s, partition=partition) for s in sources}
    else:
        wanted = keys.group_by("source_name").agg("source_order_id")
        by_source = dict(zip(wanted["source_name"], wanted["source_order_id"], strict=True))
        queries = {s.name: pull_query(s, keys=by_source[s.name])
                   for s in sources if s.name in by_source}
    frames = [
        read_queries(source_db, [queries[s.name] for s in group], schema, group)
        for source_db, group in servers.by_database(
            (s for s in sources if s.name in queries), db)
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def per_source(
    db: Database, sources: Sequence[Source], query: Callable[[Source], str],
    schema: dict[str, pl.DataType],
) -> pl.DataFrame:
    """``query(source)`` run on each source's own database (``db``: the warehouse, for
    the sources without one), the results in one frame of ``schema``."""
    frames = [read_queries(source_db, [query(s) for s in group], schema, group)
              for source_db, group in servers.by_database(sources, db)]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def read_queries(
    db: Database, queries: list[str], schema: dict[str, pl.DataType],
    sources: Sequence[Source] = (),
) -> pl.DataFrame:
    """Run queries with connectorx, in parallel, into one frame of ``schema``; a failure
    is one line naming ``sources`` (what the queries read) and the server."""
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
        if sources:
            raise servers.unreachable(sources, db, exc) from None
        raise CraftmartError(f"reading sources failed: {first_line(redact(str(exc)))}") from None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if frame.is_empty():  # an empty result's column types are not to be relied on
        return pl.DataFrame(schema=schema)
    return frame.select(pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items())
