"""How the mixins add their columns to a model, for dataclass and plain declarative bases.

A column declared in a mixin's class body cannot serve both kinds of base: under
``MappedAsDataclass`` the mixin itself would have to be a dataclass, and a plain
``DeclarativeBase`` rejects the dataclass arguments (``init=False``) the columns need.
So the mixins declare their attributes for type checkers only, and ``__init_subclass__``
puts a fresh ``mapped_column()`` into each model class *before* SQLAlchemy maps it,
with the dataclass arguments only when the model is a dataclass. The same hook merges
the mixin's mapper arguments with the model's own ``__mapper_args__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import MappedAsDataclass, declared_attr

from dbkeel.exceptions import ConfigurationError

__all__ = ["ColumnFactory", "add_columns"]

#: Builds one column: called with ``dataclass=True`` for MappedAsDataclass models.
ColumnFactory = Callable[[bool], tuple[Any, Any]]


def add_columns(
    cls: type,
    mixin: type,
    columns: dict[str, ColumnFactory],
    mapper_args: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> bool:
    """Put *columns* into *cls* unless a mapped parent already has them.

    Returns True when the columns were added (the class owns them). *mapper_args*
    receives the new ``MappedColumn`` objects by name and returns mapper arguments to
    merge under the model's own (the model's keys win).
    """
    if _is_mapped(cls):
        raise ConfigurationError(
            f"{cls.__name__} was mapped before {mixin.__name__} could add its columns: "
            f"the mixin is listed after the declarative base. Put mixins first, e.g. "
            f"`class {cls.__name__}({mixin.__name__}, Base): ...`."
        )
    if cls.__dict__.get("__abstract__", False) is True or _inherits_columns(cls, mixin, columns):
        return False
    dataclass = issubclass(cls, MappedAsDataclass)
    annotations = cls.__dict__.get("__annotations__")  # noqa: RUF063 - mutated in place
    if annotations is None:
        annotations = {}
        cls.__annotations__ = annotations
    created: dict[str, Any] = {}
    for name, factory in columns.items():
        if name in cls.__dict__:
            raise ConfigurationError(
                f"{cls.__name__} declares {name!r} itself, but {mixin.__name__} provides "
                f"that column. Remove {name!r} from {cls.__name__} (or do not use "
                f"{mixin.__name__})."
            )
        annotation, column = factory(dataclass)
        annotations[name] = annotation
        setattr(cls, name, column)
        created[name] = column
    if mapper_args is not None:
        _merge_mapper_args(cls, mapper_args(created))
    return True


def _is_mapped(cls: type) -> bool:
    return "__mapper__" in cls.__dict__


def _inherits_columns(cls: type, mixin: type, columns: dict[str, ColumnFactory]) -> bool:
    # A mapped (or abstract) parent already declares them: inheritance passes them on.
    return any(
        name in klass.__dict__
        for klass in cls.__mro__[1:]
        if klass is not mixin
        for name in columns
    )


def _merge_mapper_args(cls: type, ours: dict[str, Any]) -> None:
    own = cls.__dict__.get("__mapper_args__")
    if own is None:
        # Inherited from a plain (non-mapped) mixin of the user's: merge with it too.
        own = next(
            (
                k.__dict__["__mapper_args__"]
                for k in cls.__mro__[1:]
                if "__mapper_args__" in k.__dict__ and "__mapper__" not in k.__dict__
            ),
            None,
        )
    if own is None:
        merged: Any = dict(ours)
    elif isinstance(own, dict):
        merged = {**ours, **own}
    elif callable(getattr(own, "fget", None)):  # @declared_attr(.directive) of any flavour
        fget = own.fget

        def combined(model: type) -> dict[str, Any]:
            return {**ours, **fget(model)}

        merged = declared_attr.directive(combined)
    else:
        raise ConfigurationError(
            f"{cls.__name__}.__mapper_args__ must be a dict or a @declared_attr.directive "
            f"function, not {type(own).__name__} ({own!r})."
        )
    cls.__mapper_args__ = merged  # type: ignore[attr-defined]
