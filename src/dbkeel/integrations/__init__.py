"""Web framework integrations: :mod:`~dbkeel.integrations.fastapi` and
:mod:`~dbkeel.integrations.starlette` (``dbkeel[fastapi]``), :mod:`~dbkeel.integrations.litestar`
(``dbkeel[litestar]``), and what they share without any framework:
:mod:`~dbkeel.integrations.responses` (error statuses, readiness, metrics) and
:mod:`~dbkeel.integrations.tracking` (per-request query tracking and budgets). Each
imports its framework itself, so ``import dbkeel`` never does."""
