"""SQL comment tags in the sqlcommenter format: ``/*application='billing',route='GET%20%2Fo'*/``.

Only static, low-cardinality values are tagged (the application name and the operation
named by ``track("GET /orders")``), so a statement's text stays the same from request to
request: asyncpg's prepared-statement cache and PgBouncer-mode statement names keep
working. Bound parameters never reach the comment: it is built from names the application
chose, never from the statement's values.

Format (sqlcommenter spec): keys sorted, key and value URL-encoded, value in single quotes,
pairs joined by commas, the comment appended after the statement.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from dbkeel.insight.context import current_context

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, ExecutionContext

__all__ = ["CommentTagger", "format_comment"]


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


class CommentTagger:
    """``before_cursor_execute`` hook (retval=True) appending the static tags."""

    def __init__(self, application: str, paramstyle: str) -> None:
        self.application = application
        # format/pyformat drivers (asyncmy) run "statement % parameters": the URL-encoding's
        # "%" must be doubled or it is read as a placeholder.
        self._percent = "%%" if paramstyle in ("format", "pyformat") else "%"
        self._plain = self._render({"application": application})

    def _render(self, tags: dict[str, str]) -> str:
        return " " + format_comment(tags).replace("%", self._percent)

    @lru_cache(maxsize=256)  # noqa: B019 - one tagger per engine, lives as long as it
    def _for_operation(self, operation: str) -> str:
        return self._render({"application": self.application, "route": operation})

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
        if ctx is None or ctx.operation is None:
            return statement + self._plain, parameters
        return statement + self._for_operation(ctx.operation), parameters
