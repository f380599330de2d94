import httpx
import pytest
from app.web import app

pytestmark = pytest.mark.asyncio  # also runs in pytest-asyncio's strict mode


async def test_endpoint_commit_is_rolled_back_after_the_test(dbkeel_db):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/users", json={"email": "ada@example.com"})).status_code == 201
        assert (await client.post("/users", json={"email": "ada@example.com"})).status_code == 409
        assert (await client.get("/users/count")).json() == {"count": 1}


async def test_next_test_starts_empty(dbkeel_db):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/users/count")).json() == {"count": 0}
