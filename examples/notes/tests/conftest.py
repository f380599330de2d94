"""The notes app's test configuration: its manager is the one ``install()`` put on
``app.state``, so the plugin is pointed at it with a fixture instead of the
``dbkeel_manager`` ini option."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from examples.notes.app import app

from dbkeel import DatabaseManager


@pytest.fixture(scope="session")
def dbkeel_app_manager() -> DatabaseManager:
    manager: DatabaseManager = app.state.dbkeel
    return manager


@pytest.fixture
async def client(dbkeel_db: DatabaseManager) -> AsyncIterator[httpx.AsyncClient]:
    """The app, called in-process: its sessions run in the test's transaction."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notes") as c:
        yield c
