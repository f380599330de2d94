"""The input of a bulk write, cut into batches that know where they start."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from typing import Any

from dbkeel.exceptions import ConfigurationError

__all__ = ["Batches", "Progress"]

#: Told the number of rows of each batch handed to the database.
Progress = Callable[[int], None]


class Batches:
    """The input rows as consecutive batches, each with the input index of its first row.

    A synchronous input stays synchronous (:meth:`next`), so that COPY can stream it
    without an ``await`` per row; :meth:`anext` serves both kinds. :meth:`chunk` bounds
    what the next calls hand out, for ``commit_every``.
    """

    def __init__(self, rows: Iterable[Any] | AsyncIterable[Any], size: int) -> None:
        if isinstance(rows, Mapping | str | bytes):
            raise ConfigurationError(
                f"bulk writes take many rows (a list, an iterable or an async iterable of "
                f"dicts); got a single {type(rows).__name__}. Wrap one row in a list."
            )
        self.size = size
        self.position = 0  # the input index of the next row
        self.done = False
        self.is_async = isinstance(rows, AsyncIterable)
        self._rows: Iterator[Any] = iter(()) if isinstance(rows, AsyncIterable) else iter(rows)
        self._async_rows = aiter(rows) if isinstance(rows, AsyncIterable) else None
        self._stop_at: int | None = None

    def chunk(self, rows: int | None) -> None:
        """Hand out whole batches until about *rows* more rows (None: all of them)."""
        self._stop_at = None if rows is None else self.position + rows

    def next(self) -> tuple[int, list[Any]] | None:
        """The next batch of a synchronous input, or None at the end of the chunk."""
        if self._ended():
            return None
        return self._hand_out(list(itertools.islice(self._rows, self.size)))

    async def anext(self) -> tuple[int, list[Any]] | None:
        """The next batch of either kind of input, or None at the end of the chunk."""
        if self._async_rows is None:
            return self.next()
        if self._ended():
            return None
        batch: list[Any] = []
        while len(batch) < self.size:
            try:
                batch.append(await anext(self._async_rows))
            except StopAsyncIteration:
                break
        return self._hand_out(batch)

    def _ended(self) -> bool:
        return self.done or (self._stop_at is not None and self.position >= self._stop_at)

    def _hand_out(self, batch: list[Any]) -> tuple[int, list[Any]] | None:
        if len(batch) < self.size:
            self.done = True
        if not batch:
            return None
        start = self.position
        self.position += len(batch)
        return start, batch
