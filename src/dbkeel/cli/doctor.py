"""``dbkeel doctor``: print the doctor's report as a table (people) or JSON (machines)."""

from __future__ import annotations

import json
import os
import sys

from rich.table import Table

from dbkeel.cli._console import console, print_error
from dbkeel.doctor import Report, load_metadata, run_doctor
from dbkeel.exceptions import DbkeelError

__all__ = ["EXIT_UNREACHABLE", "render_report", "run_doctor_command"]

#: Exit code when the doctor could not run: database unreachable or settings invalid.
EXIT_UNREACHABLE = 2
_STYLES = {"ok": "green", "warning": "yellow", "error": "bold red"}


async def run_doctor_command(
    *, workers: int | None, as_json: bool, strict: bool, models: str | None
) -> int:
    """Run the doctor with the environment's settings; returns the exit code."""
    try:
        metadata = None
        if models:
            # The command runs from the project root, as the application does; a console
            # script does not put the working directory on sys.path by itself.
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            metadata = load_metadata(models)
        report = await run_doctor(workers=workers, metadata=metadata)
    except DbkeelError as exc:
        print_error(exc)
        return EXIT_UNREACHABLE
    if as_json:
        # plain print: rich would wrap long lines and break the JSON
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        render_report(report)
    return report.exit_code(strict=strict)


def render_report(report: Report) -> None:
    """Print *report* as a table: problems first, with why and the fix."""
    table = Table(
        title=f"dbkeel doctor: {report.backend} {report.server_version}, {report.url}",
        caption=f"{report.count('error')} error(s), {report.count('warning')} warning(s), "
        f"{report.count('ok')} ok; ENVIRONMENT={report.environment}, {report.workers} "
        f"worker(s); {report.elapsed_ms:.0f} ms",
        show_lines=True,
    )
    # fold, never "...": a truncated fix is a wrong fix
    for header in ("level", "check", "found", "why / fix"):
        table.add_column(header, overflow="fold")
    problems = report.problems
    for finding in problems + [f for f in report.findings if f.level == "ok"]:
        detail = ""
        if finding.level != "ok":
            detail = f"{finding.why}\n[bold]fix:[/] {finding.fix}"
        table.add_row(
            f"[{_STYLES[finding.level]}]{finding.level}[/]",
            finding.id,
            finding.what,
            detail,
        )
    console.print(table)
