"""Each test signs up the same address: a leak from one makes the next fail."""

import asyncio

import pytest
from app import service
from app.models import User
from sqlalchemy import func, select, text

from dbkeel import NPlusOneError, ReadOnlyTransactionError, SandboxError

pytestmark = pytest.mark.asyncio  # also runs in pytest-asyncio's strict mode


async def test_first_commit_is_invisible_to_the_next(dbkeel_db):
    await service.signup("ada@example.com")
    assert await service.count_users() == 1


async def test_second_commit_is_invisible_to_the_next(dbkeel_db):
    await service.signup("ada@example.com")
    assert await service.count_users() == 1


async def test_a_failing_test_leaves_nothing(dbkeel_db):
    await service.signup("ada@example.com")
    pytest.fail("this test fails on purpose")


async def test_after_the_failure(dbkeel_db, dbkeel_session):
    assert await dbkeel_session.scalar(select(func.count(User.id))) == 0


async def test_app_rollback_undoes_only_its_own_work(dbkeel_db):
    await service.signup("grace@example.com")
    with pytest.raises(RuntimeError):
        await service.signup_then_fail("ada@example.com")
    assert await service.count_users() == 1


async def test_run_in_transaction_and_version_mixin(dbkeel_db):
    user_id = await service.signup("ada@example.com")
    await service.add_note(user_id, "hello")
    async with dbkeel_db.get_session() as session:
        assert (await session.execute(text("SELECT count(*) FROM plg_note"))).scalar() == 1


async def test_read_only_sessions_refuse_writes(dbkeel_db):
    with pytest.raises(ReadOnlyTransactionError):
        async with dbkeel_db.get_session(read_only=True) as session:
            session.add(User(email="ro@example.com"))
    assert await service.count_users() == 0


async def test_tasks_share_the_connection(dbkeel_db):
    await asyncio.gather(*(service.slow_signup(f"u{i}@example.com") for i in range(10)))
    assert await service.count_users() == 10


async def test_the_test_session_sees_the_app_writes(dbkeel_db, dbkeel_session):
    await service.signup("ada@example.com")
    assert await dbkeel_session.scalar(select(func.count(User.id))) == 1
    dbkeel_session.add(User(email="bob@example.com"))
    await dbkeel_session.commit()
    assert await service.count_users() == 2


async def test_a_session_held_across_another_task_is_reported(dbkeel_db, dbkeel_session):
    dbkeel_session.add(User(email="held@example.com"))
    await dbkeel_session.flush()  # this test's session now holds the connection
    with pytest.raises(SandboxError, match="still holds"):
        await asyncio.create_task(service.signup("ada@example.com"))


async def test_a_failed_read_only_session_leaves_the_connection_writable(dbkeel_db):
    # get_session() rolls back in a helper task: the sandbox must still see the end
    with pytest.raises(LookupError):
        async with dbkeel_db.get_session(read_only=True) as session:
            await session.execute(text("SELECT 1"))
            raise LookupError
    await service.signup("ada@example.com")
    assert await service.count_users() == 1


async def test_other_tasks_get_the_connection_after_an_app_error(dbkeel_db):
    with pytest.raises(RuntimeError):
        await service.signup_then_fail("ada@example.com")
    await asyncio.gather(*(service.slow_signup(f"u{i}@example.com") for i in range(3)))
    assert await service.count_users() == 3


async def test_an_n_plus_one_fails_the_test(dbkeel_db):
    # DATABASE_NPLUSONE defaults to raise under the plugin
    for i in range(12):
        await service.signup(f"u{i}@example.com")
    with pytest.raises(NPlusOneError, match="selectinload"):
        await service.note_counts()
