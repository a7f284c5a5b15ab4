"""Benchmark: first load, no-change run, runs after changes, and --full, by stage.

Each size gets a fresh database (a temporary embedded server unless --dsn). Every step
is its own `craftmart-batch` process (generate, generate --changes, run --json), so the
peak RSS of a step is that process's own. Prints a table per size and writes one JSON
file for all sizes, again after every step (a size still running has "complete": false).
Sources are generated with real-shaped rows (descriptions of 300-600 characters, full
street addresses) unless `--shape narrow`. Example:

    .venv/bin/python bench/bench_pipeline.py --orders 100000 1000000 --changes 0.001 0.01
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from craftmart_batch import citus
from craftmart_batch._database import (
    Database,
    connect,
    parse_dsn,
    redact,
    throwaway_embedded,
)
from craftmart_batch._sql import fetch_value

CLI = Path(sys.executable).parent / "craftmart-batch"
#: options of every `run` step (--memory-budget, --partitions, --engine, --ray-address)
RUN_OPTS: list[str] = []
#: --skip-full: no `run --full` at the end (the largest sizes, measured once)
SKIP_FULL = False
AGAIN = False


class StepFailed(Exception):
    """A craftmart-batch process exited non-zero (its stderr has been printed)."""


def step(args: list[str]) -> dict[str, Any]:
    """Run `craftmart-batch ARGS` as a child process: its stdout, wall time and peak RSS.

    The child is reaped with wait4, whose rusage is that child's alone (RUSAGE_CHILDREN
    would be the maximum over every child so far).
    """
    command = [str(CLI), *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        shown = redact(" ".join(args))
        print(f"craftmart-batch {shown} exited {proc.returncode}:", file=sys.stderr)
        print(stderr.rstrip() or "(no stderr)", file=sys.stderr, flush=True)
        raise StepFailed(shown)
    return {
        "stdout": stdout,
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def database_size_mb(db: Database) -> float:
    conn = connect(db)
    try:
        return int(fetch_value(conn, "select pg_database_size(current_database())")) / 2**20
    finally:
        conn.close()


def share_label(share: float) -> str:
    return f"{share * 100:g}%"


def timed_run(db: Database, cli_opts: list[str], label: str, kind: str, *,
              share: float | None = None, changes: int | None = None,
              apply: dict[str, Any] | None = None) -> dict[str, Any]:
    full = kind == "full"
    result = step(["run", "--json", *cli_opts, *RUN_OPTS, *(["--full"] if full else [])])
    try:
        report = json.loads(result["stdout"])
    except json.JSONDecodeError as exc:
        print(f"run printed no JSON ({exc}):\n{result['stdout']}", file=sys.stderr)
        raise StepFailed("run --json") from None
    row: dict[str, Any] = {
        "label": label,
        "kind": kind,
        "change_share": share,
        "changes": changes,
        "seconds": round(result["seconds"], 2),
        "stages": {k: round(float(v), 3) for k, v in report.get("stages", {}).items()},
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        # the process's peak when each stage ended: which stage set it
        "stage_peak_rss_mb": report.get("peak_rss_mb", {}),
        "pull": report.get("pull"),
        "partitions": report.get("partitions"),
        "mart_groups": report.get("mart_groups"),
        "dimension_ranges": report.get("dimension_ranges"),
        "spilled_candidates": report.get("spilled_candidates"),
        "memory_budget_mb": report.get("memory_budget_mb"),
        "engine": report.get("engine", "local"),
        "task_peak_rss_mb": report.get("task_peak_rss_mb", 0),
        "rows_pulled": sum(report.get("pulled", {}).values()),
        "dwh": report.get("dwh", {}),
        "marts": {
            name: {k: m.get(k) for k in ("entities", "orders", "rows_inserted", "rows_updated",
                                         "rows_deleted")}
            for name, m in report.get("marts", {}).items()
        },
        "database_mb": round(database_size_mb(db), 1),
    }
    if apply is not None:
        row["apply"] = apply
    print(f"  {label:<28} {row['seconds']:8.2f} s  RSS {row['peak_rss_mb']:7.0f} MB  "
          f"DB {row['database_mb']:7.0f} MB  partitions {row['partitions']}", flush=True)
    return row


def bench(db: Database, cli_opts: list[str], orders: int, shares: list[float],
          seed: int, shape: str = "real", gen_opts: list[str] | None = None,
          setup: list[str] | None = None,
          measured: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any]:
    """Generate (into ``gen_opts``' database: the sources' own, or the warehouse by
    default), set up change capture (``setup``: a command), then time the runs; each
    step's figures go to ``measured`` as soon as they are taken (the result so far)."""
    gen_opts = cli_opts if gen_opts is None else gen_opts
    gen = step(["generate", *gen_opts, "--orders", str(orders), "--seed", str(seed),
                "--shape", shape, "--replace"])
    if setup:
        step(setup)
    generated = {
        "seconds": round(gen["seconds"], 2),
        "peak_rss_mb": round(gen["peak_rss_mb"], 1),
        "summary": gen["stdout"].strip(),
        "database_mb": round(database_size_mb(db), 1),
    }
    print(f"  {'generate':<28} {generated['seconds']:8.2f} s  "
          f"RSS {generated['peak_rss_mb']:7.0f} MB  DB {generated['database_mb']:7.0f} MB",
          flush=True)
    runs: list[dict[str, Any]] = []
    result = {"orders": orders, "generate": generated, "runs": runs, "complete": False}
    measured(result)

    def timed(*args: Any, **kwargs: Any) -> None:
        runs.append(timed_run(db, cli_opts, *args, **kwargs))
        measured(result)

    timed("first load", "first load")
    timed("no change", "no change")
    for i, share in enumerate(shares):
        count = max(1, int(orders * share))
        changed = step(["generate", *gen_opts, "--changes", str(count),
                        "--seed", str(seed + 1 + i), "--shape", shape])
        apply = {"seconds": round(changed["seconds"], 2),
                 "peak_rss_mb": round(changed["peak_rss_mb"], 1),
                 "summary": changed["stdout"].strip()}
        print(f"  {'generate --changes ' + str(count):<28} {apply['seconds']:8.2f} s  "
              f"RSS {apply['peak_rss_mb']:7.0f} MB", flush=True)
        timed(f"{count:,} changes ({share_label(share)})", "change", share=share,
              changes=count, apply=apply)
    if AGAIN:  # steady state: nothing changed since the last run (which read the changes)
        timed("no change, again", "no change")
    if not SKIP_FULL:
        timed("run --full", "full")
    result["complete"] = True
    return result


def print_table(result: dict[str, Any]) -> None:
    """Runs as columns; wall time, each stage (in order of appearance), RSS and sizes as rows."""
    runs = result["runs"]
    heads = [share_label(r["change_share"]) if r["kind"] == "change" else r["kind"]
             for r in runs]
    width = max(10, *(len(h) for h in heads))
    stages: list[str] = []
    for r in runs:
        stages += [s for s in r["stages"] if s not in stages]
    first = max(26, *(len(s) + 2 for s in stages))

    def line(name: str, cells: list[str]) -> None:
        print(f"{name:<{first}}" + "".join(f" {c:>{width}}" for c in cells))

    def changed(counts: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> int:
        return sum(int(c.get(k) or 0) for c in counts.values() for k in keys)

    line("", heads)
    line("wall s", [f"{r['seconds']:.2f}" for r in runs])
    for s in stages:
        line(f"  {s}", [f"{r['stages'][s]:.2f}" if s in r["stages"] else "-" for r in runs])
    line("rows pulled in full", [f"{r.get('rows_pulled') or 0:,}" for r in runs])
    line("peak RSS MB", [f"{r['peak_rss_mb']:.0f}" for r in runs])
    line("database MB", [f"{r['database_mb']:.0f}" for r in runs])
    line("dwh rows changed", [f"{changed(r['dwh'], ('inserted', 'updated', 'deleted')):,}"
                              for r in runs])
    line("mart rows changed", [
        f"{changed(r['marts'], ('rows_inserted', 'rows_updated', 'rows_deleted')):,}"
        for r in runs])
    print(flush=True)


def machine(server: Database, dsn_given: bool) -> dict[str, Any]:
    cpu_model = None
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.lower().startswith(("model name", "hardware", "cpu model")):
                cpu_model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal:"):
                memory_gb = round(int(text.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    conn = connect(server.with_dbname("postgres"))
    try:
        version = fetch_value(conn, "select version()")
        version_num = int(fetch_value(conn, "select current_setting('server_version_num')"))
    finally:
        conn.close()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": memory_gb,
        "cpu_model": cpu_model or platform.processor() or None,
        "platform": platform.platform(),
        "postgres": version,
        "postgres_major": version_num // 10000,
        "server": "given by --dsn" if dsn_given else "embedded (temporary)",
        "python": platform.python_version(),
        "polars": metadata.version("polars"),
        "craftmart_batch": metadata.version("craftmart-batch"),
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def speed_probe(server: Database) -> dict[str, float]:
    """Seconds a fixed piece of work takes here now: a Polars sort and join of 4M rows,
    and a server-side hash of 2M short texts. This machine's speed varies from day to
    day by a factor of two or more; figures of different days compare only through
    these (the same work, the same code: the probe scales with the runs)."""
    import polars as pl

    started = time.perf_counter()
    frame = pl.DataFrame({"k": pl.int_range(0, 4_000_000, eager=True).shuffle(seed=1)})
    frame = frame.with_columns((pl.col("k") * 7919 % 1_000_003).alias("v")).sort("v")
    frame.join(frame.select("k", pl.col("v").alias("w")), on="k").select(pl.col("w").sum())
    polars_s = time.perf_counter() - started
    conn = connect(server.with_dbname("postgres"))
    try:
        started = time.perf_counter()
        fetch_value(conn, "select sum(hashtext(repeat(i::text, 20)))"
                          " from generate_series(1, 2000000) as i")
        postgres_s = time.perf_counter() - started
    finally:
        conn.close()
    return {"polars_s": round(polars_s, 2), "postgres_s": round(postgres_s, 2)}


def fresh_database(server: Database, name: str) -> Database:
    """``name`` dropped (its replication slots first) and created empty."""
    admin = server.with_dbname("postgres")
    citus.drop_database(admin, name)
    return citus.create_database(admin, name)


def bench_all(server: Database, args: argparse.Namespace) -> dict[str, Any]:
    info = machine(server, bool(args.dsn))
    cluster = citus.nodes(server) if args.dsn else None
    if cluster:
        info["citus_workers"] = len(cluster) - 1
    print(f"{info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gb']} GB, "
          f"PostgreSQL {info['postgres_major']}, Python {info['python']}, "
          f"polars {info['polars']}", flush=True)
    config = ["--config", str(args.config)] if args.config else []
    results: list[dict[str, Any]] = []
    data = {
        "machine": info,
        "settings": {"seed": args.seed, "changes": args.changes, "shape": args.shape,
                     "sources": args.sources, "capture": args.capture,
                     "sources_server": "its own" if args.sources == "apart" else None,
                     "config": str(args.config) if args.config else None,
                     "run_options": RUN_OPTS},
        "results": results,
    }
    for orders in args.orders:
        name = f"craftmart_bench_{orders}"
        # on a Citus coordinator: on every node, with the extension, the workers registered
        citus.drop_database(server, name, cluster)
        db = citus.create_database(server, name)
        print(f"== {orders:,} orders ==", flush=True)
        run_opts, gen_opts, setup = ["--dsn", db.libpq_uri(), *config], None, None
        if args.sources == "apart":  # the sources in a database of their own
            shop_server = Database(parse_dsn(args.sources_dsn)) if args.sources_dsn else server
            shop = fresh_database(shop_server, f"{name}_shop")
            shop_config = Path(tempfile.mkdtemp(prefix="craftmart-bench-")) / "config.toml"
            shop_config.write_text("".join(
                f'[sources.{source}]\ndsn = "{shop.libpq_uri()}"\nchanges = "{args.capture}"\n'
                for source in ("source1", "source2", "source3", "external_source")))
            run_opts = ["--dsn", db.libpq_uri(), "--config", str(shop_config)]
            gen_opts = ["--dsn", shop.libpq_uri()]
            if args.capture == "logical":
                setup = ["sources", "setup", *run_opts]
        done = len(results)

        def measured(result: dict[str, Any], done: int = done) -> None:
            # written after every step: a step that fails later keeps what came before
            del results[done:]
            results.append(result)
            save(args.out, data)

        probe = speed_probe(server)
        print(f"speed probe: polars {probe['polars_s']} s, postgres {probe['postgres_s']} s",
              flush=True)
        result = bench(db, run_opts, orders, args.changes, args.seed, args.shape,
                       gen_opts, setup, measured)
        result["speed_probe"] = {"before": probe, "after": speed_probe(server)}
        measured(result)
        print_table(result)
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--changes", type=float, nargs="*", default=[0.0001, 0.001, 0.01],
                        help="shares of the orders to change, one run after each")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shape", choices=("real", "narrow"), default="real",
                        help="row shape of the generated sources: real (default) or narrow")
    parser.add_argument("--dsn", default=None,
                        help="server to use; a craftmart_bench_N database is dropped and "
                             "created on it per size (default: a temporary embedded server);"
                             " a Citus coordinator's database with the extension: on every"
                             " node")
    parser.add_argument("--config", type=Path, default=None,
                        help="config.toml passed to every craftmart-batch command")
    parser.add_argument("--memory-budget", default=None,
                        help="run --memory-budget of every run (default: the run's default)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="run --partitions of every run (default: automatic)")
    parser.add_argument("--engine", choices=("local", "ray"), default=None,
                        help="run --engine of every run (default: local)")
    parser.add_argument("--ray-address", default=None,
                        help="run --ray-address of every run (default: a Ray per run)")
    parser.add_argument("--no-change-again", action="store_true",
                        help="one more no-change run after the runs after changes")
    parser.add_argument("--skip-full", action="store_true",
                        help="leave out the final run --full (for the largest sizes)")
    parser.add_argument("--sources", choices=("warehouse", "apart"), default="warehouse",
                        help="where the sources are: the warehouse's database (default), or"
                        " a database of their own (on --sources-dsn)")
    parser.add_argument("--sources-dsn", default=None,
                        help="with --sources apart: the server of the sources' database"
                        " (default: a second temporary embedded server)")
    parser.add_argument("--capture", choices=("hash", "logical"), default="hash",
                        help="with --sources apart: how runs find the changed rows")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    args = parser.parse_args()
    global SKIP_FULL, AGAIN
    SKIP_FULL = args.skip_full
    AGAIN = args.no_change_again
    if args.memory_budget:
        RUN_OPTS.extend(["--memory-budget", args.memory_budget])
    if args.partitions is not None:
        RUN_OPTS.extend(["--partitions", str(args.partitions)])
    if args.engine:
        RUN_OPTS.extend(["--engine", args.engine])
    if args.ray_address:
        RUN_OPTS.extend(["--ray-address", args.ray_address])
    if not CLI.exists():
        parser.error(f"{CLI} not found: install craftmart-batch into this interpreter's env")

    try:
        with contextlib.ExitStack() as stack:
            if args.sources == "apart" and not args.sources_dsn and not args.dsn:
                # the shop on a server of its own: its WAL holds the shop's changes only
                args.sources_dsn = stack.enter_context(
                    throwaway_embedded("craftmart-bench-shop-")).libpq_uri()
            if args.dsn:
                data = bench_all(Database(parse_dsn(args.dsn)), args)
            else:
                server = stack.enter_context(throwaway_embedded("craftmart-bench-pg-"))
                data = bench_all(server, args)
    except StepFailed:
        print(f"what was measured before is in {args.out} (\"complete\": false)",
              file=sys.stderr)
        return 1
    save(args.out, data)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
