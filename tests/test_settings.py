"""DatabaseSettings: environment, .env, defaults, validation, password hiding."""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

import pytest

from dbkeel import ConfigurationError, DatabaseManager, DatabaseSettings
from dbkeel.settings import DEFAULT_SQLITE_URL, default_pool_size

SECRET = "s3cr3t-Pa55word"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DATABASE_*/ENVIRONMENT/APP_NAME from the outside, and no stray .env."""
    for name in list(os.environ):
        if name.startswith("DATABASE_") or name in {"ENVIRONMENT", "APP_NAME"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_reads_every_variable_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "DATABASE_URL": "postgresql+asyncpg://app@db:5432/app",
        "ENVIRONMENT": "production",
        "APP_NAME": "billing",
        "DATABASE_POOL_SIZE": "12",
        "DATABASE_MAX_OVERFLOW": "3",
        "DATABASE_POOL_TIMEOUT": "5.5",
        "DATABASE_POOL_RECYCLE": "600",
        "DATABASE_POOL_PRE_PING": "false",
        "DATABASE_POOL_USE_LIFO": "no",
        "DATABASE_COMMAND_TIMEOUT": "20",
        "DATABASE_STATEMENT_TIMEOUT": "15",
        "DATABASE_CONNECT_TIMEOUT": "4",
        "DATABASE_ECHO": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = DatabaseSettings()
    assert (s.database_url, s.environment, s.app_name) == (
        env["DATABASE_URL"],
        "production",
        "billing",
    )
    assert (s.pool_size, s.max_overflow, s.pool_timeout, s.pool_recycle) == (12, 3, 5.5, 600)
    assert s.pool_pre_ping is False and s.pool_use_lifo is False and s.echo is True
    assert (s.command_timeout, s.statement_timeout, s.connect_timeout) == (20, 15, 4)


def test_reads_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("APP_NAME=from-dotenv\nDATABASE_POOL_SIZE=7\nOTHER_APP_VAR=1\n")
    s = DatabaseSettings()
    assert s.app_name == "from-dotenv"
    assert s.pool_size == 7


def test_constructor_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "12")
    monkeypatch.setenv("APP_NAME", "env-name")
    s = DatabaseSettings(pool_size=3, app_name="arg-name")
    assert (s.pool_size, s.app_name) == (3, "arg-name")


def test_unprefixed_knob_names_in_the_environment_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only DATABASE_POOL_SIZE configures the pool; a generic POOL_SIZE belongs to someone else.
    monkeypatch.setenv("POOL_SIZE", "99")
    assert DatabaseSettings().pool_size == default_pool_size()


def test_defaults_follow_the_design() -> None:
    cpus = len(os.sched_getaffinity(0))
    s = DatabaseSettings()
    assert s.pool_size == max(4, min(40, cpus * 2))
    assert s.effective_max_overflow == s.pool_size // 2
    assert s.pool_timeout == 30
    assert s.pool_recycle == 3600
    assert s.app_name == "dbkeel"
    assert s.effective_pre_ping is False  # development
    prod = DatabaseSettings(environment="production", database_url="postgresql://h/db")
    assert prod.effective_pre_ping is True


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("DATABASE_POOL_SIZE", "0", ">= 1"),
        ("DATABASE_POOL_SIZE", "lots", "an integer"),
        ("ENVIRONMENT", "prod", "'test', 'development', 'production'"),
        ("DATABASE_POOL_PRE_PING", "maybe", "true or false"),
        ("DATABASE_POOL_TIMEOUT", "-1", "> 0"),
        ("DATABASE_ISOLATION_LEVEL", "SOMETIMES", "'AUTOCOMMIT'"),
    ],
)
def test_bad_value_names_variable_and_accepted_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, accepted: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings()
    message = str(info.value)
    assert variable in message
    assert repr(value) in message
    assert accepted in message


def test_password_never_in_repr_str_or_errors() -> None:
    url = f"postgresql+asyncpg://app:{SECRET}@db.internal:5432/app"
    s = DatabaseSettings(database_url=url)
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert SECRET not in s.masked_url
    assert SECRET not in repr(DatabaseManager(s))
    for bad in (f"postgresql+psycopg2://app:{SECRET}@db/app", f"not a url :// {SECRET}"):
        with pytest.raises(ConfigurationError) as info:
            DatabaseSettings(database_url=bad)
        # the whole printed traceback, chained exceptions included
        assert SECRET not in "".join(traceback.format_exception(info.value))


def test_url_without_driver_gets_the_async_driver() -> None:
    assert DatabaseSettings(database_url="postgres://u@h/d").url.drivername == "postgresql+asyncpg"
    assert DatabaseSettings(database_url="mysql://u@h/d").url.drivername == "mysql+asyncmy"
    assert DatabaseSettings(database_url="sqlite:///x.db").url.drivername == "sqlite+aiosqlite"


def test_sync_driver_is_refused_with_the_async_alternative() -> None:
    with pytest.raises(ConfigurationError, match=r"psycopg2.*postgresql\+asyncpg"):
        DatabaseSettings(database_url="postgresql+psycopg2://u@h/d")


@pytest.mark.parametrize("environment", ["development", "test"])
async def test_no_url_falls_back_to_sqlite_and_logs_it(
    environment: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = DatabaseSettings(environment=environment)
    assert s.uses_default_url
    assert s.url.render_as_string() == DEFAULT_SQLITE_URL
    caplog.set_level(logging.INFO, logger="dbkeel")
    async with DatabaseManager(s) as db:
        assert db.engine.dialect.name == "sqlite"
    assert any("DATABASE_URL is not set" in r.getMessage() for r in caplog.records)


def test_production_without_url_refuses_and_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="Set DATABASE_URL"):
        DatabaseSettings(environment="production")


def test_settings_are_immutable_values() -> None:
    s = DatabaseSettings()
    with pytest.raises(Exception, match="frozen"):
        s.pool_size = 3  # type: ignore[misc]


def test_readme_documents_every_variable() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for field, variable in DatabaseSettings.ENV_NAMES.items():
        assert f"| `{variable}` | `{field}` |" in readme, variable


def test_model_dump_masks_the_password() -> None:
    s = DatabaseSettings(database_url=f"postgresql+asyncpg://app:{SECRET}@db/app")
    assert SECRET not in str(s.model_dump())
    assert SECRET not in s.model_dump_json()
    assert s.url.password == SECRET  # the engine still gets the real one


def test_none_switches_off_a_knob_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_COMMAND_TIMEOUT", "none")
    assert DatabaseSettings().command_timeout is None
