"""Benchmark: the hash comparison that finds a run's changed rows, one source at a time.

Each source's comparison (``extract.hashes.compare_query``) runs in the server of a
warehouse that has been loaded (``craftmart.source_rows`` holds its hashes), alone, as
``--repeat`` rounds. A round times the query as a run sends it, and, for a source whose
catalog says each key comes once (``one_row_per_key``), the same query grouping its
rows by key as it must for any other source. Example, on the warehouse of a
`bench_pipeline.py` size kept with --dsn:

    .venv/bin/python bench/bench_compare.py --dsn postgresql://... --repeat 2
"""

from __future__ import annotations

import argparse
import time

from craftmart_batch._database import Database, connection, parse_dsn
from craftmart_batch._sql import fetch_frame
from craftmart_batch.config import load_settings
from craftmart_batch.extract.hashes import compare_query, one_row_per_key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="the warehouse (its sources in it)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    settings = load_settings(None, dsn=args.dsn)
    db = Database(parse_dsn(args.dsn))
    local = [s for s in settings.sources if s.shares_warehouse]
    once = one_row_per_key(db, local)
    print(f"{'source':<18} {'round':>5} {'as a run sends it':>18} {'grouped by key':>15}")
    for round_ in range(1, args.repeat + 1):
        for source in local:
            shapes = [True, False] if source.name in once else [False]
            seconds = []
            for once_per_key in shapes:
                query = compare_query(source, one_row_per_key=once_per_key)
                with connection(db) as conn:
                    started = time.perf_counter()
                    fetch_frame(conn, f"select count(*) from ({query}) as compared")
                    seconds.append(time.perf_counter() - started)
            grouped = f"{seconds[1]:14.1f}s" if len(seconds) > 1 else f"{'(the same)':>15}"
            print(f"{source.name:<18} {round_:>5} {seconds[0]:17.1f}s {grouped}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
