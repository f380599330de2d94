"""Wiring of query insight into one manager's engine and session class.

Nothing is attached that the settings do not ask for: with ``nplusone=off`` the session
class gets no ORM listener, and without ``query_comment`` statements are not rewritten.
The statistics listeners are always attached (one ``ContextVar.get()`` per statement
outside ``track()``), so ``db.query_stats()`` works in every environment.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from dbkeel.insight.comments import CommentTagger
from dbkeel.insight.nplusone import NPlusOneDetector
from dbkeel.insight.stats import StatsRecorder
from dbkeel.mixins.session import DbkeelSession
from dbkeel.settings import DatabaseSettings

__all__ = ["install_engine_insight", "install_insight"]


def install_insight(
    engine: AsyncEngine,
    settings: DatabaseSettings,
    base: type[DbkeelSession] = DbkeelSession,
) -> type[DbkeelSession]:
    """Attach the listeners *settings* ask for; return the session class to use (*base*,
    or a subclass of it that N+1 detection listens on)."""
    install_engine_insight(engine, settings)
    mode = settings.effective_nplusone
    if mode == "off":
        return base
    # A subclass per manager: the listener must not reach sessions of other managers
    # (or of other settings) that share DbkeelSession.
    session_class = type(base.__name__, (base,), {"__module__": __name__})
    detector = NPlusOneDetector(mode, settings.nplusone_threshold)
    event.listen(session_class, "do_orm_execute", detector.on_execute)
    return session_class


def install_engine_insight(engine: AsyncEngine, settings: DatabaseSettings) -> None:
    """The engine's part: statement statistics, comment tags and spans (a replica's
    engine gets it too, so ``db.query_stats()`` counts statements wherever they ran)."""
    sync_engine = engine.sync_engine
    StatsRecorder().attach(sync_engine)
    if settings.query_comment:
        tagger = CommentTagger(
            settings.app_name,
            sync_engine.dialect.paramstyle,
            traceparent=settings.query_comment_traceparent,
        )
        event.listen(sync_engine, "before_cursor_execute", tagger.before, retval=True)
    if settings.query_spans or settings.query_transaction_spans:
        from dbkeel.insight.spans import StatementSpans

        StatementSpans(
            sync_engine,
            statements=settings.query_spans,
            transactions=settings.query_transaction_spans,
        ).attach(sync_engine)
