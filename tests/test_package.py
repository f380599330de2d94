"""The package surface: exported names, import cost, typing marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dbkeel

OPTIONAL = (
    "asyncpg",
    "aiosqlite",
    "asyncmy",
    "cryptography",
    "prometheus_client",
    "opentelemetry",
    "alembic",
    "typer",
    "rich",
    "click",
)


def test_all_is_sorted_and_complete() -> None:
    assert dbkeel.__all__ == sorted(dbkeel.__all__)
    public = {
        name
        for name, value in vars(dbkeel).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("dbkeel")
    }
    assert public <= set(dbkeel.__all__)
    for name in dbkeel.__all__:
        assert hasattr(dbkeel, name), name


def test_every_error_derives_from_dbkeel_error() -> None:
    from dbkeel import exceptions

    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), dbkeel.DbkeelError), name


def test_import_dbkeel_imports_no_optional_dependency() -> None:
    code = f"import sys, dbkeel; print(','.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_ships_py_typed() -> None:
    assert (Path(dbkeel.__file__).parent / "py.typed").exists()
