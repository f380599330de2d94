"""The example app (examples/notes) under uvicorn on PostgreSQL: its endpoints work."""

from __future__ import annotations

import secrets

import httpx

from tests.uvicorn_support import serve


def test_notes_example(pg_url: str) -> None:
    with serve(pg_url, f"dbkeel-example-{secrets.token_hex(3)}") as base:
        with httpx.Client(base_url=base, timeout=10) as c:
            made = c.post("/notes", json={"slug": "hello", "body": "hi", "tags": ["a", "b"]})
            assert made.status_code == 201, made.text
            note = made.json()
            assert note["version"] == 1 and note["tags"] == ["a", "b"]
            assert c.get(f"/notes/{note['id']}").json()["slug"] == "hello"
            # soft_delete_unique: a live duplicate is a 409, a deleted one frees the slug
            again = c.post("/notes", json={"slug": "hello", "body": "dup"})
            assert again.status_code == 409 and again.json()["error"] == "conflict"
            assert c.delete(f"/notes/{note['id']}").status_code == 204
            assert c.get(f"/notes/{note['id']}").status_code == 404
            assert c.post("/notes", json={"slug": "hello", "body": "reuse"}).status_code == 201
            # other tests of this run may add notes to the same table
            bodies = [n["body"] for n in c.get("/notes").json() if n["slug"] == "hello"]
            assert bodies == ["reuse"]
