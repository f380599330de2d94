"""``dbkeel.testing``: fast, isolated tests of application code on the real database.

The pytest plugin (registered as ``pytest11: dbkeel``, see docs/testing.md) gives every
test a :class:`~dbkeel.DatabaseManager` whose sessions - the application's own
``get_session()`` included - run inside one transaction that is rolled back when the
test ends. The pieces it is made of work without pytest too:

- :class:`TestDatabase`: create the test database and its schema, drop it at the end.
- :class:`Sandbox`: one test's transaction, lent to one or more managers.
- :class:`QueryLog` and :func:`assert_max_queries`: the statements a block sent, for
  Django-style query-count assertions (the plugin's ``dbkeel_queries`` fixture).

Example (a test, with ``dbkeel_metadata = "app.models:Base.metadata"`` configured)::

    async def test_signup(dbkeel_db):
        await app.signup(dbkeel_db, "ada@example.com")        # commits: a SAVEPOINT
        async with dbkeel_db.get_session() as session:
            assert await session.scalar(select(func.count(User.id))) == 1
        # rolled back after the test: the next test sees no user
"""

from dbkeel.testing.database import TestDatabase as TestDatabase
from dbkeel.testing.queries import QueryLog as QueryLog
from dbkeel.testing.queries import assert_max_queries as assert_max_queries
from dbkeel.testing.sandbox import Sandbox as Sandbox

__all__ = ["QueryLog", "Sandbox", "TestDatabase", "assert_max_queries"]
