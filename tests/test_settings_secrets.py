"""Credentials never printed, misspelled settings refused, timeouts that would mean "none".

Regression tests for issue 17 (hardening): each form of credential a URL can carry is
masked in the settings repr, the masked URL, ``model_dump``, connection errors and
``dbkeel check``.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from dbkeel import ConfigurationError, DatabaseManager, DatabaseSettings, DatabaseUnavailableError
from dbkeel._masking import mask_url, scrub_secrets
from tests.conftest import run_cli

SECRET = "Sup3rS3cretPw"
QUERY_SECRETS = {"password": "hunter2-q", "sslpassword": "k3y-pass", "passfile": "/run/pgpass.x"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "DBKEEL_IGNORE")) or name in {"ENVIRONMENT", "APP_NAME"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _query_url(host: str = "db.internal", port: int = 5432) -> str:
    query = "&".join(f"{k}={v}" for k, v in QUERY_SECRETS.items())
    return f"postgresql+asyncpg://app@{host}:{port}/app?{query}&application_name=x"


def _shown(settings: DatabaseSettings) -> str:
    return (
        "\n".join([repr(settings), str(settings), settings.masked_url, str(settings.model_dump())])
        + settings.model_dump_json()
    )


def test_query_parameter_credentials_are_masked_everywhere() -> None:
    settings = DatabaseSettings(database_url=_query_url())
    shown = _shown(settings) + repr(DatabaseManager(settings))
    for secret in QUERY_SECRETS.values():
        assert secret not in shown
    assert "password=***" in settings.masked_url
    assert "application_name=x" in settings.masked_url  # harmless options stay readable
    assert settings.url.query["password"] == QUERY_SECRETS["password"]  # the driver gets it


def test_unencoded_at_in_the_password_is_refused_without_showing_it() -> None:
    url = "postgresql+asyncpg://user:Sup3r@S3cretPw@db.internal/app"
    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings(database_url=url)
    text = "".join(traceback.format_exception(info.value))
    assert "Sup3r" not in text and "S3cretPw" not in text
    assert "%40" in str(info.value)  # says how to fix it
    assert "DATABASE_URL" in str(info.value)


def test_percent_encoded_at_is_accepted_and_masked() -> None:
    settings = DatabaseSettings(database_url="postgresql+asyncpg://user:Sup3r%40S3cret@db/app")
    assert settings.url.password == "Sup3r@S3cret"
    assert "Sup3r" not in _shown(settings) and "S3cret" not in _shown(settings)


def test_mask_url_hides_all_of_an_ambiguous_userinfo() -> None:
    masked = mask_url("postgresql+asyncpg://user:Sup3r@S3cretPw@host/db")
    assert masked == "postgresql+asyncpg://user:***@host/db"


def test_scrub_masks_dsn_pairs_but_keeps_exception_names() -> None:
    url = make_url(_query_url())
    text = (
        "InvalidPasswordError: password authentication failed for user app; "
        "dsn: host=db password='a b c' sslpassword=k3y-pass passfile=/run/pgpass.x"
    )
    scrubbed = scrub_secrets(text, [url])
    assert "InvalidPasswordError" in scrubbed and "authentication failed" in scrubbed
    for leaked in ("a b c", "k3y-pass", "/run/pgpass.x"):
        assert leaked not in scrubbed


@pytest.mark.parametrize(
    ("query", "error"),
    [
        # asyncpg takes these as connect() arguments: the server is just not there
        ("password=hunter2-q&passfile=/run/pgpass.x", DatabaseUnavailableError),
        # asyncpg refuses this one as an argument: the message quotes the driver
        ("password=hunter2-q&sslpassword=k3y-pass", ConfigurationError),
    ],
)
async def test_connection_errors_never_show_query_credentials(
    query: str, error: type[Exception]
) -> None:
    url = f"postgresql+asyncpg://app:{SECRET}@127.0.0.1:1/app?{query}"
    settings = DatabaseSettings(database_url=url, initialize_timeout=0.3)
    with pytest.raises(error) as info:
        await DatabaseManager(settings).initialize()
    text = "".join(traceback.format_exception(info.value))
    for secret in (SECRET, *QUERY_SECRETS.values()):
        assert secret not in text
    assert "127.0.0.1:1" in str(info.value)


def test_dbkeel_check_masks_query_credentials(pg_url: str, tmp_path: Path) -> None:
    url = make_url(pg_url).update_query_dict({"password": SECRET})
    result = run_cli(
        "check", env={"DATABASE_URL": url.render_as_string(hide_password=False)}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr  # trust auth: any password connects
    assert SECRET not in result.stdout + result.stderr
    assert "password=***" in result.stdout


def test_dbkeel_check_refuses_ambiguous_userinfo_without_leaking(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://app:Sup3r@S3cretPw@127.0.0.1:5432/test"
    result = run_cli("check", env={"DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 1
    assert "ambiguous" in result.stderr
    assert "Sup3r" not in result.stdout + result.stderr
    assert "S3cretPw" not in result.stdout + result.stderr


def test_misspelled_keyword_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match=r"'pool_sise'.*Did you mean 'pool_size'\?"):
        DatabaseSettings(pool_sise=1)


def test_variable_names_are_accepted_as_keywords_too() -> None:
    assert DatabaseSettings(DATABASE_POOL_SIZE=3).pool_size == 3


def test_misspelled_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZ", "3")
    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings()
    assert "DATABASE_POOL_SIZ (environment)" in str(info.value)
    assert "Did you mean 'DATABASE_POOL_SIZE'?" in str(info.value)


def test_misspelled_dotenv_variable_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_STATMENT_TIMEOUT=5\nOTHER_APP_VAR=1\n")
    with pytest.raises(ConfigurationError, match=r"DATABASE_STATEMENT_TIMEOUT"):
        DatabaseSettings()


def test_another_programs_variable_can_be_listed_as_foreign(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_HOST", "db.internal")  # e.g. a wait-for-db script's
    with pytest.raises(ConfigurationError, match="DBKEEL_IGNORE_ENV=DATABASE_HOST"):
        DatabaseSettings()
    monkeypatch.setenv("DBKEEL_IGNORE_ENV", "DATABASE_HOST, DATABASE_PORT")
    assert DatabaseSettings().pool_size >= 1


@pytest.mark.parametrize("value", ["0.0004", "0.0009999"])
def test_sub_millisecond_statement_timeout_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", value)
    with pytest.raises(ConfigurationError, match=r"DATABASE_STATEMENT_TIMEOUT.*no limit"):
        DatabaseSettings()


async def test_one_millisecond_statement_timeout_reaches_postgres_as_1ms(pg_url: str) -> None:
    from sqlalchemy import text

    settings = DatabaseSettings(database_url=pg_url, environment="test", statement_timeout=0.001)
    async with DatabaseManager(settings) as db, db.engine.connect() as conn:
        shown = (await conn.execute(text("SHOW statement_timeout"))).scalar_one()
    assert shown == "1ms"
