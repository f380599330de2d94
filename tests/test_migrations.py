"""``dbkeel migrations init/check`` and ``dbkeel migrate`` on the three databases."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import BACKENDS, run_cli
from tests.migrations_support import alembic, cli_env, fresh_database, project


async def _sql(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        await engine.dispose()


def _init(root: Path) -> None:
    init = run_cli("migrations", "init", "--models", "app_models:Base", cwd=root)
    assert init.returncode == 0, init.stderr


def _create_all(root: Path, url: str) -> None:
    """The models' tables at *url*, made by create_all() in the project at *root*."""
    program = (
        "import asyncio, sys\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n"
        "from app_models import Base\n"
        "async def main():\n"
        "    engine = create_async_engine(sys.argv[1])\n"
        "    async with engine.begin() as conn:\n"
        "        await conn.run_sync(Base.metadata.create_all)\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", program, url], cwd=root, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_autogenerate_round_trip_is_clean(backend: str, tmp_path: Path) -> None:
    root = project(tmp_path)
    with fresh_database(backend, tmp_path) as url:
        init = run_cli("migrations", "init", "--models", "app_models:Base", cwd=root)
        assert init.returncode == 0, init.stderr
        assert "sqlalchemy.url" not in (root / "alembic.ini").read_text()

        # a database without tables differs from the models
        before = run_cli("migrations", "check", env=cli_env(url), cwd=root)
        assert before.returncode == 1, before.stdout + before.stderr
        assert "add_table: accounts" in before.stdout

        alembic(root, url, "revision", "--autogenerate", "-m", "initial")
        [first] = (root / "migrations" / "versions").glob("*.py")
        source = first.read_text()
        assert "import dbkeel.types" in source
        assert "import dbkeel.encryption" in source
        assert "dbkeel.encryption.BlindIndex('email')" in source
        if backend == "mariadb":
            assert "uq_live_handle" not in source
        else:
            assert "uq_live_handle" in source

        done = run_cli("migrate", env=cli_env(url), cwd=root)
        assert done.returncode == 0, done.stdout + done.stderr
        check = run_cli("migrations", "check", "--json", env=cli_env(url), cwd=root)
        assert check.returncode == 0, check.stdout + check.stderr
        assert '"in_sync": true' in check.stdout

        # the second autogenerate after upgrade head finds nothing
        alembic(root, url, "revision", "--autogenerate", "-m", "nothing")
        second = next(
            p for p in (root / "migrations" / "versions").glob("*.py") if p != first
        ).read_text()
        assert "op." not in second, second


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_all_database_is_in_sync(backend: str, tmp_path: Path) -> None:
    root = project(tmp_path)
    with fresh_database(backend, tmp_path) as url:
        _init(root)
        alembic(root, url, "revision", "--autogenerate", "-m", "initial")
        _create_all(root, url)
        alembic(root, url, "stamp", "head")
        check = run_cli("migrations", "check", env=cli_env(url), cwd=root)
        assert check.returncode == 0, check.stdout + check.stderr


def test_mariadb_migrated_soft_deleted_value_can_be_reused(tmp_path: Path) -> None:
    root = project(tmp_path)
    with fresh_database("mariadb", tmp_path) as url:
        _init(root)
        alembic(root, url, "revision", "--autogenerate", "-m", "initial")
        assert run_cli("migrate", env=cli_env(url), cwd=root).returncode == 0
        insert = (
            "INSERT INTO accounts (id, handle, doc, is_deleted, version, created_at, updated_at)"
            " VALUES ({id}, 'ann', '{{}}', {deleted}, 1, NOW(), NOW())"
        )
        asyncio.run(_sql(url, insert.format(id="UNHEX(REPEAT('01', 16))", deleted=1)))
        asyncio.run(_sql(url, insert.format(id="UNHEX(REPEAT('02', 16))", deleted=0)))
        rows = asyncio.run(_sql(url, "SELECT COUNT(*) FROM accounts WHERE handle = 'ann'"))
        assert rows == [(2,)]


def test_check_and_migrate_fail_clearly_without_an_environment(tmp_path: Path) -> None:
    done = run_cli("migrate", cwd=tmp_path)
    assert done.returncode == 2
    assert "alembic.ini not found" in done.stderr
    init = run_cli("migrations", "init", "--models", "no colon", cwd=tmp_path)
    assert init.returncode == 2
    assert "package.module:Base" in init.stderr


_INDEXES = (
    "SELECT index_name, non_unique, column_name FROM information_schema.statistics "
    "WHERE table_schema = DATABASE() AND table_name = 'accounts' ORDER BY 1, 3"
)


def test_migration_generated_on_postgresql_builds_the_create_all_schema_on_mariadb(
    tmp_path: Path,
) -> None:
    root = project(tmp_path)
    _init(root)
    with fresh_database("postgresql", tmp_path) as pg:
        alembic(root, pg, "revision", "--autogenerate", "-m", "initial")
    [migration] = (root / "migrations" / "versions").glob("*.py")
    source = migration.read_text()
    assert "import dbkeel.migrations.ops" in source
    assert "op.create_soft_delete_unique('uq_live_handle', 'accounts', ['handle'])" in source
    assert "op.drop_soft_delete_unique('uq_live_handle', 'accounts')" in source
    assert "uq_live_handle" not in source.replace("_soft_delete_unique('uq_live_handle'", "")

    with (
        fresh_database("mariadb", tmp_path) as migrated,
        fresh_database("mariadb", tmp_path) as made,
    ):
        done = run_cli("migrate", env=cli_env(migrated), cwd=root)
        assert done.returncode == 0, done.stdout + done.stderr
        _create_all(root, made)
        # the same indexes as create_all: no plain UNIQUE index on handle
        assert asyncio.run(_sql(migrated, _INDEXES)) == asyncio.run(_sql(made, _INDEXES))
        assert not any(row[0] == "uq_live_handle" for row in asyncio.run(_sql(migrated, _INDEXES)))
        check = run_cli("migrations", "check", env=cli_env(migrated), cwd=root)
        assert check.returncode == 0, check.stdout + check.stderr
        alembic(root, migrated, "downgrade", "base")
        assert asyncio.run(_sql(migrated, "SHOW TABLES LIKE 'accounts'")) == []

    for backend in ("sqlite", "postgresql"):
        (tmp_path / backend).mkdir()
        with fresh_database(backend, tmp_path / backend) as url:
            done = run_cli("migrate", env=cli_env(url), cwd=root)
            assert done.returncode == 0, done.stdout + done.stderr
            check = run_cli("migrations", "check", env=cli_env(url), cwd=root)
            assert check.returncode == 0, check.stdout + check.stderr
            alembic(root, url, "downgrade", "base")


def test_drop_soft_delete_unique_removes_a_plain_index_left_on_mariadb(tmp_path: Path) -> None:
    root = project(tmp_path)
    _init(root)
    with fresh_database("mariadb", tmp_path) as url:
        alembic(root, url, "revision", "--autogenerate", "-m", "initial")
        assert run_cli("migrate", env=cli_env(url), cwd=root).returncode == 0
        # what a hand-written op.create_index(..., postgresql_where=...) left behind
        asyncio.run(_sql(url, "CREATE UNIQUE INDEX uq_live_handle ON accounts (handle)"))
        repair = root / "migrations" / "versions" / "0002_repair.py"
        head = alembic(root, url, "heads").stdout.split()[0]
        repair.write_text(
            "import dbkeel.migrations.ops  # noqa: F401\n"
            "from alembic import op\n"
            f"revision = '0002'\ndown_revision = '{head}'\n"
            "def upgrade():\n"
            "    op.drop_soft_delete_unique('uq_live_handle', 'accounts')\n"
            "def downgrade():\n"
            "    pass\n"
        )
        assert run_cli("migrate", env=cli_env(url), cwd=root).returncode == 0
        assert not any(row[0] == "uq_live_handle" for row in asyncio.run(_sql(url, _INDEXES)))
        check = run_cli("migrations", "check", env=cli_env(url), cwd=root)
        assert check.returncode == 0, check.stdout + check.stderr
