"""What kind of statement a SQL text is: the one place dbkeel reads statement text.

Every function skips leading white space and comments (``/* ... */``, ``-- ...``) and
reads only as much of the text as its answer needs. They run per statement (metrics, the
replicas' write tracking, the test sandbox), so the first keyword of a text is cached:
SQLAlchemy hands the same ``str`` for every execution of a cached statement.

These are heuristics over text, not a parser: a statement that writes only through a
function it calls (``SELECT nextval('s')``) is not seen as a write, and a keyword inside
a string literal of a CTE may be taken for one.

Example::

    keyword("/* tag */ select 1")            # "SELECT"
    write_verb("WITH x AS (SELECT 1) DELETE FROM t")   # "DELETE"
    written_tables('INSERT INTO "s"."t" VALUES (1)')  # ("s.t",)
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "READS",
    "WRITES",
    "head",
    "implicit_commit",
    "is_read",
    "keyword",
    "locks_rows",
    "write_verb",
    "written_tables",
]

# white space and comments before a statement (or between its clauses)
_LEAD = r"\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|$))\s*)*"
_LEAD_RE = re.compile(_LEAD, re.S)
_KEYWORD = re.compile(_LEAD + r"([A-Za-z_]\w*)", re.S)
_MAX_CACHED = 2048  # statement texts whose keyword is kept (bounded: texts with literals)
_MAX_CACHED_LENGTH = 8192  # longer texts (inlined bulk values) are not kept
_keywords: dict[str, str] = {}
_targets: dict[str, tuple[str, ...]] = {}

#: First keywords of statements that only read (``WITH`` may modify rows, ``EXPLAIN
#: ANALYZE`` runs its statement: neither is here).
READS = frozenset({"SELECT", "SHOW", "VALUES", "TABLE"})
#: First keywords of statements that change data or schema.
WRITES = frozenset(
    {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "CREATE", "DROP", "ALTER", "TRUNCATE"}
)

# MariaDB/MySQL commit the open transaction implicitly before (and after) these.
# Temporary tables are the exception.
_IMPLICIT_COMMIT_KEYWORDS = frozenset(
    {
        "CREATE", "DROP", "ALTER", "RENAME", "TRUNCATE", "LOCK", "UNLOCK", "GRANT", "REVOKE",
        "BEGIN", "START", "COMMIT", "ANALYZE", "OPTIMIZE", "REPAIR", "SET",
    }
)  # fmt: skip
_IMPLICIT_COMMIT = re.compile(
    _LEAD + r"(?:(?:CREATE|DROP)\s+(?!TEMPORARY\b)|ALTER\s|RENAME\s|TRUNCATE\s|"
    r"(?:UN)?LOCK\s+TABLES|GRANT\s|REVOKE\s|BEGIN\b|START\s+TRANSACTION|COMMIT\b|"
    r"(?:ANALYZE|OPTIMIZE|REPAIR)\s+TABLE|SET\s+(?:@@)?autocommit)",
    re.I | re.S,
)

_NAME = r"(?:[`\"]?[\w$]+[`\"]?\.)?[`\"]?[\w$]+[`\"]?"
_TARGET_KEYWORDS = frozenset({"INSERT", "REPLACE", "UPDATE", "DELETE", "MERGE", "COPY", "WITH"})
_TARGET = re.compile(
    _LEAD + r"(?:INSERT\s+(?:IGNORE\s+)?INTO|REPLACE\s+INTO|UPDATE(?:\s+IGNORE)?|"
    r"DELETE\s+FROM|MERGE\s+INTO|COPY)\s+(" + _NAME + ")",
    re.I | re.S,
)

# WITH [RECURSIVE]; then per CTE: name [(columns)] AS [NOT] [MATERIALIZED] (
_WITH = re.compile(_LEAD + r"WITH(?:\s+RECURSIVE)?\b", re.I | re.S)
_CTE_HEAD = re.compile(
    _LEAD + _NAME + _LEAD + r"(?:\([^()]*\)" + _LEAD + r")?AS" + _LEAD
    + r"(?:NOT\s+)?(?:MATERIALIZED" + _LEAD + r")?\(",
    re.I | re.S,
)  # fmt: skip
_COMMA = re.compile(_LEAD + ",", re.S)
_QUOTE_OR_PAREN = re.compile(r"['\"`()]|/\*|--")
# EXPLAIN's options: ANALYZE runs the statement, the others do not change that
_EXPLAIN = re.compile(
    _LEAD + r"(?:EXPLAIN|DESCRIBE|DESC)((?:" + _LEAD
    + r"(?:ANALYZE|ANALYSE|VERBOSE|EXTENDED|PARTITIONS|FORMAT\s*=\s*\w+|\([^()]*\)))*)",
    re.I | re.S,
)  # fmt: skip
_ANALYZE = re.compile(r"\bANALY[SZ]E\b(?!\s+(?:FALSE|OFF|0)\b)", re.I)
# SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE / LOCK IN SHARE MODE
_LOCKING = re.compile(
    r"\bFOR\s+(?:NO\s+KEY\s+)?UPDATE\b|\bFOR\s+(?:KEY\s+)?SHARE\b|\bLOCK\s+IN\s+SHARE\s+MODE\b",
    re.I,
)


def keyword(statement: str) -> str:
    """The first keyword of *statement*, upper case; ``""`` if it does not start with one.

    Example::

        keyword("  -- why\\n select 1")  # "SELECT"
    """
    found = _keywords.get(statement)
    if found is None:
        match = _KEYWORD.match(statement)
        found = match.group(1).upper() if match is not None else ""
        _remember(_keywords, statement, found)
    return found


def is_read(statement: str) -> bool:
    """True if *statement* starts with a keyword of ``READS`` (``SELECT``, ``SHOW``,
    ``VALUES``, ``TABLE``); ``WITH`` and ``EXPLAIN`` are not, a CTE may modify rows."""
    return keyword(statement) in READS


def head(statement: str, words: int = 3) -> str:
    """The first *words* words of *statement* after leading comments, for a message."""
    start = _LEAD_RE.match(statement)
    return " ".join(statement[start.end() if start else 0 :].split()[:words])


def write_verb(statement: str) -> str | None:
    """The keyword of the write *statement* is (``INSERT``, ``CREATE``...), or None.

    Follows ``WITH`` (a data-modifying CTE, or the statement after the CTEs) and
    ``EXPLAIN ANALYZE`` (which runs its statement). A locking read (``SELECT ... FOR
    UPDATE``) is not a write: see :func:`locks_rows`.
    """
    first = keyword(statement)
    if first in WRITES:
        return first
    if first == "WITH":
        parts = _cte_parts(statement)
        if parts is None:
            return None
        for body in (*parts[0], parts[1]):
            verb = write_verb(body)
            if verb is not None:
                return verb
        return None
    if first in ("EXPLAIN", "DESCRIBE", "DESC"):
        match = _EXPLAIN.match(statement)
        if match is None or _ANALYZE.search(match.group(1)) is None:
            return None  # only planned, not run
        return write_verb(statement[match.end() :])
    if first == "ANALYZE":  # MariaDB: ANALYZE UPDATE ... runs it (ANALYZE TABLE does not)
        inner = _KEYWORD.match(statement)
        rest = statement[inner.end() :] if inner is not None else ""
        verb = keyword(rest)
        return verb if verb in ("UPDATE", "DELETE", "INSERT", "REPLACE") else None
    return None


def locks_rows(statement: str) -> bool:
    """True for a locking read: ``SELECT ... FOR UPDATE`` / ``FOR SHARE`` (and their
    ``NO KEY`` / ``KEY`` forms), MariaDB's ``LOCK IN SHARE MODE``."""
    return keyword(statement) in ("SELECT", "WITH") and _LOCKING.search(statement) is not None


def implicit_commit(statement: str) -> bool:
    """True if MariaDB/MySQL commit the open transaction for *statement* (DDL other than
    on temporary tables, ``LOCK TABLES``, ``GRANT``, ``BEGIN``, ``SET autocommit``...)."""
    return (
        keyword(statement) in _IMPLICIT_COMMIT_KEYWORDS
        and _IMPLICIT_COMMIT.match(statement) is not None
    )


def written_tables(statement: str) -> tuple[str, ...]:
    """The tables *statement* writes rows to (``INSERT``/``REPLACE`` ``INTO``,
    ``UPDATE``, ``DELETE FROM``, ``MERGE INTO``, ``COPY``, also inside CTEs), as
    ``name`` or ``schema.name`` without quotes."""
    found = _targets.get(statement)
    if found is None:
        found = _written_tables(statement)
        _remember(_targets, statement, found)
    return found


def _written_tables(statement: str) -> tuple[str, ...]:
    first = keyword(statement)
    if first not in _TARGET_KEYWORDS:
        return ()
    if first == "WITH":
        parts = _cte_parts(statement)
        if parts is None:
            return ()
        return tuple(name for body in (*parts[0], parts[1]) for name in _written_tables(body))
    match = _TARGET.match(statement)
    if match is None:
        return ()
    return (match.group(1).replace('"', "").replace("`", ""),)


def _remember(cache: dict[str, Any], statement: str, value: Any) -> None:
    if len(statement) <= _MAX_CACHED_LENGTH:
        if len(cache) >= _MAX_CACHED:
            cache.clear()  # texts with literals filled it: the hot ones come back
        cache[statement] = value


def _cte_parts(statement: str) -> tuple[list[str], str] | None:
    """The bodies of a ``WITH`` statement's CTEs and the statement after them; None if
    the text does not parse as one."""
    match = _WITH.match(statement)
    if match is None:
        return None
    pos = match.end()
    bodies: list[str] = []
    while True:
        head_ = _CTE_HEAD.match(statement, pos)
        if head_ is None:
            return None
        end = _closing_paren(statement, head_.end())
        if end < 0:
            return None
        bodies.append(statement[head_.end() : end])
        comma = _COMMA.match(statement, end + 1)
        if comma is None:
            return bodies, statement[end + 1 :]
        pos = comma.end()


def _closing_paren(text: str, pos: int) -> int:
    """The index of the ``)`` that closes the parenthesis opened just before *pos*,
    skipping quoted strings, quoted names and comments; -1 if there is none."""
    depth = 1
    while True:
        match = _QUOTE_OR_PAREN.search(text, pos)
        if match is None:
            return -1
        token, pos = match.group(), match.end()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
            if depth == 0:
                return match.start()
        elif token == "/*":
            pos = text.find("*/", pos)
            if pos < 0:
                return -1
            pos += 2
        elif token == "--":
            pos = text.find("\n", pos)
            if pos < 0:
                return -1
        else:  # a quote: '' inside '...' closes and reopens, which this treats alike
            pos = text.find(token, pos)
            if pos < 0:
                return -1
            pos += 1
