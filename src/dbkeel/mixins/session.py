"""``DbkeelSession``: the ORM session class behind ``DatabaseManager.get_session()``.

Two things a ``do_orm_execute`` listener cannot see, because no SQL runs:

* ``session.get()`` of a soft-deleted object that is already in the identity map
  would return it; here it returns None unless ``include_deleted=True`` is passed.
* A stale-version flush failure names only the table; here the failing objects are
  attached to the error so :class:`dbkeel.ConcurrentUpdateError` can name the model and
  primary key.

Use it with your own session factory too::

    async_sessionmaker(engine, sync_session_class=DbkeelSession, expire_on_commit=False)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from dbkeel.mixins.soft_delete import INCLUDE_DELETED, SoftDeleteMixin
from dbkeel.mixins.version import VersionMixin

__all__ = ["STALE_ROWS_ATTR", "DbkeelSession"]

#: Attribute set on a StaleDataError: list of (model name, primary key) that may be stale.
STALE_ROWS_ATTR = "dbkeel_stale_rows"


class DbkeelSession(Session):
    """A ``Session`` that hides soft-deleted objects from ``get()`` and names stale rows."""

    def _get_impl(self, *args: Any, **kw: Any) -> Any:
        instance = super()._get_impl(*args, **kw)
        if (
            isinstance(instance, SoftDeleteMixin)
            and inspect(instance).dict.get("is_deleted") is True
            and not (kw.get("execution_options") or {}).get(INCLUDE_DELETED, False)
        ):
            return None
        return instance

    def flush(self, objects: Any = None) -> None:
        # Collected before the flush: a failed flush rolls back and expires the objects,
        # after which they no longer look dirty. Autoflush runs this before every
        # statement, so only the identity map's modified states and the deleted ones are
        # read (both usually empty), never self.dirty / self.deleted, which build new sets.
        versioned: list[object] = []
        modified, deleted = self.identity_map._modified, self._deleted
        if modified or deleted:
            dirty = [state for state in modified if state not in deleted]  # as self.dirty
            for state in (*dirty, *deleted):
                obj = state.obj()
                if obj is not None and issubclass(state.class_, VersionMixin):
                    versioned.append(obj)
        try:
            super().flush(objects)
        except StaleDataError as exc:
            rows = []
            for obj in versioned:
                state = inspect(obj)
                if state.identity is not None:
                    table = getattr(state.mapper.local_table, "name", "?")
                    pk = state.identity[0] if len(state.identity) == 1 else state.identity
                    rows.append((type(obj).__name__, table, pk))
            setattr(exc, STALE_ROWS_ATTR, rows)
            raise
