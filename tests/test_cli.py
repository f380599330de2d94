"""The dbkeel command line, run as a user runs it: a subprocess with an environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

SECRET = "cli-Pa55-never-shown"


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("check", "demo"):
        assert command in result.stdout


def test_check_prints_driver_version_latency_and_pool(db_url: str, tmp_path: Path) -> None:
    result = run_cli(
        "check", env={"DATABASE_URL": db_url, "ENVIRONMENT": "production"}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for fragment in ("driver", "server version", "round trip", "pool_size", "max_overflow"):
        assert fragment in out
    assert " ms" in out


def test_check_masks_the_password(pg_url: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    # trust auth accepts any password, so this connects and prints the URL
    result = run_cli("check", env={"DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "***" in result.stdout


def test_check_unreachable_exits_1_with_clear_error(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://app:{SECRET}@127.0.0.1:1/appdb"
    result = run_cli(
        "check", env={"DATABASE_URL": url, "DATABASE_INITIALIZE_TIMEOUT": "0.5"}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "DatabaseUnavailableError" in result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_bad_setting_exits_1_naming_the_variable(tmp_path: Path) -> None:
    result = run_cli("check", env={"DATABASE_POOL_SIZE": "-4"}, cwd=tmp_path)
    assert result.returncode == 1
    assert "DATABASE_POOL_SIZE" in result.stderr


def test_demo_runs_on_embedded_sqlite_with_no_configuration(tmp_path: Path) -> None:
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded SQLite" in result.stdout
    assert "demo finished" in result.stdout
    assert "bulk_insert wrote 3,000 rows" in result.stdout
    assert (tmp_path / "dbkeel.sqlite3").exists()
    # and twice in a row on the same file
    assert run_cli("demo", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_demo_runs_against_a_server(backend: str, test_databases: object, tmp_path: Path) -> None:
    url = test_databases.url(backend)  # type: ignore[attr-defined]
    result = run_cli("demo", env={"DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo finished" in result.stdout
    assert "bulk_insert wrote 3,000 rows" in result.stdout
