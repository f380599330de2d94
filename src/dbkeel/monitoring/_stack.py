"""Where a connection was checked out: the caller's stack, across SQLAlchemy's greenlet.

With an ``AsyncEngine`` the pool events run inside the greenlet SQLAlchemy spawns for the
sync work, whose frames end at ``greenlet_spawn``: the application's coroutine that asked
for the connection is in the *parent* greenlet, suspended at its switch. That parent's
``gr_frame`` links back (``f_back``) through the awaiting coroutines to the event loop, so
the stack we record is the one the user wrote.
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from types import FrameType

import greenlet  # type: ignore[import-untyped]  # ships without py.typed
import sqlalchemy

__all__ = ["capture_stack", "format_stack"]

# Frames from these folders are plumbing, not the place a user would look for a leak.
_PLUMBING = tuple(
    os.path.dirname(module.__file__ or "") + os.sep
    for module in (sqlalchemy, asyncio, greenlet, sys.modules[__package__ or "dbkeel"])
)


def capture_stack() -> traceback.StackSummary:
    """The current stack without reading source lines (that is left to :func:`format_stack`)."""
    frame: FrameType | None = sys._getframe(1)
    parent = greenlet.getcurrent().parent
    if parent is not None and parent.gr_frame is not None:
        frame = parent.gr_frame
    stack = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
    stack.reverse()
    return stack


def format_stack(stack: traceback.StackSummary) -> str:
    """The application frames of *stack*, outermost first, as ``traceback`` prints them."""
    mine = traceback.StackSummary.from_list(
        [f for f in stack if not f.filename.startswith(_PLUMBING)] or list(stack)
    )
    return "".join(mine.format()).rstrip()
