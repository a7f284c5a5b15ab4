"""Settings layers: defaults < config.toml < environment < flags; bad keys named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from craftmart_batch.config import CANONICAL_FIELDS, load_settings
from craftmart_batch.errors import CraftmartError

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("CRAFTMART_DSN", "CRAFTMART_CONFIG", "CRAFTMART_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_register_the_four_sources_in_rank_order() -> None:
    """With no file at all, the four sources are registered, ranked as the contract says."""
    settings = load_settings(None)
    assert [(s.name, s.rank) for s in settings.sources] == [
        ("source1", 1), ("source2", 2), ("source3", 3), ("external_source", 4),
    ]
    assert settings.dsn is None
    assert settings.config_file is None
    source3 = settings.source("source3")
    assert source3.column_of("customer_email") == ("customer", "customer_email")
    assert source3.column_of("order_status") == ("o", "order_status")
    assert len(source3.columns) == len(CANONICAL_FIELDS)


def test_repo_config_toml_equals_the_builtin_defaults() -> None:
    """The documented config.toml at the repository root says exactly the defaults."""
    assert load_settings(REPO_CONFIG).sources == load_settings(None).sources
    documented = load_settings(REPO_CONFIG)
    builtin = load_settings(None)
    assert (documented.dsn, documented.data_dir, documented.wait_for_lock) == (
        builtin.dsn, builtin.data_dir, builtin.wait_for_lock,
    )


def test_layers_config_then_environment_then_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.toml overrides defaults, $CRAFTMART_DSN overrides config, --dsn overrides both."""
    config = write(tmp_path, '[database]\ndsn = "host=from-config"\n[run]\nwait_for_lock = true\n')
    assert load_settings(config).dsn == "host=from-config"
    assert load_settings(config).wait_for_lock is True
    monkeypatch.setenv("CRAFTMART_DSN", "host=from-env")
    assert load_settings(config).dsn == "host=from-env"
    assert load_settings(config, dsn="host=from-flag").dsn == "host=from-flag"
    assert load_settings(config, wait_for_lock=False).wait_for_lock is False


def test_config_found_in_current_directory_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./config.toml is used when present; $CRAFTMART_CONFIG names another file."""
    write(tmp_path, '[database]\ndata_dir = "here"\n')
    assert load_settings(None).data_dir == Path("here")
    other = tmp_path / "other.toml"
    other.write_text('[database]\ndata_dir = "there"\n')
    monkeypatch.setenv("CRAFTMART_CONFIG", str(other))
    assert load_settings(None).data_dir == Path("there")


def test_new_source_ranks_after_the_defaults(tmp_path: Path) -> None:
    """A source added by config.toml comes after external_source; a default can be disabled."""
    config = write(
        tmp_path,
        """
[sources.source4]
schema = "shop"
table = "orders"
key = "id"
[sources.source4.columns]
customer_email = "buyer_mail"

[sources.source2]
schema = "source2"
table = "x"
key = "order_id"
enabled = false
""",
    )
    settings = load_settings(config)
    assert [s.name for s in settings.sources] == [
        "source1", "source3", "external_source", "source4",
    ]
    source4 = settings.source("source4")
    assert source4.rank == 5
    assert source4.column_of("customer_email") == ("o", "buyer_mail")
    assert source4.column_of("product_price") == ("o", "product_price")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[database]\ndsnn = 'x'\n", "unknown key 'dsnn'"),
        ("[databse]\n", "unknown key 'databse'"),
        ("[run]\nwait_for_lock = 'yes'\n", "run.wait_for_lock must be a boolean"),
        ("[database]\ndsn = 5\n", "database.dsn must be a string"),
        ("[sources.s]\nschema = 's'\ntable = 't'\n", "sources.s: missing key 'key'"),
        ("[sources.s]\nschema='s'\ntable='t'\nkey='k'\n[sources.s.columns]\nemail='e'\n",
         "unknown canonical field 'email'"),
        ("[sources.s]\nschema='s'\ntable='t'\nkey='k'\n[sources.s.columns]\n"
         "customer_email='nope.e'\n", "unknown alias 'nope'"),
        ("[database\n", "malformed TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    """A malformed file, an unknown key or a wrong type: one line that names it."""
    config = write(tmp_path, text)
    with pytest.raises(CraftmartError) as caught:
        load_settings(config)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    """--config pointing nowhere is a clear error, not a silent fallback to defaults."""
    with pytest.raises(CraftmartError, match="config file not found"):
        load_settings(tmp_path / "absent.toml")


def test_a_partial_source_section_overrides_only_the_keys_it_names(tmp_path: Path) -> None:
    """`[sources.source2] dsn = ...` moves source2 to its own server and keeps the
    built-in mapping (its join and columns); another layer's keys stay too."""
    config = write(tmp_path, """
[sources.source2]
dsn = "host=shop.example dbname=shop user=etl"
changes = "logical"
password_env = "SHOP_PW"
""")
    settings = load_settings(config)
    built_in = load_settings(None).source("source2")
    source2 = settings.source("source2")
    assert (source2.schema, source2.table, source2.key) == (
        built_in.schema, built_in.table, built_in.key)
    assert source2.joins == built_in.joins and source2.columns == built_in.columns
    assert source2.dsn == "host=shop.example dbname=shop user=etl"
    assert (source2.changes, source2.password_env, source2.slot) == (
        "logical", "SHOP_PW", "craftmart_source2")
    assert not source2.shares_warehouse
    assert settings.source("source1").shares_warehouse
    assert settings.source("source1").changes == "hash"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sources.source1]\nchanges = "cdc"\n',
         "sources.source1.changes must be one of 'hash', 'logical', not 'cdc'"),
        ('[sources.source1]\nslot = "Bad-Name"\n',
         "sources.source1.slot: 'Bad-Name' is not a replication slot name"),
        ('[sources.source1]\nfallback_to_hash = "yes"\n',
         "sources.source1.fallback_to_hash must be a boolean"),
    ],
)
def test_bad_capture_settings_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CraftmartError) as caught:
        load_settings(write(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
