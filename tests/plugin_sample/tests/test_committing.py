import pytest
from app import service

pytestmark = pytest.mark.asyncio  # also runs in pytest-asyncio's strict mode


@pytest.mark.dbkeel(transaction=False)
async def test_real_commits(dbkeel_db):
    await service.signup("ada@example.com")
    assert await service.count_users() == 1


async def test_tables_were_emptied(dbkeel_db):
    assert await service.count_users() == 0
