"""The opt-in ``updated_at`` trigger, as SQL for each database.

The trigger sets ``updated_at`` to the current UTC time on every UPDATE that does not
set it itself, so raw SQL from other programs keeps the column true. The ORM always
sets it, so for ORM updates the trigger does nothing.

* PostgreSQL: a ``BEFORE UPDATE`` row trigger calling a PL/pgSQL function.
* MariaDB: a ``BEFORE UPDATE`` trigger with ``UTC_TIMESTAMP(6)``. Not the column's
  ``ON UPDATE CURRENT_TIMESTAMP``: that uses the *writer's* session time zone, so a
  program in another zone would store local time in a UTC column.
* SQLite: an ``AFTER UPDATE`` trigger that updates the row again (SQLite triggers
  cannot assign to ``NEW``); the ``WHEN`` clause stops it from firing on itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.engine import Connection

__all__ = ["attach_updated_at_trigger", "create_trigger_sql", "drop_trigger_sql"]


def _names(table: str) -> tuple[str, str]:
    return f"{table}_dbkeel_updated_at", f"{table}_dbkeel_set_updated_at"


def create_trigger_sql(dialect: str, table: str, column: str = "updated_at") -> list[str]:
    """The statements that create the ``updated_at`` trigger of *table* on *dialect*."""
    trigger, function = _names(table)
    if dialect == "postgresql":
        return [
            f'CREATE OR REPLACE FUNCTION "{function}"() RETURNS trigger AS $$ BEGIN '
            f'IF NEW."{column}" IS NOT DISTINCT FROM OLD."{column}" THEN '
            f'NEW."{column}" := now(); END IF; RETURN NEW; END $$ LANGUAGE plpgsql',
            f'CREATE TRIGGER "{trigger}" BEFORE UPDATE ON "{table}" FOR EACH ROW '
            f'EXECUTE FUNCTION "{function}"()',
        ]
    if dialect in ("mysql", "mariadb"):
        return [
            f"CREATE TRIGGER `{trigger}` BEFORE UPDATE ON `{table}` FOR EACH ROW "
            f"SET NEW.`{column}` = IF(NEW.`{column}` <=> OLD.`{column}`, "
            f"UTC_TIMESTAMP(6), NEW.`{column}`)"
        ]
    if dialect == "sqlite":
        return [
            f'CREATE TRIGGER "{trigger}" AFTER UPDATE ON "{table}" FOR EACH ROW '
            f'WHEN NEW."{column}" IS OLD."{column}" BEGIN '
            f"UPDATE \"{table}\" SET \"{column}\" = strftime('%Y-%m-%d %H:%M:%f000', 'now') "
            f"WHERE rowid = NEW.rowid; END"
        ]
    raise NotImplementedError(
        f"dbkeel has no updated_at trigger for the {dialect!r} dialect; supported are "
        f"postgresql, mariadb/mysql and sqlite. Leave updated_at_trigger off there."
    )


def drop_trigger_sql(dialect: str, table: str) -> list[str]:
    """The statements that remove what :func:`create_trigger_sql` created."""
    trigger, function = _names(table)
    if dialect == "postgresql":
        return [
            f'DROP TRIGGER IF EXISTS "{trigger}" ON "{table}"',
            f'DROP FUNCTION IF EXISTS "{function}"()',
        ]
    quote = "`" if dialect in ("mysql", "mariadb") else '"'
    return [f"DROP TRIGGER IF EXISTS {quote}{trigger}{quote}"]


def attach_updated_at_trigger(table: Table, column: str = "updated_at") -> None:
    """Create the trigger whenever *table* is created (``metadata.create_all``)."""

    def after_create(target: Table, connection: Connection, **kw: Any) -> None:
        for statement in create_trigger_sql(connection.dialect.name, table.name, column):
            connection.exec_driver_sql(statement)

    def after_drop(target: Table, connection: Connection, **kw: Any) -> None:
        if connection.dialect.name == "postgresql":  # the function outlives the table
            for statement in drop_trigger_sql("postgresql", table.name)[1:]:
                connection.exec_driver_sql(statement)

    event.listen(table, "after_create", after_create)
    event.listen(table, "after_drop", after_drop)
    table.info["dbkeel.updated_at_trigger"] = column
