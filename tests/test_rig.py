"""The test rig itself: an unreachable server fails loudly, with the command that starts it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_unreachable_server_fails_with_the_start_command(
    backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dead = {
        "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:1/test",
        "mariadb": "mysql+asyncmy://root@127.0.0.1:1/test",
    }
    monkeypatch.setitem(conftest.SERVER_URLS, backend, dead[backend])
    rig = conftest.TestDatabases(tmp_path)
    with pytest.raises(pytest.fail.Exception) as info:
        rig.url(backend)
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert conftest.START_COMMANDS[backend] in message
    # and every later test on that backend fails the same way, without waiting again
    with pytest.raises(pytest.fail.Exception):
        rig.url(backend)
