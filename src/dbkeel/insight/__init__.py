"""Query insight: N+1 detection, per-context statement figures, SQL comment tags, statement
metrics (Prometheus / OpenTelemetry) and spans.

``track()`` opens a context (the web integrations open one per request, named by its
route) and yields its figures; N+1 loads are detected within it, or within one session
outside any ``track()`` block::

    from dbkeel.insight import track

    with track("GET /orders") as q:
        async with db.get_session() as session:
            orders = (await session.scalars(select(Order))).all()
    print(q.summary())  # {'operation': 'GET /orders', 'statements': 3, ...}

See docs/insight.md.
"""

from dbkeel.insight.comments import format_comment
from dbkeel.insight.context import (
    InsightContext,
    ShapeStats,
    activate,
    allow_nplusone,
    current_context,
    track,
)
from dbkeel.insight.metrics import StatementMetrics, statement_metrics
from dbkeel.insight.nplusone import NPlusOneDetector

__all__ = [
    "InsightContext",
    "NPlusOneDetector",
    "ShapeStats",
    "StatementMetrics",
    "activate",
    "allow_nplusone",
    "current_context",
    "format_comment",
    "statement_metrics",
    "track",
]
