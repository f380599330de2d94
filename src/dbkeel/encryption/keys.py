"""The key ring: AES-256 keys with ids, one of them active for new writes.

Keys are 32 random bytes, written as ``ID:BASE64KEY``. New values are sealed with the active
key; every key on the ring opens values. The ring keeps no raw key bytes in any attribute,
and its repr shows only key ids::

    from dbkeel.encryption import KeyRing, generate_key

    ring = KeyRing.parse("k1:" + generate_key()[1], active="k1")
    ring                                   # KeyRing(key_ids=['k1'], active='k1')

Parsing (:func:`parse_keys`) needs no optional package; building a :class:`KeyRing` imports
``cryptography`` (the ``encryption`` extra).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dbkeel.encryption import envelope
from dbkeel.exceptions import (
    ConfigurationError,
    DecryptionError,
    KeyRingError,
    MissingDependencyError,
)

if TYPE_CHECKING:
    from dbkeel.settings import DatabaseSettings

__all__ = [
    "KEY_SIZE",
    "KeyProvider",
    "KeyRing",
    "generate_key",
    "parse_index_key",
    "parse_keys",
]

KEY_SIZE = 32
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_HOW_TO = (
    "Generate a proper key with `dbkeel keys generate` (it prints one ID:BASE64KEY line to "
    "append to DATABASE_ENCRYPTION_KEYS)."
)
_urandom = os.urandom


def generate_key(key_id: str | None = None) -> tuple[str, str]:
    """A new random key: ``(key_id, base64_key)``; the id defaults to ``kYYYYMMDD<hex>``.

    Example::

        key_id, key = generate_key()
        line = f"{key_id}:{key}"          # append to DATABASE_ENCRYPTION_KEYS
    """
    if key_id is None:
        key_id = f"k{dt.datetime.now(dt.UTC):%Y%m%d}{secrets.token_hex(2)}"
    _check_key_id(key_id, "the requested key id")
    return key_id, base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def _check_key_id(key_id: str, where: str) -> None:
    if not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            f"{where} {key_id[:40]!r} is not a valid key id: use 1-32 letters, digits, "
            f"'_', '.' or '-'."
        )


def _decode_key(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                f"{where} is not base64: it looks like a passphrase, and dbkeel takes only "
                f"random 32-byte keys (a passphrase would need a slow key-derivation step "
                f"and is easy to guess). {_HOW_TO}"
            ) from None
    if len(raw) != KEY_SIZE:
        raise ConfigurationError(
            f"{where} is {len(raw)} bytes long: AES-256 needs exactly {KEY_SIZE} random "
            f"bytes, and a short key or a passphrase is refused. {_HOW_TO}"
        )
    return raw


def parse_keys(text: str) -> dict[str, bytes]:
    """Parse ``ID:BASE64KEY[,ID:BASE64KEY...]`` into ``{id: key}`` in the order given.

    Errors name the entry by its id or position, never its key material.
    """
    keys: dict[str, bytes] = {}
    entries = [e for e in (part.strip() for part in text.split(",")) if e]
    if not entries:
        raise ConfigurationError(f"DATABASE_ENCRYPTION_KEYS is empty. {_HOW_TO}")
    for position, entry in enumerate(entries, 1):
        key_id, sep, key_text = entry.partition(":")
        if not sep:
            raise ConfigurationError(
                f"DATABASE_ENCRYPTION_KEYS entry #{position} has no 'ID:' prefix: each entry "
                f"is ID:BASE64KEY, entries separated by commas. {_HOW_TO}"
            )
        key_id = key_id.strip()
        _check_key_id(key_id, f"DATABASE_ENCRYPTION_KEYS entry #{position}:")
        if key_id in keys:
            raise ConfigurationError(
                f"DATABASE_ENCRYPTION_KEYS names the key id {key_id!r} twice: each id must "
                f"name one key, or old ciphertexts would open with the wrong one."
            )
        keys[key_id] = _decode_key(key_text, f"DATABASE_ENCRYPTION_KEYS key {key_id!r}")
    return keys


def parse_index_key(text: str) -> bytes:
    """Parse the blind-index key: ``BASE64KEY`` or ``ID:BASE64KEY`` (the id is ignored)."""
    _, _, key_text = text.rpartition(":")
    return _decode_key(key_text, "DATABASE_BLIND_INDEX_KEY")


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise MissingDependencyError("Encrypted columns", "encryption", "cryptography") from exc
    return AESGCM


class KeyRing:
    """Keys by id, the active one used for new values; all of them open old values.

    Build it from settings (:meth:`from_settings`), from text (:meth:`parse`) or from
    raw keys. It is resolved once at startup and attached to an engine by
    :class:`~dbkeel.DatabaseManager` (or :func:`dbkeel.encryption.use_key_ring`).

    Example::

        ring = KeyRing({"k1": old_key, "k2": new_key}, active="k2", index_key=index_key)
    """

    __slots__ = (
        "_active_header",
        "_active_id",
        "_aead_active",
        "_aeads",
        "_aeads_by_header",
        "_index_mac",
        "_open_errors",
    )

    def __init__(
        self, keys: Mapping[str, bytes], active: str, *, index_key: bytes | None = None
    ) -> None:
        aesgcm = _aesgcm()
        from cryptography.exceptions import InvalidTag

        # what a damaged, truncated, foreign or unknown-key envelope raises while opening
        self._open_errors = (InvalidTag, KeyError, IndexError, ValueError)
        if not keys:
            raise ConfigurationError(f"A key ring needs at least one key. {_HOW_TO}")
        self._aeads: dict[bytes, Any] = {}
        for key_id, key in keys.items():
            _check_key_id(key_id, "key id")
            if len(key) != KEY_SIZE:
                raise ConfigurationError(
                    f"key {key_id!r} is {len(key)} bytes long: AES-256 needs exactly "
                    f"{KEY_SIZE} random bytes. {_HOW_TO}"
                )
            self._aeads[key_id.encode("ascii")] = aesgcm(key)
        if active not in keys:
            raise ConfigurationError(
                f"DATABASE_ENCRYPTION_ACTIVE_KEY={active!r} is not on the key ring (ids: "
                f"{', '.join(keys)}): name one of those ids, or add the key to "
                f"DATABASE_ENCRYPTION_KEYS."
            )
        self._active_id = active
        # keyed by the whole envelope header (version, length, key id): opening a value
        # then slices its header once, for this lookup and the associated data
        self._aeads_by_header = {envelope.header(k): aead for k, aead in self._aeads.items()}
        self._active_header = envelope.header(active.encode("ascii"))
        self._aead_active = self._aeads[active.encode("ascii")]
        self._index_mac: Any = None
        if index_key is not None:
            if len(index_key) != KEY_SIZE:
                raise ConfigurationError(
                    f"the blind-index key is {len(index_key)} bytes long: it needs exactly "
                    f"{KEY_SIZE} random bytes. {_HOW_TO}"
                )
            self._index_mac = hmac.new(index_key, digestmod=hashlib.sha256)

    @classmethod
    def parse(cls, keys: str, active: str | None = None, index_key: str | None = None) -> KeyRing:
        """A ring from ``ID:BASE64KEY`` text; *active* may be left out when there is one key."""
        parsed = parse_keys(keys)
        if active is None:
            if len(parsed) > 1:
                raise ConfigurationError(
                    f"DATABASE_ENCRYPTION_KEYS holds {len(parsed)} keys "
                    f"({', '.join(parsed)}) but DATABASE_ENCRYPTION_ACTIVE_KEY is not set: "
                    f"name the id that new values are written with."
                )
            active = next(iter(parsed))
        index = parse_index_key(index_key) if index_key else None
        return cls(parsed, active, index_key=index)

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> KeyRing | None:
        """The ring configured in *settings*, or None when no keys are set."""
        if settings.encryption_keys is None:
            return None
        index = settings.blind_index_key
        return cls.parse(
            settings.encryption_keys.get_secret_value(),
            settings.encryption_active_key,
            index.get_secret_value() if index is not None else None,
        )

    @property
    def active_key_id(self) -> str:
        """The id of the key new values are sealed with."""
        return self._active_id

    @property
    def key_ids(self) -> list[str]:
        """Every key id on the ring."""
        return [k.decode("ascii") for k in self._aeads]

    @property
    def has_index_key(self) -> bool:
        """True when a blind-index key is configured."""
        return self._index_mac is not None

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={self.key_ids!r}, active={self._active_id!r})"

    # -- the hot path: kept flat, it runs once per value -----------------------------------

    def seal(self, plaintext: bytes, column: bytes) -> bytes:
        """Encrypt *plaintext* for the column named *column* (``b"table.column"``)."""
        head = self._active_header
        nonce = _urandom(12)
        return head + nonce + self._aead_active.encrypt(nonce, plaintext, head + column)  # type: ignore[no-any-return]

    def open(self, blob: bytes, column: bytes) -> bytes:
        """Decrypt an envelope written for *column*; :class:`DecryptionError` if it fails."""
        # Fast path without checks: the header (version byte included) is authenticated as
        # associated data, so a wrong version, key id or length fails here too, and
        # _failure() then works out which one it was.
        try:
            end = blob[1] + 2
            head = blob[:end]
            plaintext: bytes = self._aeads_by_header[head].decrypt(
                blob[end : end + 12], blob[end + 12 :], head + column
            )
        except self._open_errors:
            raise self._failure(blob, column) from None
        return plaintext

    def header_of(self, key_id: str) -> bytes:
        """The envelope header written by key *key_id* (for counting rows per key)."""
        return envelope.header(key_id.encode("ascii"))

    def index(self, normalized: bytes, column: bytes) -> bytes:
        """The blind index (HMAC-SHA256) of an already normalized plaintext."""
        if self._index_mac is None:
            raise KeyRingError(
                f"Blind index column {column.decode()} needs a blind-index key, and none is "
                f"configured: set DATABASE_BLIND_INDEX_KEY (a key from `dbkeel keys "
                f"generate`, different from the encryption keys)."
            )
        mac = self._index_mac.copy()
        mac.update(column + b"\x00" + normalized)
        digest: bytes = mac.digest()
        return digest

    def _failure(self, blob: bytes, column: bytes) -> DecryptionError:
        where = column.decode("utf-8", "replace")
        try:
            key_id, _h, _n, _c = envelope.parse(blob)
        except envelope.EnvelopeFormatError as exc:
            kid = f" (key id {exc.key_id!r})" if exc.key_id else ""
            return DecryptionError(
                f"Cannot decrypt {where}{kid}: {exc.reason}. The stored value is damaged "
                f"or was not written by dbkeel."
            )
        kid_text = key_id.decode("ascii", "replace")
        if key_id not in self._aeads:
            return DecryptionError(
                f"Cannot decrypt {where}: it was encrypted with key id {kid_text!r}, which "
                f"is not on the key ring (ids: {', '.join(self.key_ids)}). Add that key to "
                f"DATABASE_ENCRYPTION_KEYS; a retired key must stay until `dbkeel keys "
                f"rotate` reports no rows left under it."
            )
        return DecryptionError(
            f"Cannot decrypt {where} with key id {kid_text!r}: authentication failed. The "
            f"value was tampered with or truncated, was copied from another column, or key "
            f"{kid_text!r} is not the key it was written with."
        )


@runtime_checkable
class KeyProvider(Protocol):
    """Supplies the key ring from elsewhere (a KMS, a vault), called once at startup.

    Example::

        class VaultKeys:
            async def load_key_ring(self) -> KeyRing:
                data = await vault.read("secret/db-keys")
                return KeyRing.parse(data["keys"], active=data["active"])

        db = DatabaseManager(settings, key_provider=VaultKeys())
    """

    async def load_key_ring(self) -> KeyRing:
        """Return the key ring to use for this manager's engine."""
        ...
