"""dbkeel._sql: what kind of statement a SQL text is (pure functions, no database)."""

from __future__ import annotations

import pytest

from dbkeel import _sql


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT 1", "SELECT"),
        ("  \n\tselect * from t", "SELECT"),
        ("/* tag */ UPDATE t SET a = 1", "UPDATE"),
        ("/* a */ /* multi\nline */insert into t values (1)", "INSERT"),
        ("-- why\nSHOW search_path", "SHOW"),
        ("-- only a comment", ""),
        ("SELECT*FROM t", "SELECT"),
        ("selectivity_fn()", "SELECTIVITY_FN"),
        ("'; DROP TABLE users", ""),
        ("(SELECT 1) UNION (SELECT 2)", ""),
        ("", ""),
        ("   ", ""),
    ],
)
def test_keyword_is_the_first_word_after_comments(statement: str, expected: str) -> None:
    assert _sql.keyword(statement) == expected


def test_keyword_cache_stays_bounded() -> None:
    for i in range(3 * 2048):
        assert _sql.keyword(f"select {i}") == "SELECT"
    assert len(_sql._keywords) <= 2048
    long = "insert into t values " + ",".join(["(1)"] * 5000)
    assert _sql.keyword(long) == "INSERT"
    assert long not in _sql._keywords


@pytest.mark.parametrize(
    ("statement", "reads"),
    [
        ("SELECT 1", True),
        ("  /* tag */ select * from t", True),
        ("-- why\nSHOW search_path", True),
        ("VALUES (1)", True),
        ("TABLE t", True),
        # a locking read changes no data: no commit position to wait for
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE", True),
        ("INSERT INTO t VALUES (1)", False),
        # conservative: a CTE may modify rows, EXPLAIN ANALYZE runs its statement
        ("WITH x AS (SELECT 1) SELECT * FROM x", False),
        ("EXPLAIN ANALYZE UPDATE t SET a = 1", False),
        ("selectivity_fn()", False),
        ("", False),
    ],
)
def test_is_read(statement: str, reads: bool) -> None:
    assert _sql.is_read(statement) is reads


@pytest.mark.parametrize(
    ("statement", "verb"),
    [
        ("INSERT INTO t VALUES (1)", "INSERT"),
        ("  update t set a = 1", "UPDATE"),
        ("/* c */ DELETE FROM t", "DELETE"),
        ("-- c\nREPLACE INTO t VALUES (1)", "REPLACE"),
        ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", "MERGE"),
        ("CREATE TABLE t (a int)", "CREATE"),
        ("DROP TABLE t", "DROP"),
        ("ALTER TABLE t ADD b int", "ALTER"),
        ("TRUNCATE t", "TRUNCATE"),
        ("SELECT 1", None),
        ("SELECT * FROM t FOR UPDATE", None),  # a lock, not a write: see locks_rows
        ("SHOW TABLES", None),
        ("SAVEPOINT sa_1", None),
        # CTEs: the statement after them, or a data-modifying CTE (PostgreSQL)
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT"),
        ("WITH RECURSIVE x(n) AS (SELECT 1 UNION SELECT n + 1 FROM x) DELETE FROM t", "DELETE"),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "DELETE"),
        ("with a as (select ')' as p), b as materialized (select 2) update t set a = 1", "UPDATE"),
        ('WITH "x y" AS NOT MATERIALIZED (SELECT "(") SELECT 1', None),
        ("WITH x AS (SELECT 1 /* ) */ -- )\n) SELECT * FROM x", None),
        ("WITH x AS (SELECT 1) SELECT * FROM x", None),
        ("WITH x AS (SELECT (1)", None),  # unbalanced: not a write we can name
        # EXPLAIN runs its statement only with ANALYZE
        ("EXPLAIN UPDATE t SET a = 1", None),
        ("EXPLAIN ANALYZE UPDATE t SET a = 1", "UPDATE"),
        ("EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM t", "DELETE"),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", None),
        ("EXPLAIN ANALYZE SELECT 1", None),
        ("ANALYZE UPDATE t SET a = 1", "UPDATE"),  # MariaDB: runs it
        ("ANALYZE TABLE t", None),
        ("DESCRIBE t", None),
    ],
)
def test_write_verb(statement: str, verb: str | None) -> None:
    assert _sql.write_verb(statement) == verb


@pytest.mark.parametrize(
    ("statement", "locks"),
    [
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE", True),
        ("select * from t for no key update skip locked", True),
        ("SELECT * FROM t FOR SHARE", True),
        ("SELECT * FROM t FOR KEY SHARE NOWAIT", True),
        ("SELECT * FROM t LOCK IN SHARE MODE", True),
        ("WITH x AS (SELECT 1) SELECT * FROM t FOR UPDATE", True),
        ("SELECT * FROM t", False),
        ("UPDATE t SET a = 1", False),
        ("SELECT 'for' AS update_count FROM t", False),
    ],
)
def test_locks_rows(statement: str, locks: bool) -> None:
    assert _sql.locks_rows(statement) is locks


@pytest.mark.parametrize(
    ("statement", "commits"),
    [
        ("CREATE TABLE t (a int)", True),
        ("/* c */ create table t (a int)", True),
        ("DROP TABLE t", True),
        ("CREATE TEMPORARY TABLE t (a int)", False),
        ("DROP TEMPORARY TABLE t", False),
        ("ALTER TABLE t ADD b int", True),
        ("RENAME TABLE a TO b", True),
        ("TRUNCATE TABLE t", True),
        ("LOCK TABLES t WRITE", True),
        ("UNLOCK TABLES", True),
        ("GRANT SELECT ON t TO bob", True),
        ("REVOKE SELECT ON t FROM bob", True),
        ("BEGIN", True),
        ("START TRANSACTION", True),
        ("COMMIT", True),
        ("ANALYZE TABLE t", True),
        ("OPTIMIZE TABLE t", True),
        ("REPAIR TABLE t", True),
        ("SET autocommit = 1", True),
        ("SET @@autocommit = 1", True),
        ("SET NAMES utf8mb4", False),
        ("SELECT 1", False),
        ("INSERT INTO t VALUES (1)", False),
        ("SAVEPOINT sa_1", False),
        ("ANALYZE UPDATE t SET a = 1", False),
    ],
)
def test_implicit_commit(statement: str, commits: bool) -> None:
    assert _sql.implicit_commit(statement) is commits


@pytest.mark.parametrize(
    ("statement", "tables"),
    [
        ("INSERT INTO t VALUES (1)", ["t"]),
        ("insert ignore into t values (1)", ["t"]),
        ('INSERT INTO "s"."t" (a) VALUES (1)', ["s.t"]),
        ("REPLACE INTO `t` VALUES (1)", ["t"]),
        ("  UPDATE t SET a = 1", ["t"]),
        ("UPDATE IGNORE t SET a = 1", ["t"]),
        ("/* c */ DELETE FROM t WHERE a = 1", ["t"]),
        ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", ["t"]),
        ("COPY t (a) FROM STDIN", ["t"]),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", ["t"]),
        ("WITH x AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM x", ["a", "b"]),
        ("SELECT * FROM t", []),
        ("WITH x AS (SELECT 1) SELECT * FROM x", []),
        ("CREATE TABLE t (a int)", []),
    ],
)
def test_written_tables(statement: str, tables: list[str]) -> None:
    assert _sql.written_tables(statement) == tuple(tables)


@pytest.mark.parametrize(
    ("statement", "words"),
    [
        ("CREATE TABLE t (a int)", "CREATE TABLE t"),
        ("/* c */\n  DROP   TABLE\n t", "DROP TABLE t"),
        ("BEGIN", "BEGIN"),
        ("", ""),
    ],
)
def test_head(statement: str, words: str) -> None:
    assert _sql.head(statement) == words
