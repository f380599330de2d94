"""Turn pydantic's validation errors on settings into messages for the person deploying.

Each line names the environment variable, the value given (never for secret fields: the URL
may hold a password) and the values accepted, e.g.::

    DATABASE_POOL_SIZE = '0' is invalid: Input should be greater than or equal to 1.
    Accepted: an integer >= 1 and <= 1000.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic.fields import FieldInfo

__all__ = [
    "ENV_PREFIX",
    "IGNORE_ENV_VARIABLE",
    "SECRET_FIELDS",
    "accepted_values",
    "describe_validation_error",
    "unknown_settings",
]

#: Fields whose input is never repeated in a message (a URL's password, keys).
SECRET_FIELDS = frozenset({"database_url", "encryption_keys", "blind_index_key"})

#: Environment variables under this prefix are dbkeel's: an unknown one is a typo.
ENV_PREFIX = "DATABASE_"
#: Comma-separated DATABASE_* variables that belong to another program and are left alone.
IGNORE_ENV_VARIABLE = "DBKEEL_IGNORE_ENV"

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


def unknown_settings(
    values: Mapping[str, Any], env_names: dict[str, str], env_file: Any = None
) -> str | None:
    """A message for misspelled settings, or None when every name is known.

    Checks the constructor's keyword arguments (by field or variable name) and every
    ``DATABASE_*`` variable in the environment and the ``.env`` file: a misspelled knob
    silently falling back to its default is how ``pool_sise=1`` reaches production.
    """
    fields = list(env_names)
    known_env = {env.upper() for env in env_names.values()}
    lines = []
    for key in values:
        if key in env_names or key.upper() in known_env:
            continue
        lines.append(
            f"{key!r} is not a DatabaseSettings field.{_did_you_mean(key, fields)} "
            f"The fields are listed in the DatabaseSettings docstring and docs."
        )
    ignored = {
        name.strip().upper()
        for name in os.environ.get(IGNORE_ENV_VARIABLE, "").split(",")
        if name.strip()
    }
    for name, where in _prefixed_variables(env_file):
        if name in known_env or name in ignored:
            continue
        lines.append(
            f"{name} ({where}) is not a dbkeel setting.{_did_you_mean(name, sorted(known_env))} "
            f"If it belongs to another program, list it in {IGNORE_ENV_VARIABLE}={name}."
        )
    if not lines:
        return None
    return "Unknown database settings:\n  " + "\n  ".join(lines)


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name.upper(), [c.upper() for c in candidates], n=1)
    if not close:
        return ""
    by_upper = {c.upper(): c for c in candidates}
    return f" Did you mean {by_upper[close[0]]!r}?"


def _prefixed_variables(env_file: Any) -> list[tuple[str, str]]:
    """``DATABASE_*`` names set in the environment or the ``.env`` file, with where from."""
    found = [(name.upper(), "environment") for name in os.environ if _prefixed(name)]
    if isinstance(env_file, str | Path) and Path(env_file).is_file():
        from dotenv import dotenv_values  # pydantic-settings' own dependency

        found += [
            (name.upper(), str(env_file)) for name in dotenv_values(env_file) if _prefixed(name)
        ]
    return found


def _prefixed(name: str) -> bool:
    return name.upper().startswith(ENV_PREFIX)
