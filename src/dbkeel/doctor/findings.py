"""The doctor's result model: :class:`Finding`, :class:`Report`, and the JSON schema.

A finding is one check's verdict on one subject. Its ``id`` is stable across releases
(scripts may filter on it); ``what`` says what was found, ``why`` why it matters, ``fix``
the exact setting or statement that makes it go away::

    report = await run_doctor(settings)
    for finding in report.problems:
        print(finding.id, finding.level, finding.fix)
    sys.exit(report.exit_code(strict=True))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "LEVELS",
    "REPORT_SCHEMA",
    "SCHEMA_VERSION",
    "DoctorOptions",
    "Finding",
    "Level",
    "Report",
]

Level = Literal["ok", "warning", "error"]
#: The levels, mildest first.
LEVELS: Final = ("ok", "warning", "error")
#: Bumped when a field of the JSON report changes meaning or disappears.
SCHEMA_VERSION: Final = 1


@dataclass(frozen=True)
class Finding:
    """One check's verdict. ``subject`` names the table or column for schema checks."""

    id: str
    level: Level
    what: str
    why: str = ""
    fix: str = ""
    subject: str | None = None


@dataclass(frozen=True)
class DoctorOptions:
    """Thresholds of the checks that have no single right answer.

    ``cpu_count`` defaults to the CPUs this process may use (the pool-sizing rule is per
    application host); pass the application host's count when the doctor runs elsewhere.

    Example::

        report = await run_doctor(settings, options=DoctorOptions(latency_warning_ms=2))
    """

    cpu_count: int | None = None
    latency_warning_ms: float = 10.0
    latency_error_ms: float = 50.0


@dataclass
class Report:
    """Everything one doctor run found, plus what it looked at.

    ``exit_code(strict)`` is what ``dbkeel doctor`` exits with: 0 clean, 1 errors (with
    ``strict``: warnings too). An unreachable database never produces a report: it raises
    :class:`~dbkeel.DatabaseUnavailableError` (the CLI exits 2).
    """

    url: str  # masked: the password is always ***
    backend: str
    environment: str
    workers: int
    server_version: str = ""
    elapsed_ms: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        """Findings that are not ``ok``, errors first."""
        bad = [f for f in self.findings if f.level != "ok"]
        return sorted(bad, key=lambda f: -LEVELS.index(f.level))

    def count(self, level: Level) -> int:
        """How many findings have *level*."""
        return sum(1 for f in self.findings if f.level == level)

    def exit_code(self, *, strict: bool = False) -> int:
        """0 when clean, 1 when there are errors (or, with *strict*, warnings)."""
        if self.count("error") or (strict and self.count("warning")):
            return 1
        return 0

    def by_id(self, finding_id: str) -> list[Finding]:
        """The findings of one check (several for schema checks, one per subject)."""
        return [f for f in self.findings if f.id == finding_id]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, valid against :data:`REPORT_SCHEMA`."""
        return {
            "schema_version": SCHEMA_VERSION,
            "url": self.url,
            "backend": self.backend,
            "environment": self.environment,
            "server_version": self.server_version,
            "workers": self.workers,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "summary": {level: self.count(level) for level in LEVELS},
            "findings": [asdict(f) for f in self.findings],
        }


_TEXT = {"type": "string"}
#: JSON schema (draft 2020-12) of ``dbkeel doctor --json`` and :meth:`Report.to_dict`.
REPORT_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dbkeel doctor report",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema_version",
        "url",
        "backend",
        "environment",
        "server_version",
        "workers",
        "elapsed_ms",
        "summary",
        "findings",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "url": {"type": "string", "description": "the database URL, password as ***"},
        "backend": {"enum": ["postgresql", "sqlite", "mysql", "mariadb"]},
        "environment": {"enum": ["test", "development", "production"]},
        "server_version": _TEXT,
        "workers": {"type": "integer", "minimum": 1},
        "elapsed_ms": {"type": "number", "minimum": 0},
        "summary": {
            "type": "object",
            "additionalProperties": False,
            "required": list(LEVELS),
            "properties": {level: {"type": "integer", "minimum": 0} for level in LEVELS},
        },
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "level", "what", "why", "fix", "subject"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z]+(\\.[a-z0-9-]+)+$"},
                    "level": {"enum": list(LEVELS)},
                    "what": _TEXT,
                    "why": _TEXT,
                    "fix": _TEXT,
                    "subject": {"type": ["string", "null"]},
                },
            },
        },
    },
}
