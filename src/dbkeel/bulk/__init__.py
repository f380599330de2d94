"""Bulk writes at COPY speed that still honour the model's types, defaults and mixins.

Example::

    from dbkeel import bulk_insert, bulk_upsert

    async with db.get_session() as session:
        await bulk_insert(session, Event, rows, on_progress=print)
        await bulk_upsert(session, Product, feed, conflict=["sku"])
"""

from dbkeel.bulk.api import ProgressCallback as ProgressCallback
from dbkeel.bulk.api import Rows as Rows
from dbkeel.bulk.api import bulk_insert as bulk_insert
from dbkeel.bulk.api import bulk_upsert as bulk_upsert

__all__ = ["ProgressCallback", "Rows", "bulk_insert", "bulk_upsert"]
