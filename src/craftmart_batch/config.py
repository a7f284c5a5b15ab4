"""Settings: built-in defaults < config.toml < environment < flags, in one typed object."""

from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ._sizes import parse_size
from .errors import CraftmartError

logger = logging.getLogger(__name__)

#: The canonical order row every source maps to (SPEC §1), with the kind of value each holds.
CANONICAL_FIELDS: dict[str, str] = {
    "order_created_date": "date",
    "order_completion_date": "date",
    "order_status": "text",
    "craftsman_name": "text",
    "craftsman_address": "text",
    "craftsman_birthday": "date",
    "craftsman_email": "text",
    "product_name": "text",
    "product_description": "text",
    "product_type": "text",
    "product_price": "integer",
    "customer_name": "text",
    "customer_address": "text",
    "customer_birthday": "date",
    "customer_email": "text",
}

ORDER_TABLE_ALIAS = "o"

#: How a run learns which rows of a source changed (``[sources.NAME] changes``).
HASH = "hash"  # every row's hash compared with the stored one
LOGICAL = "logical"  # the source server's logical decoding (a replication slot)
CHANGE_MODES = (HASH, LOGICAL)

#: Where a run's partitions are computed (``run.engine``).
LOCAL = "local"  # in the craftmart-batch process
RAY = "ray"  # as Ray tasks (the ``ray`` extra)
ENGINES = (LOCAL, RAY)


@dataclass(frozen=True)
class Join:
    """A table joined to each order row; a missing joined row makes the order invalid."""

    name: str
    table: str
    on: tuple[tuple[str, str], ...]  # (left "alias.column", joined column)


@dataclass(frozen=True)
class Source:
    """One registered source: where its orders are and which column is which field."""

    name: str
    rank: int
    schema: str
    table: str
    key: str
    joins: tuple[Join, ...]
    columns: tuple[tuple[str, str, str], ...]  # (canonical field, alias, column)
    #: libpq connection string of the source's own database; None: the warehouse's
    dsn: str | None = None
    #: an environment variable holding the password of ``dsn`` (when it has none)
    password_env: str | None = None
    #: HASH or LOGICAL
    changes: str = HASH
    #: LOGICAL: a source not ready for it is read as HASH, with a warning, not refused
    fallback_to_hash: bool = False
    #: LOGICAL: the replication slot's name on the source server
    slot: str = ""

    @property
    def shares_warehouse(self) -> bool:
        """Its tables are in the warehouse's own database."""
        return self.dsn is None

    def column_of(self, canonical: str) -> tuple[str, str]:
        for name, alias, column in self.columns:
            if name == canonical:
                return alias, column
        raise KeyError(canonical)

    def table_of(self, alias: str) -> str:
        if alias == ORDER_TABLE_ALIAS:
            return self.table
        return next(j.table for j in self.joins if j.name == alias)


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, resolved from every layer."""

    dsn: str | None
    data_dir: Path
    embedded_dbname: str
    wait_for_lock: bool
    statement_timeout: str
    sources: tuple[Source, ...]
    config_file: Path | None = None
    source_order: tuple[str, ...] = field(default=())
    #: partitions of a run's work; 0: as many as ``memory_budget`` needs
    partitions: int = 0
    #: bytes the run process may use at its peak (automatic partitioning)
    memory_budget: int = 2 * 2**30
    #: where partitions are computed: LOCAL (this process) or RAY (Ray tasks)
    engine: str = LOCAL
    #: the Ray cluster (``ray start --head`` prints it); empty: a Ray started for the run
    ray_address: str = ""
    #: how often Ray runs a partition's task again when its worker or node is lost
    ray_task_retries: int = 3
    #: the warehouse over a Citus cluster: "auto" (when the extension is there), "on", "off"
    citus: str = "auto"

    def source(self, name: str) -> Source:
        for source in self.sources:
            if source.name == name:
                return source
        raise CraftmartError(f"unknown source {name!r}; registered: "
                             f"{', '.join(s.name for s in self.sources)}")


_TOP_KEYS = {"database", "run", "sources"}
_DATABASE_KEYS: dict[str, type] = {
    "dsn": str, "data_dir": str, "embedded_dbname": str, "citus": str,
}
_RUN_KEYS: dict[str, type] = {
    "wait_for_lock": bool, "statement_timeout": str, "partitions": int, "memory_budget": str,
    "engine": str, "ray_address": str, "ray_task_retries": int,
}
_SOURCE_KEYS: dict[str, type] = {
    "schema": str, "table": str, "key": str, "enabled": bool, "join": list, "columns": dict,
    "dsn": str, "password_env": str, "changes": str, "fallback_to_hash": bool, "slot": str,
}
_JOIN_KEYS: dict[str, type] = {"name": str, "table": str, "on": dict}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise CraftmartError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CraftmartError(f"{path}: malformed TOML: {exc}") from None
    except OSError as exc:
        raise CraftmartError(f"cannot read config file {path}: {exc.strerror}") from None


def _check_table(where: str, table: dict[str, Any], allowed: dict[str, type]) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise CraftmartError(f"{where}: unknown key {key!r}")
        expected = allowed[key]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise CraftmartError(
                f"{where}.{key} must be a {_TYPE_NAMES[expected]}, not {type(value).__name__}"
            )


_TYPE_NAMES = {
    str: "string", int: "integer", bool: "boolean", list: "array of tables", dict: "table",
}


def _check_layer(label: str, doc: dict[str, Any]) -> None:
    for key in doc:
        if key not in _TOP_KEYS:
            raise CraftmartError(f"{label}: unknown key {key!r}")
    for section, allowed in (("database", _DATABASE_KEYS), ("run", _RUN_KEYS)):
        value = doc.get(section, {})
        if not isinstance(value, dict):
            raise CraftmartError(f"{label}: [{section}] must be a table")
        _check_table(f"{label}: {section}", value, allowed)
    sources = doc.get("sources", {})
    if not isinstance(sources, dict):
        raise CraftmartError(f"{label}: [sources] must be a table of sources")
    for name, body in sources.items():
        where = f"{label}: sources.{name}"
        if not isinstance(body, dict):
            raise CraftmartError(f"{where} must be a table")
        _check_table(where, body, _SOURCE_KEYS)
        for i, join in enumerate(body.get("join", [])):
            if not isinstance(join, dict):
                raise CraftmartError(f"{where}.join[{i}] must be a table")
            _check_table(f"{where}.join[{i}]", join, _JOIN_KEYS)
            for part in ("name", "table", "on"):
                if part not in join:
                    raise CraftmartError(f"{where}.join[{i}]: missing key {part!r}")
            for left, right in join["on"].items():
                if not isinstance(right, str):
                    raise CraftmartError(f"{where}.join[{i}].on.{left} must be a string")
        if body.get("changes", HASH) not in CHANGE_MODES:
            raise CraftmartError(f"{where}.changes must be one of "
                                 f"{', '.join(map(repr, CHANGE_MODES))}, not {body['changes']!r}")
        for canonical, column in body.get("columns", {}).items():
            if canonical not in CANONICAL_FIELDS:
                raise CraftmartError(f"{where}.columns: unknown canonical field {canonical!r}")
            if not isinstance(column, str):
                raise CraftmartError(f"{where}.columns.{canonical} must be a string")


def _build_source(label: str, name: str, body: dict[str, Any], rank: int) -> Source:
    where = f"{label}: sources.{name}"
    for part in ("schema", "table", "key"):
        if part not in body:
            raise CraftmartError(f"{where}: missing key {part!r}")
    joins: list[Join] = []
    aliases = {ORDER_TABLE_ALIAS}
    for raw in body.get("join", []):
        alias = raw["name"]
        if alias in aliases:
            raise CraftmartError(f"{where}: join name {alias!r} is used twice "
                                 f"(or is the reserved order-table alias {ORDER_TABLE_ALIAS!r})")
        on = []
        for left, right in raw["on"].items():
            left_alias, _, left_col = left.rpartition(".")
            left_alias = left_alias or ORDER_TABLE_ALIAS
            if left_alias not in aliases:
                raise CraftmartError(f"{where}: join {alias!r} refers to unknown alias "
                                     f"{left_alias!r}")
            on.append((f"{left_alias}.{left_col}", right))
        if not on:
            raise CraftmartError(f"{where}: join {alias!r} needs at least one `on` column")
        joins.append(Join(alias, raw["table"], tuple(on)))
        aliases.add(alias)
    mapped = body.get("columns", {})
    columns = []
    for canonical in CANONICAL_FIELDS:
        ref = mapped.get(canonical, canonical)
        alias, _, column = ref.rpartition(".")
        alias = alias or ORDER_TABLE_ALIAS
        if alias not in aliases:
            raise CraftmartError(f"{where}.columns.{canonical}: unknown alias {alias!r}")
        columns.append((canonical, alias, column))
    slot = body.get("slot") or ("craftmart_" + re.sub(r"[^a-z0-9_]", "_", name.lower()))[:63]
    if not _SLOT_NAME.fullmatch(slot):
        raise CraftmartError(f"{where}.slot: {slot!r} is not a replication slot name (lower-case"
                             " letters, digits and underscores, at most 63)")
    return Source(
        name, rank, body["schema"], body["table"], body["key"], tuple(joins), tuple(columns),
        dsn=body.get("dsn") or None, password_env=body.get("password_env") or None,
        changes=body.get("changes", HASH), fallback_to_hash=body.get("fallback_to_hash", False),
        slot=slot,
    )


_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


def default_config_text() -> str:
    """The built-in defaults, as the TOML shipped in the package."""
    return resources.files("craftmart_batch").joinpath("defaults.toml").read_text("utf-8")


def find_config_file(flag: Path | None) -> Path | None:
    """``--config``, else ``$CRAFTMART_CONFIG``, else ``./config.toml`` if it exists."""
    if flag is not None:
        return flag
    env = os.environ.get("CRAFTMART_CONFIG")
    if env:
        return Path(env)
    local = Path("config.toml")
    return local if local.is_file() else None


def load_settings(
    config: Path | None = None,
    *,
    dsn: str | None = None,
    wait_for_lock: bool | None = None,
    partitions: int | None = None,
    memory_budget: str | None = None,
    engine: str | None = None,
    ray_address: str | None = None,
) -> Settings:
    """Resolve settings from every layer; raise ``CraftmartError`` naming a bad key."""
    defaults = tomllib.loads(default_config_text())
    _check_layer("built-in defaults", defaults)
    layers: list[tuple[str, dict[str, Any]]] = [("built-in defaults", defaults)]
    config_file = find_config_file(config)
    if config_file is not None:
        doc = _read_toml(config_file)
        _check_layer(str(config_file), doc)
        layers.append((str(config_file), doc))

    database: dict[str, Any] = {}
    run: dict[str, Any] = {}
    raw_sources: dict[str, tuple[str, dict[str, Any]]] = {}
    for label, doc in layers:
        database.update(doc.get("database", {}))
        run.update(doc.get("run", {}))
        for name, body in doc.get("sources", {}).items():
            # a later layer replaces the keys it names (a `join` list or `columns` table
            # as a whole); the others stay, so `[sources.source1] dsn = "..."` is enough
            _, earlier = raw_sources.get(name, (label, {}))
            raw_sources[name] = (label, {**earlier, **body})

    env_data_dir = os.environ.get("CRAFTMART_DATA_DIR")
    if env_data_dir:
        database["data_dir"] = env_data_dir
    env_dsn = os.environ.get("CRAFTMART_DSN")
    if env_dsn:
        database["dsn"] = env_dsn
    if dsn is not None:
        database["dsn"] = dsn
    if wait_for_lock is not None:
        run["wait_for_lock"] = wait_for_lock
    if partitions is not None:
        run["partitions"] = partitions
    if memory_budget is not None:
        run["memory_budget"] = memory_budget
    if engine is not None:
        run["engine"] = engine
    if ray_address is not None:
        run["ray_address"] = ray_address
    if run["engine"] not in ENGINES:
        raise CraftmartError(f"run.engine must be one of {', '.join(map(repr, ENGINES))},"
                             f" not {run['engine']!r}")
    if run["ray_task_retries"] < 0:
        raise CraftmartError(
            f"run.ray_task_retries must be 0 or more, not {run['ray_task_retries']}")
    if run["partitions"] < 0:
        raise CraftmartError(
            f"run.partitions must be 0 (automatic) or more, not {run['partitions']}")
    try:
        budget = parse_size(run["memory_budget"])
    except ValueError as exc:
        raise CraftmartError(f"run.memory_budget: {exc}") from None

    citus = database.get("citus", "auto")
    if citus not in ("auto", "on", "off"):
        raise CraftmartError(f"database.citus must be \"auto\", \"on\" or \"off\", not {citus!r}")

    sources = []
    for rank, (name, (label, body)) in enumerate(raw_sources.items(), start=1):
        if body.get("enabled", True):
            sources.append(_build_source(label, name, body, rank))
    if not sources:
        raise CraftmartError("no source is enabled: register at least one [sources.NAME]")

    return Settings(
        dsn=database.get("dsn") or None,
        data_dir=Path(database["data_dir"]),
        embedded_dbname=database["embedded_dbname"],
        wait_for_lock=bool(run["wait_for_lock"]),
        statement_timeout=run["statement_timeout"],
        sources=tuple(sources),
        config_file=config_file,
        source_order=tuple(raw_sources),
        partitions=int(run["partitions"]),
        memory_budget=budget,
        engine=run["engine"],
        ray_address=run["ray_address"],
        ray_task_retries=int(run["ray_task_retries"]),
        citus=citus,
    )
