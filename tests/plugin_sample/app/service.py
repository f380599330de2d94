"""Application code under test: it commits through the app's own manager."""

import asyncio

from sqlalchemy import func, select

from app.db import db
from app.models import Note, User


async def signup(email: str) -> int:
    async with db.get_session() as session:
        user = User(email=email)
        session.add(user)
        await session.flush()
        return user.id


async def signup_then_fail(email: str) -> None:
    async with db.get_session() as session:
        session.add(User(email=email))
        await session.flush()
        raise RuntimeError("payment failed")


async def add_note(user_id: int, text: str) -> None:
    async def write(session):
        session.add(Note(user_id=user_id, text=text))

    await db.run_in_transaction(write)


async def count_users() -> int:
    async with db.get_session(read_only=True) as session:
        return int(await session.scalar(select(func.count(User.id))))


async def slow_signup(email: str) -> None:
    async with db.get_session() as session:
        session.add(User(email=email))
        await session.flush()
        await asyncio.sleep(0.01)  # other tasks run meanwhile


async def note_counts() -> dict[str, int]:
    """An N+1: one lazy load of notes per user (the fix: selectinload(User.notes))."""
    async with db.get_session(read_only=True) as session:
        users = (await session.scalars(select(User))).all()
        return {u.email: len(await u.awaitable_attrs.notes) for u in users}
