"""Shared output helpers of the CLI: one rich console, errors printed the same way."""

from __future__ import annotations

from rich.console import Console

from dbkeel.exceptions import DbkeelError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_error(exc: BaseException) -> None:
    """Print a dbkeel error for a person: its class and its message, no traceback."""
    kind = (
        type(exc).__name__ if isinstance(exc, DbkeelError) else f"unexpected {type(exc).__name__}"
    )
    err_console.print(f"[bold red]error[/] ({kind}): {exc}", soft_wrap=True)
