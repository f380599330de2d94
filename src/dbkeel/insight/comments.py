"""SQL comment tags in the sqlcommenter format: ``/*application='billing',route='GET%20%2Fo'*/``.

Only static, low-cardinality values are tagged (the application name and the operation
named by ``track("GET /orders")``), so a statement's text stays the same from request to
request: asyncpg's prepared-statement cache and PgBouncer-mode statement names keep
working. Bound parameters never reach the comment: it is built from names the application
chose, never from the statement's values.

Format (sqlcommenter spec): keys sorted, key and value URL-encoded, value in single quotes,
pairs joined by commas, the comment appended after the statement.

``traceparent`` (opt-in, ``DATABASE_QUERY_COMMENT_TRACEPARENT``) is the one per-request
value: the W3C trace context of the current OpenTelemetry span, only when that span is
sampled (an unsampled trace id points at nothing in the tracing backend). It is the
request's span, not a per-statement one, so a request's statements keep one text: a
statement repeated within a request is prepared once; each sampled request prepares its
statements anew, and unsampled requests keep the shared cached text.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from dbkeel.exceptions import MissingDependencyError
from dbkeel.insight.context import current_context

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection, ExecutionContext

__all__ = ["CommentTagger", "format_comment", "traceparent"]


def format_comment(tags: dict[str, str]) -> str:
    """The sqlcommenter comment of *tags*, e.g. ``/*application='a%20b'*/``.

    Example::

        format_comment({"route": "GET /o", "application": "app"})
        # "/*application='app',route='GET%20%2Fo'*/"
    """
    pairs = [
        # quote(safe=""): "'" becomes %27 and "*" %2A, so neither the quoting nor the
        # comment's end ("*/") can be broken by a value.
        f"{quote(key, safe='')}='{quote(value, safe='')}'"
        for key, value in sorted(tags.items())
    ]
    return "/*" + ",".join(pairs) + "*/"


def traceparent(span: Any) -> tuple[str, str] | None:
    """``(traceparent, tracestate)`` of an OpenTelemetry *span*, or None unless it is valid
    and sampled. ``tracestate`` is ``""`` when the trace carries none.

    Example::

        traceparent(trace.get_current_span())
        # ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', '')
    """
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    state = context.trace_state.to_header() if context.trace_state else ""
    return parent, state


class CommentTagger:
    """``before_cursor_execute`` hook (retval=True) appending the tags."""

    def __init__(self, application: str, paramstyle: str, *, traceparent: bool = False) -> None:
        self.application = application
        # format/pyformat drivers (asyncmy) run "statement % parameters": the URL-encoding's
        # "%" must be doubled or it is read as a placeholder.
        self._percent = "%%" if paramstyle in ("format", "pyformat") else "%"
        self._plain = self._render({"application": application})
        self._current_span: Callable[[], Any] | None = None
        # (operation, traceparent, tracestate) -> comment of the last traced statement: a
        # request's statements share one trace context, so it is rendered once per request.
        self._last: tuple[tuple[str | None, str, str], str] | None = None
        if traceparent:
            try:
                from opentelemetry import trace
            except ImportError:
                raise MissingDependencyError(
                    "the traceparent comment tag", "otel", "opentelemetry-api"
                ) from None
            self._current_span = trace.get_current_span

    def _render(self, tags: dict[str, str]) -> str:
        return " " + format_comment(tags).replace("%", self._percent)

    @lru_cache(maxsize=256)  # noqa: B019 - one tagger per engine, lives as long as it
    def _for_operation(self, operation: str) -> str:
        return self._render({"application": self.application, "route": operation})

    def _traced(self, operation: str | None, parent: str, state: str) -> str:
        key = (operation, parent, state)
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        tags = {"application": self.application, "traceparent": parent}
        if operation is not None:
            tags["route"] = operation
        if state:
            tags["tracestate"] = state
        comment = self._render(tags)
        self._last = (key, comment)
        return comment

    def before(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> tuple[str, Any]:
        ctx = current_context()
        operation = None if ctx is None else ctx.operation
        if self._current_span is not None:
            trace_context = traceparent(self._current_span())
            if trace_context is not None:
                return statement + self._traced(operation, *trace_context), parameters
        if operation is None:
            return statement + self._plain, parameters
        return statement + self._for_operation(operation), parameters
