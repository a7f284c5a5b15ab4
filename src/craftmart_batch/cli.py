"""The ``craftmart-batch`` command: options -> one core call -> print -> exit code."""

from __future__ import annotations

import json
import logging
import sys
import time
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


class _Progress:
    """Stage lines on stderr, each closed with its duration.

    The banner waits for the first stage, so a run that cannot start (unreachable
    database, broken source) prints nothing but its one error line.
    """

    def __init__(self, enabled: bool = True, banner: str | None = None) -> None:
        self.enabled = enabled
        self.banner = banner
        self.current: str | None = None
        self.started = 0.0

    def __call__(self, stage: str) -> None:
        self.done()
        if self.enabled and self.banner is not None:
            print(self.banner, file=sys.stderr, flush=True)
            self.banner = None
        self.current, self.started = stage, time.perf_counter()
        if self.enabled:
            print(f"  {stage} ...", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.current is not None and self.enabled:
            print(f" {time.perf_counter() - self.started:.1f}s", file=sys.stderr, flush=True)
        self.current = None


def _settings(config: Path | None, dsn: str | None, wait: bool | None = None) -> Any:
    from .config import load_settings

    return load_settings(config, dsn=dsn, wait_for_lock=wait)


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
    as_json: JsonOption = False,
) -> None:
    """Load every registered source into the DWH and refresh both marts."""
    from . import pipeline, report

    settings = _settings(config, dsn, wait)
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
) -> None:
    """Create the four source schemas and fill them, or change them, with synthetic orders."""
    from . import generate as gen
    from ._database import connection

    if (orders is None) == (changes is None):
        raise CraftmartError("give exactly one of --orders N or --changes K")
    count = orders if orders is not None else changes
    if count is None or count <= 0:
        raise CraftmartError(f"{'--orders' if orders is not None else '--changes'} must be a "
                             f"positive number, got {count}")
    settings = _settings(config, dsn)
    db = _database(settings)
    with connection(db) as conn:
        if orders is not None:
            summary = gen.generate(conn, orders, seed, replace=replace,
                                   progress=_generate_progress())
        else:
            summary = gen.apply_changes(conn, count, seed)
        conn.commit()
    print(summary)


def _generate_progress() -> Any:
    last: dict[str, int] = {}

    def progress(stage: str, fraction: float) -> None:
        step = int(fraction * 4)
        if last.get(stage) != step:
            last[stage] = step
            print(f"  {stage}: {fraction:.0%}", file=sys.stderr, flush=True)

    return progress


@app.command()
def demo(
    orders: Annotated[int, typer.Option("--orders", help="Orders to generate.")] = 20_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    config: ConfigOption = None,
) -> None:
    """On the embedded server: generate sources, build the warehouse, show the marts."""
    from . import generate as gen
    from . import pipeline, report
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
    rule: Annotated[str | None, typer.Option("--rule", help="Only rows breaking this rule.")] = None,
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
    as_json: JsonOption = False,
) -> None:
    """Freshness of each mart and what is in quarantine."""
    from . import report

    settings = _settings(config, dsn)
    db = _database(settings)
    print(report.status(db, as_json=as_json))


def main() -> None:
    """Entry point: user errors are one line on stderr and a named exit code."""
    try:
        app(standalone_mode=False)
    except CraftmartError as exc:
        print(f"craftmart-batch: error: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("craftmart-batch: interrupted; nothing was committed", file=sys.stderr)
        sys.exit(130)
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
