"""Time the source generator: N orders into a fresh database, and optionally K changes.

Rows are real-shaped (descriptions of 300-600 characters, full street addresses) unless
``--shape narrow``. Prints the time and the database size after generating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from craftmart_batch._database import Database, connect, parse_dsn, throwaway_embedded
from craftmart_batch._sql import fetch_value
from craftmart_batch.synthetic import SHAPES, Shape, apply_changes, generate


def run(db: Database, orders: int, seed: int, changes: int, shape: Shape) -> dict[str, object]:
    """Generate (replacing any source rows), then apply changes; return the figures."""
    conn = connect(db)
    try:
        last = [0.0]

        def progress(stage: str, fraction: float) -> None:
            if fraction - last[0] >= 0.2 or fraction == 1.0:
                last[0] = fraction
                print(f"  {fraction:5.0%}  {stage}", file=sys.stderr)

        summary = generate(conn, orders, seed, progress, replace=True, shape=shape)
        rows = sum(summary.rows.values())
        result: dict[str, object] = {
            "orders": orders,
            "seed": seed,
            "shape": shape,
            "rows": rows,
            "generate_seconds": round(summary.elapsed_seconds, 2),
            "orders_per_second": round(orders / summary.elapsed_seconds),
            "rows_per_second": round(rows / summary.elapsed_seconds),
            "database_mb": round(int(fetch_value(
                conn, "select pg_database_size(current_database())")) / 2**20, 1),
        }
        if changes:
            changed = apply_changes(conn, changes, seed, shape=shape)
            result["changes"] = changes
            result["changes_seconds"] = round(changed.elapsed_seconds, 2)
        result["server"] = fetch_value(conn, "select current_setting('server_version')")
    finally:
        conn.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--changes", type=int, default=0,
                        help="also time apply_changes with this many changes")
    parser.add_argument("--shape", choices=SHAPES, default="real",
                        help="row shape: real (default) or narrow (short texts)")
    parser.add_argument("--dsn", help="database to fill; its sources are REPLACED "
                                      "(default: a fresh embedded server in a temp dir)")
    parser.add_argument("--append", type=Path, help="append the result as a JSON line here")
    args = parser.parse_args()

    if args.dsn:
        result = run(Database(parse_dsn(args.dsn)), args.orders, args.seed, args.changes,
                     args.shape)
    else:
        with throwaway_embedded("craftmart-bench-pg-") as db:
            result = run(db, args.orders, args.seed, args.changes, args.shape)
    result["cpus"] = os.cpu_count()
    result["python"] = platform.python_version()
    result["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"generated {result['orders']:,} {args.shape} orders ({result['rows']:,} rows) in "
          f"{result['generate_seconds']} s: {result['orders_per_second']:,} orders/s, "
          f"{result['rows_per_second']:,} rows/s; database {result['database_mb']:,} MB")
    if args.changes:
        print(f"applied {args.changes:,} changes in {result['changes_seconds']} s")
    if args.append:
        args.append.parent.mkdir(parents=True, exist_ok=True)
        with args.append.open("a", encoding="utf-8") as out:
            out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
