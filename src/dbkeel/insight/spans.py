"""OpenTelemetry spans, one per statement (extra ``dbkeel[otel]``; off unless
``DATABASE_QUERY_SPANS=true``).

Attributes follow the database client semantic conventions: ``db.system.name``,
``db.namespace``, ``db.operation.name``, ``db.collection.name`` (when the statement is a
SQLAlchemy construct on one table), ``server.address``, ``server.port`` and
``db.query.text`` with string and number literals replaced by ``?`` (bound parameters are
placeholders already and never read). The span is a child of the current span (the OTel
context is a contextvar, which SQLAlchemy carries into its greenlet); a failing statement
records the exception and sets the ERROR status. Span kind: CLIENT.

Optionally (``DATABASE_QUERY_TRANSACTION_SPANS=true``) a ``transaction`` span covers each
transaction of a connection, from SQLAlchemy's begin (a session's first statement) to its
COMMIT or ROLLBACK, with ``dbkeel.transaction.outcome`` = ``commit`` or ``rollback``: the
statement spans of the transaction are its children, so a trace shows which statements one
unit of work held its connection for. A session that commits twice has two.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from dbkeel import _sql, _timer
from dbkeel.exceptions import MissingDependencyError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext

__all__ = ["StatementSpans", "sanitize"]

_SPAN = "_dbkeel_span"
_MAX_SHAPES = 1000
_TRANSACTION = "dbkeel_transaction_span"  # key in Connection.info while a transaction runs
# Quoted strings and numbers; "$1"-style placeholders are kept.
_LITERALS = re.compile(r"'(?:[^']|'')*'|(?<![\w$])\d+(?:\.\d+)?\b")
_SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite", "mysql": "mysql", "mariadb": "mariadb"}


def sanitize(statement: str) -> str:
    """*statement* with string and number literals replaced by ``?``."""
    return _LITERALS.sub("?", statement)


class StatementSpans:
    """Cursor-event listeners that wrap each statement in a CLIENT span."""

    def __init__(
        self, engine: Engine, *, statements: bool = True, transactions: bool = False
    ) -> None:
        try:
            from opentelemetry import trace
        except ImportError:
            raise MissingDependencyError("query spans", "otel", "opentelemetry-api") from None
        self._trace = trace
        self._tracer = trace.get_tracer("dbkeel.insight")
        self._statements = statements
        self._transactions = transactions
        url = engine.url
        self._system = _SYSTEMS.get(engine.dialect.name, engine.dialect.name)
        base: dict[str, Any] = {}
        if url.database:
            base["db.namespace"] = url.database
        if url.host:
            base["server.address"] = url.host
        if url.port:
            base["server.port"] = url.port
        self._base = base
        # statement text -> (span name, attributes): SQLAlchemy hands the same text for
        # each execution of a cached statement, so parsing and sanitizing happen once.
        self._shapes: dict[str, tuple[str, dict[str, Any]]] = {}

    def attach(self, engine: Engine) -> None:
        if self._statements:
            _timer.StatementTimer.of(engine).add(self.after, before=self.before, error=self.error)
        if self._transactions:
            event.listen(engine, "begin", self.begin)
            event.listen(engine, "commit", self.commit)
            event.listen(engine, "rollback", self.rollback)

    def _system_of(self, conn: Connection) -> str:
        # MariaDB is told apart from MySQL only once connected (dialect.is_mariadb).
        return "mariadb" if getattr(conn.dialect, "is_mariadb", False) else self._system

    # -- transactions ---------------------------------------------------------------------

    def begin(self, conn: Connection) -> None:
        stale = conn.info.pop(_TRANSACTION, None)
        if stale is not None:  # its connection was invalidated before COMMIT/ROLLBACK
            stale.end()
        attributes = dict(self._base)
        attributes["db.system.name"] = self._system_of(conn)
        conn.info[_TRANSACTION] = self._tracer.start_span(
            "transaction", kind=self._trace.SpanKind.CLIENT, attributes=attributes
        )

    def commit(self, conn: Connection) -> None:
        self._end_transaction(conn, "commit")

    def rollback(self, conn: Connection) -> None:
        self._end_transaction(conn, "rollback")

    def _end_transaction(self, conn: Connection, outcome: str) -> None:
        span = conn.info.pop(_TRANSACTION, None)
        if span is not None:
            span.set_attribute("dbkeel.transaction.outcome", outcome)
            span.end()

    # -- statements -----------------------------------------------------------------------

    def before(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext,
        executemany: bool,
    ) -> None:
        # The context's statement is the text before comment tags were appended: no
        # comment in db.query.text, and one cache entry whatever the traceparent.
        statement = context.statement
        shape = self._shapes.get(statement)
        if shape is None:
            shape = self._shape(conn, statement, context)
            if len(self._shapes) < _MAX_SHAPES:
                self._shapes[statement] = shape
        name, attributes = shape
        transaction = conn.info.get(_TRANSACTION) if self._transactions else None
        parent = None if transaction is None else self._trace.set_span_in_context(transaction)
        span = self._tracer.start_span(
            name, context=parent, kind=self._trace.SpanKind.CLIENT, attributes=attributes
        )
        setattr(context, _SPAN, span)

    def _shape(
        self, conn: Connection, statement: str, context: ExecutionContext
    ) -> tuple[str, dict[str, Any]]:
        attributes = dict(self._base)
        system = self._system_of(conn)
        attributes["db.system.name"] = system
        operation = _sql.keyword(statement)
        if operation:
            attributes["db.operation.name"] = operation
        table = _collection(context)
        if table:
            attributes["db.collection.name"] = table
        attributes["db.query.text"] = sanitize(statement)
        return " ".join(p for p in (operation, table) if p) or system, attributes

    def after(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
        elapsed: float,
    ) -> None:
        span = getattr(context, _SPAN, None)
        if span is not None:
            delattr(context, _SPAN)
            span.end()

    def error(self, exception_context: ExceptionContext, elapsed: float | None) -> None:
        context = exception_context.execution_context
        span = getattr(context, _SPAN, None)
        if span is None:
            return
        delattr(context, _SPAN)
        error = exception_context.original_exception
        span.record_exception(error)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, type(error).__name__))
        span.set_attribute("error.type", type(error).__name__)
        span.end()


def _collection(context: ExecutionContext) -> str | None:
    compiled = getattr(context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    table = getattr(statement, "table", None)  # INSERT / UPDATE / DELETE
    if table is None:
        froms = getattr(statement, "get_final_froms", None)
        if froms is None:
            return None
        tables = froms()
        if len(tables) != 1:
            return None
        table = tables[0]
    name = getattr(table, "name", None)
    return name if isinstance(name, str) else None
