"""WAL positions (LSNs), the per-context record of the last write, consistency tokens.

The last write of a context lives in a ``contextvars`` value: one request, one task and
the tasks it starts see it; unrelated tasks do not. A consistency token carries the same
position across requests (an HTTP header or cookie)::

    token = db.consistency_token()            # "lsn:0/16B3748" after a write
    async with db.get_session(read_only=True, after=token) as session: ...
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

from dbkeel.exceptions import InvalidValueError

__all__ = ["LastWrite", "format_lsn", "last_write", "parse_lsn", "parse_token", "record_write"]


@dataclass(frozen=True)
class LastWrite:
    """Where (WAL position, 0 when unknown) and when (wall clock) this context last wrote."""

    lsn: int
    at: float


_LAST_WRITE: ContextVar[LastWrite | None] = ContextVar("dbkeel_last_write", default=None)


def parse_lsn(text: str) -> int:
    """PostgreSQL's ``16/B374D848`` notation as an integer (ValueError if malformed)."""
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(text)
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """An integer WAL position in PostgreSQL's ``16/B374D848`` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def record_write(lsn: int) -> None:
    """Note a committed write of this context (called after a read-write commit)."""
    previous = _LAST_WRITE.get()
    if previous is not None and previous.lsn > lsn:
        lsn = previous.lsn  # positions only move forward, whatever the commit order
    _LAST_WRITE.set(LastWrite(lsn, time.time()))


def last_write() -> LastWrite | None:
    """The last write of this context, if any."""
    return _LAST_WRITE.get()


def make_token(write: LastWrite | None) -> str:
    """The opaque token of *write*: ``lsn:<pos>`` plus the time, for either mode."""
    if write is None:
        return "lsn:0/0@0"
    return f"lsn:{format_lsn(write.lsn)}@{write.at:.3f}"


def parse_token(token: str) -> LastWrite:
    """The write a token from :func:`make_token` stands for; InvalidValueError if bad."""
    try:
        kind, _, rest = token.partition(":")
        position, _, at = rest.partition("@")
        if kind != "lsn" or not at:
            raise ValueError(token)
        return LastWrite(parse_lsn(position), float(at))
    except ValueError:
        shown = token if len(token) <= 64 else token[:64] + "..."
        raise InvalidValueError(
            f"get_session(after={shown!r}): not a dbkeel consistency token. Pass the "
            f"string db.consistency_token() returned (e.g. 'lsn:0/16B3748@1733280000.123'), "
            f"unchanged, or None.",
            value=shown,
        ) from None
