"""The example app (examples/notes, FastAPI and Litestar) under uvicorn on PostgreSQL:
its endpoints work."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.uvicorn_support import serve

EXAMPLES = ["examples.notes.app:app", "examples.notes.litestar_app:app"]


@pytest.mark.parametrize("module", EXAMPLES)
def test_notes_example(pg_url: str, module: str) -> None:
    with serve(pg_url, f"dbkeel-example-{secrets.token_hex(3)}", module) as base:
        with httpx.Client(base_url=base, timeout=10) as c:
            slug = f"hello-{secrets.token_hex(3)}"  # both examples share the notes table
            made = c.post("/notes", json={"slug": slug, "body": "hi", "tags": ["a", "b"]})
            assert made.status_code == 201, made.text
            note = made.json()
            assert note["version"] == 1 and note["tags"] == ["a", "b"]
            assert c.get(f"/notes/{note['id']}").json()["slug"] == slug
            # soft_delete_unique: a live duplicate is a 409, a deleted one frees the slug
            again = c.post("/notes", json={"slug": slug, "body": "dup"})
            assert again.status_code == 409 and again.json()["error"] == "conflict"
            assert c.delete(f"/notes/{note['id']}").status_code == 204
            assert c.get(f"/notes/{note['id']}").status_code == 404
            assert c.post("/notes", json={"slug": slug, "body": "reuse"}).status_code == 201
            # other tests of this run may add notes to the same table
            bodies = [n["body"] for n in c.get("/notes").json() if n["slug"] == slug]
            assert bodies == ["reuse"]
