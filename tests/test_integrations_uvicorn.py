"""Clients that drop connections mid-transaction leave nothing behind (real uvicorn, PostgreSQL)."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest
from sqlalchemy import text

from dbkeel import DatabaseManager
from tests.test_example_notes import EXAMPLES
from tests.uvicorn_support import serve


async def _open_on_server(db: DatabaseManager, app_name: str) -> list[str]:
    async with db.get_session() as s:
        rows = await s.execute(
            text(
                "SELECT state FROM pg_stat_activity WHERE application_name = :n "
                "AND state LIKE 'idle in transaction%' OR (application_name = :n "
                "AND state = 'active' AND query NOT ILIKE '%pg_stat_activity%')"
            ),
            {"n": app_name},
        )
        return [r[0] for r in rows]


@pytest.mark.parametrize("module", EXAMPLES)
async def test_dropped_clients_leave_no_connection_or_transaction(
    pg_db: DatabaseManager, pg_url: str, module: str
) -> None:
    app_name = f"dbkeel-cancel-{secrets.token_hex(3)}"
    with serve(pg_url, app_name, module) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            ids = []
            for i in range(10):
                made = await client.post("/notes", json={"slug": f"n{i}-{app_name}", "body": "x"})
                assert made.status_code == 201, made.text
                ids.append(made.json()["id"])

        async def drop(note_id: str) -> None:
            # the client gives up after 0.3 s; the server is inside pg_sleep(3), mid-transaction
            async with httpx.AsyncClient(base_url=base, timeout=0.3) as impatient:
                try:
                    answer = await impatient.post(
                        f"/notes/{note_id}/slow-touch", params={"seconds": 3}
                    )
                except httpx.TimeoutException:
                    return
                raise AssertionError(
                    f"the slow request answered before the client timeout: {answer.text}"
                )

        await asyncio.gather(*(drop(i) for i in ids))
        assert await _open_on_server(pg_db, app_name), "no transaction was open mid-request"

        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for _ in range(100):
                ready = (await client.get("/health/ready")).json()
                still = await _open_on_server(pg_db, app_name)
                if ready["pool"]["checked_out"] == 0 and not still:
                    break
                await asyncio.sleep(0.1)
            assert ready["pool"]["checked_out"] == 0, ready
            assert still == [], still
            # and the app still serves
            assert (await client.get(f"/notes/{ids[0]}")).status_code == 200
