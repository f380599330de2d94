"""``dbkeel doctor`` as a user runs it: JSON against its schema, exit codes, no password."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from sqlalchemy.engine import make_url

from dbkeel.doctor import REPORT_SCHEMA
from tests.test_cli import SECRET, run_cli

PROD = {"ENVIRONMENT": "production", "APP_NAME": "doctor-cli", "DATABASE_POOL_SIZE": "4"}


def _with_password(url: str) -> str:
    # trust auth accepts any password, so this connects
    return make_url(url).set(password=SECRET).render_as_string(hide_password=False)


def test_json_report_matches_its_schema_and_hides_the_password(pg_url: str, tmp_path: Path) -> None:
    env = {**PROD, "DATABASE_URL": _with_password(pg_url)}
    result = run_cli("doctor", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["backend"] == "postgresql"
    assert {f["id"] for f in report["findings"]} >= {"pool.fleet", "timeout.statement"}
    assert SECRET not in result.stdout + result.stderr
    assert "***" in report["url"]


def test_table_output_hides_the_password(pg_url: str, tmp_path: Path) -> None:
    env = {**PROD, "DATABASE_URL": _with_password(pg_url)}
    result = run_cli("doctor", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "timeout.statement" in result.stdout and "fix:" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_strict_exits_1_on_warnings(pg_url: str, tmp_path: Path) -> None:
    # statement_timeout is 0 on the test server: a warning
    result = run_cli("doctor", "--strict", env={**PROD, "DATABASE_URL": pg_url}, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr


def test_errors_exit_1_and_workers_come_from_web_concurrency(
    mariadb_url: str, tmp_path: Path
) -> None:
    env = {**PROD, "DATABASE_URL": mariadb_url, "WEB_CONCURRENCY": "500"}
    result = run_cli("doctor", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["workers"] == 500
    fleet = [f for f in report["findings"] if f["id"] == "pool.fleet"]
    assert fleet[0]["level"] == "error"
    # --workers wins over the variable
    result = run_cli("doctor", "--workers", "1", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unreachable_database_exits_2_with_the_clear_error(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://app:{SECRET}@127.0.0.1:1/appdb"
    env = {"DATABASE_URL": url, "DATABASE_INITIALIZE_TIMEOUT": "0.3"}
    result = run_cli("doctor", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "DatabaseUnavailableError" in result.stderr and "127.0.0.1:1" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_bad_workers_and_bad_models_exit_2_naming_the_value(tmp_path: Path) -> None:
    result = run_cli("doctor", env={"WEB_CONCURRENCY": "four"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "WEB_CONCURRENCY = 'four'" in result.stderr
    result = run_cli("doctor", "--models", "no_such_module:Base", cwd=tmp_path)
    assert result.returncode == 2
    assert "no_such_module" in result.stderr


def test_models_option_loads_the_base_from_the_working_directory(
    pg_url: str, tmp_path: Path
) -> None:
    (tmp_path / "shop_models.py").write_text(
        "from sqlalchemy import ForeignKey\n"
        "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n\n"
        "class Base(DeclarativeBase):\n    pass\n\n"
        "class Shop(Base):\n    __tablename__ = 'cli_shops'\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n\n"
        "class Item(Base):\n    __tablename__ = 'cli_items'\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n"
        "    shop_id: Mapped[int] = mapped_column(ForeignKey('cli_shops.id'))\n"
    )
    env = {"DATABASE_URL": pg_url}
    result = run_cli("doctor", "--json", "--models", "shop_models:Base", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    findings = json.loads(result.stdout)["findings"]
    fk = [f for f in findings if f["id"] == "schema.fk-index"]
    assert [(f["level"], f["subject"]) for f in fk] == [("warning", "cli_items(shop_id)")]


def test_demo_ends_with_the_doctor(tmp_path: Path) -> None:
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dbkeel doctor" in result.stdout
    assert "schema.fk-index" in result.stdout
