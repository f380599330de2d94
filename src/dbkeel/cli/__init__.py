"""The ``dbkeel`` command line. Command modules are imported only when their command runs,
so ``dbkeel --help`` stays quick and ``import dbkeel`` never imports the CLI at all."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="dbkeel",
    help="dbkeel: the production database layer for async SQLAlchemy services.\n\n"
    "Settings come from the environment and .env (DATABASE_URL, ENVIRONMENT, APP_NAME, "
    "DATABASE_*); without DATABASE_URL the embedded SQLite database is used.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _configure(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show info log lines."),
) -> None:
    """Send dbkeel's log lines (retries, warnings) to stderr, formatted for people."""
    from rich.logging import RichHandler

    from dbkeel.cli._console import err_console

    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s", handlers=[handler]
    )


@app.command()
def check() -> None:
    """Connect with the current settings; print driver, server version, latency and pool."""
    from dbkeel.cli.check import run_check

    raise typer.Exit(asyncio.run(run_check()))


@app.command()
def demo() -> None:
    """Run the guided demo (embedded SQLite unless DATABASE_URL is set)."""
    from dbkeel.cli.demo import run_demo

    raise typer.Exit(asyncio.run(run_demo()))


@app.command()
def doctor(
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes sharing these settings (default WEB_CONCURRENCY, else 1)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too, not only errors.")] = False,
    models: Annotated[
        str | None,
        typer.Option(help="Also check the models: package.module:Base (or a MetaData)."),
    ] = None,
) -> None:
    """Audit the settings and the live database; exit 0 ok, 1 errors, 2 unreachable."""
    from dbkeel.cli.doctor import run_doctor_command

    code = run_doctor_command(workers=workers, as_json=as_json, strict=strict, models=models)
    raise typer.Exit(asyncio.run(code))


keys_app = typer.Typer(
    help="Encryption keys: make new ones, rotate data away from old ones, reindex.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


# options shared by `keys rotate` and `keys reindex`
_Models = Annotated[
    list[str], typer.Option("--models", "-m", help="Module defining the models (repeatable).")
]
_Columns = Annotated[
    list[str] | None,
    typer.Option("--column", "-c", help="Only this table.column or table (repeatable)."),
]
_BatchSize = Annotated[int, typer.Option(min=1, help="Rows per transaction.")]


@keys_app.command("generate")
def keys_generate(
    key_id: Annotated[
        str | None, typer.Option("--id", help="Key id (default kYYYYMMDD<hex>).")
    ] = None,
) -> None:
    """Print a new random key as one ID:BASE64KEY line, to append to DATABASE_ENCRYPTION_KEYS."""
    from dbkeel.cli.keys import run_generate

    raise typer.Exit(run_generate(key_id))


@keys_app.command("rotate")
def keys_rotate(
    models: _Models,
    column: _Columns = None,
    batch_size: _BatchSize = 500,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count rows per key id.")] = False,
) -> None:
    """Re-encrypt every value still under an old key with DATABASE_ENCRYPTION_ACTIVE_KEY."""
    from dbkeel.cli.keys import run_rotate

    raise typer.Exit(asyncio.run(run_rotate(models, column or None, batch_size, dry_run)))


@keys_app.command("reindex")
def keys_reindex(
    models: _Models,
    column: _Columns = None,
    batch_size: _BatchSize = 500,
) -> None:
    """Recompute every blind index under DATABASE_BLIND_INDEX_KEY (after changing that key)."""
    from dbkeel.cli.keys import run_reindex

    raise typer.Exit(asyncio.run(run_reindex(models, column or None, batch_size)))


migrations_app = typer.Typer(
    help="Alembic migrations wired for dbkeel (needs dbkeel[migrations]).", no_args_is_help=True
)
app.add_typer(migrations_app, name="migrations")
_Ini = Annotated[Path, typer.Option("--ini", help="Path of alembic.ini.")]


@migrations_app.command("init")
def migrations_init(
    models: Annotated[str, typer.Option(help="The models: package.module:Base (or a MetaData).")],
    directory: Annotated[Path, typer.Argument(help="Directory to create.")] = Path("migrations"),
    ini: _Ini = Path("alembic.ini"),
) -> None:
    """Write an async Alembic environment whose URL comes from DATABASE_URL."""
    from dbkeel.cli.migrations import run_init

    raise typer.Exit(run_init(directory, models, ini))


@migrations_app.command("check")
def migrations_check(
    ini: _Ini = Path("alembic.ini"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Compare models and database; exit 0 in sync, 1 differences, 2 could not check."""
    from dbkeel.cli.migrations import run_check

    raise typer.Exit(asyncio.run(run_check(ini, as_json)))


@migrations_app.command("lint")
def migrations_lint(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Migration files (default migrations/versions).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Flag operations that lock or rewrite big tables; exit 0 clean, 1 findings, 2 error."""
    from dbkeel.cli.migrations import run_lint

    raise typer.Exit(run_lint(files or [], as_json))


@app.command()
def migrate(
    ini: _Ini = Path("alembic.ini"),
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for another migrate to finish.")
    ] = 60.0,
    lock_timeout: Annotated[
        float, typer.Option(help="Seconds one DDL statement may wait for a table lock.")
    ] = 10.0,
    statement_timeout: Annotated[
        float, typer.Option(help="Seconds one migration statement may run.")
    ] = 300.0,
) -> None:
    """Upgrade the database under a lock (several instances may start at once)."""
    from dbkeel.cli.migrations import run_migrate

    raise typer.Exit(asyncio.run(run_migrate(ini, revision, wait, lock_timeout, statement_timeout)))


def main() -> None:
    """Console-script entry point."""
    app()
