"""Parsing of the replica settings: the URL list and the read-your-writes mode.

Kept here, not in settings.py, so the settings class only gains its fields; everything
below is plain string work that needs no server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import URL, make_url

from dbkeel._masking import mask_url

__all__ = ["ReadYourWrites", "check_replica_settings", "mask_urls", "split_urls"]

# A new URL starts at a scheme: "a://...,b://..." splits there, while the comma form of a
# multi-host URL (postgresql://u@h1:5432,h2:5432/db) stays in one piece.
_URL_START = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.\-]*://)")
_VARIABLE = "DATABASE_REPLICA_URLS"


def split_urls(raw: str | None) -> list[str]:
    """The URLs of a comma-separated list (``a://x,b://y``); empty for None or ``""``."""
    if raw is None or not raw.strip():
        return []
    return [part.strip() for part in _URL_START.split(raw.strip()) if part.strip()]


def mask_urls(raw: str) -> str:
    """*raw* (one URL or a comma-separated list) with every password masked."""
    return ",".join(mask_url(part) for part in split_urls(raw)) if raw else raw


@dataclass(frozen=True)
class ReadYourWrites:
    """The parsed DATABASE_READ_YOUR_WRITES: ``lsn``, ``window`` (with seconds) or ``off``."""

    mode: Literal["lsn", "window", "off"]
    window: float = 0.0

    @classmethod
    def parse(cls, value: str) -> ReadYourWrites:
        """``"lsn"``, ``"off"`` or ``"window:2.5"``; ValueError naming the variable else."""
        text = value.strip().lower()
        if text in ("lsn", "off"):
            return cls(text)  # type: ignore[arg-type]  # narrowed by the membership test
        if text.startswith("window:"):
            try:
                seconds = float(text.partition(":")[2])
            except ValueError:
                seconds = -1.0
            if seconds > 0:
                return cls("window", seconds)
        raise ValueError(
            f"DATABASE_READ_YOUR_WRITES = {value!r} is not a read-your-writes mode. "
            f"Accepted: lsn (exact, PostgreSQL), window:<seconds> (read from the primary "
            f"for that long after a write, e.g. window:2) or off."
        )

    def __str__(self) -> str:
        return f"window:{self.window:g}" if self.mode == "window" else self.mode


def check_replica_settings(
    raw_urls: str | None,
    read_your_writes: str | None,
    primary: URL,
    normalise: Callable[[str, str], str],
) -> tuple[str | None, str | None]:
    """Validated (replica_urls, read_your_writes); ValueError with the reason otherwise."""
    urls = [normalise(part, _VARIABLE) for part in split_urls(raw_urls)]
    backend = primary.get_backend_name()
    if urls and backend == "sqlite":
        raise ValueError(
            "DATABASE_REPLICA_URLS is set but the database is SQLite, which has no "
            "replicas: remove DATABASE_REPLICA_URLS, or point DATABASE_URL at PostgreSQL."
        )
    for url in urls:
        other = make_url(url).get_backend_name()
        if other != backend:
            raise ValueError(
                f"DATABASE_REPLICA_URLS names {mask_url(url)}, a {other} database, but "
                f"DATABASE_URL is {backend}: replicas must be copies of the primary. "
                f"Give replica URLs of the same kind."
            )
    if read_your_writes is None:
        mode = ReadYourWrites("lsn") if backend == "postgresql" else ReadYourWrites("window", 2)
    else:
        mode = ReadYourWrites.parse(read_your_writes)
        if mode.mode == "lsn" and backend != "postgresql":
            raise ValueError(
                f"DATABASE_READ_YOUR_WRITES = lsn needs PostgreSQL (WAL positions); "
                f"DATABASE_URL is {backend}. Use window:<seconds> (e.g. window:2) or off."
            )
    return (",".join(urls) if urls else None), str(mode)
