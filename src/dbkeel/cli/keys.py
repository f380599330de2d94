"""``dbkeel keys generate``, ``dbkeel keys rotate`` and ``dbkeel keys reindex``."""

from __future__ import annotations

import importlib
import sys

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dbkeel.cli._console import console, err_console, print_error
from dbkeel.encryption.keys import generate_key
from dbkeel.encryption.reindex import reindex_blind_indexes
from dbkeel.encryption.rotation import RotationReport, rotate_keys
from dbkeel.exceptions import ConfigurationError, DbkeelError
from dbkeel.manager import DatabaseManager


def run_generate(key_id: str | None) -> int:
    """Print one ``ID:BASE64KEY`` line on stdout (a hint on stderr); returns the exit code."""
    try:
        new_id, key = generate_key(key_id)
    except DbkeelError as exc:
        print_error(exc)
        return 1
    # Plain stdout, no rich markup or wrapping: the line is meant for `>> .env` or a vault.
    sys.stdout.write(f"{new_id}:{key}\n")
    err_console.print(
        f"Append it to DATABASE_ENCRYPTION_KEYS (comma-separated); set "
        f"DATABASE_ENCRYPTION_ACTIVE_KEY={new_id} once every instance has the key, then run "
        f"`dbkeel keys rotate`."
    )
    return 0


async def run_rotate(
    models: list[str], columns: list[str] | None, batch_size: int, dry_run: bool
) -> int:
    """Import the models, rotate (or count), print rows per key id; returns the exit code."""
    db = await _manager(models)
    if db is None:
        return 1
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            tasks: dict[str, TaskID] = {}

            def on_progress(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done, total=total)

            report = await rotate_keys(
                db, columns=columns, batch_size=batch_size, dry_run=dry_run, progress=on_progress
            )
    except DbkeelError as exc:
        print_error(exc)
        return 1
    finally:
        await db.close()
    _print_report(report)
    return 0 if dry_run or report.remaining == 0 else 1


async def run_reindex(models: list[str], columns: list[str] | None, batch_size: int) -> int:
    """Import the models, recompute their blind indexes, print the counts; the exit code."""
    db = await _manager(models)
    if db is None:
        return 1
    try:
        with Progress(TextColumn("{task.description}"), console=err_console, transient=True) as bar:
            tasks: dict[str, TaskID] = {}

            def on_progress(name: str, checked: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name)
                bar.update(tasks[name], description=f"{name}: {checked} rows checked")

            report = await reindex_blind_indexes(
                db, columns=columns, batch_size=batch_size, progress=on_progress
            )
    except DbkeelError as exc:
        print_error(exc)
        return 1
    finally:
        await db.close()
    table = Table(title="dbkeel keys reindex: blind indexes under the current key")
    table.add_column("column")
    table.add_column("checked", justify="right")
    table.add_column("rewritten", justify="right")
    for col in report.columns:
        table.add_row(col.name, str(col.checked), str(col.rewritten))
    console.print(table)
    return 0


async def _manager(models: list[str]) -> DatabaseManager | None:
    """The models imported and a manager initialized, or None after printing the error."""
    try:
        for module in models:
            _import_models(module)
        db = DatabaseManager()
        await db.initialize()
    except DbkeelError as exc:
        print_error(exc)
        return None
    return db


def _import_models(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"Cannot import the models module {module!r} ({exc}). Pass the dotted module "
            f"path that defines your models, run from your project's directory."
        ) from exc


def _print_report(report: RotationReport) -> None:
    title = "rows per key id" + (" (dry run)" if report.dry_run else "")
    table = Table(title=f"dbkeel keys rotate: {title}, active key {report.active_key_id!r}")
    table.add_column("column")
    table.add_column("before")
    if not report.dry_run:
        table.add_column("after")
        table.add_column("rewritten", justify="right")
    for col in report.columns:
        row = [col.name, _counts(col.before)]
        if not report.dry_run:
            row += [_counts(col.after), str(col.rewritten)]
        table.add_row(*row)
    console.print(table)
    if not report.dry_run and report.remaining:
        console.print(
            f"{report.remaining} rows are still under old keys (an old-key writer may still "
            f"be running): run `dbkeel keys rotate` again before retiring a key."
        )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in counts.items()) or "no rows"
