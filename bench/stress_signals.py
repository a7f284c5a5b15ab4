"""Stress: stop many short runs with a signal at a random instant; count crashes.

A stop signal must end a run, at any instant, with exit 128 + signal, one stderr line
and nothing committed (or, past the commit, a finished run). This starts `craftmart-batch
run` over and over on a small warehouse (sources changed before each run, one run in
five `--full`) and sends SIGTERM (or SIGINT) at a random instant: in half of the runs
after a delay drawn over the length of a whole run, in the other half a few
milliseconds (0-30) after a random stage starts, where statements and reads begin
(`--stage S`: always a few milliseconds after stage S starts). Every outcome is sorted:

    stopped    exit 128 + signal, the one line, no run recorded
    late       the signal came after the commit: exit 0, or 128 + signal (or killed by
               the signal, once the command has let go of it) with the run recorded
    early      killed by the signal before the command set up its handling (nothing
               printed, nothing recorded: the interpreter was still starting)
    crashed    killed by a signal of its own (e.g. -11: segmentation fault)
    other      anything else (a traceback, another exit code, a second line)

The stderr of each crashed or other run is kept in --keep (with Python's faulthandler
on, so a crash shows every thread). Exit status 1 if any run crashed or ended otherwise.
Not a test: it takes minutes and its point is a count. Example:

    .venv/bin/python bench/stress_signals.py --runs 200
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from craftmart_batch._database import (
    Database,
    connection,
    ensure_database,
    parse_dsn,
    quote_ident,
    throwaway_embedded,
)
from craftmart_batch._sql import fetch_value

CLI = Path(sys.executable).parent / "craftmart-batch"

STAGES = ["lock", "schema", "pull", "validate", "diff", "dedup", "write",
          "customer_report_datamart", "craftsman_report_datamart", "commit"]


def recorded_runs(db: Database) -> int:
    with connection(db) as conn:
        if fetch_value(conn, "select to_regclass('craftmart.runs') is null"):
            return 0
        return int(fetch_value(conn, "select count(*) from craftmart.runs"
                                     " where outcome = 'success'"))


def prepare(db: Database, orders: int, seed: int) -> None:
    from craftmart_batch.generate import generate

    ensure_database(db)
    with connection(db) as conn:
        generate(conn, orders, seed=seed)
        conn.commit()
    subprocess.run([str(CLI), "run", "--dsn", db.libpq_uri(), "--json"], check=True,
                   stdout=subprocess.DEVNULL)


def change(db: Database, changes: int, seed: int) -> None:
    from craftmart_batch.generate import apply_changes

    with connection(db) as conn:
        apply_changes(conn, changes, seed=seed)
        conn.commit()


def one_run(db: Database, args: list[str]) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    started = time.monotonic()
    proc = subprocess.run([str(CLI), "run", "--dsn", db.libpq_uri(), *args], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    return proc.returncode, proc.stderr.decode("utf-8", "replace"), time.monotonic() - started


def _read(proc: subprocess.Popen[bytes], sink: bytearray) -> None:
    assert proc.stderr is not None
    while chunk := os.read(proc.stderr.fileno(), 4096):
        sink.extend(chunk)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--signal", choices=["SIGTERM", "SIGINT"], default="SIGTERM")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stage", choices=STAGES, help="always signal just after this"
                                                        " stage starts")
    parser.add_argument("--dsn", help="a server to use (a new database is created on it);"
                                      " default: a throwaway embedded server")
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir())
                        / "craftmart-stress-signals", help="where odd runs' stderr goes")
    opts = parser.parse_args()
    if opts.dsn:
        server = Database(parse_dsn(opts.dsn))
        db = server.with_dbname(f"cm_stress_{os.getpid()}")
        try:
            return stress(db, opts)
        finally:
            with connection(server, autocommit=True) as conn:
                cur = conn.cursor()
                cur.execute(f"drop database if exists {quote_ident(db.dbname)} with (force)")
                cur.close()
    with throwaway_embedded("craftmart-stress-pg-") as server:
        return stress(server.with_dbname("cm_stress"), opts)


def stress(db: Database, opts: argparse.Namespace) -> int:
    signum = signal.Signals[opts.signal]
    rnd = random.Random(opts.seed)
    opts.keep.mkdir(parents=True, exist_ok=True)
    prepare(db, opts.orders, opts.seed)
    # how long a run takes here: signals are spread over that whole span
    change(db, opts.changes, opts.seed)
    span = one_run(db, [])[2]
    line = f"craftmart-batch: interrupted by {signum.name}; nothing was committed"
    outcomes: Counter[str] = Counter()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    print(f"{opts.runs} runs, {signum.name} after 0..{span:.2f}s", flush=True)
    for i in range(opts.runs):
        change(db, opts.changes, opts.seed + 1 + i)
        before = recorded_runs(db)
        args = ["--full"] if i % 5 == 4 else []
        proc = subprocess.Popen([str(CLI), "run", "--dsn", db.libpq_uri(), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err_buf = bytearray()
        reader = threading.Thread(target=_read, args=(proc, err_buf), daemon=True)
        reader.start()
        if i % 2 and not opts.stage:
            time.sleep(rnd.uniform(0, span))
        else:
            marker = f"  {opts.stage or rnd.choice(STAGES)} ...".encode()
            deadline = time.monotonic() + 120
            while marker not in err_buf and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(rnd.uniform(0, 0.03))
        if proc.poll() is None:
            proc.send_signal(signum)
        proc.wait(timeout=120)
        reader.join(timeout=10)
        code, err = proc.returncode, err_buf.decode("utf-8", "replace")
        committed = recorded_runs(db) > before
        errors = [x for x in err.splitlines() if x.startswith("craftmart-batch:")]
        if code == 128 + signum and errors == [line] and "Traceback" not in err:
            outcome = "late" if committed else "stopped"
        elif code == 0 or (code == -signum and committed):
            outcome = "late"
        elif code == -signum and not err.strip():
            outcome = "early"
        elif code < 0:
            outcome = "crashed"
        else:
            outcome = "other"
        outcomes[outcome] += 1
        if outcome in ("crashed", "other"):
            kept = opts.keep / f"run-{i:04d}-{outcome}-{code}.txt"
            kept.write_text(err)
            print(f"run {i}: {outcome} (exit {code}), stderr in {kept}", flush=True)
    print(" ".join(f"{k}={outcomes[k]}" for k in ("stopped", "late", "early", "crashed", "other")))
    return 1 if outcomes["crashed"] or outcomes["other"] else 0


if __name__ == "__main__":
    sys.exit(main())
