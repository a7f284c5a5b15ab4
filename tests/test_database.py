"""Connection strings and the test databases the fixtures hand out."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from craftmart_batch._database import Database, connection, parse_dsn, redact
from craftmart_batch.errors import CraftmartError


def test_keyword_dsn_unquotes_values_and_keeps_a_socket_host() -> None:
    """Keyword/value DSNs: quoted values keep spaces, backslash escapes a quote."""
    dsn = (
        "host=/var/run/postgresql port=5433 dbname = 'craft mart'"
        r" user=alice password='s3 cr\'et'"
    )
    assert parse_dsn(dsn) == {
        "host": "/var/run/postgresql",
        "port": "5433",
        "dbname": "craft mart",
        "user": "alice",
        "password": "s3 cr'et",
    }


def test_uri_dsn_decodes_percent_encoding_and_query_keywords() -> None:
    """URI DSNs: user, password, database and query values are percent-decoded."""
    dsn = (
        "postgresql://al%40ice:p%40ss%3Aw%2Frd@db.example.com:6543/craft%20mart"
        "?sslmode=require&application_name=craft%20batch"
    )
    assert parse_dsn(dsn) == {
        "user": "al@ice",
        "password": "p@ss:w/rd",
        "host": "db.example.com",
        "port": "6543",
        "dbname": "craft mart",
        "sslmode": "require",
        "application_name": "craft batch",
    }


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql:///shop?host=/var/run/postgresql&port=5433",
            {"dbname": "shop", "host": "/var/run/postgresql", "port": "5433"},
        ),
        ("postgres://%2Ftmp%2Fpg/shop", {"host": "/tmp/pg", "dbname": "shop"}),
        ("postgresql://[::1]:5432/db", {"host": "::1", "port": "5432", "dbname": "db"}),
    ],
)
def test_uri_dsn_accepts_socket_and_ipv6_hosts(dsn: str, expected: dict[str, str]) -> None:
    """A socket directory may come as ?host= or percent-encoded; IPv6 in brackets."""
    assert parse_dsn(dsn) == expected


def test_malformed_dsn_is_a_user_error_without_the_password() -> None:
    """An unterminated quote is reported by keyword, never by value."""
    with pytest.raises(CraftmartError) as caught:
        parse_dsn("host=db password='hunter2")
    assert "password" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_libpq_uri_round_trips_through_parse_dsn() -> None:
    """The URI handed to libpq parses back to the same keywords, special characters included."""
    params = {
        "host": "/tmp/pg sock",
        "port": "5433",
        "user": "al@ice",
        "password": "p@ss w:rd/",
        "dbname": "craft mart",
    }
    assert parse_dsn(Database(params).libpq_uri()) == params


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host=db password=hunter2 dbname=shop", "host=db password=*** dbname=shop"),
        ("host=db password = 'hunter 2' dbname=shop", "host=db password = *** dbname=shop"),
        ("postgresql://alice:hunter2@db:5432/shop", "postgresql://alice:***@db:5432/shop"),
        ("at postgres://:hunter2@db/shop: refused", "at postgres://:***@db/shop: refused"),
    ],
)
def test_redact_hides_passwords_in_both_forms(text: str, expected: str) -> None:
    """Keyword and URI passwords become ***; the rest of the text stays readable."""
    assert redact(text) == expected


def test_redact_hides_a_password_given_as_a_uri_query_keyword() -> None:
    assert "hunter2" not in redact("postgresql://db/shop?password=hunter2&sslmode=require")


def test_db_fixture_gives_an_empty_database_that_takes_a_table(db: Database) -> None:
    """The database is the one named, holds no user relations, and accepts DDL and rows."""
    with connection(db) as conn:
        cur = conn.cursor()
        cur.execute(
            "select current_database(), count(c.oid)"
            " from pg_class as c"
            " inner join pg_namespace as n on n.oid = c.relnamespace"
            " where n.nspname not in ('pg_catalog', 'information_schema')"
            " and n.nspname not like 'pg\\_toast%'"
        )
        assert cur.fetchone() == (db.dbname, 0)
        cur.execute("create table probe (probe_id bigint primary key, label text not null)")
        cur.execute("insert into probe values (1, 'first'), (2, 'second')")
        conn.commit()
        cur.execute("select probe_id, label from probe order by probe_id")
        assert cur.fetchall() == [(1, "first"), (2, "second")]
        cur.close()


def test_two_test_databases_are_distinct(db: Database, make_db: Callable[[], Database]) -> None:
    """A table created in one test database is not visible in another."""
    other = make_db()
    assert other.dbname != db.dbname
    with connection(db) as conn:
        cur = conn.cursor()
        cur.execute("create table only_here (only_here_id bigint)")
        conn.commit()
        cur.close()
    with connection(other) as conn:
        cur = conn.cursor()
        cur.execute("select current_database(), to_regclass('only_here') is null")
        assert cur.fetchone() == (other.dbname, True)
        cur.close()


def test_server_is_a_supported_postgresql(pg_server: Database) -> None:
    """The suite runs against PostgreSQL 15 through 18 (SPEC §7)."""
    with connection(pg_server) as conn:
        cur = conn.cursor()
        cur.execute("select current_setting('server_version_num')::int / 10000")
        (major,) = cur.fetchone()
        cur.close()
    assert 15 <= major <= 18


def test_a_statement_run_for_its_effect_raises_what_its_query_raises(db: Database) -> None:
    """The driver streams a query's rows, and an error raised while the server produces
    them comes with the rows: ``execute`` reads them, so a SELECT run for its effect
    (a lock, a setting, a replication slot) fails when it fails, and takes effect when
    it succeeds."""
    from craftmart_batch._sql import execute, fetch_value

    with connection(db, autocommit=True) as conn:
        execute(conn, "select set_config('statement_timeout', '50ms', false)")
        assert fetch_value(conn, "select current_setting('statement_timeout')") == "50ms"
        with pytest.raises(Exception, match="statement timeout"):
            execute(conn, "select pg_sleep(0.5)")
        with pytest.raises(Exception, match="division by zero"):
            execute(conn, "select x / 0 from generate_series(1, 3) as x")
