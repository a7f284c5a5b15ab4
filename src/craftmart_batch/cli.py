"""The ``craftmart-batch`` command: options -> one core call -> print -> exit code."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .errors import CraftmartError, ExitCode

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="craftmart-batch",
    help="Build the craft marketplace's warehouse from its order sources and keep its "
    "marts incrementally fresh.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DsnOption = Annotated[
    str | None,
    typer.Option("--dsn", help="libpq connection string or URI (default: $CRAFTMART_DSN, "
                 "config.toml, else the embedded server).", show_default=False),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="config.toml to use (default: $CRAFTMART_CONFIG, "
                 "else ./config.toml if present).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")]


def _version(value: bool) -> None:
    if value:
        print(f"craftmart-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _Progress(enabled: bool = True, banner: str | None = None) -> Any:
    """Run stages on stderr: a spinner on a terminal, plain lines otherwise."""
    from ._progress import StageProgress

    return StageProgress(enabled=enabled, banner=banner)


def _settings(
    config: Path | None, dsn: str | None, wait: bool | None = None, *,
    partitions: int | None = None, memory_budget: str | None = None,
    engine: str | None = None, ray_address: str | None = None,
) -> Any:
    from .config import load_settings

    return load_settings(config, dsn=dsn, wait_for_lock=wait, partitions=partitions,
                         memory_budget=memory_budget, engine=engine, ray_address=ray_address)


def _database(settings: Any) -> Any:
    from ._database import resolve

    return resolve(settings.dsn, settings.data_dir, settings.embedded_dbname)


@app.command()
def run(
    dsn: DsnOption = None,
    config: ConfigOption = None,
    full: Annotated[bool, typer.Option("--full", help="Rebuild the marts from the DWH.")] = False,
    wait: Annotated[
        bool | None,
        typer.Option("--wait/--no-wait", help="Wait for another run's lock instead of exiting 3.",
                     show_default=False),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option("--partitions", min=0, show_default=False,
                     help="Partitions of the run's work (0: as the memory budget needs)."),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option("--memory-budget", show_default=False,
                     help="Peak memory of the run, e.g. 700MB or 1.5GB (default 2GB)."),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", show_default=False,
                     help="Where partitions are computed: local (default) or ray."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", show_default=False,
                     help="The Ray cluster for --engine ray (default: one started here)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Load every registered source into the DWH and refresh both marts."""
    from . import pipeline, report

    settings = _settings(config, dsn, wait, partitions=partitions,
                         memory_budget=memory_budget, engine=engine, ray_address=ray_address)
    db = _database(settings)
    progress = _Progress(enabled=not as_json, banner=f"craftmart-batch run on {db.display()}")
    try:
        result = pipeline.run(settings, db, full=full, progress=progress)
    finally:
        progress.done()
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        print(report.run_summary(result))


@app.command()
def generate(
    dsn: DsnOption = None,
    config: ConfigOption = None,
    orders: Annotated[
        int | None, typer.Option("--orders", help="Fill the sources with N orders.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same data).")] = 42,
    changes: Annotated[
        int | None, typer.Option("--changes", help="Apply K realistic changes to the sources.")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Empty the sources before generating.")
    ] = False,
    shape: Annotated[
        str, typer.Option("--shape", help="Width of the text columns: real (descriptions of "
                          "300-600 characters, full street addresses) or narrow (short "
                          "texts, for quick tests).")
    ] = "real",
) -> None:
    """Create the four source schemas and fill them, or change them, with synthetic orders."""
    from . import synthetic as gen
    from ._database import connection

    if (orders is None) == (changes is None):
        raise CraftmartError("give exactly one of --orders N or --changes K")
    try:
        row_shape = gen.check_shape(shape)
    except ValueError as exc:
        raise CraftmartError(f"--shape: {exc}") from None
    count = orders if orders is not None else changes
    if count is None or count <= 0:
        raise CraftmartError(f"{'--orders' if orders is not None else '--changes'} must be a "
                             f"positive number, got {count}")
    settings = _settings(config, dsn)
    db = _database(settings)
    summary: object
    with connection(db) as conn:
        if orders is not None:
            summary = gen.generate(conn, orders, seed, replace=replace, shape=row_shape,
                                   progress=_generate_progress())
        else:
            summary = gen.apply_changes(conn, count, seed, shape=row_shape)
        conn.commit()
    print(summary)


def _generate_progress() -> Any:
    """Generation progress on stderr: a bar on a terminal, a line per quarter otherwise."""
    from ._progress import GenerateProgress

    return GenerateProgress()


@app.command()
def demo(
    orders: Annotated[int, typer.Option("--orders", help="Orders to generate.")] = 20_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    config: ConfigOption = None,
) -> None:
    """On the embedded server: generate sources, build the warehouse, show the marts."""
    from . import pipeline, report
    from . import synthetic as gen
    from ._database import connection

    if orders <= 0:
        raise CraftmartError(f"--orders must be a positive number, got {orders}")
    settings = _settings(config, None)
    db = _database(settings)
    print(f"craftmart-batch demo on {db.display()}", file=sys.stderr)
    print(f"generating {orders:,} orders (seed {seed}) ...", file=sys.stderr)
    with connection(db) as conn:
        gen.generate(conn, orders, seed, replace=True, progress=_generate_progress())
        conn.commit()
    progress = _Progress()
    try:
        result = pipeline.run(settings, db, full=False, progress=progress)
    finally:
        progress.done()
    print(report.run_summary(result))
    print()
    print(report.marts_summary(db))


@app.command()
def quarantine(
    dsn: DsnOption = None,
    config: ConfigOption = None,
    source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
    rule: Annotated[
        str | None, typer.Option("--rule", help="Only rows breaking this rule.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Rows to show (0: all).")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Show source rows that broke a validity rule, with their raw values."""
    from . import report

    settings = _settings(config, dsn)
    db = _database(settings)
    print(report.quarantine_listing(db, source=source, rule=rule, limit=limit, as_json=as_json))


@app.command()
def status(
    dsn: DsnOption = None,
    config: ConfigOption = None,
    max_age: Annotated[
        str | None,
        typer.Option("--max-age", help="Exit 1 when a mart was last refreshed longer ago than "
                     "this (90s, 15m, 2h, 1d) or never.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Freshness of each mart, the last run, and what is in quarantine."""
    from . import report

    age = report.parse_age(max_age) if max_age is not None else None
    settings = _settings(config, dsn)
    db = _database(settings)
    state = report.read_status(db, max_age=age)
    print(state.render(as_json=as_json))
    if state.stale():
        raise CraftmartError(state.stale_message(), ExitCode.STALE)


@app.command()
def history(
    dsn: DsnOption = None,
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option("--limit", help="Runs to show (0: all).")] = 10,
    as_json: JsonOption = False,
) -> None:
    """The last runs: start, duration, mode, outcome, rows changed, seconds per stage."""
    from . import report

    settings = _settings(config, dsn)
    db = _database(settings)
    print(report.history(db, limit=limit, as_json=as_json))


@app.command()
def docs(
    dsn: DsnOption = None,
    config: ConfigOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the Markdown here instead of stdout.",
                     show_default=False),
    ] = None,
) -> None:
    """A Markdown data dictionary of dwh, marts and craftmart from the database's comments."""
    from . import dictionary

    settings = _settings(config, dsn)
    db = _database(settings)
    text = dictionary.data_dictionary(db)
    if out is None:
        print(text, end="")
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CraftmartError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}", file=sys.stderr)


@app.command("report")
def report_(
    dsn: DsnOption = None,
    config: ConfigOption = None,
    out: Annotated[Path, typer.Option("--out", help="The HTML page to write.")] = Path(
        "report.html"
    ),
    notebook: Annotated[
        Path | None,
        typer.Option("--notebook", help="The notebook to run (default: "
                     "notebooks/marts_check.ipynb).", show_default=False),
    ] = None,
    timeout: Annotated[
        int, typer.Option("--timeout", help="Seconds a notebook cell may take.")
    ] = 600,
) -> None:
    """Run the marts-check notebook and export it as one self-contained HTML page."""
    from . import notebook as nb

    path = nb.find_notebook(notebook)
    settings = _settings(config, dsn)
    db = _database(settings)
    print(f"running {path.name} on {db.display()} ...", file=sys.stderr, flush=True)
    charts = nb.write_report(path, db, out, config=settings.config_file, timeout=timeout)
    print(f"wrote {out} ({charts} charts)", file=sys.stderr)


@app.command("distribute")
def distribute(
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Move a warehouse built on plain PostgreSQL onto the Citus cluster its database is
    on: distributed and reference tables, rows moved to the shards, in one transaction."""
    from . import citus

    settings = _settings(config, dsn)
    db = _database(settings)
    done = citus.move(settings, db)
    if done:
        print(f"{db.display()}: laid out over the Citus cluster: {', '.join(done)}")
    else:
        print(f"{db.display()}: already laid out over the Citus cluster; nothing to do")


@app.command("grant-reader")
def grant_reader(
    role: Annotated[str, typer.Argument(help="The role that may read the marts.",
                                        metavar="ROLE", show_default=False)],
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Let ROLE read the marts (and future mart tables) and nothing else."""
    from .grants import grant_reader as grant

    settings = _settings(config, dsn)
    db = _database(settings)
    result = grant(db, role)
    print(f"{role} can now read schema marts ({', '.join(result.tables) or 'no tables yet'}),"
          " including mart tables added later; nothing else")


sources_app = typer.Typer(
    help="The sources: get them ready for logical change capture.", no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(sources_app, name="sources")


@sources_app.command("setup")
def sources_setup(
    name: Annotated[str | None, typer.Argument(
        help="The source to set up (default: every source with changes = \"logical\").",
        metavar="[NAME]", show_default=False)] = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
    print_sql: Annotated[bool, typer.Option(
        "--print", help="Print the SQL for a DBA instead of running it.")] = False,
) -> None:
    """Create what logical change capture needs on a source's server: replica identities
    that log the order key and the joined columns, and the replication slot."""
    from .config import LOGICAL
    from .extract import capture, servers

    settings = _settings(config, dsn)
    if name is not None:
        chosen = [settings.source(name)]
        if chosen[0].changes != LOGICAL:
            raise CraftmartError(f"source {name!r} finds its changes by hash: set [sources.{name}]"
                                 ' changes = "logical" in config.toml first')
    else:
        chosen = [s for s in settings.sources if s.changes == LOGICAL]
        if not chosen:
            raise CraftmartError('no source has changes = "logical" in config.toml')
    for source in chosen:
        # the embedded server is started only for a source that lives in it
        source_db = servers.database_of(source, None) or _database(settings)
        statements = capture.setup(source_db, source, apply=not print_sql)
        if print_sql:
            print(f"-- source {source.name}")
            print("\n".join(statements) if statements else "-- ready: nothing to do")
        else:
            done = f"{len(statements)} statement(s) run" if statements else "already ready"
            print(f"source {source.name}: ready for logical change capture ({done})")


def main() -> None:
    """Entry point: user errors are one line on stderr and a named exit code."""
    from . import _signals

    try:
        with _signals.stop_signals_interrupt():
            returned = app(standalone_mode=False)
        # Outside standalone mode typer returns an exit code instead of raising: 130 for
        # a KeyboardInterrupt it caught, the code of an explicit typer.Exit.
        if returned == 130:
            raise KeyboardInterrupt
        if isinstance(returned, int) and returned:
            sys.exit(returned)
    except CraftmartError as exc:
        print(f"craftmart-batch: error: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        # the command ends for this signal: another one during the interpreter's own
        # teardown (Ray's shutdown, at exit) must not turn the exit code into a death
        # by SIGINT after the line below is printed
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        stop = _signals.received()
        print(f"craftmart-batch: interrupted{f' by {stop.name}' if stop else ''};"
              " nothing was committed", file=sys.stderr)
        sys.exit(_signals.exit_code())
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        message = exc.format_message()  # type: ignore[attr-defined]
        if message.startswith("Usage:"):  # no command given: the help is the answer
            print(message, file=sys.stderr)
        else:
            print(f"craftmart-batch: error: {message}", file=sys.stderr)
        sys.exit(int(ExitCode.CANNOT_START))
    sys.exit(int(ExitCode.OK))


def _is_usage_error(exc: BaseException) -> bool:
    """A bad command line, as the option parser reports it (its classes are internal)."""
    return type(exc).__name__ in {"UsageError", "BadParameter", "NoSuchOption", "MissingParameter",
                                  "BadOptionUsage", "BadArgumentUsage"} or (
        hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2
    )


if __name__ == "__main__":
    main()
