"""Which columns are encrypted, and which key ring an engine uses.

Encrypted and blind-index columns register themselves here when they are attached to a
table, so :meth:`DatabaseManager.initialize` can refuse to start without a key ring, and
``dbkeel keys rotate`` can find every encrypted column. The key ring is attached to the
engine's dialect: it is what ``process_bind_param`` receives, so the standard SQLAlchemy
bind path (and anything that calls it directly, such as a COPY writer) finds the keys.

Example::

    from dbkeel.encryption import KeyRing, use_key_ring

    use_key_ring(engine, KeyRing.parse(keys, active="k2"))   # without a DatabaseManager
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from dbkeel.exceptions import ConfigurationError, KeyRingError

if TYPE_CHECKING:
    from sqlalchemy import Column, MetaData, Table
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncEngine

    from dbkeel.encryption.keys import KeyProvider, KeyRing
    from dbkeel.settings import DatabaseSettings

logger = logging.getLogger(__name__)

__all__ = [
    "RING_ATTRIBUTE",
    "encrypted_columns",
    "forget_table",
    "install_key_ring",
    "register",
    "ring_for",
    "use_key_ring",
]

#: the dialect attribute that holds the engine's KeyRing
RING_ATTRIBUTE = "_dbkeel_key_ring"  # read by name in EncryptedType.process_result_value

# column -> "encrypted" | "blind_index"; weak, so dropped models do not linger
_columns: weakref.WeakKeyDictionary[Column[Any], str] = weakref.WeakKeyDictionary()


def register(column: Column[Any], kind: str) -> None:
    """Record *column* (attached to its table) as needing keys of *kind*."""
    _columns[column] = kind


def forget_table(table: Table) -> None:
    """Stop counting *table*'s columns as needing keys (for models built temporarily).

    The registry is weak, but a table stays reachable through an engine's statement cache
    long after its model is gone; a demo or test that built an encrypted model for a
    moment calls this so that later managers do not ask for its keys. Example::

        forget_table(Patient.__table__)
    """
    for column in list(_columns):
        if column.table is table:
            del _columns[column]


def encrypted_columns(
    kind: str = "encrypted", metadata: MetaData | None = None
) -> list[Column[Any]]:
    """Every live column of *kind* (``"encrypted"`` or ``"blind_index"``), by table.column;
    only those of *metadata*'s tables when it is given."""
    found = [
        c
        for c, k in list(_columns.items())
        if k == kind
        and c.table is not None
        and (metadata is None or metadata.tables.get(c.table.key) is c.table)
    ]
    return sorted(found, key=lambda c: (c.table.name, c.name))


def columns_named(kind: str, names: Sequence[str] | None) -> list[Column[Any]]:
    """The registered columns of *kind* that *names* (``table.column`` or ``table``) name,
    all of them for None; a ConfigurationError listing the known ones for a name that
    matches none."""
    known = encrypted_columns(kind)
    if names is None:
        return known
    chosen: list[Column[Any]] = []
    what = "encrypted" if kind == "encrypted" else kind.replace("_", "-")
    for name in names:
        hits = [c for c in known if name in (c.table.name, f"{c.table.name}.{c.name}")]
        if not hits:
            listed = ", ".join(f"{c.table.name}.{c.name}" for c in known) or "none"
            raise ConfigurationError(
                f"{name!r} names no {what} column of the loaded models (known: {listed}). "
                f"Give table.column or a table name, and import the models first."
            )
        chosen.extend(c for c in hits if c not in chosen)
    return chosen


def _describe(columns: list[Column[Any]]) -> str:
    names = [f"{c.table.name}.{c.name}" for c in columns]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def use_key_ring(engine: AsyncEngine | Engine, ring: KeyRing) -> None:
    """Attach *ring* to *engine*: its encrypted columns use these keys from now on."""
    sync_engine: Engine = engine if isinstance(engine, Engine) else engine.sync_engine
    setattr(sync_engine.dialect, RING_ATTRIBUTE, ring)
    if ring.has_index_key:
        from dbkeel.encryption.blind_index import watch_updates  # (imports this module)

        watch_updates(sync_engine)


_warned: set[str] = set()  # the missing-key warnings already logged by this process


def ring_for(dialect: Dialect, column: str) -> KeyRing:
    """The ring attached to *dialect*; a clear error naming *column* when there is none."""
    ring: KeyRing | None = getattr(dialect, RING_ATTRIBUTE, None)
    if ring is None:
        raise KeyRingError(
            f"Encrypted column {column} was used on an engine without a key ring. Set "
            f"DATABASE_ENCRYPTION_KEYS (see `dbkeel keys generate`) and use DatabaseManager, "
            f"or call dbkeel.encryption.use_key_ring(engine, ring) on your own engine."
        )
    return ring


async def load_key_ring(
    settings: DatabaseSettings, provider: KeyProvider | None, metadata: MetaData | None = None
) -> KeyRing | None:
    """The ring from *provider* if given, else from settings; checked against the columns
    of *metadata*'s tables, or of every loaded model.

    With *metadata*, raises :class:`ConfigurationError` when its encrypted columns have
    no keys, or its blind-index columns no blind-index key. Without it, logs that as a
    warning: the loaded models may be another manager's (a use of such a column then
    raises :class:`KeyRingError` naming it).
    """
    from dbkeel.encryption.keys import KeyRing

    if provider is not None:
        ring: KeyRing | None = await provider.load_key_ring()
        if not isinstance(ring, KeyRing):
            raise ConfigurationError(
                f"key_provider {type(provider).__name__}.load_key_ring() returned "
                f"{type(ring).__name__}, not a dbkeel.encryption.KeyRing."
            )
    else:
        ring = KeyRing.from_settings(settings)
    encrypted = encrypted_columns("encrypted", metadata)
    problems = []
    if ring is None and encrypted:
        problems.append(
            f"The models define encrypted columns ({_describe(encrypted)}) but no key ring "
            f"is configured, so they could be neither written nor read. Set "
            f"DATABASE_ENCRYPTION_KEYS to ID:BASE64KEY entries (make one with `dbkeel keys "
            f"generate`), or pass key_provider= to DatabaseManager."
        )
    indexed = encrypted_columns("blind_index", metadata)
    if indexed and (ring is None or not ring.has_index_key):
        problems.append(
            f"The models define blind-index columns ({_describe(indexed)}) but no "
            f"blind-index key is configured. Set DATABASE_BLIND_INDEX_KEY to a key of its "
            f"own (make one with `dbkeel keys generate`)."
        )
    if problems and metadata is not None:
        # The manager was told which models it serves: they need keys, so fail now.
        raise ConfigurationError(" ".join(problems))
    if problems:
        # Without metadata= the loaded models may belong to another database of this
        # process (another manager, a benchmark, a CLI command): warn, and let a use of
        # such a column raise KeyRingError naming it.
        # Once per process and problem: a service or benchmark that makes many managers
        # would otherwise repeat the same paragraph at each start.
        message = " ".join(problems)
        log = logger.debug if message in _warned else logger.warning
        _warned.add(message)
        log(
            "%s Pass DatabaseManager(metadata=Base.metadata) to make this a startup error "
            "for the models this manager serves.",
            message,
        )
    return ring


def install_key_ring(engine: AsyncEngine, ring: KeyRing | None) -> None:
    """Attach *ring* (if any) to the manager's engine."""
    if ring is not None:
        use_key_ring(engine, ring)
