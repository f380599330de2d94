"""``dbkeel migrations lint``: every rule with a migration that triggers it and one that does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbkeel.migrations.lint import RULES, lint_source
from tests.conftest import run_cli

CASES = {
    "DK101": (
        'op.create_index("ix_a_b", "a", ["b"])',
        "with op.get_context().autocommit_block():\n"
        '        op.create_index("ix_a_b", "a", ["b"], postgresql_concurrently=True)',
    ),
    "DK102": (
        'op.add_column("a", sa.Column("at", sa.DateTime, server_default=sa.text("now()")))',
        'op.add_column("a", sa.Column("n", sa.Integer, server_default="0"))',
    ),
    "DK103": (
        'op.alter_column("a", "n", type_=sa.BigInteger())',
        'op.alter_column("a", "n", comment="count")',
    ),
    "DK104": (
        'op.alter_column("a", "n", nullable=False)',
        'op.alter_column("a", "n", nullable=True)',
    ),
    "DK105": (
        'op.create_foreign_key("fk", "a", "b", ["b_id"], ["id"])',
        'op.create_foreign_key("fk", "a", "b", ["b_id"], ["id"], postgresql_not_valid=True)',
    ),
    "DK106": (
        'op.drop_column("a", "old")',
        'op.add_column("a", sa.Column("new", sa.Integer))',
    ),
}


def migration(body: str) -> str:
    return f"import sqlalchemy as sa\nfrom alembic import op\n\n\ndef upgrade():\n    {body}\n"


def test_every_rule_has_cases() -> None:
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_triggers_and_does_not(rule: str) -> None:
    bad, good = CASES[rule]
    assert [f.rule for f in lint_source(migration(bad))] == [rule]
    assert [f.rule for f in lint_source(migration(good))] == []


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_silenced_per_operation(rule: str) -> None:
    bad, _ = CASES[rule]
    silenced = f"{bad}  # dbkeel: allow {rule}\n    {bad}"
    found = lint_source(migration(silenced))
    assert [(f.rule, f.line) for f in found] == [(rule, 7)]


def test_rename_column_and_batch_form() -> None:
    source = migration(
        'op.alter_column("a", "old", new_column_name="new")\n'
        '    with op.batch_alter_table("a") as batch_op:\n'
        '        batch_op.drop_column("x")'
    )
    assert [f.rule for f in lint_source(source)] == ["DK106", "DK106"]


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    bad = tmp_path / "0001_bad.py"
    bad.write_text(migration(CASES["DK101"][0]))
    good = tmp_path / "0002_good.py"
    good.write_text(migration(CASES["DK101"][1]))
    assert run_cli("migrations", "lint", str(good)).returncode == 0
    done = run_cli("migrations", "lint", str(bad), "--json")
    assert done.returncode == 1
    [finding] = json.loads(done.stdout)
    assert finding["rule"] == "DK101" and finding["line"] == 6
    assert "CONCURRENTLY" in finding["title"]
    text = run_cli("migrations", "lint", str(bad))
    assert "DK101" in text.stdout and "postgresql_concurrently=True" in text.stdout
    broken = tmp_path / "0003_broken.py"
    broken.write_text("def upgrade(:\n")
    failed = run_cli("migrations", "lint", str(broken))
    assert failed.returncode == 2 and "Cannot lint" in failed.stderr
