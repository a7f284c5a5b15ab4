"""Security on a real PostgreSQL: identifiers from config.toml are always quoted, passwords
never leave the DSN, `grant-reader` opens the marts and nothing else, and the pipeline
runs under a non-superuser account with exactly the grants docs/reliability.md lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import TEST_DSN_VARIABLE
from helpers import MARTS, SOURCES, add_order, create_sources, query, run, sql

from craftmart_batch._database import (
    Database,
    connect,
    connection,
    quote_ident,
    quote_literal,
    throwaway_embedded,
)
from craftmart_batch._sql import execute, fetch_value
from craftmart_batch.config import load_settings
from craftmart_batch.errors import CraftmartError
from craftmart_batch.extract import read

#: A password with every character that needs quoting in a DSN or a URI.
PASSWORD = "S3cr3t-" + uuid.uuid4().hex[:8] + "-p@ss:w/rd?#%&= 'q'\\x"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "craftmart_batch.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


def keyword_dsn(params: dict[str, str]) -> str:
    """A libpq keyword/value string, every value quoted."""
    def value(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{k}={value(v)}" for k, v in params.items())


def assert_no_password(text: str, password: str = PASSWORD) -> None:
    """Neither the password, its URI-encoded form, nor any 4+ character piece of it."""
    assert password not in text
    assert quote(password, safe="") not in text
    for piece in password.replace("-", " ").split():
        if len(piece) >= 4:
            assert piece not in text, piece


def superuser(pg_server: Database) -> bool:
    with connection(pg_server, autocommit=True) as conn:
        return bool(fetch_value(conn, "select rolsuper from pg_roles where rolname = current_user"))


@pytest.fixture
def make_role(db: Database, pg_server: Database) -> Iterator[Callable[..., Database]]:
    """A factory of login roles (cluster-wide, so dropped after the test): returns the
    test database as seen by the new role, with its password in the DSN."""
    if not superuser(pg_server):
        pytest.skip("creating roles needs a superuser on the test server")
    made: list[str] = []

    def make(prefix: str, password: str = PASSWORD) -> Database:
        role = f"{prefix}_{uuid.uuid4().hex[:8]}"
        literal = "'" + password.replace("'", "''") + "'"
        sql(db, f"create role {quote_ident(role)} login password {literal}")
        made.append(role)
        as_role = Database({**db.params, "user": role, "password": password})
        try:
            with connection(as_role, autocommit=True):
                pass
        except CraftmartError as exc:
            pytest.skip(f"the test server does not let a new role log in: {exc}")
        return as_role

    yield make

    for role in reversed(made):
        with connection(db, autocommit=True) as conn:
            execute(conn, f"drop owned by {quote_ident(role)} cascade")
        with connection(pg_server, autocommit=True) as conn:
            execute(conn, f"drop role if exists {quote_ident(role)}")


def grant_production_account(db: Database, role: str, *, precreated_schemas: bool) -> None:
    """The grants docs/reliability.md lists for the account that runs craftmart-batch,
    on a database where PUBLIC has nothing (its default CONNECT and TEMP revoked)."""
    r, database = quote_ident(role), quote_ident(db.dbname)
    sql(db, f"revoke all on database {database} from public")
    sql(db, f"grant connect, temporary on database {database} to {r}")
    for schema in SOURCES:
        sql(db, f"grant usage on schema {schema} to {r}")
        sql(db, f"grant select on all tables in schema {schema} to {r}")
    if precreated_schemas:
        for schema in ("craftmart", "dwh", "marts"):
            sql(db, f"create schema {schema} authorization {r}")
    else:
        sql(db, f"grant create on database {database} to {r}")


# --------------------------------------------------------------------------- identifiers


WEIRD_SCHEMA = 'we"ird; --schema'
WEIRD_ORDERS = 'x"; drop table dwh.f_order; --'
WEIRD_PEOPLE = "cust'omers\"; select pg_sleep(30); --"
WEIRD_SOURCE = "o'src\"; delete from dwh.f_order; --"
WEIRD_ALIAS = 'b"uyer; --'
WEIRD_COLUMNS = {  # canonical field -> column name
    "source_order_id": 'id"; --',
    "buyer": 'buyer"id',
    "order_created_date": "created'; drop schema marts cascade; --",
    "product_price": "pr;ce -- \"$1\"",
    "craftsman_email": 'craftsman e"mail',
    "customer_email": "e'mail\"; --",
}


def _weird_source(db: Database, config_dir: Path) -> Path:
    """A fifth source whose schema, tables, columns, join alias and name are hostile SQL."""
    s, o, p = quote_ident(WEIRD_SCHEMA), quote_ident(WEIRD_ORDERS), quote_ident(WEIRD_PEOPLE)
    c = {k: quote_ident(v) for k, v in WEIRD_COLUMNS.items()}
    sql(db, f"create schema {s}")
    sql(db, f"create table {s}.{p} ({c['buyer']} bigint primary key, customer_name text,"
            f" customer_address text, customer_birthday date, {c['customer_email']} text)")
    sql(db, f"create table {s}.{o} ({c['source_order_id']} bigint primary key,"
            f" {c['buyer']} bigint, {c['order_created_date']} date,"
            " order_completion_date date, order_status text, craftsman_name text,"
            f" craftsman_address text, craftsman_birthday date, {c['craftsman_email']} text,"
            " product_name text, product_description text, product_type text,"
            f" {c['product_price']} bigint)")
    sql(db, f"insert into {s}.{p} values (1, 'Wendy', 'Quote St', '1990-01-01',"
            " 'wendy@weird.example')")
    for key, status in ((10, "done"), (11, "created"), (12, "smuggled'); --")):
        sql(db, f"insert into {s}.{o} values ($1, 1, '2024-02-02', null, $2, 'Kit',"
                " 'Lane', '1980-01-01', 'kit@weird.example', 'Jar', 'Glass jar', 'glass', 25)",
            (key, status))
    mapping = {
        "order_created_date": WEIRD_COLUMNS["order_created_date"],
        "product_price": WEIRD_COLUMNS["product_price"],
        "craftsman_email": WEIRD_COLUMNS["craftsman_email"],
        "customer_email": f"{WEIRD_ALIAS}.{WEIRD_COLUMNS['customer_email']}",
        **{f: f"{WEIRD_ALIAS}.{f}" for f in ("customer_name", "customer_address",
                                              "customer_birthday")},
    }
    toml = json.dumps  # a JSON string is a TOML basic string
    lines = [
        f"[sources.{toml(WEIRD_SOURCE)}]",
        f"schema = {toml(WEIRD_SCHEMA)}",
        f"table = {toml(WEIRD_ORDERS)}",
        f"key = {toml(WEIRD_COLUMNS['source_order_id'])}",
        f"[[sources.{toml(WEIRD_SOURCE)}.join]]",
        f"name = {toml(WEIRD_ALIAS)}",
        f"table = {toml(WEIRD_PEOPLE)}",
        f"on = {{ {toml(WEIRD_COLUMNS['buyer'])} = {toml(WEIRD_COLUMNS['buyer'])} }}",
        f"[sources.{toml(WEIRD_SOURCE)}.columns]",
        *(f"{field} = {toml(column)}" for field, column in mapping.items()),
    ]
    config = config_dir / "config.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def test_identifiers_from_config_are_quoted_and_nothing_is_injected(
    db: Database, tmp_path: Path
) -> None:
    """A source registered in config.toml whose schema, tables, columns, join alias and
    name hold quotes, semicolons and `--` (one table is called
    `x"; drop table dwh.f_order; --`) loads correctly through the command line: its
    valid rows reach f_order and the marts under the source's exact name, its invalid
    row is quarantined and listed, and no statement is injected (every table, the
    sources' and a canary's rows are intact, nothing sleeps)."""
    create_sources(db)
    add_order(db, "source1", customer_email="plain@buyer.example")
    sql(db, "create table public.canary (n int)")
    sql(db, "insert into public.canary values (1)")
    _weird_source(db, tmp_path)

    result = cli("run", "--dsn", db.libpq_uri(), "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sources"][WEIRD_SOURCE] == {"read": 3, "loaded": 2, "quarantined": 1}
    assert query(db, "select source_name, source_order_id, product_price from dwh.f_order"
                     " order by 1, 2").rows() == [
        (WEIRD_SOURCE, 10, 25), (WEIRD_SOURCE, 11, 25), ("source1", 1, 100)]
    assert query(db, "select customer_email, count_order from marts.customer_report_datamart"
                     " order by 1").rows() == [("plain@buyer.example", 1),
                                               ("wendy@weird.example", 2)]
    assert query(db, "select n from public.canary").rows() == [(1,)]
    assert query(db, "select count(*) from source1.craft_market_wide").item() == 1
    s, o = quote_ident(WEIRD_SCHEMA), quote_ident(WEIRD_ORDERS)
    assert query(db, f"select count(*) from {s}.{o}").item() == 3
    assert query(db, "select count(*) from pg_namespace where nspname = 'marts'").item() == 1

    listing = cli("quarantine", "--dsn", db.libpq_uri(), "--source", WEIRD_SOURCE, "--json",
                  cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [(r["source_order_id"], r["reasons"]) for r in rows] == [(12, ["status_unknown"])]
    assert "smuggled'); --" in listing.stdout


# --------------------------------------------------------------------------- passwords


def test_a_password_never_appears_in_output_logs_or_run_history(
    db: Database, make_role: Callable[..., Database], tmp_path: Path
) -> None:
    """Runs as a role with a password full of quoting characters, given as a keyword
    DSN and as a URI, with verbose logging, a failing run and `status`: the password is
    in no output, no log line, no error and no craftmart.runs row."""
    create_sources(db)
    add_order(db, "source1")
    add_order(db, "source2", order_status="lost")
    etl = make_role("cm_pw")
    grant_production_account(db, etl.params["user"], precreated_schemas=False)
    outputs = []
    keywords, uri = keyword_dsn(etl.params), etl.libpq_uri()
    for args in (("-v", "run", "--dsn", keywords), ("-v", "run", "--json", "--dsn", uri),
                 ("status", "--dsn", keywords), ("quarantine", "--dsn", uri)):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    (tmp_path / "config.toml").write_text('[run]\nstatement_timeout = "1ms"\n', "utf-8")
    add_order(db, "source3")
    failed = cli("-v", "run", "--dsn", keyword_dsn(etl.params), cwd=tmp_path)
    assert failed.returncode == 2
    outputs.append(failed.stdout + failed.stderr)

    for text in outputs:
        assert_no_password(text)
    history = query(db, "select string_agg(r::text, E'\\n') from craftmart.runs as r").item()
    assert "failed" in history and "success" in history
    assert_no_password(history)
    everything = query(db, "select string_agg(q::text, E'\\n') from craftmart.quarantine as q"
                       ).item()
    assert_no_password(everything)


@pytest.mark.parametrize(
    "dsn",
    [
        keyword_dsn({"host": "127.0.0.1", "port": "1", "dbname": "x", "user": "etl",
                     "password": PASSWORD, "connect_timeout": "5"}),
        f"postgresql://etl:{quote(PASSWORD, safe='')}@127.0.0.1:1/x?connect_timeout=5",
        f"postgresql://etl:{quote(PASSWORD, safe='')}@nonexistent.invalid/x",
        keyword_dsn({"host": "/nonexistent/socket/dir", "user": "etl", "password": PASSWORD}),
        f"host=127.0.0.1 port=1 password={PASSWORD}",  # unquoted: a malformed DSN
        f"postgresql://etl:{quote(PASSWORD, safe='')}@[::1/x",  # a malformed URI
    ],
    ids=["refused", "uri-refused", "unknown-host", "no-socket", "unquoted", "bad-uri"],
)
def test_a_password_is_not_echoed_when_connecting_fails(dsn: str, tmp_path: Path) -> None:
    """An unreachable server, an unknown host, a missing socket, a malformed DSN or URI:
    exit 2, one line, and no piece of the password in it."""
    done = cli("run", "--dsn", dsn, cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("craftmart-batch: error: ")
    assert_no_password(done.stderr)


def test_a_password_is_not_echoed_when_the_database_refuses(
    db: Database, tmp_path: Path
) -> None:
    """The right server, a database that does not exist, a password in the DSN: exit 2,
    one line naming the database, no piece of the password."""
    wrong = Database({**db.params, "dbname": "no_such_db_" + uuid.uuid4().hex[:6],
                      "password": PASSWORD})
    for dsn in (keyword_dsn(wrong.params), wrong.libpq_uri()):
        done = cli("run", "--dsn", dsn, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert wrong.params["dbname"] in done.stderr
        assert_no_password(done.stderr)


def _pull_error(params: dict[str, str]) -> str:
    sources = load_settings(None, dsn="host=unused").sources
    with pytest.raises(CraftmartError) as error:
        read.pull_sources(Database(params), sources)
    return str(error.value)


def test_a_connectorx_error_does_not_echo_the_password() -> None:
    """connectorx gets the password inside its URI; its errors (here: a port it cannot
    parse) come back as one line without it."""
    message = _pull_error({"host": "127.0.0.1", "port": "notaport", "user": "etl",
                           "password": PASSWORD, "dbname": "x"})
    assert message.startswith("sources 'source1', 'source2', 'source3', 'external_source':"
                              " cannot read 127.0.0.1:notaport/x: "), message
    assert "\n" not in message
    assert_no_password(message)


@pytest.mark.slow
def test_a_connectorx_error_from_the_server_does_not_echo_the_password(db: Database) -> None:
    """connectorx reaching the server with a wrong database name (its pool retries for
    30 s before it gives up): one line, the server's reason, no password."""
    message = _pull_error({**db.params, "dbname": "no_such_db", "password": PASSWORD})
    assert "no_such_db" in message and "\n" not in message
    assert_no_password(message)


def test_the_password_file_is_read_as_libpq_reads_it(tmp_path: Path) -> None:
    """Comments skipped, `*` matches anything, `\\` escapes `:` and itself, the first
    matching line wins, a socket directory matches by path (libpq's default one also as
    localhost), and a file others may read is ignored."""
    from craftmart_batch._database import pgpass_password

    passfile = tmp_path / "pgpass"
    passfile.write_text(
        "# comment\n"
        "db.example:5432:shop:etl:first\n"
        "db.example:5432:shop:etl:second\n"
        "/srv/sock:*:shop:etl:by\\:path\\\\\n"
        "localhost:5433:*:*:local\n"
        "*:*:*:reader:any\n",
        encoding="utf-8",
    )
    passfile.chmod(0o600)
    file = str(passfile)
    assert pgpass_password(file, "db.example", "5432", "shop", "etl") == "first"
    assert pgpass_password(file, "/srv/sock", "5432", "shop", "etl") == "by:path\\"
    assert pgpass_password(file, "/tmp", "5433", "x", "etl") == "local"
    assert pgpass_password(file, "", "5433", "x", "etl") == "local"
    assert pgpass_password(file, "/srv/other", "5433", "x", "etl") is None
    assert pgpass_password(file, "anywhere", "1", "x", "reader") == "any"
    assert pgpass_password(str(tmp_path / "missing"), "db.example", "5432", "shop", "etl") is None
    passfile.chmod(0o644)
    assert pgpass_password(file, "db.example", "5432", "shop", "etl") is None


@pytest.fixture
def password_server() -> Iterator[Database]:
    """A throwaway embedded server that asks every connection for a password (scram):
    the admin database as postgres, whose password is PASSWORD (not in the DSN)."""
    if os.environ.get(TEST_DSN_VARIABLE):
        pytest.skip(f"reconfigures its own embedded server; {TEST_DSN_VARIABLE} is set")
    with throwaway_embedded("craftmart-test-pw-pg-") as admin:
        with connection(admin, autocommit=True) as conn:
            execute(conn, f"alter role postgres password {quote_literal(PASSWORD)}")
            hba = Path(fetch_value(conn, "select current_setting('hba_file')"))
            hba.write_text("local all all scram-sha-256\n", encoding="utf-8")
            execute(conn, "select pg_reload_conf()")
        yield admin


@pytest.mark.slow
def test_a_password_from_the_password_file_or_environment_serves_both_connections(
    password_server: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server that checks passwords, a DSN without one runs with the password from
    $PGPASSFILE or $PGPASSWORD, for libpq's connection and connectorx's alike (which
    reads neither by itself); a wrong password is one line, exit 2, and not echoed."""
    with_password = Database({**password_server.params, "password": PASSWORD})
    with connection(with_password, autocommit=True) as conn:
        execute(conn, "create database craftmart_pw")
    db = with_password.with_dbname("craftmart_pw")
    create_sources(db)
    add_order(db, "source1")
    no_password = password_server.with_dbname("craftmart_pw")
    assert "password" not in no_password.params

    passfile = tmp_path / "pgpass"
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    socket_dir = no_password.params["host"]  # a socket directory is matched by its path
    passfile.write_text(f"elsewhere:5432:*:*:wrong\n{socket_dir}:*:craftmart_pw:postgres:"
                        f"{escaped}\n", encoding="utf-8")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    done = cli("run", "--json", "--dsn", keyword_dsn(no_password.params), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sources"]["source1"]["loaded"] == 1

    monkeypatch.delenv("PGPASSFILE")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    add_order(db, "source2")
    done = cli("run", "--json", "--dsn", no_password.libpq_uri(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sources"]["source2"]["loaded"] == 1

    monkeypatch.delenv("PGPASSWORD")
    wrong = PASSWORD[::-1]
    done = cli("run", "--dsn", keyword_dsn({**no_password.params, "password": wrong}),
               cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "password authentication failed" in done.stderr
    assert_no_password(done.stderr, wrong)
    assert_no_password(done.stderr)


# --------------------------------------------------------------------------- grant-reader


def _as_role(db: Database, role: str) -> Any:
    """A superuser connection that has become ``role`` (autocommit: one error per statement)."""
    conn = connect(db, autocommit=True)
    execute(conn, f"set role {quote_ident(role)}")
    return conn


def _allowed(conn: Any, statement: str) -> bool:
    try:
        execute(conn, statement)
    except Exception as exc:  # insufficient_privilege: "permission denied", "must be owner"
        assert "SQLSTATE: 42501" in str(exc), (statement, str(exc))
        return False
    return True


#: What a reader must not do, everywhere.
FORBIDDEN = (
    "select * from source1.craft_market_wide",
    "select * from source2.craft_market_orders_customers",
    "select * from dwh.f_order",
    "select * from dwh.d_customer",
    "select * from craftmart.runs",
    "select * from craftmart.quarantine",
    "insert into marts.customer_report_datamart (customer_id) values (1)",
    "update marts.craftsman_report_datamart set count_order = 0",
    "delete from marts.customer_report_datamart",
    "truncate marts.load_dates_customer_report_datamart",
    "insert into marts.load_dates_craftsman_report_datamart (load_dttm) values (now())",
    "create table marts.reader_table (n int)",
    "create table public.reader_table (n int)",
    "create schema reader_schema",
    "drop table marts.customer_report_datamart",
    "alter table marts.customer_report_datamart add column x int",
    "update source1.craft_market_wide set order_status = 'done'",
    "delete from dwh.f_order",
)


def assert_reads_marts_only(db: Database, role: str, owner: str) -> None:
    """``role`` reads the marts, their load dates and a mart table added later by the
    marts' owner, and nothing else; it writes nowhere."""
    conn = _as_role(db, role)
    try:
        for table in (*MARTS, *(f"load_dates_{m}" for m in MARTS)):
            assert fetch_value(conn, f"select count(*) from marts.{table}") > 0, table
        for statement in FORBIDDEN:
            assert not _allowed(conn, statement), statement
    finally:
        conn.close()
    owner_conn = _as_role(db, owner)
    try:
        execute(owner_conn, "create table marts.future_mart (n int)")
        execute(owner_conn, "insert into marts.future_mart values (7)")
    finally:
        owner_conn.close()
    conn = _as_role(db, role)
    try:
        assert fetch_value(conn, "select n from marts.future_mart") == 7
    finally:
        conn.close()
    sql(db, "drop table marts.future_mart")


def test_grant_reader_lets_a_role_read_the_marts_and_nothing_else(
    db: Database, make_role: Callable[..., Database], tmp_path: Path
) -> None:
    """`craftmart-batch grant-reader ROLE` (twice: it is idempotent) lets ROLE select
    both marts, their load dates and mart tables created later, and nothing in the
    sources, dwh or craftmart; ROLE cannot write, create or drop anywhere."""
    create_sources(db)
    add_order(db, "source1")
    run(db)
    reader = make_role("cm_reader").params["user"]
    assert not _allowed(_as_role(db, reader), "select * from marts.customer_report_datamart")

    for _ in range(2):
        done = cli("grant-reader", reader, "--dsn", db.libpq_uri(), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{reader} can now read schema marts (")
    owner = query(db, "select nspowner::regrole::text from pg_namespace where nspname = 'marts'"
                  ).item()
    assert_reads_marts_only(db, reader, owner)


def test_grant_reader_refuses_an_unknown_role_or_a_missing_warehouse_in_one_line(
    db: Database, tmp_path: Path
) -> None:
    """An unknown role, or a database without marts yet: exit 2, one line saying which."""
    done = cli("grant-reader", "nobody_" + uuid.uuid4().hex[:6], "--dsn", db.libpq_uri(),
               cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert "does not exist" in done.stderr
    done = cli("grant-reader", "postgres", "--dsn", db.libpq_uri(), cwd=tmp_path)
    assert done.returncode == 2
    assert "run `craftmart-batch run` first" in done.stderr


# --------------------------------------------------------------------------- a production account


@pytest.mark.parametrize("schemas", ["create-on-database", "pre-created-schemas"])
def test_the_pipeline_runs_under_a_non_superuser_with_the_documented_grants(
    db: Database, make_role: Callable[..., Database], tmp_path: Path, schemas: str
) -> None:
    """A login role that is no superuser, on a database where PUBLIC has nothing, gets
    exactly the grants of docs/reliability.md: CONNECT and TEMPORARY on the database,
    USAGE and SELECT on the sources, and CREATE on the database for the first run (which
    can be revoked afterwards) or schemas craftmart, dwh and marts pre-created and owned
    by it. Runs, incremental and --full, succeed; it owns everything it created; it can
    grant a reader the marts."""
    create_sources(db)
    for source in SOURCES:
        add_order(db, source, customer_email=f"{source}@buyer.example")
    etl = make_role("cm_etl")
    role = etl.params["user"]
    reader = make_role("cm_reader").params["user"]
    assert not query(db, "select rolsuper or rolcreatedb or rolcreaterole from pg_roles"
                         " where rolname = $1", (role,)).item()
    grant_production_account(db, role, precreated_schemas=schemas == "pre-created-schemas")

    first = cli("run", "--json", "--dsn", etl.libpq_uri(), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    if schemas == "create-on-database":
        sql(db, f"revoke create on database {quote_ident(db.dbname)} from {quote_ident(role)}")
    add_order(db, "source2", customer_email="late@buyer.example")
    second = cli("run", "--json", "--dsn", keyword_dsn(etl.params), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["dwh"]["f_order"]["inserted"] == 1
    full = cli("run", "--full", "--json", "--dsn", etl.libpq_uri(), cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    assert all(json.loads(full.stdout)["marts"][m]["rows_inserted"] == 0 for m in MARTS)

    not_owned = query(
        db,
        "select count(*) from pg_class as c inner join pg_namespace as n"
        " on n.oid = c.relnamespace where n.nspname in ('craftmart', 'dwh', 'marts')"
        " and c.relowner <> $1::regrole",
        (role,),
    ).item()
    assert not_owned == 0
    assert query(db, "select count(*) from dwh.f_order").item() == 5

    done = cli("grant-reader", reader, "--dsn", etl.libpq_uri(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_reads_marts_only(db, reader, role)
