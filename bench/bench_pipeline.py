"""Benchmark: first load, no-change run, runs after changes, and --full, by stage.

Each size gets a fresh database (embedded server unless --dsn). Prints a table and
writes JSON. Example:

    .venv/bin/python bench/bench_pipeline.py --orders 1000000 --changes 0.001 0.01
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from craftmart_batch import generate, pipeline
from craftmart_batch._database import Database, connect, ensure_database, parse_dsn, start_embedded
from craftmart_batch._sql import fetch_value
from craftmart_batch.config import load_settings


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def database_size_mb(db: Database) -> float:
    conn = connect(db)
    try:
        return int(fetch_value(conn, "select pg_database_size(current_database())")) / 2**20
    finally:
        conn.close()


def timed_run(db: Database, label: str, *, full: bool = False) -> dict[str, object]:
    settings = load_settings(None, dsn=db.libpq_uri())
    started = time.perf_counter()
    report = pipeline.run(settings, db, full=full)
    elapsed = time.perf_counter() - started
    row = {
        "run": label,
        "seconds": round(elapsed, 2),
        "stages": {k: round(v, 2) for k, v in report.stages.items()},
        "dwh": report.dwh,
        "marts": {
            name: {k: m[k] for k in ("entities", "orders", "rows_inserted", "rows_updated",
                                     "rows_deleted")}
            for name, m in report.marts.items()
        },
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(f"{label:>24}  {elapsed:7.2f}s  " + "  ".join(
        f"{k}={v:.2f}" for k, v in report.stages.items()), flush=True)
    return row


def bench(db: Database, orders: int, changes: list[float], seed: int) -> dict[str, object]:
    conn = connect(db)
    started = time.perf_counter()
    generate.generate(conn, orders, seed, replace=True)
    conn.commit()
    conn.close()
    print(f"generated {orders:,} orders in {time.perf_counter() - started:.1f}s", flush=True)
    runs = [timed_run(db, "first load"), timed_run(db, "no change")]
    for i, share in enumerate(changes):
        count = max(1, int(orders * share))
        conn = connect(db)
        generate.apply_changes(conn, count, seed + 1 + i)
        conn.commit()
        conn.close()
        runs.append(timed_run(db, f"after {count:,} changes ({share:.2%})"))
    runs.append(timed_run(db, "run --full", full=True))
    return {"orders": orders, "runs": runs, "database_mb": round(database_size_mb(db), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, nargs="+", default=[100_000])
    parser.add_argument("--changes", type=float, nargs="*", default=[0.0001, 0.001, 0.01])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dsn", default=None, help="server to use (default: embedded)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    args = parser.parse_args()

    if args.dsn:
        server = Database(parse_dsn(args.dsn))
    else:
        server = start_embedded(Path(tempfile.mkdtemp(prefix="craftmart-bench-")) / "pgdata")
    results = []
    for orders in args.orders:
        db = server.with_dbname(f"craftmart_bench_{orders}")
        admin = connect(server.with_dbname("postgres"), autocommit=True)
        admin.cursor().execute(f"drop database if exists craftmart_bench_{orders} with (force)")
        admin.close()
        ensure_database(db)
        print(f"== {orders:,} orders ==", flush=True)
        results.append(bench(db, orders, args.changes, args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"python": sys.version.split()[0], "results": results},
                                   indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
