"""Keys, rotation and blind indexes of dbkeel's encrypted columns.

The column type itself is :class:`dbkeel.types.EncryptedType`. Importing this package does
not import ``cryptography``; building a :class:`KeyRing` does (the ``encryption`` extra).

Example::

    from dbkeel.encryption import BlindIndex, KeyRing, blind_match, rotate_keys
"""

from dbkeel.encryption.blind_index import BlindIndex as BlindIndex
from dbkeel.encryption.blind_index import blind_match as blind_match
from dbkeel.encryption.blind_index import normalize_text as normalize_text
from dbkeel.encryption.keys import KeyProvider as KeyProvider
from dbkeel.encryption.keys import KeyRing as KeyRing
from dbkeel.encryption.keys import generate_key as generate_key
from dbkeel.encryption.registry import use_key_ring as use_key_ring
from dbkeel.encryption.reindex import ColumnReindex as ColumnReindex
from dbkeel.encryption.reindex import ReindexReport as ReindexReport
from dbkeel.encryption.reindex import reindex_blind_indexes as reindex_blind_indexes
from dbkeel.encryption.rotation import ColumnRotation as ColumnRotation
from dbkeel.encryption.rotation import RotationReport as RotationReport
from dbkeel.encryption.rotation import rotate_keys as rotate_keys

__all__ = [
    "BlindIndex",
    "ColumnReindex",
    "ColumnRotation",
    "KeyProvider",
    "KeyRing",
    "ReindexReport",
    "RotationReport",
    "blind_match",
    "generate_key",
    "normalize_text",
    "reindex_blind_indexes",
    "rotate_keys",
    "use_key_ring",
]
