"""``dbkeel migrate`` takes a database lock: two instances at once migrate once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from dbkeel.migrations.upgrade import _PG_KEY, LOCK_NAME
from tests.conftest import run_cli
from tests.migrations_support import cli_env, fresh_database, project

SLOW_MIGRATION = '''
"""slow"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    # long enough that the second instance starts while the first is still migrating
    op.execute("SELECT pg_sleep(3)" if bind.dialect.name == "postgresql" else "SELECT SLEEP(3)")
    op.create_table("slow", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("slow")
'''


def _setup(root: Path) -> None:
    assert run_cli("migrations", "init", "--models", "app_models:Base", cwd=root).returncode == 0
    (root / "migrations" / "versions" / "0001_slow.py").write_text(SLOW_MIGRATION)


def _start(root: Path, url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env.update(cli_env(url))
    return subprocess.Popen(
        [sys.executable, "-m", "dbkeel", "migrate", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_two_migrates_at_once_migrate_once(backend: str, tmp_path: Path) -> None:
    root = project(
        tmp_path,
        "from sqlalchemy.orm import DeclarativeBase\nclass Base(DeclarativeBase):\n    pass\n",
    )
    _setup(root)
    with fresh_database(backend, tmp_path) as url:
        first, second = _start(root, url), _start(root, url)
        results = [p.communicate(timeout=60) for p in (first, second)]
        for proc, (out, err) in zip((first, second), results, strict=True):
            assert proc.returncode == 0, out + err

        async def version() -> list[object]:
            engine = create_async_engine(url, poolclass=NullPool)
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            await engine.dispose()
            return [r[0] for r in rows]

        assert asyncio.run(version()) == ["0001"]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_migrate_gives_up_after_wait_naming_the_lock(backend: str, tmp_path: Path) -> None:
    root = project(
        tmp_path,
        "from sqlalchemy.orm import DeclarativeBase\nclass Base(DeclarativeBase):\n    pass\n",
    )
    _setup(root)
    with fresh_database(backend, tmp_path) as url:

        async def hold_and_migrate() -> subprocess.CompletedProcess[str]:
            engine = create_async_engine(url, poolclass=NullPool)
            try:
                async with engine.connect() as conn:
                    if backend == "postgresql":
                        await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_KEY})
                    else:
                        await conn.execute(text("SELECT GET_LOCK(:n, 1)"), {"n": LOCK_NAME})
                    return await asyncio.to_thread(
                        run_cli, "migrate", "--wait", "1", env=cli_env(url), cwd=root
                    )
            finally:
                await engine.dispose()

        done = asyncio.run(hold_and_migrate())
        assert done.returncode == 2
        assert "held the migration lock for more than 1 s" in done.stderr


def test_migrate_refuses_a_non_positive_timeout(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        "from sqlalchemy.orm import DeclarativeBase\nclass Base(DeclarativeBase):\n    pass\n",
    )
    _setup(root)
    done = run_cli("migrate", "--lock-timeout", "0", env=cli_env("sqlite+aiosqlite://"), cwd=root)
    assert done.returncode == 2
    assert "lock_timeout=0.0 must be a number of seconds > 0" in done.stderr


TIMEOUT_PROBE = '''
"""probe"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        query = "SELECT current_setting('lock_timeout') || ' ' || current_setting('statement_timeout')"
    else:
        query = "SELECT CONCAT(@@lock_wait_timeout, ' ', @@max_statement_time)"
    seen = bind.execute(sa.text(query)).scalar()
    op.create_table("probe", sa.Column("seen", sa.String(60)))
    op.execute(sa.text("INSERT INTO probe VALUES (:s)").bindparams(s=seen))


def downgrade():
    op.drop_table("probe")
'''


@pytest.mark.parametrize(
    ("backend", "expected"), [("postgresql", "7s 42s"), ("mariadb", "7 42.000000")]
)
def test_migration_runs_with_the_timeouts(backend: str, expected: str, tmp_path: Path) -> None:
    root = project(
        tmp_path,
        "from sqlalchemy.orm import DeclarativeBase\nclass Base(DeclarativeBase):\n    pass\n",
    )
    _setup(root)
    (root / "migrations" / "versions" / "0002_probe.py").write_text(TIMEOUT_PROBE)
    with fresh_database(backend, tmp_path) as url:
        done = run_cli(
            "migrate",
            "--lock-timeout",
            "7",
            "--statement-timeout",
            "42",
            env=cli_env(url),
            cwd=root,
        )
        assert done.returncode == 0, done.stdout + done.stderr

        async def seen() -> object:
            engine = create_async_engine(url, poolclass=NullPool)
            async with engine.connect() as conn:
                value = await conn.scalar(text("SELECT seen FROM probe"))
            await engine.dispose()
            return value

        assert asyncio.run(seen()) == expected
