"""Key rotation on real databases: counts per key id, resumable batches, concurrent writers."""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update

from dbkeel import DatabaseManager, EncryptedType
from dbkeel.encryption import KeyRing, rotate_keys
from dbkeel.exceptions import ConfigurationError
from tests import encryption_support as support
from tests.conftest import CreateTables
from tests.conftest import run_cli as cli
from tests.encryption_support import B64, KEY1, KEY2, key_settings

forget_test_columns = support.forget_test_columns
ROWS = 120


def accounts() -> tuple[MetaData, Table]:
    md = MetaData()
    t = Table(
        "rot_accounts",
        md,
        Column("id", Integer, primary_key=True),
        Column("secret", EncryptedType(String(60))),
    )
    return md, t


async def seed(db_url: str, create_tables: CreateTables, md: MetaData, t: Table) -> None:
    async with DatabaseManager(key_settings(db_url, keys="k1")) as old:
        await create_tables(old, md)
        async with old.engine.begin() as conn:
            rows = [{"id": i, "secret": f"value {i}"} for i in range(1, ROWS + 1)]
            await conn.execute(insert(t), [*rows, {"id": ROWS + 1, "secret": None}])


async def values(db: DatabaseManager, t: Table) -> dict[int, str | None]:
    async with db.engine.connect() as conn:
        return {r[0]: r[1] for r in await conn.execute(select(t.c.id, t.c.secret))}


async def test_dry_run_counts_and_rotation_moves_every_row_to_the_active_key(
    db_url: str, create_tables: CreateTables
) -> None:
    md, t = accounts()
    await seed(db_url, create_tables, md, t)
    async with DatabaseManager(key_settings(db_url, keys="k1,k2", active="k2")) as db:
        async with db.engine.begin() as conn:  # one row already written with the new key
            await conn.execute(update(t).where(t.c.id == 1).values(secret="fresh"))
        dry = await rotate_keys(db, dry_run=True)
        assert [(c.name, c.before, c.after) for c in dry.columns] == [
            ("rot_accounts.secret", {"k1": ROWS - 1, "k2": 1}, {})
        ]
        progress: list[tuple[str, int, int]] = []
        report = await rotate_keys(db, batch_size=25, progress=lambda *a: progress.append(a))
        col = report.columns[0]
        assert col.before == {"k1": ROWS - 1, "k2": 1}
        assert col.after == {"k2": ROWS}
        assert col.rewritten == ROWS - 1 and report.remaining == 0
        assert progress[-1] == ("rot_accounts.secret", ROWS - 1, ROWS - 1) and len(progress) == 5
        expected = {i: f"value {i}" for i in range(2, ROWS + 1)} | {1: "fresh", ROWS + 1: None}
        assert await values(db, t) == expected


async def test_rotation_walks_a_composite_primary_key(
    db_url: str, create_tables: CreateTables
) -> None:
    md = MetaData()
    t = Table(
        "rot_members",
        md,
        Column("org", String(10), primary_key=True),
        Column("n", Integer, primary_key=True),
        Column("secret", EncryptedType(String(60))),
    )
    # keys that interleave: (a, 2) < (a, 10) < (b, 1) - the walk must not skip or repeat
    keys = [(org, n) for org in ("a", "b", "c") for n in (1, 2, 10, 11, 30)]
    async with DatabaseManager(key_settings(db_url, keys="k1")) as old:
        await create_tables(old, md)
        async with old.engine.begin() as conn:
            await conn.execute(
                insert(t), [{"org": o, "n": n, "secret": f"{o}-{n}"} for o, n in keys]
            )
    async with DatabaseManager(key_settings(db_url, keys="k1,k2", active="k2")) as db:
        report = await rotate_keys(db, batch_size=4)  # batches end mid-org
        col = report.columns[0]
        assert (col.before, col.after, col.rewritten) == ({"k1": 15}, {"k2": 15}, 15)
        async with db.engine.connect() as conn:
            got = {(r[0], r[1]): r[2] for r in await conn.execute(select(t))}
        assert got == {(o, n): f"{o}-{n}" for o, n in keys}


async def test_interrupted_rotation_resumes(db_url: str, create_tables: CreateTables) -> None:
    md, t = accounts()
    await seed(db_url, create_tables, md, t)
    async with DatabaseManager(key_settings(db_url, keys="k1,k2", active="k2")) as db:

        def stop_after_first_batch(name: str, done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await rotate_keys(db, batch_size=50, progress=stop_after_first_batch)
        midway = (await rotate_keys(db, dry_run=True)).columns[0].before
        assert midway == {"k1": ROWS - 50, "k2": 50}  # the first batch was committed whole
        report = await rotate_keys(db, batch_size=50)
        assert report.columns[0].rewritten == ROWS - 50
        assert report.columns[0].after == {"k2": ROWS}


class SlowRing(KeyRing):
    """Widens the gap between a rotation batch's read and its write, so a concurrent
    writer lands inside it: without the compare-and-swap, its update would be lost."""

    __slots__ = ()

    def open(self, blob: bytes, column: bytes) -> bytes:
        time.sleep(0.003)  # blocks this loop only; the writer thread keeps going
        return super().open(blob, column)


async def test_rotation_beside_concurrent_writers_loses_no_update(
    db_url: str, create_tables: CreateTables
) -> None:
    md, t = accounts()
    await seed(db_url, create_tables, md, t)
    expected: dict[int, str | None] = {i: f"value {i}" for i in range(1, ROWS + 1)}
    expected[ROWS + 1] = None
    stop = threading.Event()
    cursor = [0]  # rows the rotation has done, shared with the writer thread
    errors: list[BaseException] = []

    async def writer() -> None:
        rng = random.Random(4)
        next_id = ROWS + 2
        async with DatabaseManager(key_settings(db_url, keys="k1,k2", active="k2")) as app:
            while not stop.is_set():
                async with app.engine.begin() as conn:
                    if rng.random() < 0.2:
                        await conn.execute(insert(t).values(id=next_id, secret=f"new {next_id}"))
                        expected[next_id] = f"new {next_id}"
                        next_id += 1
                    else:
                        # aim at the batch the rotation is working on, to land in its gap
                        row = min(ROWS, cursor[0] + rng.randint(1, 10))
                        value = f"app {rng.random():.6f}"
                        await conn.execute(update(t).where(t.c.id == row).values(secret=value))
                        expected[row] = value

    def run_writer() -> None:
        try:
            asyncio.run(writer())
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    class Slow:
        async def load_key_ring(self) -> KeyRing:
            return SlowRing({"k1": KEY1, "k2": KEY2}, active="k2")

    thread = threading.Thread(target=run_writer)
    settings = key_settings(db_url, keys="k1,k2", active="k2")
    async with DatabaseManager(settings, key_provider=Slow()) as db:
        thread.start()
        try:
            await asyncio.sleep(0.2)
            report = await rotate_keys(
                db, batch_size=10, progress=lambda name, done, total: cursor.__setitem__(0, done)
            )
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)
        assert not errors, errors
        final = (await rotate_keys(db, dry_run=True)).columns[0].before
        assert report.columns[0].before["k1"] <= ROWS
        assert final == {"k2": len(expected) - 1}  # every non-NULL row, none under k1
        assert await values(db, t) == expected


async def test_unknown_column_name_is_refused(db_url: str, create_tables: CreateTables) -> None:
    _models = accounts()
    async with DatabaseManager(key_settings(db_url)) as db:
        with pytest.raises(ConfigurationError, match=r"'rot_accounts\.nope' names no encrypted"):
            await rotate_keys(db, columns=["rot_accounts.nope"])


MODELS = """
from sqlalchemy import Column, Integer, MetaData, String, Table
from dbkeel import EncryptedType
metadata = MetaData()
accounts = Table("rot_accounts", metadata, Column("id", Integer, primary_key=True),
                 Column("secret", EncryptedType(String(60))))
"""


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # the models module written into cwd must be importable by the subprocess
    return cli(*args, env={"PYTHONPATH": str(cwd), **env}, cwd=cwd)


def test_keys_generate_prints_one_usable_line(tmp_path: Path) -> None:
    result = run_cli("keys", "generate", "--id", "k2026", env={}, cwd=tmp_path)
    assert result.returncode == 0
    (line,) = result.stdout.splitlines()
    assert line.startswith("k2026:")
    ring = KeyRing.parse(line)
    assert ring.key_ids == ["k2026"]


async def test_keys_rotate_cli_dry_run_then_rotate(
    db_url: str, create_tables: CreateTables, tmp_path: Path
) -> None:
    md, t = accounts()
    await seed(db_url, create_tables, md, t)
    (tmp_path / "rot_models.py").write_text(MODELS)
    env = {
        "DATABASE_URL": db_url,
        "ENVIRONMENT": "test",
        "DATABASE_ENCRYPTION_KEYS": f"k1:{B64['k1']},k2:{B64['k2']}",
        "DATABASE_ENCRYPTION_ACTIVE_KEY": "k2",
    }
    dry = await asyncio.to_thread(
        run_cli, "keys", "rotate", "-m", "rot_models", "--dry-run", env=env, cwd=tmp_path
    )
    assert dry.returncode == 0, dry.stderr
    assert f"rot_accounts.secret │ k1: {ROWS}" in dry.stdout
    done = await asyncio.to_thread(
        run_cli, "keys", "rotate", "-m", "rot_models", "--batch-size", "40", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "rot_accounts.secret" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == [
        "rot_accounts.secret",
        f"k1: {ROWS}",
        f"k2: {ROWS}",
        str(ROWS),
    ]
    for secret in (B64["k1"], B64["k2"]):
        assert secret not in done.stdout + done.stderr
