"""``dbkeel migrations lint``: flag migration operations that lock or rewrite big tables.

The linter reads migration files (it never imports or runs them) and reports each
``op.*`` call that, on PostgreSQL or MariaDB, takes a long exclusive lock or rewrites
the table, with the reason and the safe alternative. Rule ids are stable:

=======  ==========================================================================
DK101    ``op.create_index`` without ``postgresql_concurrently=True``
DK102    ``op.add_column`` with a volatile server default (``now()``, random, uuid)
DK103    ``op.alter_column(type_=...)``: a type change rewrites the table
DK104    ``op.alter_column(nullable=False)`` without the check-constraint dance
DK105    ``op.create_foreign_key`` without ``postgresql_not_valid=True``
DK106    ``op.drop_column`` / renaming a column that running code still reads
=======  ==========================================================================

Silence one operation with a comment on any of its lines: ``# dbkeel: allow DK101``.

Example::

    findings = lint_file(Path("migrations/versions/0003_add_index.py"))
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["RULES", "Finding", "Rule", "lint_file", "lint_source"]


@dataclass(frozen=True)
class Rule:
    """One lint rule: its stable id, what it catches, why it hurts, what to do instead."""

    id: str
    title: str
    why: str
    fix: str


RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule(
            "DK101",
            "index created without CONCURRENTLY",
            "CREATE INDEX blocks every write to the table until the index is built.",
            "op.create_index(..., postgresql_concurrently=True) inside "
            "`with op.get_context().autocommit_block():` (MariaDB builds InnoDB indexes "
            "online by default).",
        ),
        Rule(
            "DK102",
            "column added with a volatile default",
            "A volatile default (now(), random(), uuid) is computed per row, so adding "
            "the column rewrites the whole table under an exclusive lock.",
            "Add the column without a default, set the default in a second "
            "alter_column, backfill in batches.",
        ),
        Rule(
            "DK103",
            "column type changed",
            "Most type changes rewrite the table and its indexes under an exclusive "
            "lock (PostgreSQL ACCESS EXCLUSIVE; MariaDB COPY algorithm).",
            "Add a new column, write both, backfill in batches, switch reads, drop the "
            "old one. Widening varchar(n) is safe: silence the rule for it.",
        ),
        Rule(
            "DK104",
            "NOT NULL set on an existing column",
            "SET NOT NULL scans the whole table under an exclusive lock.",
            "Add CHECK (col IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it, then SET NOT "
            "NULL (PostgreSQL 12+ uses the constraint and skips the scan) and drop it.",
        ),
        Rule(
            "DK105",
            "foreign key added and validated at once",
            "Adding a validated foreign key locks both tables while every row is checked.",
            "op.create_foreign_key(..., postgresql_not_valid=True), then VALIDATE "
            "CONSTRAINT in a later migration.",
        ),
        Rule(
            "DK106",
            "column dropped or renamed",
            "Running application instances still select the old column and fail until "
            "they are all replaced.",
            "Deploy code that no longer uses the column first (for SQLAlchemy also "
            "remove it from the model), then drop or rename it in a later release.",
        ),
    )
}

_VOLATILE = re.compile(r"now\(|current_timestamp|random\(|uuid|clock_timestamp", re.I)
_ALLOW = re.compile(r"#\s*dbkeel:\s*allow\s+([A-Z0-9, ]+)")


@dataclass(frozen=True)
class Finding:
    """A rule that fired: where, which operation, and the rule's reason and fix."""

    path: str
    line: int
    rule: str
    operation: str
    title: str
    why: str
    fix: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _rules_for(call: ast.Call, operation: str, source: str) -> list[str]:
    fired: list[str] = []
    if operation == "create_index" and not _true(_keyword(call, "postgresql_concurrently")):
        fired.append("DK101")
    if operation == "add_column":
        text = ast.get_source_segment(source, call) or ""
        default = re.search(r"server_default\s*=(.*)", text, re.S)
        if default and _VOLATILE.search(default.group(1)):
            fired.append("DK102")
    if operation == "alter_column":
        if _keyword(call, "type_") is not None:
            fired.append("DK103")
        nullable = _keyword(call, "nullable")
        if isinstance(nullable, ast.Constant) and nullable.value is False:
            fired.append("DK104")
        if _keyword(call, "new_column_name") is not None:
            fired.append("DK106")
    if operation == "create_foreign_key" and not _true(_keyword(call, "postgresql_not_valid")):
        fired.append("DK105")
    if operation == "drop_column":
        fired.append("DK106")
    return fired


def _operation(call: ast.Call) -> str | None:
    # op.x(...) and batch_op.x(...) (the batch form autogenerate writes for SQLite)
    func = call.func
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in ("op", "batch_op")
    ):
        return func.attr
    return None


def lint_source(source: str, path: str = "<migration>") -> list[Finding]:
    """The findings of one migration's source, in line order."""
    tree = ast.parse(source, filename=path)
    lines = source.splitlines()
    findings: list[Finding] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (operation := _operation(node)) is None:
            continue
        span = lines[node.lineno - 1 : (node.end_lineno or node.lineno)]
        allowed = {
            rule.strip() for line in span for m in _ALLOW.finditer(line) for rule in m[1].split(",")
        }
        for rule_id in _rules_for(node, operation, source):
            if rule_id in allowed:
                continue
            rule = RULES[rule_id]
            findings.append(
                Finding(
                    path, node.lineno, rule_id, f"op.{operation}", rule.title, rule.why, rule.fix
                )
            )
    return sorted(findings, key=lambda f: (f.line, f.rule))


def lint_file(path: Path) -> list[Finding]:
    """The findings of the migration file *path*."""
    return lint_source(path.read_text(encoding="utf-8"), str(path))
