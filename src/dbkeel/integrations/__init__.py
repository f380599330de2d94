"""Web framework integrations: :mod:`~dbkeel.integrations.fastapi` and
:mod:`~dbkeel.integrations.starlette` (``dbkeel[fastapi]``). Each imports its framework
itself, so ``import dbkeel`` never does."""
