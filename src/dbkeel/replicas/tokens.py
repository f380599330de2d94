"""WAL positions (LSNs), the per-context record of the last write, consistency tokens.

The last write of a context lives in a ``contextvars`` value: one request, one task and
the tasks it starts see it; unrelated tasks do not. In ``lsn`` mode a commit records only
*when* it finished (``since``, no round trip); the router turns that into a WAL position
with the prober's samples of the primary (see positions.py). A consistency token carries
a position across requests (an HTTP header or cookie)::

    token = await db.consistency_token()      # "lsn:0/16B3748@1733280000.123" after a write
    async with db.get_session(read_only=True, after=token) as session: ...
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

from dbkeel.exceptions import InvalidValueError

__all__ = [
    "LastWrite",
    "format_lsn",
    "last_write",
    "make_token",
    "parse_lsn",
    "parse_token",
    "record_position",
    "record_write",
]


@dataclass(frozen=True, slots=True)
class LastWrite:
    """What a read must see: a WAL position (0: none), the wall-clock time of the last
    write (``window`` mode, tokens) and, for a commit whose position is not known yet,
    the monotonic time it finished (``since``; 0: none)."""

    lsn: int
    at: float
    since: float = 0.0


UNREACHABLE = 1 << 63  # a WAL position no server reaches (conservative, never stale)
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


def record_write(pending: bool) -> None:
    """Note a committed write of this context (called after a read-write commit).

    *pending*: its position is to be bounded from the primary's samples (``lsn`` mode);
    else only its time matters (``window`` mode).
    """
    previous = _LAST_WRITE.get()
    since = time.monotonic() if pending else 0.0
    lsn = 0
    if previous is not None:
        lsn = previous.lsn  # a known position stays: the new write only adds to it
    _LAST_WRITE.set(LastWrite(lsn, time.time(), since))


def record_position(lsn: int, covers: float) -> LastWrite | None:
    """Note that *lsn* is at or past every write of this context that finished by
    monotonic time *covers* (a position read from the primary after them)."""
    previous = _LAST_WRITE.get()
    if previous is None:
        return None
    since = 0.0 if previous.since <= covers else previous.since
    resolved = LastWrite(max(lsn, previous.lsn), previous.at, since)
    _LAST_WRITE.set(resolved)
    return resolved


#: ``last_write()``: the last write of this context, if any. The context variable's own
#: method, not a function around it: routing calls it for every read-only session.
last_write = _LAST_WRITE.get


def make_token(write: LastWrite | None) -> str:
    """The opaque token of *write*: ``lsn:<pos>`` plus the time, for either mode.

    The router bounds a pending commit (``since``) first; one still pending here (no
    router to ask) gets a position no replica reaches, so its reads go to the primary.
    """
    if write is None:
        return "lsn:0/0@0"
    lsn = UNREACHABLE if write.since else write.lsn
    return f"lsn:{format_lsn(lsn)}@{write.at:.3f}"


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
