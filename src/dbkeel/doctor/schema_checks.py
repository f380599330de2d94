"""Checks on the application's models (a ``MetaData``), without touching the database.

Soft-delete tables are recognised from metadata alone: a column carrying
``info={"dbkeel.soft_delete": True}`` (what ``SoftDeleteMixin`` sets) or, for hand-written
models, a column named ``is_deleted`` or ``deleted_at``. Indexes marked
``info={"dbkeel.soft_delete_unique": True}`` are the mixin's deleted-row-aware uniques.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Column, Index, Table, UniqueConstraint
from sqlalchemy.dialects import postgresql

from dbkeel.doctor.findings import Finding

if TYPE_CHECKING:
    from sqlalchemy import MetaData

__all__ = ["check_schema"]

SOFT_DELETE_INFO = "dbkeel.soft_delete"
SOFT_DELETE_UNIQUE_INFO = "dbkeel.soft_delete_unique"
_SOFT_DELETE_NAMES = ("is_deleted", "deleted_at")
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def check_schema(metadata: MetaData, backend: str) -> list[Finding]:
    """Every schema check over *metadata*'s tables; one ok finding per clean check."""
    tables = sorted(metadata.tables.values(), key=lambda t: t.fullname)
    checks: dict[str, list[Finding]] = {
        "schema.fk-index": [f for t in tables for f in _fk_without_index(t)],
        "schema.soft-delete-index": [f for t in tables for f in _soft_delete_index(t)],
        "schema.soft-delete-unique": [f for t in tables for f in _soft_delete_unique(t)],
    }
    if backend == "postgresql":
        checks["schema.json-type"] = [f for t in tables for f in _json_not_jsonb(t)]
    findings: list[Finding] = []
    for check_id, found in checks.items():
        findings += found or [Finding(check_id, "ok", f"{len(tables)} tables checked")]
    return findings


def _leading_columns(table: Table) -> list[tuple[str, ...]]:
    """Column-name tuples of every index-backed key of *table*."""
    keys: list[tuple[str, ...]] = []
    if table.primary_key.columns:
        keys.append(tuple(c.name for c in table.primary_key.columns))
    for index in table.indexes:
        keys.append(tuple(c.name for c in index.columns))
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            keys.append(tuple(c.name for c in constraint.columns))
    return keys


def _fk_without_index(table: Table) -> list[Finding]:
    findings = []
    keys = _leading_columns(table)
    for fk in sorted(table.foreign_key_constraints, key=lambda c: [col.name for col in c.columns]):
        cols = tuple(c.name for c in fk.columns)
        if any(key[: len(cols)] == cols for key in keys):
            continue
        subject = f"{table.fullname}({', '.join(cols)})"
        target = fk.referred_table.fullname
        findings.append(
            Finding(
                "schema.fk-index",
                "warning",
                f"foreign key {subject} -> {target} has no index",
                f"Joins from {target} and every DELETE/UPDATE of a {target} row scan "
                f"{table.fullname} in full (PostgreSQL does not index foreign keys itself).",
                f"mapped_column(ForeignKey(...), index=True), or "
                f"Index('ix_{table.name}_{'_'.join(cols)}', {', '.join(map(repr, cols))})",
                subject,
            )
        )
    return findings


def _soft_delete_column(table: Table) -> Column[Any] | None:
    for column in table.columns:
        if column.info.get(SOFT_DELETE_INFO):
            return column
    for name in _SOFT_DELETE_NAMES:
        if name in table.columns:
            return table.columns[name]
    return None


def _where_clause(index: Index) -> Any:
    for dialect in ("postgresql", "sqlite"):
        where = index.dialect_options[dialect]._non_defaults.get("where")
        if where is not None:
            return where
    return None


def _mentions(clause: Any, column: Column[Any]) -> bool:
    if clause is None:
        return False
    if isinstance(clause, str):
        return column.name in clause
    from sqlalchemy.sql import visitors

    return any(
        getattr(element, "name", None) == column.name
        for element in visitors.iterate(clause)
        if isinstance(element, Column)
    )


def _soft_delete_index(table: Table) -> list[Finding]:
    flag = _soft_delete_column(table)
    if flag is None:
        return []
    for index in table.indexes:
        if flag.name in [c.name for c in index.columns] or _mentions(_where_clause(index), flag):
            return []
    return [
        Finding(
            "schema.soft-delete-index",
            "warning",
            f"soft-delete table {table.fullname} has no index using {flag.name}",
            f"Every query filters on {flag.name}; without an index (or a partial index "
            f"WHERE {flag.name} ...) the filter cannot narrow a scan.",
            f"Index('ix_{table.name}_live', <lookup column>, postgresql_where="
            f"{table.name}.c.{flag.name}.is_(None)), or index=True on {flag.name}",
            table.fullname,
        )
    ]


def _soft_delete_unique(table: Table) -> list[Finding]:
    flag = _soft_delete_column(table)
    if flag is None:
        return []
    uniques: list[tuple[str, list[str]]] = []
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            uniques.append((str(constraint.name or "unique"), [c.name for c in constraint.columns]))
    for index in table.indexes:
        if not index.unique or index.info.get(SOFT_DELETE_UNIQUE_INFO):
            continue
        if _mentions(_where_clause(index), flag):
            continue
        uniques.append((str(index.name), [c.name for c in index.columns]))
    findings = []
    for name, cols in sorted(uniques, key=lambda u: u[1]):
        if flag.name in cols:
            continue
        subject = f"{table.fullname}({', '.join(cols)})"
        findings.append(
            Finding(
                "schema.soft-delete-unique",
                "warning",
                f"unique key {subject} also counts soft-deleted rows",
                "After a row is soft-deleted its value stays taken: re-creating it (the same "
                "email, the same slug) fails with a duplicate key error.",
                f"a partial unique index: Index({name!r}, {', '.join(map(repr, cols))}, "
                f"unique=True, postgresql_where=..., sqlite_where=... {flag.name} ... live "
                f"rows) (MariaDB: add {flag.name} to the key via a generated column)",
                subject,
            )
        )
    return findings


def _json_not_jsonb(table: Table) -> list[Finding]:
    findings = []
    for column in table.columns:
        impl = column.type.dialect_impl(_PG)
        if not isinstance(impl, JSON) or isinstance(impl, postgresql.JSONB):
            continue
        subject = f"{table.fullname}.{column.name}"
        findings.append(
            Finding(
                "schema.json-type",
                "warning",
                f"{subject} is JSON, not JSONB, on PostgreSQL",
                "json is stored as text and re-parsed on every read; it cannot be indexed "
                "(GIN) and has no equality operator, so DISTINCT/GROUP BY on it fail.",
                "JSON().with_variant(postgresql.JSONB(), 'postgresql') (or dbkeel's JSONBType)",
                subject,
            )
        )
    return findings
