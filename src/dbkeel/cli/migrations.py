"""``dbkeel migrations init|check`` and ``dbkeel migrate``: Alembic, wired for dbkeel.

Exit codes as ``doctor``: 0 ok, 1 differences found (check), 2 could not run (settings,
database, Alembic configuration, lock).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from dbkeel.cli._console import console, print_error
from dbkeel.exceptions import ConfigurationError, DbkeelError

__all__ = ["EXIT_FAILED", "run_check", "run_init", "run_lint", "run_migrate"]

EXIT_FAILED = 2


def _config(ini: Path) -> Any:
    from alembic.config import Config

    if not ini.is_file():
        raise ConfigurationError(
            f"{ini} not found: run `dbkeel migrations init` first, or pass --ini with the "
            f"path of your alembic.ini."
        )
    # env.py imports the application's models: the project root must be importable
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return Config(str(ini))


def run_init(directory: Path, models: str, ini: Path) -> int:
    """Write the environment; returns the exit code."""
    from dbkeel.migrations.scaffold import write_environment

    try:
        written = write_environment(directory, models, ini)
    except DbkeelError as exc:
        print_error(exc)
        return EXIT_FAILED
    for path in written:
        console.print(f"wrote {path}")
    console.print(
        "next: `alembic revision --autogenerate -m initial`, then `dbkeel migrate` "
        "(DATABASE_URL selects the database)."
    )
    return 0


async def run_check(ini: Path, as_json: bool) -> int:
    """Compare models and database; 0 in sync, 1 differences, 2 could not check."""
    from alembic.util import CommandError

    from dbkeel.migrations.check import find_differences
    from dbkeel.settings import DatabaseSettings

    try:
        differences = await find_differences(_config(ini), DatabaseSettings())
    except (DbkeelError, CommandError) as exc:
        print_error(exc)
        return EXIT_FAILED
    if as_json:
        sys.stdout.write(json.dumps({"in_sync": not differences, "differences": differences}))
        sys.stdout.write("\n")
    elif differences:
        console.print(f"[bold red]{len(differences)} difference(s)[/] between models and database:")
        for line in differences:
            console.print(f"  {line}", soft_wrap=True)
        console.print("fix: `alembic revision --autogenerate`, review it, then `dbkeel migrate`.")
    else:
        console.print("[green]in sync[/]: the models and the database match.")
    return 1 if differences else 0


async def run_migrate(
    ini: Path, revision: str, wait: float, lock_timeout: float, statement_timeout: float
) -> int:
    """Upgrade under the lock; 0 done, 2 failed."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from dbkeel.migrations.upgrade import migrate
    from dbkeel.settings import DatabaseSettings

    try:
        await migrate(
            _config(ini),
            DatabaseSettings(),
            revision=revision,
            wait=wait,
            lock_timeout=lock_timeout,
            statement_timeout=statement_timeout,
        )
    except (DbkeelError, CommandError, SQLAlchemyError) as exc:
        # a failed migration: the lock is released, the transaction rolled back
        print_error(exc)
        return EXIT_FAILED
    console.print(f"[green]migrated[/] to {revision}.")
    return 0


def run_lint(files: list[Path], as_json: bool) -> int:
    """Lint migration files; 0 clean, 1 findings, 2 a file could not be read or parsed."""
    from dbkeel.migrations.lint import Finding, lint_file

    if not files:
        files = sorted(Path("migrations", "versions").glob("*.py"))
        if not files:
            print_error(
                ConfigurationError(
                    "No migration files given and none in migrations/versions: pass the "
                    "files to lint, e.g. `dbkeel migrations lint migrations/versions/*.py`."
                )
            )
            return EXIT_FAILED
    findings: list[Finding] = []
    for path in files:
        try:
            findings.extend(lint_file(path))
        except (OSError, SyntaxError, UnicodeDecodeError) as exc:
            print_error(ConfigurationError(f"Cannot lint {path}: {exc}"))
            return EXIT_FAILED
    if as_json:
        sys.stdout.write(json.dumps([f.to_dict() for f in findings], indent=2) + "\n")
    else:
        for f in findings:
            console.print(
                f"[bold red]{f.rule}[/] {f.path}:{f.line} {f.operation}: {f.title}\n"
                f"  why: {f.why}\n  fix: {f.fix}\n"
                f"  silence: # dbkeel: allow {f.rule}",
                soft_wrap=True,
            )
        console.print(f"{len(findings)} finding(s) in {len(files)} file(s).")
    return 1 if findings else 0
