"""Shared pieces of the encryption tests: fixed test keys, a keyed manager, and registry
cleanup (encrypted columns register process-wide; tests must not leave theirs behind, or
every later DatabaseManager without keys would refuse to start)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dbkeel import DatabaseManager
from dbkeel.encryption import registry
from tests.conftest import make_settings

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
INDEX_KEY = bytes(range(200, 232))
B64 = {
    name: base64.b64encode(k).decode()
    for name, k in (("k1", KEY1), ("k2", KEY2), ("index", INDEX_KEY))
}
SECRETS = [KEY1, KEY2, INDEX_KEY]
SECRET_TEXTS = [B64["k1"], B64["k2"], B64["index"]]


def key_settings(url: str, *, keys: str = "k1", active: str = "k1", **extra: Any) -> Any:
    entries = ",".join(f"{k}:{B64[k]}" for k in keys.split(","))
    return make_settings(
        url,
        encryption_keys=entries,
        encryption_active_key=active,
        blind_index_key=B64["index"],
        **extra,
    )


@pytest.fixture(autouse=True)
def forget_test_columns() -> Iterator[None]:
    before = set(registry._columns.keys())
    yield
    for col in list(registry._columns.keys()):
        if col not in before:
            del registry._columns[col]


@pytest.fixture
async def enc_db(db_url: str) -> AsyncIterator[DatabaseManager]:
    """An initialized manager on the parametrized backend, keys k1 (active) and index key."""
    async with DatabaseManager(key_settings(db_url)) as manager:
        yield manager
