"""Day-to-day commands through the real command line: run --json, status, history,
quarantine, docs, progress on a terminal, and the scheduling example."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import pty
import re
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import add_order, create_sources, query, run, settings_for, sql

from craftmart_batch import pipeline
from craftmart_batch._database import Database, connect, connection, quote_ident
from craftmart_batch._sql import execute
from craftmart_batch.dictionary import data_dictionary
from craftmart_batch.errors import CraftmartError, LockHeldError
from craftmart_batch.load import refresh
from craftmart_batch.report import parse_age

ROOT = Path(__file__).resolve().parents[1]
D = dt.date


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``craftmart-batch ARGS`` in a fresh process, from ``cwd`` (so no stray config.toml)."""
    return subprocess.run(
        [sys.executable, "-m", "craftmart_batch.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=_env(),
    )


def _env() -> dict[str, str]:
    """The environment without a developer's own warehouse settings."""
    return {k: v for k, v in os.environ.items() if k not in ("CRAFTMART_DSN", "CRAFTMART_CONFIG")}


# --- one small warehouse shared by the read-only commands ---------------------------------
#
#   source1  #1  valid: bob, 100, done in 3 days          -> loaded
#   source1  #2  price 0 and customer email "bob-at-home"   -> quarantined, two rules
#   source1  #3  no created date                            -> quarantined
#   source2  #1  its product is missing                     -> quarantined
#   source3  #1  valid: dee, 250, delivery                  -> loaded
#   source3  #2  status "cancelled"                         -> quarantined
#   external #1  valid: bob again (other spelling), 40      -> loaded


@pytest.fixture(scope="module")
def warehouse(pg_server: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[Database, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]
]:
    """The warehouse above, built by two `run --json` (the second finds nothing to do);
    yields the database and both runs' results."""
    name = f"cm_test_cli_daily_{uuid.uuid4().hex[:10]}"
    with connection(pg_server, autocommit=True) as conn:
        execute(conn, f"create database {quote_ident(name)}")
    db = pg_server.with_dbname(name)
    try:
        create_sources(db)
        add_order(db, "source1", product_price=100, order_status="done",
                  order_created_date=D(2024, 1, 5), order_completion_date=D(2024, 1, 8))
        add_order(db, "source1", product_price=0, customer_email="bob-at-home")
        add_order(db, "source1", order_created_date=None)
        add_order(db, "source2", _missing_product=True)
        add_order(db, "source3", customer_email="dee@shop.example", customer_name="Dee",
                  product_price=250, order_status="delivery", order_created_date=D(2024, 2, 1))
        add_order(db, "source3", order_status="cancelled")
        add_order(db, "external_source", customer_email=" BOB@Buyer.Example ", product_price=40,
                  order_created_date=D(2024, 1, 20))
        cwd = tmp_path_factory.mktemp("warehouse")
        first = cli("run", "--dsn", db.libpq_uri(), "--json", cwd=cwd)
        second = cli("run", "--dsn", db.libpq_uri(), "--json", cwd=cwd)
        yield db, first, second
    finally:
        with connection(pg_server, autocommit=True) as conn:
            execute(conn, f"drop database if exists {quote_ident(name)} with (force)")


def test_run_json_reports_per_source_counts_and_changes(warehouse: Any) -> None:
    """`run --json` prints one JSON document: per source rows read = loaded + quarantined,
    per DWH table rows inserted, and the mart rows written; a second run changes nothing."""
    _, first, second = warehouse
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["sources"] == {
        "source1": {"read": 3, "loaded": 1, "quarantined": 2},
        "source2": {"read": 1, "loaded": 0, "quarantined": 1},
        "source3": {"read": 2, "loaded": 1, "quarantined": 1},
        "external_source": {"read": 1, "loaded": 1, "quarantined": 0},
    }
    assert report["dwh"]["f_order"] == {"inserted": 3, "updated": 0, "deleted": 0}
    assert report["dwh"]["d_customer"]["inserted"] == 2  # bob (two sources) and dee
    assert report["marts"]["customer_report_datamart"]["rows_inserted"] == 2
    assert report["quarantine"] == {"left": 0, "arrived": 4}
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert all(c == {"inserted": 0, "updated": 0, "deleted": 0} for c in again["dwh"].values())
    assert again["sources"] == report["sources"]


def test_status_json_shows_watermarks_rows_last_run_and_quarantine_counts(
    warehouse: Any, tmp_path: Path
) -> None:
    """`status --json`: each mart's watermark (the last refresh) and row count, the last
    run, and the quarantined rows counted per source and rule."""
    db, _, _ = warehouse
    result = cli("status", "--dsn", db.libpq_uri(), "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    watermark = query(db, "select max(load_dttm)::text as w"
                          " from marts.load_dates_customer_report_datamart")["w"][0]
    marts = {m["mart"]: m for m in state["marts"]}
    assert marts["customer_report_datamart"]["watermark"] == watermark
    assert marts["customer_report_datamart"]["rows"] == 2  # bob 2024-01, dee 2024-02
    assert marts["craftsman_report_datamart"]["rows"] == 2  # ann 2024-01, 2024-02
    assert 0 <= marts["customer_report_datamart"]["age_seconds"] < 600
    assert state["last_run"]["outcome"] == "success"
    assert state["last_run"]["rows"]["read"] == 7
    assert state["quarantine"] == [
        {"source_name": "source1", "reason": "created_date_missing", "rows": 1},
        {"source_name": "source1", "reason": "customer_email_invalid", "rows": 1},
        {"source_name": "source1", "reason": "price_not_positive", "rows": 1},
        # no product row: no craftsman email and no price either
        {"source_name": "source2", "reason": "craftsman_email_invalid", "rows": 1},
        {"source_name": "source2", "reason": "missing_reference", "rows": 1},
        {"source_name": "source2", "reason": "price_not_positive", "rows": 1},
        {"source_name": "source3", "reason": "status_unknown", "rows": 1},
    ]
    assert "stale" not in state


def test_status_text_and_a_fresh_max_age_exit_0(warehouse: Any, tmp_path: Path) -> None:
    """`status --max-age 1h` right after a run: the tables, and exit 0."""
    db, _, _ = warehouse
    result = cli("status", "--dsn", db.libpq_uri(), "--max-age", "1h", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert re.search(r"\| customer_report_datamart +\| \S+ \S+ +\| \d+s +\| 2 +\|",
                     result.stdout)
    assert re.search(r"\| source2 +\| missing_reference +\| 1 +\|", result.stdout)
    assert re.search(r"last run: #\d+ success", result.stdout)


def test_status_max_age_exits_1_with_one_line_naming_stale_and_never_refreshed_marts(
    db: Database, tmp_path: Path
) -> None:
    """A mart refreshed 3 hours ago is stale under --max-age 2h, one never refreshed is
    stale under any age: exit 1, one stderr line naming each, the status still printed."""
    create_sources(db)
    add_order(db, "source1")
    run(db)
    sql(db, "update marts.load_dates_customer_report_datamart"
            " set load_dttm = now() - interval '3 hours 10 seconds'")
    sql(db, "delete from marts.load_dates_craftsman_report_datamart")

    stale = cli("status", "--dsn", db.libpq_uri(), "--max-age", "2h", cwd=tmp_path)
    older_allowed = cli("status", "--dsn", db.libpq_uri(), "--max-age", "1d", "--json",
                        cwd=tmp_path)

    assert stale.returncode == 1
    assert stale.stderr.splitlines() == [
        "craftmart-batch: error: stale marts (max age 2h00m): customer_report_datamart last"
        " refreshed 3h00m ago; craftsman_report_datamart was never refreshed"
    ]
    assert "customer_report_datamart" in stale.stdout
    assert older_allowed.returncode == 1
    assert older_allowed.stderr.splitlines() == [
        "craftmart-batch: error: stale marts (max age 1d00h): craftsman_report_datamart was"
        " never refreshed"
    ]
    state = json.loads(older_allowed.stdout)
    assert state["stale"] is True
    assert state["max_age_seconds"] == 86400
    assert {m["mart"]: m["watermark"] for m in state["marts"]}[
        "craftsman_report_datamart"] is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0.5h", 1800),
     (" 2H ", 7200)],
)
def test_max_age_accepts_s_m_h_d_durations(text: str, seconds: float) -> None:
    """--max-age takes seconds, minutes, hours and days, and sums of them."""
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["2", "2x", "h", "0s", "-1h", "1h 2", ""])
def test_max_age_refuses_a_duration_without_a_unit_or_above_zero(text: str) -> None:
    with pytest.raises(CraftmartError, match="--max-age must be"):
        parse_age(text)


def test_a_bad_max_age_exits_2_with_one_line(tmp_path: Path) -> None:
    """A duration without a unit, or with an unknown one, stops before any connection."""
    for bad in ("2", "2x"):
        result = cli("status", "--dsn", "host=/nonexistent", "--max-age", bad, cwd=tmp_path)
        assert result.returncode == 2, bad
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "--max-age must be" in result.stderr


def test_history_lists_runs_newest_first_with_rows_and_stage_seconds(
    warehouse: Any, tmp_path: Path
) -> None:
    """`history --json`: each run's start, duration, mode, outcome, the DWH rows it
    inserted / updated / deleted, the rows quarantined and the seconds per stage."""
    db, first, _ = warehouse
    result = cli("history", "--dsn", db.libpq_uri(), "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [r["outcome"] for r in runs] == ["success", "success"]
    assert runs[0]["run_id"] > runs[1]["run_id"]
    latest, earliest = runs
    assert earliest["mode"] == latest["mode"] == "incremental"
    assert (earliest["pull"], earliest["pull_reason"]) == ("everything", "first_run")
    assert (latest["pull"], latest["pull_reason"]) == ("changes", None)
    assert earliest["marts_full"] == {"customer_report_datamart": "first_refresh",
                                      "craftsman_report_datamart": "first_refresh"}
    assert latest["marts_full"] == {}
    assert earliest["rows"] == {"read": 7, "loaded": 3, "quarantined": 4, "inserted": 3 + 2 + 1 + 1,
                                "updated": 0, "deleted": 0}
    assert latest["rows"]["inserted"] == 0
    assert earliest["mart_rows"]["customer_report_datamart"] == {
        "inserted": 2, "updated": 0, "deleted": 0}
    # recorded while committing: every stage but the commit itself
    assert set(json.loads(first.stdout)["stages"]) - {"commit"} == set(earliest["stages"])
    assert {"lock", "pull", "validate", "write", "customer_report_datamart"} <= set(
        earliest["stages"])
    assert 0 < earliest["seconds"] < 120
    assert earliest["error"] is None

    limited = cli("history", "--dsn", db.libpq_uri(), "--limit", "1", cwd=tmp_path)
    assert limited.returncode == 0, limited.stderr
    table = limited.stdout.split("seconds per stage:")[0]
    assert len(re.findall(r"^\| \d+ ", table, re.MULTILINE)) == 1
    assert re.search(rf"^\| {latest['run_id']} +\| \S+ \S+ +\| [\d.]+ +\| incremental \| success"
                     r" +\| changes +\| 1 +\|", table, re.MULTILINE)
    assert (earliest["partitions"], latest["partitions"]) == (1, 1)
    # the stage columns in the order the stages run
    header = limited.stdout.split("seconds per stage:")[1].splitlines()[1]
    assert re.sub(r"\s+", "", header).startswith(
        "|run|lock|schema|plan|pull|validate|dedup|diff|write|")


def _refuse_order_writes(db: Database, message: str) -> None:
    sql(db, "create function public.refuse_writes() returns trigger language plpgsql as $$"
            f" begin raise exception '{message}'; end $$")
    sql(db, "create trigger refuse_writes before insert or update on dwh.f_order"
            " for each row execute function public.refuse_writes()")


def test_a_failed_run_is_recorded_with_its_error_and_nothing_else_is_kept(
    db: Database, tmp_path: Path
) -> None:
    """A run that fails after taking the lock rolls back, then records outcome 'failed'
    and its one-line error (password redacted) in craftmart.runs; history shows it."""
    create_sources(db)
    add_order(db, "source1")
    run(db)
    orders_before = query(db, "select count(*) as n from dwh.f_order")["n"][0]
    _refuse_order_writes(db, "warehouse copy to postgresql://etl:hunter2@backup/shop refused")
    add_order(db, "source2", customer_email="new@buyer.example")

    failed = cli("run", "--dsn", db.libpq_uri(), cwd=tmp_path)
    history = cli("history", "--dsn", db.libpq_uri(), "--json", cwd=tmp_path)
    text = cli("history", "--dsn", db.libpq_uri(), cwd=tmp_path)

    assert failed.returncode == 2
    assert failed.stderr.splitlines()[-1].startswith("craftmart-batch: error: the run failed:")
    assert query(db, "select count(*) as n from dwh.f_order")["n"][0] == orders_before
    runs = json.loads(history.stdout)
    assert [r["outcome"] for r in runs] == ["failed", "success"]
    error = runs[0]["error"]
    assert error.startswith("the run failed:")
    assert "refused" in error
    assert "hunter2" not in history.stdout + text.stdout + failed.stderr
    assert "postgresql://etl:***@backup/shop" in error
    assert {"lock", "schema", "pull"} <= set(runs[0]["stages"])
    assert runs[0]["rows"]["inserted"] == 0  # nothing of the failed run was kept
    assert f"run {runs[0]['run_id']}: the run failed:" in text.stdout
    assert re.search(r"\| failed +\|", text.stdout)
    # the failure leaves the warehouse as it was: the next good run loads everything
    sql(db, "drop trigger refuse_writes on dwh.f_order")
    run(db)
    assert query(db, "select count(*) as n from dwh.f_order")["n"][0] == orders_before + 1


def test_a_run_failing_on_a_bug_records_the_exception_type_and_message(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only database errors: any exception inside a started run is recorded."""
    create_sources(db)
    add_order(db, "source1")
    run(db)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("mart refresh exploded")

    monkeypatch.setattr(refresh, "refresh", broken)
    with pytest.raises(ValueError, match="exploded"):
        run(db, full=True)

    last = query(db, "select mode, outcome, stats->>'error' as error,"
                     " stats->'dwh' = '{}'::jsonb and stats->'marts' = '{}'::jsonb as kept_nothing,"
                     " stats->'stages' ? 'write' as wrote_first"
                     " from craftmart.runs order by run_id desc limit 1").rows()
    assert last == [("full", "failed", "ValueError: mart refresh exploded", True, True)]


def test_a_run_that_never_got_the_lock_records_nothing(db: Database) -> None:
    """Another run holding the lock: exit 3 territory; the refused run did nothing and
    leaves no row in craftmart.runs."""
    create_sources(db)
    add_order(db, "source1")
    run(db)
    holder = connect(db, autocommit=True)
    try:
        execute(holder, "select pg_advisory_lock($1)", (pipeline.LOCK_KEY,))
        with pytest.raises(LockHeldError):
            pipeline.run(settings_for(db), db)
    finally:
        holder.close()
    assert query(db, "select outcome from craftmart.runs").rows() == [("success",)]


def test_quarantine_filters_by_source_and_rule_with_raw_values(
    warehouse: Any, tmp_path: Path
) -> None:
    """`quarantine --source/--rule/--json`: the matching rows, every rule each broke and
    their raw values as read from the source."""
    db, _, _ = warehouse
    dsn = ("--dsn", db.libpq_uri())

    everything = json.loads(cli("quarantine", *dsn, "--json", cwd=tmp_path).stdout)
    source1 = json.loads(cli("quarantine", *dsn, "--source", "source1", "--json",
                             cwd=tmp_path).stdout)
    missing = json.loads(cli("quarantine", *dsn, "--rule", "missing_reference", "--json",
                             cwd=tmp_path).stdout)
    both = json.loads(cli("quarantine", *dsn, "--source", "source1", "--rule",
                          "price_not_positive", "--json", cwd=tmp_path).stdout)
    none = cli("quarantine", *dsn, "--source", "source3", "--rule", "missing_reference",
               cwd=tmp_path)

    assert [(r["source_name"], r["reasons"]) for r in everything] == [
        ("source1", ["price_not_positive", "customer_email_invalid"]),
        ("source1", ["created_date_missing"]),
        ("source2", ["price_not_positive", "craftsman_email_invalid", "missing_reference"]),
        ("source3", ["status_unknown"]),
    ]
    assert [r["source_order_id"] for r in source1] == [2, 3]
    assert source1[0]["raw"]["customer_email"] == "bob-at-home"
    assert source1[0]["raw"]["product_price"] == 0
    assert source1[1]["raw"]["order_created_date"] is None
    assert [(r["source_name"], r["source_order_id"]) for r in missing] == [("source2", 1)]
    assert [r["source_order_id"] for r in both] == [2]
    assert none.returncode == 0
    assert none.stdout.strip() == "quarantine is empty for this filter"


def test_quarantine_limit_shows_the_first_rows_and_says_how_many_there_are(
    warehouse: Any, tmp_path: Path
) -> None:
    """`--limit 1` shows one row and says how many matched; `--limit 0` shows all."""
    db, _, _ = warehouse
    one = cli("quarantine", "--dsn", db.libpq_uri(), "--limit", "1", cwd=tmp_path)
    every = cli("quarantine", "--dsn", db.libpq_uri(), "--limit", "0", "--json", cwd=tmp_path)
    json_one = cli("quarantine", "--dsn", db.libpq_uri(), "--limit", "1", "--json",
                   cwd=tmp_path)

    assert one.returncode == 0, one.stderr
    rows = [line for line in one.stdout.splitlines() if re.match(r"\| source\d ", line)]
    assert len(rows) == 1 and re.match(r"\| source1 +\| 2 +\| price_not_positive,", rows[0])
    assert one.stdout.rstrip().endswith("1 of 4 rows shown (--limit 0 shows all)")
    assert len(json.loads(every.stdout)) == 4
    assert len(json.loads(json_one.stdout)) == 1


def test_quarantine_refuses_an_unknown_rule_and_a_negative_limit(
    warehouse: Any, tmp_path: Path
) -> None:
    """A misspelt rule is an error naming the rules, not an empty listing."""
    db, _, _ = warehouse
    typo = cli("quarantine", "--dsn", db.libpq_uri(), "--rule", "missing_ref", cwd=tmp_path)
    negative = cli("quarantine", "--dsn", db.libpq_uri(), "--limit", "-1", cwd=tmp_path)

    assert typo.returncode == 2
    assert typo.stderr.splitlines() == [
        "craftmart-batch: error: unknown rule 'missing_ref'; the rules are: order_key_missing,"
        " created_date_missing, status_unknown, completion_before_created, date_out_of_range,"
        " price_not_positive, price_out_of_range, craftsman_email_invalid,"
        " customer_email_invalid, missing_reference, duplicate_order_key"
    ]
    assert negative.returncode == 2
    assert "--limit must be 0 (all) or a positive number" in negative.stderr


def test_docs_writes_a_data_dictionary_from_the_database_comments(
    warehouse: Any, tmp_path: Path
) -> None:
    """`docs --out FILE`: every table of dwh, marts and craftmart with its comment, keys
    and each column's type, nullability and comment — and every column has one."""
    db, _, _ = warehouse
    out = tmp_path / "dictionary.md"
    result = cli("docs", "--dsn", db.libpq_uri(), "--out", str(out), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    text = out.read_text()
    tables = query(db, "select table_schema || '.' || table_name as t"
                       " from information_schema.tables"
                       " where table_schema in ('dwh', 'marts', 'craftmart')")["t"].to_list()
    for table in tables:
        assert f"### `{table}`" in text
    assert "| `customer_money` | numeric(15,2) | no | Sum of the order prices" in text
    assert "| `median_time_order_completed` | numeric(10,1) | yes |" in text
    assert "- Unique: `customer_id, report_period`" in text
    undocumented = [line for line in text.splitlines() if line.endswith("|  |")]
    assert undocumented == []
    stdout = cli("docs", "--dsn", db.libpq_uri(), cwd=tmp_path)
    assert stdout.stdout == text


def test_the_committed_data_dictionary_is_current(warehouse: Any) -> None:
    """docs/data-dictionary.md is what `craftmart-batch docs` generates from the schema
    (regenerate it with `craftmart-batch docs --out docs/data-dictionary.md`)."""
    db, _, _ = warehouse
    committed = (ROOT / "docs" / "data-dictionary.md").read_text(encoding="utf-8")
    assert committed == data_dictionary(db), (
        "docs/data-dictionary.md is stale: craftmart-batch docs --out docs/data-dictionary.md"
    )


# --- progress -------------------------------------------------------------------------


def _on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run the command with stderr on a pseudo-terminal; return (exit code, stdout, stderr)."""
    main, secondary = pty.openpty()
    env = {**_env(), "TERM": "xterm-256color", "COLUMNS": "100"}
    proc = subprocess.Popen([sys.executable, "-m", "craftmart_batch.cli", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=secondary, env=env)
    os.close(secondary)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen.extend(chunk)
    assert proc.stdout is not None
    stdout = proc.stdout.read().decode()
    code = proc.wait(timeout=120)
    os.close(main)
    return code, stdout, seen.decode(errors="replace")


def test_progress_on_a_terminal_uses_rich_and_plain_lines_otherwise(
    db: Database, tmp_path: Path
) -> None:
    """On a terminal, generation shows a progress bar and each run stage a ✓ line with
    its seconds; piped, the same commands print the plain stage lines scripts read."""
    code, _, generate_tty = _on_a_terminal(
        ["generate", "--dsn", db.libpq_uri(), "--orders", "300"], tmp_path)
    assert code == 0, generate_tty
    assert "━" in generate_tty  # the bar
    assert "100%" in generate_tty

    code, stdout, run_tty = _on_a_terminal(["run", "--dsn", db.libpq_uri()], tmp_path)
    assert code == 0, run_tty
    for stage in ("lock", "schema", "pull", "validate", "write", "customer_report_datamart"):
        assert re.search(rf"✓\S* {stage}\S* \S*\d+\.\ds", run_tty), (stage, run_tty)
    assert "\x1b[" in run_tty  # styled
    assert "sources (rows read = loaded + quarantined)" in stdout

    piped = cli("run", "--dsn", db.libpq_uri(), cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "\x1b[" not in piped.stderr and "✓" not in piped.stderr
    # nothing changed: the plan (the hash comparison) finds it, and nothing is pulled
    assert re.search(r"^  plan \.\.\. \d+\.\ds$", piped.stderr, re.MULTILINE), piped.stderr
    assert "  pull ..." not in piped.stderr


# --- scheduling -----------------------------------------------------------------------


def test_the_airflow_example_runs_the_batch_with_json_and_fails_on_a_nonzero_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """examples/airflow_dag.py, loaded against a stand-in for Airflow: one DAG whose
    BashOperator runs `craftmart-batch run --json` under `set -euo pipefail`."""
    created: dict[str, Any] = {}

    class DAG:
        def __init__(self, dag_id: str, **kwargs: Any) -> None:
            created["dag"] = (dag_id, kwargs)

        def __enter__(self) -> DAG:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    class BashOperator:
        def __init__(self, task_id: str, bash_command: str, **kwargs: Any) -> None:
            created.setdefault("tasks", []).append((task_id, bash_command, kwargs))

        def __rshift__(self, other: Any) -> Any:
            return other

    airflow = types.ModuleType("airflow")
    airflow.DAG = DAG  # type: ignore[attr-defined]
    operators = types.ModuleType("airflow.operators")
    bash = types.ModuleType("airflow.operators.bash")
    bash.BashOperator = BashOperator  # type: ignore[attr-defined]
    for name, module in (("airflow", airflow), ("airflow.operators", operators),
                         ("airflow.operators.bash", bash)):
        monkeypatch.setitem(sys.modules, name, module)

    spec = importlib.util.spec_from_file_location("airflow_dag", ROOT / "examples/airflow_dag.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

    dag_id, options = created["dag"]
    assert dag_id == "craftmart_batch"
    assert options["catchup"] is False
    commands = {task_id: command for task_id, command, _ in created["tasks"]}
    assert "craftmart-batch run --json" in commands["run_batch"]
    assert commands["run_batch"].lstrip().startswith("set -euo pipefail")
    assert "craftmart-batch status --max-age" in commands["check_freshness"]
