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

    :meth:`anext` serves both kinds of input (:meth:`next` only a synchronous one);
    :meth:`chunk` bounds what the next calls hand out, for ``commit_every``.
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
        self._rows: Iterator[Any] = iter(()) if isinstance(rows, AsyncIterable) else iter(rows)
        self._async_rows = aiter(rows) if isinstance(rows, AsyncIterable) else None
        self._stop_at: int | None = None

    def chunk(self, rows: int | None) -> None:
        """Hand out batches until *rows* more rows (None: all of them)."""
        self._stop_at = None if rows is None else self.position + rows

    def next(self, size: int | None = None) -> tuple[int, list[Any]] | None:
        """The next batch (of *size* rows at most, default ``size``) of a synchronous
        input, or None at the end of the input or chunk."""
        wanted = self._wanted(size)
        if not wanted:
            return None
        return self._hand_out(list(itertools.islice(self._rows, wanted)), wanted)

    async def anext(self, size: int | None = None) -> tuple[int, list[Any]] | None:
        """The next batch of either kind of input, or None at the end of the chunk."""
        if self._async_rows is None:
            return self.next(size)
        wanted = self._wanted(size)
        if not wanted:
            return None
        batch: list[Any] = []
        while len(batch) < wanted:
            try:
                batch.append(await anext(self._async_rows))
            except StopAsyncIteration:
                break
        return self._hand_out(batch, wanted)

    def _wanted(self, size: int | None) -> int:
        if self.done:
            return 0
        wanted = self.size if size is None else min(size, self.size)
        if self._stop_at is not None:
            wanted = min(wanted, self._stop_at - self.position)
        return max(wanted, 0)

    def _hand_out(self, batch: list[Any], wanted: int) -> tuple[int, list[Any]] | None:
        if len(batch) < wanted:
            self.done = True
        if not batch:
            return None
        start = self.position
        self.position += len(batch)
        return start, batch
