"""``dbkeel migrations init/check`` and ``dbkeel migrate`` on the three databases."""

from __future__ import annotations

import asyncio
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
        assert (
            run_cli("migrations", "init", "--models", "app_models:Base", cwd=root).returncode == 0
        )
        alembic(root, url, "revision", "--autogenerate", "-m", "initial")
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
        import subprocess
        import sys

        made = subprocess.run(
            [sys.executable, "-c", program, url], cwd=root, capture_output=True, text=True
        )
        assert made.returncode == 0, made.stderr
        alembic(root, url, "stamp", "head")
        check = run_cli("migrations", "check", env=cli_env(url), cwd=root)
        assert check.returncode == 0, check.stdout + check.stderr


def test_mariadb_migrated_soft_deleted_value_can_be_reused(tmp_path: Path) -> None:
    root = project(tmp_path)
    with fresh_database("mariadb", tmp_path) as url:
        assert (
            run_cli("migrations", "init", "--models", "app_models:Base", cwd=root).returncode == 0
        )
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
