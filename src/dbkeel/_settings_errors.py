"""Turn pydantic's validation errors on settings into messages for the person deploying.

Each line names the environment variable, the value given (never for secret fields: the URL
may hold a password) and the values accepted, e.g.::

    DATABASE_POOL_SIZE = '0' is invalid: Input should be greater than or equal to 1.
    Accepted: an integer >= 1 and <= 1000.
"""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic.fields import FieldInfo

__all__ = ["SECRET_FIELDS", "accepted_values", "describe_validation_error"]

#: Fields whose input is never repeated in a message (a URL's password, keys).
SECRET_FIELDS = frozenset({"database_url", "encryption_keys", "blind_index_key"})

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def describe_validation_error(
    exc: ValidationError, fields: dict[str, FieldInfo], env_names: dict[str, str]
) -> str:
    """One line per problem in *exc*, by environment variable name."""
    by_env = {env.lower(): field for field, env in env_names.items()}
    lines = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        field = name if name in fields else by_env.get(name.lower())
        msg = error["msg"].removeprefix("Value error, ")
        if field is None:
            lines.append(msg)  # a check across fields (e.g. production without a URL)
            continue
        env = env_names[field]
        if field in SECRET_FIELDS:
            lines.append(f"{env} is invalid: {msg}")
            continue
        shown = error.get("input")
        value = f" = {shown!r}" if shown is not None and error["type"] != "missing" else ""
        lines.append(f"{env}{value} is invalid: {msg}. Accepted: {accepted_values(fields[field])}.")
    return "Invalid database settings:\n  " + "\n  ".join(lines)


def accepted_values(info: FieldInfo) -> str:
    """What a field accepts, in words: its literals, or its kind and bounds."""
    options = _union_members(info.annotation)
    optional = type(None) in options
    literals = [
        v
        for member in options
        if typing.get_origin(member) is Literal
        for v in typing.get_args(member)
    ]
    if literals:
        return ", ".join(repr(v) for v in literals) + (", or unset" if optional else "")
    if bool in options:
        return "true or false (1/0, yes/no, on/off)"
    bounds = [
        f"{sign} {getattr(meta, attr)}"
        for meta in info.metadata
        for attr, sign in _BOUNDS
        if getattr(meta, attr, None) is not None
    ]
    kind = "a number of seconds" if float in options else "an integer" if int in options else "text"
    unset = " (or none to unset)" if optional else ""
    return f"{kind} {' and '.join(bounds)}".strip() + unset


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)
