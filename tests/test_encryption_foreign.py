"""Ciphertext dbkeel did not write is a DecryptionError naming the column (issue 17).

Regression test: rows written by sqlalchemy-utils' StringEncryptedType (base64 text) used
to raise a bare ``TypeError: string argument without an encoding``.
"""

from __future__ import annotations

import warnings

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from dbkeel import DatabaseManager, DecryptionError
from dbkeel.types import EncryptedType
from tests.conftest import CreateTables
from tests.encryption_support import SECRETS, enc_db, forget_test_columns  # noqa: F401

pytestmark = pytest.mark.usefixtures("forget_test_columns")


async def test_peer_ciphertext_is_a_decryption_error_naming_the_column(
    enc_db: DatabaseManager,  # noqa: F811
    create_tables: CreateTables,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqlalchemy-utils' own deprecation notices
        from sqlalchemy_utils import StringEncryptedType
        from sqlalchemy_utils.types.encrypted.encrypted_type import AesEngine

    peer = MetaData()
    written = Table(
        "foreign_secrets",
        peer,
        Column("id", Integer, primary_key=True),
        Column(
            "secret", StringEncryptedType(String(200), "peer-key", AesEngine, "pkcs5", length=255)
        ),
    )
    read = Table(
        "foreign_secrets",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("secret", EncryptedType(String(200))),
    )
    await create_tables(enc_db, peer)
    async with enc_db.get_session() as session:
        await session.execute(written.insert().values(id=1, secret="written by a peer"))
    async with enc_db.get_session() as session:
        with pytest.raises(DecryptionError, match=r"foreign_secrets\.secret") as info:
            (await session.execute(select(read.c.secret))).all()
    message = str(info.value)
    assert "not dbkeel's binary envelope" in message
    assert "written by a peer" not in message
    assert not any(key.hex() in message for key in SECRETS)
