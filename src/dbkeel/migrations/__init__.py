"""Alembic migrations the dbkeel way (needs ``dbkeel[migrations]``).

``dbkeel migrations init`` writes an environment whose ``env.py`` is three lines::

    from dbkeel.migrations.env import run_migrations
    from myapp.models import Base

    run_migrations(Base.metadata)

The URL comes from :class:`~dbkeel.DatabaseSettings` (``DATABASE_URL``), never from
``alembic.ini``. Modules: :mod:`~dbkeel.migrations.hooks` (render/compare/include hooks),
:mod:`~dbkeel.migrations.env` (the env.py body), :mod:`~dbkeel.migrations.scaffold`
(``init``), :mod:`~dbkeel.migrations.check` (``migrations check``) and
:mod:`~dbkeel.migrations.upgrade` (``dbkeel migrate`` under a lock). Nothing here is
imported by ``import dbkeel``.
"""
