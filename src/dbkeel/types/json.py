"""``JSONBType``: JSON documents, ``JSONB`` on PostgreSQL and ``JSON`` elsewhere.

============ ============================================================================
database     column
============ ============================================================================
PostgreSQL   ``JSONB``: parsed binary form, indexable (GIN), ``@>`` containment
SQLite       ``JSON`` (text; SQLite's ``json_*`` functions read it)
MariaDB      ``JSON`` (an alias of ``LONGTEXT`` with a ``JSON_VALID`` check)
============ ============================================================================

Python ``None`` is SQL ``NULL`` (not the JSON ``null`` SQLAlchemy's ``JSON`` stores by
default), so ``column.is_(None)`` finds it on every database. To store JSON ``null``
itself, assign ``JSON.NULL`` (``from sqlalchemy import JSON``), as with SQLAlchemy's own
``JSON(none_as_null=True)``; ``column == JSON.NULL`` finds those rows, and they read back
as ``None``. Strings containing U+0000 are refused on every database: PostgreSQL's
``JSONB`` cannot store that character.

Example::

    settings: Mapped[dict[str, Any]] = mapped_column(JSONBType, default_factory=dict)
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import json
import json.encoder
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import JSON, TypeEngine

from dbkeel.types._base import PortableType

# CPython's C encoder factory (what JSONEncoder.iterencode calls); not in typeshed.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode_basestring_ascii: Any = json.encoder.encode_basestring_ascii

__all__ = ["JSONBType", "json_default"]


def json_default(value: Any) -> Any:
    """The default encoder for values ``json`` cannot write itself.

    ``datetime``/``date``/``time`` become ISO 8601 strings, ``Decimal`` a string (no
    float rounding), ``UUID`` its canonical string, an ``Enum`` its value, a set or
    frozenset a list. They read back as those plain JSON values. Anything else raises
    ``TypeError``, which ``JSONBType`` reports naming the column.

    Example::

        JSONBType(encoder=lambda v: json_default(v) if not isinstance(v, Money) else str(v))
    """
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def make_encoder(default: Callable[[Any], Any] | None) -> Callable[[Any], str]:
    """A strict JSON ``encode`` (no NaN: PostgreSQL refuses it) using *default*.

    Its output is ``json.dumps(value, default=default, allow_nan=False)``'s. ``dumps``
    builds a new C encoder on every call, which costs more than encoding a small
    document; this one is built once and reused (about 3x faster per value), without
    the circular-reference bookkeeping: a cycle raises ``RecursionError`` instead.
    """
    try:
        return _cached_encoder(default)  # one per encoder function
    except TypeError:  # an unhashable callable: built for this use only
        return _build_encoder(default)


@functools.lru_cache(maxsize=64)
def _cached_encoder(default: Callable[[Any], Any] | None) -> Callable[[Any], str]:
    return _build_encoder(default)


def _build_encoder(default: Callable[[Any], Any] | None) -> Callable[[Any], str]:
    if _c_make_encoder is None:  # an interpreter without the _json accelerator
        return json.JSONEncoder(default=default, allow_nan=False).encode
    encoder = _c_make_encoder(
        None,  # markers: no cycle check
        default or _not_serializable,
        _encode_basestring_ascii,
        None,  # indent
        ": ",
        ", ",
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
    join = "".join

    def encode(value: Any) -> str:
        return join(encoder(value, 0))

    return encode


def _holds_nul(value: Any) -> bool:
    """True if a string (key or value) anywhere in *value* contains U+0000."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    return False


class JSONBType(PortableType[Any]):
    """A JSON document column: ``JSONB`` on PostgreSQL, ``JSON`` on SQLite and MariaDB.

    In-place changes - ``user.settings["theme"] = "dark"``, nested ones too - are saved
    on the next flush. That costs a wrapper around the document when a row is loaded or
    a value assigned, and one per nested dict/list when first read through it; pass
    ``mutable=False`` to skip it and assign a new value to save a change.

    ``encoder`` is called for each value ``json`` cannot write (like ``json.dumps``'s
    ``default``); the default, :func:`json_default`, handles datetimes, decimals, UUIDs,
    enums and sets. A value that still cannot be written - or NaN/Infinity - raises
    ``InvalidValueError`` naming the column.

    Example::

        settings: Mapped[dict[str, Any]] = mapped_column(JSONBType)
        audit: Mapped[list[Any]] = mapped_column(JSONBType(mutable=False))
    """

    impl = JSON(none_as_null=True)
    cache_ok = True
    # dicts and lists are not hashable: ORM .unique() must compare rows without hashing
    hashable = False

    def __init__(
        self, *, mutable: bool = True, encoder: Callable[[Any], Any] | None = json_default
    ) -> None:
        super().__init__()
        self.mutable = mutable
        self.encoder = encoder

    @property
    def python_type(self) -> type[Any]:
        return dict

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            # imported here: only a PostgreSQL engine (which loaded it) gets here,
            # and `import dbkeel` stays free of the PostgreSQL dialect
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))

    def encode(self, value: Any) -> str:
        """*value* as JSON text, or ``InvalidValueError`` naming the column."""
        if value is JSON.NULL:  # an int subclass: it would be written as a big number
            return "null"
        try:
            text = make_encoder(self.encoder)(value)  # one per encoder function, cached
        except (TypeError, ValueError, RecursionError) as exc:
            raise self._unencodable(value, exc) from exc
        if "\\u0000" in text and _holds_nul(value):
            raise self._nul_refused(value)
        return text

    def _nul_refused(self, value: Any) -> Exception:
        return self.invalid(
            value,
            "a string in it contains the character U+0000 (NUL), which PostgreSQL's JSONB "
            "cannot store (dbkeel refuses it on every database, so data stays portable)",
            "Remove or replace the NUL characters (e.g. s.replace('\\x00', '')), or store "
            "the data base64-encoded.",
        )

    def _unencodable(self, value: Any, exc: BaseException) -> Exception:
        reason = (
            "it refers to itself (a reference cycle) or nests deeper than Python's recursion limit"
            if isinstance(exc, RecursionError)
            else f"it cannot be written as JSON ({exc})"
        )
        return self.invalid(
            value,
            reason,
            "Convert the value to dicts, lists, str, int, float, bool and None, or pass "
            "JSONBType(encoder=...) a function that converts the unsupported objects.",
        )

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.encode(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        # One closure around a reused C encoder (make_encoder): faster than json.dumps.
        encode = make_encoder(self.encoder)
        unencodable = self._unencodable
        nul_refused = self._nul_refused
        json_null = JSON.NULL

        def bind_json(value: Any) -> Any:
            if value is None:
                return None
            if value is json_null:  # an int subclass: it would be written as a big number
                return "null"
            try:
                text = encode(value)
            except (TypeError, ValueError, RecursionError) as exc:
                raise unencodable(value, exc) from exc
            # the C encoder writes NUL as \u0000; an escaped backslash before "u0000" is
            # not one, so the rare hit is checked on the value itself
            if "\\u0000" in text and _holds_nul(value):
                raise nul_refused(value)
            return text

        return bind_json

    def __repr__(self) -> str:
        return "JSONBType()" if self.mutable else "JSONBType(mutable=False)"
