"""Rendering dbkeel types in Alembic autogenerate migrations.

Alembic writes a custom type as ``<module>.<repr>`` but does not import the module, so
a generated migration would fail with ``NameError``. Pass :func:`render_item` to
``context.configure()`` in ``env.py``: it writes ``dbkeel.types.UUIDType()`` and adds
``import dbkeel.types`` to the migration. (This module does not import Alembic.)

Example::

    from dbkeel.types.alembic import render_item

    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_item=render_item)
"""

from __future__ import annotations

from typing import Any, Literal

from dbkeel.types._base import PortableType
from dbkeel.types.array import ArrayType, StringArray
from dbkeel.types.encrypted import EncryptedType

__all__ = ["render_item"]


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Alembic ``render_item`` hook: render dbkeel column types with their import.

    Returns ``False`` for everything else, so Alembic's own rendering applies.
    """
    if kind == "type" and isinstance(obj, EncryptedType):
        autogen_context.imports.add("import dbkeel.types")
        inner = obj.inner
        prefix = autogen_context.opts.get("sqlalchemy_module_prefix") or "sa."
        shown = render_item(kind, inner, autogen_context) or f"{prefix}{inner!r}"
        return f"dbkeel.types.EncryptedType({shown})"
    if kind != "type" or not isinstance(obj, PortableType):
        return False
    autogen_context.imports.add("import dbkeel.types")
    if isinstance(obj, ArrayType) and not isinstance(obj, StringArray):
        prefix = autogen_context.opts.get("sqlalchemy_module_prefix") or "sa."
        flag = "" if obj.mutable else ", mutable=False"
        return f"dbkeel.types.ArrayType({prefix}{obj.item_type!r}{flag})"
    return f"dbkeel.types.{obj!r}"
