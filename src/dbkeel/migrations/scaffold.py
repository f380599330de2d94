"""``dbkeel migrations init``: write an Alembic environment wired for dbkeel.

The environment has no URL in ``alembic.ini`` (it comes from ``DATABASE_URL``), an
``env.py`` of three lines (:func:`dbkeel.migrations.env.run_migrations`), Alembic's own
``script.py.mako`` and an empty ``versions/`` directory.

Example::

    dbkeel migrations init migrations --models myapp.models:Base
"""

from __future__ import annotations

from pathlib import Path

from dbkeel.exceptions import ConfigurationError

__all__ = ["write_environment"]

_ENV_PY = '''"""Alembic environment written by `dbkeel migrations init`.

The database URL comes from DATABASE_URL (dbkeel's DatabaseSettings), not alembic.ini.
"""

from dbkeel.migrations.env import run_migrations
from {module} import {name}

run_migrations({name})
'''

_ALEMBIC_INI = """# Written by `dbkeel migrations init`. The URL comes from DATABASE_URL.
[alembic]
script_location = {directory}
prepend_sys_path = .
path_separator = os

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %%(levelname)-5.5s [%%(name)s] %%(message)s
"""


def write_environment(directory: Path, models: str, ini_path: Path) -> list[Path]:
    """Write the environment into *directory* and *ini_path*; returns the files written.

    *models* is ``package.module:Base`` (a declarative base or a ``MetaData``).
    """
    module, sep, name = models.partition(":")
    if not sep or not module or not name.isidentifier():
        raise ConfigurationError(
            f"--models {models!r} must look like package.module:Base (the module that "
            f"defines the models, a colon, the declarative base or MetaData)."
        )
    if directory.exists() and any(directory.iterdir()):
        raise ConfigurationError(
            f"{directory} already exists and is not empty: dbkeel will not overwrite a "
            f"migrations directory. Pick another directory or remove it."
        )
    if ini_path.exists():
        raise ConfigurationError(
            f"{ini_path} already exists: dbkeel will not overwrite it. Remove it or pass "
            f"--ini with another path."
        )
    import alembic

    mako = Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako"
    (directory / "versions").mkdir(parents=True, exist_ok=True)
    files = {
        directory / "env.py": _ENV_PY.format(module=module, name=name),
        directory / "script.py.mako": mako.read_text(encoding="utf-8"),
        ini_path: _ALEMBIC_INI.format(directory=directory.as_posix()),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return [*files, directory / "versions"]
