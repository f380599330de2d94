"""The stored form of an encrypted value: a small, versioned binary envelope.

Layout (all one byte string, stored in a binary column)::

    offset  size        field
    0       1           format version (1)
    1       1           n = length of the key id (1..32)
    2       n           key id, ASCII
    2+n     12          nonce: fresh random bytes for every value
    14+n    len(p)+16   AES-256-GCM ciphertext followed by its 16-byte tag

The associated data authenticated with each value is the header (version, length, key id)
followed by ``table.column``: a ciphertext moved to another column, or given another key id,
fails to decrypt. The size is ``len(plaintext) + 30 + len(key_id)`` bytes.

Example::

    header(b"k1")                 # b"\\x01\\x02k1"
    parse(envelope)               # (key_id, header, nonce, ciphertext)
"""

from __future__ import annotations

__all__ = ["FORMAT_VERSION", "NONCE_SIZE", "OVERHEAD", "TAG_SIZE", "header", "parse", "size"]

FORMAT_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
#: bytes added to the plaintext, not counting the key id
OVERHEAD = 2 + NONCE_SIZE + TAG_SIZE


class EnvelopeFormatError(ValueError):
    """The bytes are not an envelope this version of dbkeel can read (internal)."""

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        self.reason = reason
        self.key_id = key_id
        super().__init__(reason)


def header(key_id: bytes) -> bytes:
    """The envelope header of values sealed under *key_id*."""
    return bytes((FORMAT_VERSION, len(key_id))) + key_id


def size(plaintext_bytes: int, key_id_length: int) -> int:
    """The stored size in bytes of a value of *plaintext_bytes* under a key id of that length."""
    return plaintext_bytes + OVERHEAD + key_id_length


def parse(blob: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Split an envelope into (key id, header, nonce, ciphertext+tag); raise on bad form."""
    if len(blob) < 2:
        raise EnvelopeFormatError(f"the value is {len(blob)} bytes, shorter than any envelope")
    if blob[0] != FORMAT_VERSION:
        raise EnvelopeFormatError(
            f"unsupported envelope format version {blob[0]} (this dbkeel reads version "
            f"{FORMAT_VERSION}); upgrade dbkeel, or the value is not a dbkeel ciphertext"
        )
    n = blob[1]
    end = 2 + n
    key_id = blob[2:end]
    if len(blob) < end + NONCE_SIZE + TAG_SIZE:
        raise EnvelopeFormatError(
            f"the value is {len(blob)} bytes, too short for its header: it was truncated",
            key_id.decode("ascii", "replace"),
        )
    return key_id, blob[:end], blob[end : end + NONCE_SIZE], blob[end + NONCE_SIZE :]
