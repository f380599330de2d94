"""Keep credentials out of everything dbkeel prints: URLs, driver messages, reprs.

A database URL can carry a secret in three places, and each is masked:

- the user-info: ``postgresql+asyncpg://app:SECRET@db/app``;
- query parameters: ``?password=SECRET``, ``?passfile=...``, ``?sslpassword=...`` (any
  parameter whose name holds ``pass``, ``secret`` or ``token``);
- a libpq key/value DSN quoted in a message: ``host=db password=SECRET``.

A password with an unencoded ``@`` (``app:Sup3r@S3cret@db``) is ambiguous: SQLAlchemy
reads ``Sup3r`` as the password and ``S3cret@db`` as the host, so the rest of the password
would be printed as a host name. :func:`check_userinfo` refuses such a URL before it is
parsed; :func:`mask_url` masks everything before the last ``@`` of the user-info anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "MASK",
    "check_userinfo",
    "is_secret_parameter",
    "mask_url",
    "node_address",
    "scrub_secrets",
]

MASK = "***"

_SECRET_WORDS = ("pass", "secret", "token")
# scheme://userinfo@ : the user-info is everything up to the last "@" before the path,
# query or fragment (RFC 3986 allows no unencoded "@" inside it).
_AUTHORITY = re.compile(r"^(?P<scheme>[^:/?#]+://)(?P<authority>[^/?#]*)")
# `password=...` / `password: ...` in a driver message or a libpq DSN, quoted or bare.
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:ssl)?(?:password|passwd|passfile|pwd|secret|token)\b)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&,;)]+)",
    re.IGNORECASE,
)


def is_secret_parameter(name: str) -> bool:
    """True for a URL query parameter that carries a credential (``password``, ``passfile``...)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def check_userinfo(raw: str, variable: str) -> None:
    """Refuse a URL whose user-info holds an unencoded ``@`` (raises ``ValueError``).

    The message never repeats the URL: it would print part of the password.
    """
    match = _AUTHORITY.match(raw.strip())
    if match is None:
        return
    if match["authority"].count("@") > 1:
        raise ValueError(
            f"{variable} is ambiguous: its user-info holds more than one '@', so part of the "
            f"password would be read as the host name. Percent-encode the password's '@' as "
            f"%40 (in Python: urllib.parse.quote(password, safe='')), or pass the password "
            f"separately. The URL is not shown because it holds a password."
        )


def mask_url(url: str | URL) -> str:
    """Render a database URL with every credential replaced by ``***``; never raises.

    Example::

        >>> mask_url("postgresql+asyncpg://app:pw@db/app?sslpassword=k")
        'postgresql+asyncpg://app:***@db/app?sslpassword=***'
    """
    if isinstance(url, str):
        raw = url.strip()
        match = _AUTHORITY.match(raw)
        if match is not None and match["authority"].count("@") > 1:
            # Ambiguous user-info: mask all of it after the user name, up to the last "@".
            userinfo, _, host = match["authority"].rpartition("@")
            user = userinfo.partition(":")[0]
            raw = f"{match['scheme']}{user}:{MASK}@{host}{raw[match.end() :]}"
        try:
            parsed = make_url(raw)
        except (ArgumentError, ValueError):
            return "<unparseable database URL>"
    else:
        parsed = url
    secret_keys = [key for key in parsed.query if is_secret_parameter(key)]
    if secret_keys:
        parsed = parsed.update_query_dict({key: MASK for key in secret_keys})
    # The query's "***" is percent-encoded by SQLAlchemy; show it as typed.
    rendered = parsed.render_as_string(hide_password=True)
    return rendered.replace("%2A%2A%2A", MASK)


def node_address(url: str | URL) -> str:
    """``host:port`` of a database URL, nothing else (for metric labels); never raises.

    A multi-host URL (``?host=db1:5432&host=db2:5432``) gives ``db1:5432,db2:5432``; a
    SQLite URL ``local``. User, password and query parameters never appear.

    Example::

        >>> node_address("postgresql+asyncpg://app:pw@db:5433/app")
        'db:5433'
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return "unknown"
    if parsed.get_backend_name() == "sqlite":
        return "local"
    if parsed.host:
        return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host
    hosts = parsed.query.get("host", ())
    hosts = (hosts,) if isinstance(hosts, str) else tuple(hosts)
    ports = parsed.query.get("port", ())
    ports = tuple(str(ports).split(",")) if isinstance(ports, str) else tuple(ports)
    if len(hosts) == 1 and "," in hosts[0]:
        hosts = tuple(hosts[0].split(","))
    if ports and len(ports) == len(hosts):
        hosts = tuple(f"{h}:{p}" for h, p in zip(hosts, ports, strict=True))
    return ",".join(hosts) or "localhost"


def url_secrets(url: URL) -> list[str]:
    """Every credential value in *url*: its password and its secret query parameters."""
    found: list[str] = []
    if isinstance(url.password, str) and url.password:
        found.append(url.password)
    for key, value in url.query.items():
        if is_secret_parameter(key):
            values = (value,) if isinstance(value, str) else value
            found.extend(v for v in values if v)
    return found


def scrub_secrets(text: str, urls: Iterable[URL] = ()) -> str:
    """*text* with the credentials of *urls*, and any ``password=...`` pair, masked.

    For messages that come from a driver or the server, which may quote the DSN.
    """
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted({s for url in urls for s in url_secrets(url)}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    return text.strip()
